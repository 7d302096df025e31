"""`dcompress evaluate`: train fresh networks on a compressed set with its own protocol and
report test accuracy, next to a class-matched random real subset trained the same way, and (for
a set with exact `.npy` tensors) the accuracy of what an outside reader loads: its image member
(train/outside_reader.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import dist
from ..errors import InputDataError, Interrupted, UsageError
from ..io import topk
from ..io.loader import CompressedDataset, load
from ..seeds import derive, derive_seed
from ..core import RealData, normalize
from ..io.schema import EvalProtocol
from . import outside_reader as reader
from .loop import accuracy, train_on_set


def _summary(accs: list[float]) -> dict:
    return {"mean": round(100 * statistics.fmean(accs), 2),
            "std": round(100 * statistics.pstdev(accs), 2) if len(accs) > 1 else 0.0,
            "runs": [round(100 * a, 2) for a in accs]}


class FinishedRuns:
    """The finished runs of one evaluation, kept across an interrupt so that the same command
    resumes: `<cache>/evaluations/<key>.json`, keyed by everything that decides an accuracy (the
    set's manifest, the test and training inputs' fingerprints, the protocol and lr, seed,
    device, test subset, baseline labels); a run's result is `{"compressed/0": 0.4521, ...}`.
    Removed when the evaluation completes. Off (`path` None) under torchrun and for inputs
    without a fingerprint (RealData built in Python)."""

    def __init__(self, identity: dict | None):
        from ..cache import cache_root
        from ..checkpoint import run_key

        self.path = None
        self.done: dict[str, float] = {}
        self.reused = {"compressed": 0, "random": 0, "outside_reader": 0}
        if identity is None or None in identity.values() or dist.active():
            return
        self.path = cache_root() / "evaluations" / f"{run_key(identity)}.json"
        try:
            saved = json.loads(self.path.read_text())
            self.done = {k: float(v) for k, v in saved["runs"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.done = {}                   # none yet, or damaged: those runs are trained again
        self.identity = identity

    def get(self, side: str, r: int) -> float | None:
        acc = self.done.get(f"{side}/{r}")
        if acc is not None:
            self.reused[side] += 1
        return acc

    def put(self, side: str, r: int, acc: float) -> None:
        self.done[f"{side}/{r}"] = acc
        if self.path is not None:
            from ..io.safe_write import ensure_dir, write_json

            ensure_dir(self.path.parent)
            write_json(self.path, {"identity": self.identity, "runs": self.done})

    def kept(self) -> str | None:
        """The interrupt's hint when finished runs are on disk."""
        if self.path is None or not self.done or not self.path.is_file():
            return None
        return f"{len(self.done)} finished run(s) kept in {self.path}: run the same command again to resume"

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def eval_identity(ds: CompressedDataset, test: RealData, train: RealData | None, **decides) -> dict:
    """What decides one evaluation's accuracies (FinishedRuns' key); None values switch resume off."""
    from .. import __version__

    manifest = hashlib.sha256(json.dumps(ds.manifest, sort_keys=True, default=str).encode()).hexdigest()
    return {"set": manifest, "test": test.source.get("fingerprint"),
            "train": train.source.get("fingerprint") if train is not None else "none", "version": __version__,
            **{k: json.loads(json.dumps(v, default=str)) for k, v in decides.items()}}


PROTOCOLS = ("own", "fair")


def check_models(models: Sequence[str], model: str | None = None) -> list[str]:
    """The network names of `--models` (or `--model`), checked before any data is read:
    UsageError (exit 2) for an unknown name, an empty list, or both options at once."""
    from ..nets import check_name

    names = [m.strip() for m in models if m.strip()]
    if not names:
        raise UsageError("--models needs at least one network name, e.g. convnet,resnet18")
    if model is not None and len(names) > 1:
        raise UsageError("give --model or --models, not both")
    for m in names:
        try:
            check_name(m)
        except UsageError as e:
            raise UsageError(f"--models: {e.detail}") from None
    return names


def prepare(ds: CompressedDataset, test: RealData, *, model: str | None, epochs: int | None,
            test_limit: int | None, seed: int) -> tuple[EvalProtocol, torch.Tensor, torch.Tensor, int]:
    """The set's protocol with --model/--epochs applied, and the (fixed, seeded) test subset
    normalised with the set's mean/std; InputDataError when the test data does not fit the set."""
    if test_limit is not None and test_limit < 1:
        raise UsageError(f"--test-limit must be >= 1, got {test_limit}")
    proto = ds.protocol
    if model is not None:
        proto = dataclasses.replace(proto, model=model)
    if epochs is not None:
        proto = dataclasses.replace(proto, epochs=epochs)
    test_where = (test.source.get("urls") or ["--test"])[0]
    if list(test.image_shape) != list(ds.images.shape[1:]):
        raise InputDataError(f"test images are {test.image_shape} (CxHxW), the compressed set's are "
                             f"{tuple(ds.images.shape[1:])}", path=test_where)
    if int(test.labels.max()) >= len(ds.classes):
        raise InputDataError(f"test label {int(test.labels.max())} is outside the compressed set's "
                             f"{len(ds.classes)} classes", path=test_where)
    n_test = len(test) if test_limit is None else min(test_limit, len(test))
    tg = derive(seed, "test-subset")
    tidx = torch.randperm(len(test), generator=tg)[:n_test] if n_test < len(test) else torch.arange(len(test))
    return proto, normalize(test.get_u8(tidx), ds.mean, ds.std), test.labels[tidx], n_test


def cross_architecture(models: list[str], evaluate_one: Callable[[str], dict]) -> dict:
    """Runs `evaluate_one(model)` for each network: the first model's report, with `models`
    holding one row per network (accuracies, delta, lr, scores under the fair protocol)."""
    rows, first = [], None
    for m in models:
        r = evaluate_one(m)
        first = first or r
        rows.append({"model": m, "compressed": r["compressed"], "random": r.get("random"), "delta": r.get("delta"),
                     "outside_reader": r.get("outside_reader"), "lr_used": r["protocol"]["lr_used"], **({"scores": r["scores"]} if "scores" in r else {}),
                     "seconds": r["seconds"]})
    return {**first, "models": rows}


def evaluate(out: str | Path | CompressedDataset, test: RealData, *, train: RealData | None = None, runs: int = 3,
             model: str | None = None, epochs: int | None = None, seed: int = 0,
             device: torch.device = torch.device("cpu"), random_baseline: bool = True,
             test_limit: int | None = None, progress: Callable[[int, int, str], None] | None = None,
             protocol: str = "own", models: Sequence[str] | None = None, fair=None, full_data=None,
             teacher: str | Path | None = None, outside_reader: bool = True,
             log: Callable[[dict], None] | None = None) -> dict:
    """Returns {"compressed": {...}, "random": {...} | None, "protocol": {...}, ...}.

    The test images are normalised with the compressed set's (training-set) mean/std. The
    random baseline draws, per run, as many real images per class as the compressed set has,
    and trains them with the same protocol; when the set's protocol uses teacher soft labels,
    the baseline gets the same teacher's logits (DD-Ranking's fairness point), else hard labels.
    A learned lr (MTT/DATM) is specific to its synthetic set: the baseline uses the protocol's lr.
    A set stored as `jpeg:Q` / `webp:Q` gets random subsets encoded the same way (`random_images`).

    `outside_reader`: a set with exact `.npy` tensors that differ from its image member is also
    trained on the member (what webdataset, wids, timm, HF load), `runs` networks at the set's lr
    with the same inits and seeds, reported as `outside_reader` (False: its pixel gap only).

    `protocol="fair"` runs `train.fair.fair_evaluate` instead (same recipe and labels for the set
    and the random subset, lr picked on a validation split, DD-Ranking scores; `fair` is its
    FairConfig, `full_data` the FullDataConfig, `teacher` a user's teacher for the soft side).
    `models` evaluates the set on each network in turn (a cross-architecture table, `models`
    in the report; the top-level fields are the first model's). docs/evaluation.md.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if models is not None:
        names = check_models(models, model)
        ds = out if isinstance(out, CompressedDataset) else load(out)
        kw = dict(train=train, runs=runs, epochs=epochs, seed=seed, device=device, random_baseline=random_baseline,
                  test_limit=test_limit, progress=progress, protocol=protocol, fair=fair, full_data=full_data,
                  teacher=teacher, outside_reader=outside_reader, log=log)
        return cross_architecture(names, lambda m: evaluate(ds, test, model=m, **kw))
    if model is not None:
        check_models([model])
    if protocol == "fair":
        from .fair import fair_evaluate

        if not random_baseline:
            raise UsageError("--protocol fair compares the set with random subsets: drop --no-random")
        dist.require_single("evaluate --protocol fair")
        return fair_evaluate(out, test, train=train, runs=runs, model=model, epochs=epochs, seed=seed, device=device,
                             test_limit=test_limit, config=fair, full_data=full_data, teacher=teacher,
                             outside_reader=outside_reader, progress=progress, log=log)
    if runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}")
    ds = out if isinstance(out, CompressedDataset) else load(out)
    proto, x_test, y_test, n_test = prepare(ds, test, model=model, epochs=epochs, test_limit=test_limit, seed=seed)
    lr = ds.lr if (proto.use_learned_lr and ds.lr is not None) else proto.lr
    if random_baseline and train is None:
        raise InputDataError("the random baseline needs the training shards (manifest source urls are gone?); "
                             "pass --train URLS or --no-random")
    finished = FinishedRuns(eval_identity(ds, test, train if random_baseline else None, protocol=dataclasses.asdict(proto),
                                          lr=lr, seed=seed, device=torch.device(device).type, test_limit=n_test,
                                          random_baseline=random_baseline))
    try:
        report = _own(ds, train, finished, proto=proto, lr=lr, x_test=x_test, y_test=y_test, n_test=n_test,
                      runs=runs, seed=seed, device=device, random_baseline=random_baseline, progress=progress,
                      outside_reader=outside_reader, log=log or (lambda ev: None))
    except (KeyboardInterrupt, Interrupted) as e:
        hint = finished.kept()
        if hint is None:
            raise
        what = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else e.detail
        code = 2 if isinstance(e, KeyboardInterrupt) else e.exit_code - 128
        raise Interrupted(f"{what}; {hint}", signum=code) from None
    finished.clear()
    return report


def _own(ds: CompressedDataset, train: RealData | None, finished: FinishedRuns, *, proto: EvalProtocol, lr: float,
         x_test, y_test, n_test: int, runs: int, seed: int, device, random_baseline: bool, progress,
         outside_reader: bool, log) -> dict:
    """The own protocol: `runs` networks on the set, on its image member when it differs (the
    outside reader's set: same lr, inits and seeds), then on random subsets; a run finished by
    an earlier, interrupted evaluation is reused, each finished run's accuracy printed as a note."""
    def each_run(side: str, train_one: Callable[[int], float]) -> list[float]:
        accs = {}
        for r in dist.spread(runs):          # torchrun: runs spread over ranks, each run's draws derived
            acc = finished.get(side, r)
            if acc is None:
                acc = train_one(r)
                finished.put(side, r, acc)
                log({"event": "note", "text": f"{side} run {r + 1}/{runs}: {100 * acc:.2f} % test accuracy"})
            else:
                log({"event": "note", "text": f"{side} run {r + 1}/{runs}: {100 * acc:.2f} % test accuracy "
                                              "(finished before the interrupt, reused)"})
            accs[r] = acc
        return dist.gather_runs(accs, runs)

    def bar(side: str, r: int):
        return (lambda a, b: progress(a, b, f"{side} run {r + 1}/{runs}")) if progress else None

    def set_run(side: str, data: CompressedDataset) -> Callable[[int], float]:
        def one(r: int) -> float:
            net = train_on_set(data.images, data.labels, num_classes=len(data.classes), protocol=proto,
                               generator=derive(seed, "eval-compressed", r), device=device, soft=data.logits, lr=lr,
                               epoch_data=set_views(data, device), progress=bar(side, r))
            return accuracy(net, x_test, y_test, device=device)
        return one

    t0 = time.time()
    accs = each_run("compressed", set_run("compressed", ds))
    report = {"evaluation": "own", "compressed": _summary(accs), "random": None, "protocol": {**dataclasses.asdict(proto), "lr_used": lr},
              "samples": len(ds), "test_samples": n_test,
              "method": ds.block.method.name if ds.block.method else None,
              "seconds": {"compressed": round(time.time() - t0, 1)}, "resumed_runs": finished.reused}
    member, block = reader.member_form(ds)
    if member is not None and outside_reader:
        t_reader = time.time()
        summary = _summary(each_run("outside_reader", set_run("outside_reader", member)))
        block = reader.with_accuracies(block, summary, report["compressed"]["mean"])
        report["seconds"]["outside_reader"] = round(time.time() - t_reader, 1)
    report["outside_reader"] = block if member is None or outside_reader else reader.skipped(block)
    if not random_baseline:
        return report
    counts = torch.bincount(ds.labels, minlength=len(ds.classes)).tolist()
    soft_teacher = None
    note = "hard labels"
    if proto.soft_labels:
        soft_teacher = set_teacher(ds, train, device)
        note = ("hard labels (teacher not available)" if soft_teacher is None else
                f"teacher labels of {ds.num_views} views per image ({ds.label_kind})" if ds.views is not None else
                "teacher soft labels")
    base_proto = dataclasses.replace(proto, soft_labels=soft_teacher is not None,
                                     kd=proto.kd and soft_teacher is not None)

    def random_run(r: int) -> float:
        g = derive(seed, "eval-random", r)
        idx = torch.cat([train.sample_class(c, n, g) for c, n in enumerate(counts) if n > 0])
        x = reader.random_pixels(ds, train, idx)
        y = train.labels[idx]
        # the teacher's logits in the form the set stores its own: float16, top-K when pruned
        soft = topk.stored_form(soft_teacher.logits(x, device), ds.label_topk) if soft_teacher is not None else None
        views = random_views(ds, x, y, soft_teacher, device, r) if soft_teacher is not None else None
        net = train_on_set(x, y, num_classes=len(ds.classes), protocol=base_proto, generator=g, device=device,
                           soft=soft, lr=proto.lr, epoch_data=views, progress=bar("random", r))
        return accuracy(net, x_test, y_test, device=device)

    t1 = time.time()
    accs = each_run("random", random_run)
    report["random"] = {**_summary(accs), "labels": note}
    report["random_images"] = str(ds.image_format)
    report["delta"] = round(report["compressed"]["mean"] - report["random"]["mean"], 2)
    report["seconds"]["random"] = round(time.time() - t1, 1)
    return report


def set_views(ds: CompressedDataset, device: torch.device):
    """`train_on_set`'s `epoch_data` of a set with view labels (None for other sets)."""
    return (lambda p: ds.epoch_batch(p, device=device)) if ds.views is not None else None


def random_views(ds: CompressedDataset, x: torch.Tensor, y: torch.Tensor, teacher, device: torch.device, run: int):
    """For a set with view labels, the `epoch_data` of a random subset (x, y) labelled the same
    way: as many views, the same recipe, the same teacher, views drawn from the run's seed."""
    if ds.views is None:
        return None
    from .relabel import view_training

    return view_training(x, y, ds.views.config, derive_seed(ds.views.seed, "random-views", run), ds.num_views,
                         lambda v: teacher.logits(v, device), ds.label_topk if ds.label_kind == "views" else None)


def set_teacher(ds: CompressedDataset, train: RealData, device: torch.device):
    """The teacher that labelled the set: the one an `online` output ships, else the cached one
    its manifest names (None when it is gone)."""
    if ds.label_kind == "online":
        from .teacher import Teacher

        return Teacher(ds.teacher, ds.block.labels.teacher or {})
    return _teacher_from_manifest(ds, train, device)


def _teacher_from_manifest(ds, train: RealData, device: torch.device):
    from .teacher import Teacher, load_teacher_net

    from ..cache import cache_root

    info = ds.block.labels.teacher or {}
    path, model = info.get("path"), info.get("model")
    if not isinstance(path, str) or not isinstance(model, str):
        return None
    # a path read from a manifest is data: only a teacher inside our own cache is ever loaded
    cache = cache_root().resolve()
    path = Path(path).resolve()
    if cache not in path.parents or not path.is_file():
        return None
    try:
        return Teacher(load_teacher_net(model, path, train.image_shape, len(ds.classes), device), info)
    except Exception:  # noqa: BLE001 - an unusable cached teacher: the baseline falls back to hard labels
        return None
