"""Scale-out on torchrun: one process per rank, the same bytes as one process (docs/distributed.md).

    torchrun --standalone --nproc-per-node 2 -m dcompress distill ...     # or: dcompress distill --nproc 2

`init()` joins the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT): gloo for CPU tensors, NCCL for CUDA tensors ("cpu:gloo,cuda:nccl"), with a
collective timeout (DCOMPRESS_DIST_TIMEOUT seconds, default 1800) so that a rank blocked on a
dead peer fails instead of hanging. Without torchrun (WORLD_SIZE unset or 1) every helper here
is a no-op: `rank() == 0`, `world() == 1`, gathers return their input.

Failures: each rank maps its exception to our exit code (console.run); the first rank to fail
records itself in torchrun's key-value store (`claim_failure`) and prints the error (and the
one `--json` object); ranks that fail after it (a collective broken by the dead peer, the
agent's SIGTERM) stay quiet and exit with the first rank's code.

Work one rank does by itself (a `frontier` point: distill and evaluate while the other ranks do
other points) runs inside `alone()`: there every helper reports one process (rank 0 of 1, every
collective the identity), while the process stays in its group and keeps its own GPU.

One module (~650 lines): the rank facts and collectives, and the split objects built on them
(`ClassSplit`, `BatchParallel`, `RowShard`) that the methods use; the file sections follow that
order. Split it along those sections when it grows.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import UsageError

TIMEOUT_ENV = "DCOMPRESS_DIST_TIMEOUT"
_STORE_WAIT = datetime.timedelta(seconds=10)


def env_world() -> int:
    """WORLD_SIZE from the environment (torchrun sets it), 1 without torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _grouped() -> bool:
    """Whether this process joined a process group of more than one (`alone` or not)."""
    import torch.distributed as td

    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def active() -> bool:
    """Whether this process is one rank of a process group of more than one (False in `alone`)."""
    return _alone == 0 and _grouped()


_alone = 0


@contextlib.contextmanager
def alone():
    """Within: this process by itself, under torchrun too: `rank() == 0`, `world() == 1`, every
    collective the identity, `require_single` passes. For work that one rank does on its own
    with no collective inside while the other ranks do other work (a frontier point). The
    process stays in its group, and `device`/`local_rank` keep naming this rank's own GPU."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def rank() -> int:
    import torch.distributed as td

    return td.get_rank() if active() else 0


def world() -> int:
    import torch.distributed as td

    return td.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if _grouped() else 0


def is_main() -> bool:
    return rank() == 0


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        raise UsageError(f"{TIMEOUT_ENV} must be > 0, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def init() -> bool:
    """Joins torchrun's process group when WORLD_SIZE > 1 (idempotent); True when distributed."""
    import torch.distributed as td

    if env_world() <= 1 or (td.is_available() and td.is_initialized()):
        return active()
    if not td.is_available():
        raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                         "dcompress with torchrun (or `dcompress distill --nproc N`)")
    backend = "gloo"
    if torch.cuda.is_available() and td.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    td.init_process_group(backend, store=_attempt_store(), rank=int(os.environ["RANK"]), world_size=env_world(),
                          timeout=_timeout())
    global _joined
    _joined = True
    return True


_joined = False


def joined() -> bool:
    """Whether this process joined a process group (it stays True after `shutdown`)."""
    return _joined


def _attempt_store():
    """torchrun's key-value store (hosted by the elastic agent; else by rank 0) under a prefix per
    restart: torchrun keeps one store across `--max-restarts` restarts, and without the prefix
    a restarted rank could read a dead peer's address from the previous attempt (seen here:
    gloo's connectFullMesh refused, or hung, in about one restart in three)."""
    import torch.distributed as td

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = td.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env_world(),
                        is_master=not agent and os.environ["RANK"] == "0", timeout=_timeout())
    return td.PrefixStore(f"dcompress/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def finish(code: int = 0) -> None:
    """Ends a torchrun rank whose work is done: flushes stdout/stderr, leaves the process group and
    exits through `os._exit(code)`, skipping interpreter teardown. There, gloo's threads can still
    hold objects that need the GIL: a finished rank was seen to die with SIGABRT ("terminate
    called without an active exception"), in CI, from the CLI and from a plain script, and
    torchrun then fails the whole job. Call it last in a script run under torchrun; files must be
    complete (closed) before, as no `finally` or atexit handler runs after it."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    shutdown()
    os._exit(code)


def device(name: str) -> torch.device | None:
    """`auto`/`cuda` under torchrun: this rank's GPU, cuda:LOCAL_RANK (None outside torchrun or
    without CUDA: the caller's own rule applies). An explicit `cuda:N` is kept as given."""
    if not _grouped() or name not in ("auto", "cuda") or not torch.cuda.is_available():
        return None
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


# ------------------------------------------------------------------------------------------------
# Collectives (no-ops in one process)

def barrier() -> None:
    import torch.distributed as td

    if active():
        td.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (pickled: small control values only)."""
    import torch.distributed as td

    if not active():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    import torch.distributed as td

    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    td.all_gather_object(out, obj)
    return out


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenation along dim 0 of every rank's `t` in rank order (first dims may differ; the
    other dims and the dtype must agree). The bytes of each part are kept exactly."""
    import torch.distributed as td

    if not active():
        return t
    sizes = [int(n) for n in all_gather_object(int(t.shape[0]))]
    top = max(sizes)
    padded = t.new_zeros((top, *t.shape[1:]))
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    td.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (float addition order is the backend's: use all_gather_cat where
    the one-process bytes matter)."""
    import torch.distributed as td

    if active():
        td.all_reduce(t)
    return t


# ------------------------------------------------------------------------------------------------
# Splitting work

@dataclass(frozen=True)
class Split:
    """A contiguous block of `n` items (classes, experts, runs) for `rank` of `world`:
    items [lo, hi). Blocks are in rank order, so gathering in rank order restores item order."""

    n: int
    rank: int
    world: int

    @property
    def lo(self) -> int:
        return self.rank * self.n // self.world

    @property
    def hi(self) -> int:
        return (self.rank + 1) * self.n // self.world

    @property
    def items(self) -> list[int]:
        return list(range(self.lo, self.hi))


def require_single(what: str) -> None:
    """UsageError under torchrun for work that does not split over ranks yet (instead of
    silently running the same job once per rank)."""
    if env_world() > 1 and not _alone:
        raise UsageError(f"{what} does not support torchrun yet (WORLD_SIZE={env_world()}); run it as one process")


def ticket(counter: str) -> int:
    """The next number (0, 1, 2, ...) of `counter`, shared by every rank of the job (torchrun's
    key-value store, an atomic add): each number goes to one rank, so ranks that take work from
    one list as they get free never take the same item. One process: a counter of its own."""
    if not active():
        _counters[counter] = _counters.get(counter, 0) + 1
        return _counters[counter] - 1
    from torch.distributed import distributed_c10d as c10d

    return int(c10d._get_default_store().add(_key(f"counter/{counter}"), 1)) - 1


_counters: dict[str, int] = {}


def main_first(make: Callable[[], Any]) -> Any:
    """`make()` on rank 0, then (after a barrier) on the other ranks: rank 0 prepares shared
    files (a work folder) before the others look at them. In one process: `make()`."""
    made = make() if is_main() else None
    barrier()
    return made if made is not None else make()


# ------------------------------------------------------------------------------------------------
# Failures: printed once, by the first rank that failed

def _key(name: str) -> str:
    return f"dcompress/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


def _store():
    from torch.distributed import distributed_c10d as c10d

    store = c10d._get_default_store()
    store.set_timeout(_STORE_WAIT)
    return store


def claim_failure(exit_code: int) -> tuple[bool, int]:
    """(first, code): whether this rank is the first of the job to fail, and the exit code the
    job reports (the first failure's). Outside torchrun, or when the store is gone: (True, own)."""
    if not active():
        return True, exit_code
    try:
        store = _store()
        if store.add(_key("failed"), 1) == 1:
            store.set(_key("exit"), str(exit_code))
            return True, exit_code
        return False, int(store.get(_key("exit")).decode())
    except Exception:  # noqa: BLE001 - no store (its host died): say it ourselves
        return True, exit_code


# ------------------------------------------------------------------------------------------------
# State split by rows (synthetic images of a block of classes, and their optimizer state)

@dataclass(frozen=True)
class RowShard:
    """Rows [lo, hi) of tensors that have `total` rows in one process (e.g. the synthetic images
    of this rank's classes, class-major). Checkpoints hold the full, one-process state, so a run
    resumes with any number of processes: `gather` (collective) builds it from every rank's rows,
    `take` cuts this rank's rows out of it. A tensor counts as split when its first dimension is
    the local (`gather`) or full (`take`, `full_like`) row count; anything else is kept as is."""

    lo: int
    hi: int
    total: int

    def _map(self, obj: Any, fn, rows: int) -> Any:
        if isinstance(obj, torch.Tensor):
            return fn(obj) if obj.dim() >= 1 and obj.shape[0] == rows else obj
        if isinstance(obj, dict):
            return {k: self._map(v, fn, rows) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._map(v, fn, rows) for v in obj)
        return obj

    def gather(self, obj: Any) -> Any:
        if self.hi - self.lo == self.total:
            return obj
        return self._map(obj, lambda t: all_gather_cat(t.contiguous()).to(t.device), self.hi - self.lo)

    def take(self, obj: Any) -> Any:
        if self.hi - self.lo == self.total:
            return obj
        return self._map(obj, lambda t: t[self.lo:self.hi].clone(), self.total)

    def full_like(self, obj: Any) -> Any:
        return self._map(obj, lambda t: t.new_empty((self.total, *t.shape[1:])), self.hi - self.lo)


def will_restart() -> bool:
    """Whether torchrun restarts this job after a failure (`--max-restarts` not used up): the
    failure is then no final result, so no rank reports it as one."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) < int(os.environ.get("TORCHELASTIC_MAX_RESTARTS",
                                                                                            "0"))
    except ValueError:
        return False


def explain(e: BaseException) -> BaseException:
    """A collective broken by a peer that died (gloo/NCCL errors) as a DcompressError that says
    so; other exceptions unchanged."""
    import torch.distributed as td

    text = str(e)
    lost = isinstance(e, getattr(td, "DistError", ())) or (
        isinstance(e, RuntimeError) and any(m in text for m in ("gloo", "Gloo", "NCCL", "Connection closed by peer",
                                                                "Connection reset by peer")))
    if not (active() and lost):
        return e
    from .errors import DcompressError

    return DcompressError(f"another rank stopped (killed, or failed before it could report) while this one waited "
                          f"for it ({type(e).__name__}: {' '.join(text.split())[:200]}); the job's exit status "
                          "(128 + signal for a killed rank) and torchrun's summary name its code")


def gather_sum(terms: list[torch.Tensor]) -> float:
    """Every rank's scalar terms (its classes, in order) added one by one in rank order, as one
    process adds them (`total += term` from a float zero on the same device): the same bits."""
    every = all_gather_cat(torch.stack(terms)) if terms else all_gather_cat(torch.zeros(0))
    total = torch.zeros((), device=every.device, dtype=every.dtype)
    for t in every:
        total += t
    return float(total)


def map_batches(n: int, batch_size: int, fn) -> torch.Tensor:
    """`torch.cat([fn(start, stop) for each batch of range(n)])`, under torchrun with whole batches
    split over the ranks (contiguous blocks) and the outputs all-gathered in batch order: every
    rank gets the same rows, each batch computed once. Fewer batches than ranks: every rank
    computes all of them. `fn` returns a CPU tensor [stop - start, ...]."""
    starts = list(range(0, n, batch_size))
    block = Split(len(starts), rank(), world())
    split = active() and len(starts) >= block.world
    outs = [fn(s, min(s + batch_size, n)) for s in (starts[block.lo:block.hi] if split else starts)]
    return all_gather_cat(torch.cat(outs)) if split else torch.cat(outs)


def spread(n: int) -> range:
    """This rank's share of `n` independent jobs (evaluation runs, experts): n, n + W, ..."""
    return range(rank(), n, world())


def gather_runs(results: dict[int, Any], n: int) -> list[Any]:
    """`results` {job: value} of every rank (see `spread`) as one list in job order, on every rank."""
    merged: dict[int, Any] = {}
    for part in all_gather_object(results):
        merged.update(part)
    return [merged[i] for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Per-class methods (DM, DC/DSA, DQ): classes, or image slots, split over the ranks

class ClassSplit:
    """This rank's part of a per-class method's synthetic set: class-major rows (class c's slots
    are rows c·ipc … c·ipc + ipc − 1), split over the ranks (docs/distributed.md).

    Classes (world <= classes): each rank holds the rows of a contiguous block of classes; a
    class's result depends on (seed, class) only, so the gathered set is the one-process set,
    byte for byte. Image slots (world > classes, `slots=True`): each rank holds a contiguous
    block of rows, i.e. slots of one or two classes; the method sums each class's parts over the
    ranks sharing it (`real_part`, `counts`, `all_reduce_sum`): the one-process set up to the
    order of float additions. One process: one block of every class, and every collective here
    the identity.

    Args:
        num_classes, ipc: the set's shape (num_classes · ipc rows).
        method: named in the UsageError for more ranks than the work splits into.
        slots: whether the method can split image slots (else more ranks than classes is an error).
        at: (rank, world) to simulate one rank of a job (tests); every collective stays the
            identity outside torchrun. Default: this process's rank and world.
    """

    def __init__(self, num_classes: int, ipc: int, method: str = "", *, slots: bool = True,
                 at: tuple[int, int] | None = None) -> None:
        self.rank, self.world = at if at is not None else (rank(), world())
        self.num_classes, self.ipc = num_classes, ipc
        self.slots = slots and self.world > num_classes
        n, what = (num_classes * ipc, "image slots") if self.slots else (num_classes, "classes")
        if self.world > n:
            who = f"--method {method} " if method else ""
            raise UsageError(f"{who}splits {what} over processes: {n} {what} for {self.world} processes; "
                             f"use at most {n} processes")
        block = Split(n, self.rank, self.world)
        self.lo, self.hi = (block.lo, block.hi) if self.slots else (block.lo * ipc, block.hi * ipc)
        # the classes whose rows this rank holds, in order
        self.classes = list(range(self.lo // ipc, (self.hi - 1) // ipc + 1)) if self.hi > self.lo else []
        self.shard = RowShard(self.lo, self.hi, num_classes * ipc)

    def initial(self, by_class) -> tuple[torch.Tensor, list]:
        """This rank's rows of the initial set and their keys; `by_class(classes)` gives the
        class-major rows [len(classes)·ipc, ...] of `classes` and their keys, each class drawn
        on its own (methods.base.init_images_by_class)."""
        images, keys = by_class(self.classes)
        at, n = self.lo - self.classes[0] * self.ipc, self.hi - self.lo
        if at == 0 and n == images.shape[0]:
            return images, keys
        return images[at:at + n].clone(), keys[at:at + n]

    def rows_of(self, c: int) -> slice:
        """Class c's rows within this rank's rows (all ipc of them unless slots are split)."""
        return slice(max(self.lo, c * self.ipc) - self.lo, min(self.hi, (c + 1) * self.ipc) - self.lo)

    def _sharers(self, c: int) -> list[int]:
        blocks = [Split(self.num_classes * self.ipc, r, self.world) for r in range(self.world)]
        return [r for r, b in enumerate(blocks) if b.lo < (c + 1) * self.ipc and b.hi > c * self.ipc]

    def real_part(self, c: int, n: int) -> slice:
        """This rank's block of class c's real batch of n (split over the ranks sharing c)."""
        if not self.slots:
            return slice(0, n)
        who = self._sharers(c)
        block = Split(n, who.index(self.rank), len(who))
        return slice(block.lo, block.hi)

    def counts(self, c: int) -> bool:
        """Whether this rank counts class c's once-per-class terms (the first rank sharing it)."""
        return not self.slots or self._sharers(c)[0] == self.rank

    def loss(self, local: float, terms: "list[torch.Tensor] | torch.Tensor") -> float:
        """The one-process loss from this rank's class terms, as one process adds them: scalar
        terms (one per class) one by one in class order (`gather_sum`), or one [classes, ...]
        tensor in one `.sum()`. One process: `local`, the loss it computed itself."""
        if not active():
            return local
        if isinstance(terms, torch.Tensor):
            return float(all_gather_cat(terms).sum())
        return gather_sum(terms)

    def gather(self, images: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in row order (detached; a copy in one process)."""
        return all_gather_cat(images.detach()) if active() else images.detach().clone()

    def gather_keys(self, keys: list) -> list:
        return [k for part in all_gather_object(keys) for k in part] if active() else keys

    def info(self) -> dict:
        """For the manifest's info: how the set was split (nothing for classes or one process)."""
        return {"split": "image slots"} if self.slots else {}


# ------------------------------------------------------------------------------------------------
# Data parallelism over the batch of an unrolled inner training (MTT, DATM, DD)

class BatchParallel:
    """Splits each inner batch of an unrolled training over the ranks (docs/distributed.md).

    Every rank holds the whole synthetic set and the same θ trajectory; at inner step i rank r
    computes the loss and gradient of its share of the batch (`part`: a contiguous block of the
    batch's positions; its loss weighted by the block's share of the batch). Each rank's outer
    loss is its *share* of the outer loss (the shares add up to it: the replicated loss / W, or
    a slice of a real batch). `train.unroll` sums the inner gradients, the Hessian-vector
    products of its adjoint pass and finally the leaf gradients over ranks (`total`,
    `sum_grads`): rank r's share of a leaf gradient holds the terms of the images it saw, and
    the lr's terms are split. Equal to one process up to the order of float additions
    (tests/integration/test_distributed.py).
    Without torchrun every method is the identity and `part` the whole batch."""

    def __init__(self, alone: bool = False) -> None:
        """`alone`: this process by itself (every sum the identity), even under torchrun."""
        self.rank, self.world = (0, 1) if alone else (rank(), world())

    @property
    def active(self) -> bool:
        return self.world > 1

    def part(self, k: int) -> slice:
        """This rank's positions [lo, hi) of a batch of k (may be empty when k < world)."""
        s = Split(k, self.rank, self.world)
        return slice(s.lo, s.hi)

    @staticmethod
    def no_share(theta: torch.Tensor) -> torch.Tensor:
        """The loss of an empty share (a batch smaller than the world): 0 as a function of θ (a
        zero gradient), so that this rank still takes part in the step's sums."""
        return (theta * 0).sum()

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of a detached tensor (loss values), the same bits on every rank."""
        return all_reduce_sum(t.detach().clone()) if self.active else t

    def most(self, x: float) -> float:
        """max over ranks of a float."""
        import torch.distributed as td

        if not self.active:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return float(t)

    def sum_grads(self, grads: list, leaves: list[torch.Tensor]) -> list:
        """Each leaf's gradient summed over ranks (None where it is None on every rank), in one
        collective over the concatenated gradients."""
        if not self.active:
            return grads
        present = torch.tensor([g is not None for g in grads], dtype=torch.int32)
        all_reduce_sum(present)
        flat = torch.cat([(g if g is not None else torch.zeros_like(x)).reshape(-1)
                          for g, x, p in zip(grads, leaves, present) if p])
        if flat.numel():
            all_reduce_sum(flat)
        out, at = [], 0
        for x, p in zip(leaves, present):
            if p:
                out.append(flat[at:at + x.numel()].view_as(x))
                at += x.numel()
            else:
                out.append(None)
        return out


    def sum_param_grads(self, net: torch.nn.Module) -> None:
        """Every parameter's gradient summed over ranks in place (`sum_grads`: one collective; a
        parameter without a gradient on this rank counts as zero, and keeps none when no rank has
        one, as in one process): data-parallel SGD, as DDP does it, but exact for shares of
        unequal size (each share's loss carries its weight)."""
        if not self.active:
            return
        params = [p for p in net.parameters() if p.requires_grad]
        for p, g in zip(params, self.sum_grads([p.grad for p in params], params)):
            p.grad = None if g is None else g.clone()


def batch_parallel(method: str, has_batchnorm: bool) -> BatchParallel:
    """The batch split of an unrolled method; UsageError under torchrun for a BatchNorm network
    (its batch statistics would be per share instead of per batch)."""
    bp = BatchParallel()
    if bp.active and has_batchnorm:
        raise UsageError(f"--method {method} splits each inner batch over processes, and this network has "
                         "BatchNorm layers (their statistics would be per share, not per batch); use a network "
                         "without BatchNorm or one process")
    return bp


# ------------------------------------------------------------------------------------------------
# `--nproc N`: torchrun's elastic agent on this machine, without typing torchrun

def strip_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE` (every occurrence)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def launch(nproc: int, argv: list[str], *, max_restarts: int = 0) -> int:
    """Runs `python -m dcompress ARGV` as `nproc` ranks under torchrun's elastic agent on this
    machine (`torchrun --standalone --nproc-per-node N --max-restarts R -m dcompress ARGV`);
    returns the job's exit code: 0, or the code of the first rank that failed (which printed
    the error; a rank killed by signal S gives 128 + S)."""
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun sets 1 thread per worker; here each rank gets its share of the cores (set
    # OMP_NUM_THREADS to choose; bytes are promised for equal per-process thread counts)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if os.environ.get("DCOMPRESS_DEBUG") != "1":       # the failing rank says what went wrong
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                          monitor_interval=0.2)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "dcompress", *argv)
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code if code < 0 else 1
    return 0
