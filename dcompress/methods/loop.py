"""The synthesis loop every optimising method runs, and the derived-seed scheme.

    loop = SynthesisLoop("dm", cfg.iterations, spec, log, state={"images": images, "optimizer": opt})
    for it in loop:                      # starts after the last checkpoint of this run
        loss = ...                       # the paper's step, its draws from derive(spec.seed, it, ...)
        loop.done(loss)                  # non-finite guard, checkpoint, progress, log event
    info = loop.summary()                # iterations, first/final loss, resumed_from

The loop owns what every method used to write by hand: resume (restore the `state` from the
run's checkpoint, shape-checked), the checkpoint cadence (`--ckpt-every`), the non-finite loss
guard (NonFiniteLoss; the last good checkpoint stays), a checkpoint at Ctrl-C/SIGTERM (the
iteration under way finishes, its state is saved, then the run stops: a rerun resumes there; a
second signal stops at once), progress, one log-event schema
(`{"event": "iteration", "method", "iteration", "loss", **extra}` about 100 times a run), the
final finiteness check of the optimised tensors, and the loss summary.

Derived seeds (`dcompress.seeds.derive(seed, *tags)`): a CPU generator seeded from sha256 of the
run's seed and the tags (iteration, class, purpose). A draw of iteration `it` for class `c` comes from its own
generator, so resuming needs no RNG state, and a class's result does not depend on which other
classes were computed before it or alongside it (the basis of splitting classes over processes).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from typing import Any, Iterator

import torch

from ..core import LogFn, RunSpec
from .. import dist
from ..errors import DcompressError, Interrupted, NonFiniteLoss
from ..faults import crash_point


def _stop_now(signum: int) -> BaseException:
    """The exception a signal raises by default (console.run maps it to 130 / 143)."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Interrupted("terminated (SIGTERM)", signum=signum)


def project(images: torch.Tensor, bounds: tuple) -> None:
    """Clamps `images` [N, C, ...] in place, channel by channel, into `bounds` = (low, high) per
    channel (core.pixel_range: the valid pixels)."""
    shape = (1, -1) + (1,) * (images.dim() - 2)
    lo, hi = (torch.tensor(b, dtype=images.dtype, device=images.device).view(shape) for b in bounds)
    with torch.no_grad():
        images.copy_(torch.maximum(torch.minimum(images, hi), lo))


def log_every(iterations: int) -> int:
    """Loss-logging period: about 100 log events per run."""
    return max(1, iterations // 100)


class SynthesisLoop:
    """Iterates `range(start, total)` for one method run (see the module docstring).

    Args:
        name: method name, used in events, progress and error messages.
        total: number of iterations.
        spec: the run spec (checkpointer, progress, device).
        log: the method's log callback.
        state: what a checkpoint holds, by name: tensors (restored in place), optimizers and
            other objects with `state_dict()`/`load_state_dict()`, torch.Generators. The
            optimizers' hyper-parameters stay those of the current config on resume.
        guard: tensors that must stay finite for a checkpoint to be written (default: every
            tensor in `state`).
        extra: plain values (numbers, strings, lists, dicts) the method keeps across
            iterations, checkpointed as they are; after a resume `loop.extra` holds the saved ones.
        shard: under torchrun, the rows of the state tensors this rank holds (dist.RowShard);
            the checkpoint holds the gathered one-process state (rank 0 writes it, every rank
            reads it back and keeps its rows), so a run resumes with any number of processes.
    """

    def __init__(self, name: str, total: int, spec: RunSpec, log: LogFn, state: dict[str, Any],
                 guard: list[torch.Tensor] | None = None, extra: dict[str, Any] | None = None,
                 shard: "dist.RowShard | None" = None):
        self.shard = shard
        self.name, self.total, self.spec, self.log, self.state = name, int(total), spec, log, state
        self.extra: dict[str, Any] = dict(extra or {})
        self.guard = guard if guard is not None else [v for v in state.values() if isinstance(v, torch.Tensor)]
        self.every = log_every(self.total)
        self.it = 0
        self.first_loss: float | None = None
        self.loss = float("nan")
        self.start = self._restore()

    def _restore(self) -> int:
        ckpt = self.spec.ckpt
        like = {k: v for k, v in self.state.items() if isinstance(v, torch.Tensor)}
        if self.shard is not None:
            like = self.shard.full_like(like)
        saved = self._load_shared(ckpt, like) if ckpt is not None else None
        if saved is None:
            return 0
        if self.shard is not None:
            saved = self.shard.take(saved)
        for k, v in self.state.items():
            if isinstance(v, torch.Tensor):
                with torch.no_grad():
                    v.copy_(saved[k].to(v.device))
            elif isinstance(v, torch.Generator):
                v.set_state(saved[k])
            elif isinstance(v, torch.optim.Optimizer):
                hyper = [{h: x for h, x in g.items() if h != "params"} for g in v.param_groups]
                v.load_state_dict(saved[k])
                for group, h in zip(v.param_groups, hyper):
                    group.update(h)
            else:
                v.load_state_dict(saved[k])
        self.loss = float(saved.get("loss", float("nan")))
        self.extra.update(saved.get("extra") or {})
        self.first_loss = saved.get("first_loss")
        self.log({"event": "resumed", "method": self.name, "iteration": int(saved["iteration"])})
        return int(saved["iteration"])

    def _load_shared(self, ckpt, like: dict) -> dict | None:
        """The checkpoint: rank 0 validates it (moving a damaged one aside), then the others read it."""
        if not dist.active():
            return ckpt.load(like=like)
        saved = ckpt.load(like=like) if dist.is_main() else None
        at = dist.broadcast_object(None if saved is None else int(saved["iteration"]))
        if at is None or dist.is_main():
            return saved
        saved = ckpt.load(like=like)
        if saved is None or int(saved["iteration"]) != at:
            raise DcompressError(f"{self.name}: rank {dist.rank()} cannot read the checkpoint {ckpt.path} that rank 0 "
                                 f"resumes from (iteration {at}); the work folder must be on a filesystem every "
                                 "node shares")
        return saved

    def __iter__(self) -> Iterator[int]:
        if self.spec.progress is not None:       # the bar starts now: its first step is timed on its own
            self.spec.progress(self.start, self.total, self.name)
        with self._signals_deferred():
            for it in range(self.start, self.total):
                self.it = it
                yield it

    @contextlib.contextmanager
    def _signals_deferred(self):
        """While iterating, Ctrl-C and SIGTERM only ask the loop to stop at the end of the
        iteration under way (`done` saves its state first); a second signal stops at once. Only
        where a checkpoint can be written, in one process, on the main thread, and never for a
        signal that is ignored."""
        self._asked: int | None = None
        ckpt = self.spec.ckpt
        if (ckpt is None or ckpt.readonly or ckpt.every <= 0 or dist.active()
                or threading.current_thread() is not threading.main_thread()):
            yield
            return

        def ask(signum, frame):
            if self._asked is not None:
                raise _stop_now(signum)
            self._asked = signum
            os.write(2, f"{self.name}: stopping after iteration {self.it + 1} to save its checkpoint "
                        "(again to stop at once)\n".encode())

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) not in (signal.SIG_IGN, None):
                old[sig] = signal.signal(sig, ask)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _stop_if_asked(self, saved: bool) -> None:
        """At the end of an iteration after a signal: checkpoint it (unless just saved), then stop."""
        if getattr(self, "_asked", None) is None:
            return
        it, ckpt = self.it, self.spec.ckpt
        if not saved and all(bool(torch.isfinite(t).all()) for t in self.guard):
            ckpt.save(self._state(it))
        raise _stop_now(self._asked)

    def done(self, loss: float, **extra: Any) -> None:
        """Closes iteration `self.it` with its loss: the loss and (before a checkpoint, and after
        the last iteration) the `guard` tensors must be finite; checkpoint when due, log, progress."""
        it, loss = self.it, float(loss)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"{self.name}: loss is {loss} at iteration {it + 1} (lr too large, or non-finite "
                                "images); the last good checkpoint is kept")
        self.loss = loss
        if self.first_loss is None:
            self.first_loss = loss
        self._keep_in_range()
        crash_point("iter")
        ckpt = self.spec.ckpt
        due = ckpt is not None and ckpt.due(it + 1)
        if (due or it + 1 == self.total) and not all(bool(torch.isfinite(t).all()) for t in self.guard):
            raise NonFiniteLoss(f"{self.name}: the synthetic set became non-finite after iteration {it + 1} "
                                "(lr too large?); the last good checkpoint is kept")
        if due:
            ckpt.save(self._state(it))
        if it % self.every == 0 or it + 1 == self.total:
            self.log({"event": "iteration", "method": self.name, "iteration": it + 1, "loss": loss, **extra})
        if self.spec.progress is not None:
            self.spec.progress(it + 1, self.total, self.name)
        if it + 1 < self.total:
            self._stop_if_asked(saved=due)

    def _keep_in_range(self) -> None:
        """`spec.pixel_range` (`--no-exact-images`): the images projected back to valid pixels
        after the step (projected gradient descent), so the 8-bit PNG written is the optimised set
        up to rounding, not a clamped copy of images that left the range."""
        images = self.state.get("images")
        if self.spec.pixel_range is not None and isinstance(images, torch.Tensor):
            project(images, self.spec.pixel_range)

    def _state(self, it: int) -> dict:
        """What a checkpoint after iteration `it` holds."""
        state = {k: self._saved(v) for k, v in self.state.items()}
        if self.shard is not None:
            state = self.shard.gather(state)          # collective: every rank is here at it + 1
        return {**state, "iteration": it + 1, "loss": self.loss, "first_loss": self.first_loss, "extra": self.extra}

    @staticmethod
    def _saved(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().clone()
        if isinstance(v, torch.Generator):
            return v.get_state()
        return v.state_dict()

    def summary(self) -> dict:
        """For the manifest's `info`: iterations, first and final loss, where the run resumed."""
        return {"iterations": self.total, "first_loss": self.first_loss, "final_loss": self.loss,
                "resumed_from": self.start or None}
