"""The Python API under the CLI: one module per command, stages over two frozen requests.

    inputs.py    InputSpec: where an input is and how it is read (resolve, output check, read)
    request.py   DistillRequest: a distill run, resolved and checked before any reading
    distill.py   own output -> read -> fit -> label -> write (+ the keyword `distill`)
    labels.py    the label stage; plan.py: --dry-run; record.py: the manifest block
    write.py     the write stage and the order of its collectives under torchrun
    teacher.py, experts.py, evaluate.py: the other commands that read shards
    frontier.py  methods x budgets x labels: distil + fair evaluation per point, one report
    checks.py    argument checks shared by every command, the device

No printing here: every command returns a JSON-able report dict; errors are
`dcompress.errors` exceptions (the CLI maps them to exit codes).
"""
from __future__ import annotations

from .checks import check_limits, check_seed, resolve_device
from .distill import distill, distill_request
from .evaluate import evaluate
from .experts import experts
from .frontier import frontier
from .inputs import InputSpec, decode_options, load_real
from .request import DistillRequest
from .teacher import teacher

__all__ = ["DistillRequest", "InputSpec", "check_limits", "check_seed", "decode_options", "distill",
           "distill_request", "evaluate", "experts", "frontier", "load_real", "resolve_device", "teacher"]
