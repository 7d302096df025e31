"""`dcompress evaluate --protocol fair`: the compressed set against same-size random subsets of
the training input, trained with the same recipe and the same kind of labels, with DD-Ranking's
scores (train/ranking.py). docs/evaluation.md describes the protocol; in short:

1. A validation split (`val_per_class` images per class, at most half a class) is held out of
   the training input; random subsets and the full-data network never see it.
2. Label settings: `hard` (cross-entropy on the class, for both sides) always; `soft` when the
   set is evaluated with soft labels: the set keeps its stored logits and the random subset is
   relabelled by the teacher the set was relabelled with (`train.teacher.get_teacher`, the
   cached teacher of the recorded config, or `--teacher`); a set with learned labels (DATM)
   keeps them and the random subset gets the default teacher's, as DD-Ranking does.
3. For each label setting (and, for ARS, the set's own labels with the augmentation switched:
   DSA off when the protocol uses it, `dsa_strategy` on when it does not) and each side, the lr
   is picked from `lr_grid` by validation accuracy after run 0 (every lr the whole schedule, or
   successive halving with `lr_search` halving: train/lr_search.py; a learned lr, MTT/DATM, is
   used as is for the set's own labels, like DD-Ranking's `syn_lr`); the other runs train at it.
   Run r of both sides uses the same network init; the random side draws subset r (encoded and
   decoded through the set's `image_format` when that is lossy: random subsets of the same bytes).
4. A set with exact `.npy` tensors that differ from its image member is also trained on the
   member (what an outside reader loads, train/outside_reader.py) for its own labels and
   augmentation: `runs` networks at the set's picked lr, the same inits (`outside_reader`).
5. The full-data accuracy (HLR) is trained once with `FullDataConfig` (train/full_data.py) and cached in
   `<cache>/full-data/` keyed by the input and test fingerprints, recipe, model and seed.

Every draw comes from `seeds.derive(seed, ...)`; the same inputs and seed give the same report.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..augment.dsa import DEFAULT_STRATEGY
from ..config import Validated, checked, positive, unit_interval
from ..cache import cache_root
from ..core import RealData, RunSpec, normalize
from ..io.schema import EvalProtocol
from ..errors import InputDataError, UsageError
from ..io import topk
from ..io.loader import CompressedDataset, load
from ..seeds import derive
from . import outside_reader as reader
from . import ranking
from .loop import SetTrainer, accuracy
from .lr_search import LR_SEARCHES, planned_passes, search
from .random_sides import RandomSides, side_key
from .full_data import FullDataConfig, full_data_accuracy   # noqa: F401 - fair_evaluate trains it; re-exported

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class FairConfig(Validated):
    """The fair protocol's knobs. `lr_grid` is DD-Ranking's (`_hyper_param_search_*`);
    `lrs_weight`/`ars_weight` are its `lrs_lambda`/`ars_lambda` (0.5 on its leaderboard).
    `lr_search`: grid (every lr trains the whole schedule) or halving (successive halving by
    `halving_eta`, train/lr_search.py)."""

    lr_grid: tuple[float, ...] = positive((0.001, 0.005, 0.01, 0.05, 0.1))
    lr_search: str = "grid"
    halving_eta: int = checked(3, lambda v: v >= 2, ">= 2")   # halving keeps ceil(n / eta) lrs per rung
    val_per_class: int = positive(50)
    lrs_weight: float = unit_interval(0.5)
    ars_weight: float = unit_interval(0.5)
    ars: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY   # the "with augmentation" side of ARS when the protocol has none

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr_grid:
            raise UsageError("FairConfig: 'lr_grid' needs at least one learning rate", key="lr_grid")
        if self.lr_search not in LR_SEARCHES:
            raise UsageError(f"--lr-search must be one of {', '.join(LR_SEARCHES)}, got {self.lr_search!r}",
                             key="lr_search")


def parse_grid(text: str) -> tuple[float, ...]:
    """`--lr-grid 0.001,0.01,0.1` -> a tuple of positive floats (UsageError otherwise)."""
    try:
        grid = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--lr-grid must be comma-separated numbers, got {text!r}") from None
    if not grid or any(not (v > 0) or v == float("inf") for v in grid):
        raise UsageError(f"--lr-grid needs positive finite learning rates, got {text!r}")
    return grid


def split_validation(real: RealData, per_class: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(validation indices, per-class pools of the rest): `per_class` (at most half) of each class."""
    val, pools = [], []
    for c in range(real.num_classes):
        idx = real.class_indices(c)
        perm = idx[torch.randperm(idx.numel(), generator=derive(seed, "fair-val", c))]
        k = min(per_class, idx.numel() // 2)
        val.append(perm[:k])
        pools.append(perm[k:].sort().values)
    val_idx = torch.cat(val).sort().values
    if val_idx.numel() == 0:
        raise InputDataError("the training input is too small for a validation split (every class has < 2 "
                             "samples)", path=(real.source.get("urls") or ["--train"])[0])
    return val_idx, pools


def _draw(pools: list[torch.Tensor], counts: list[int], g: torch.Generator) -> torch.Tensor:
    """`counts[c]` indices from each class pool (without replacement when the pool is big enough)."""
    out = []
    for pool, n in zip(pools, counts):
        if n == 0:
            continue
        if pool.numel() == 0:
            raise InputDataError(f"a class has no training samples left beside the validation split (needs {n})")
        pick = torch.randperm(pool.numel(), generator=g)[:n] if n <= pool.numel() else \
            torch.randint(pool.numel(), (n,), generator=g)
        out.append(pool[pick])
    return torch.cat(out)


def fair_evaluate(out: str | Path | CompressedDataset, test: RealData, *, train: RealData | None, runs: int = 3,
                  model: str | None = None, epochs: int | None = None, seed: int = 0,
                  device: torch.device = torch.device("cpu"), test_limit: int | None = None,
                  config: FairConfig | None = None, full_data: FullDataConfig | None = None,
                  teacher: str | Path | None = None, progress: ProgressFn | None = None,
                  log: Callable[[dict], None] | None = None, random_sides: RandomSides | None = None,
                  outside_reader: bool = True) -> dict:
    """The fair-protocol report: `compressed`/`random`/`delta` for the set's own labels (as the
    `own` protocol reports them), `fair` (every label x augmentation setting per side with its
    lr, validation grid and runs; full-data accuracy; teacher; validation split) and `scores`
    (HLR, IOR, alpha, LRS, and beta, ARS). Accuracies in %, see ranking.scores for score units.

    `random_sides` (train/random_sides.py): random sides already trained for the same counts,
    recipe, labels and seed are taken from it, new ones stored in it (`fair.random_sides` names
    each one's digest and whether it was reused; `seconds` splits compressed / random).

    `outside_reader` (train/outside_reader.py): a set whose exact tensors differ from its image
    member is also trained on the member, own labels and protocol augmentation, `runs` networks
    at the lr picked for the set and the same inits; False reports its pixel gap only. A set
    stored as `jpeg:Q` / `webp:Q` gets random subsets encoded the same way (`random_images`)."""
    from .evaluate import prepare, random_views, set_views

    cfg, full_cfg = config or FairConfig(), full_data or FullDataConfig()
    if runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}")
    ds = out if isinstance(out, CompressedDataset) else load(out)
    if train is None:
        raise InputDataError("--protocol fair needs the training input (for the random subsets, the validation "
                             "split and the full-data accuracy) and the set's recorded source shards are not "
                             "available; pass --train URLS", path=str(ds.manifest_path), key="dcompress.source.urls")
    proto, x_test, y_test, n_test = prepare(ds, test, model=model, epochs=epochs, test_limit=test_limit, seed=seed)
    if list(train.image_shape) != list(ds.images.shape[1:]) or train.num_classes != len(ds.classes):
        raise InputDataError(f"training input is {train.num_classes} classes of {train.image_shape}, the set "
                             f"{len(ds.classes)} of {tuple(ds.images.shape[1:])}",
                             path=(train.source.get("urls") or ["--train"])[0])
    t0 = time.time()
    val_idx, pools = split_validation(train, cfg.val_per_class, seed)
    x_val, y_val = normalize(train.get_u8(val_idx), ds.mean, ds.std), train.labels[val_idx]
    soft = bool(proto.soft_labels and ds.label_kind in ("teacher", "learned", "views", "online"))
    own = "soft" if soft else "hard"
    if soft and ds.label_kind == "online" and teacher is None:     # the teacher the output ships
        from .evaluate import set_teacher

        teach = set_teacher(ds, train, device)
        teacher_info = {k: v for k, v in teach.info.items() if k in ("model", "arch", "sha256", "file")}
    else:
        teach, teacher_info = (_teacher(ds, train, device, teacher, log) if soft else (None, None))
    other_aug = None if proto.aug else cfg.dsa_strategy
    settings = [("hard", proto.aug)] + ([("soft", proto.aug)] if soft else []) + ([(own, other_aug)] if cfg.ars else [])
    learned = ds.lr if (proto.use_learned_lr and ds.lr is not None) else None

    counts = torch.bincount(ds.labels, minlength=len(ds.classes)).tolist()
    subsets: dict[int, dict] = {}

    def random_run(r: int) -> dict:
        if r not in subsets:
            idx = _draw(pools, counts, derive(seed, "fair-random", r))
            x = reader.random_pixels(ds, train, idx)
            # the teacher's logits in the set's stored form (float16, top-K when pruned): same labels
            soft = topk.stored_form(teach.logits(x, device), ds.label_topk) if teach else None
            views = random_views(ds, x, train.labels[idx], teach, device, r) if teach else None
            subsets[r] = {"x": x, "y": train.labels[idx], "soft": soft, "views": views}
        return subsets[r]

    set_data = {"x": ds.images, "y": ds.labels, "soft": ds.logits, "views": set_views(ds, device)}
    member, reader_block = reader.member_form(ds)
    passes = proto.epochs + 1
    n_grid = len(cfg.lr_grid)

    def side_passes(n_lrs: int) -> int:
        """Network-passes of one side: the lr search's on run 0, then runs 1 .. R-1."""
        return planned_passes(n_lrs, passes, cfg.lr_search, cfg.halving_eta) + (runs - 1) * passes

    total = sum(side_passes(1 if (learned is not None and lab == own) else n_grid) + side_passes(n_grid)
                for lab, _ in settings) + (runs * passes if member is not None and outside_reader else 0)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress:
            progress(done[0], total, "fair evaluation (network passes)")

    results, shared, spent = [], [], {"compressed": 0.0, "random": 0.0}
    recipes = {}
    test_key = {"fingerprint": test.source.get("fingerprint"), "samples": n_test, "of": len(test)}
    for label, aug in settings:
        recipe = dataclasses.replace(proto, soft_labels=label == "soft", aug=aug, kd=proto.kd and label == "soft")
        recipes[(label, aug)] = recipe
        row = {"labels": label, "aug": aug or "none"}
        for side, data in (("compressed", lambda r: set_data), ("random", random_run)):
            t_side = time.time()
            fixed = learned if (side == "compressed" and label == own) else None
            train_side = functools.partial(_select_and_run, data, recipe, len(ds.classes), cfg.lr_grid, fixed, runs,
                                           tags=(seed, "fair-net", label, aug or "none"), val=(x_val, y_val),
                                           test=(x_test, y_test), device=device, tick=tick,
                                           how=cfg.lr_search, eta=cfg.halving_eta)
            if side == "random" and random_sides is not None:
                key = side_key(ds=ds, train=train, test_key=test_key, counts=counts, recipe=recipe,
                               grid=cfg.lr_grid, runs=runs, seed=seed, label=label, aug=aug,
                               val_per_class=cfg.val_per_class, teacher_info=teach.info if teach else None,
                               device=device, lr_search=cfg.lr_search, eta=cfg.halving_eta)
                n_before = len(random_sides.reused)
                result, d, took = random_sides.side(key, train_side)
                row[side] = {**result, "test": list(result["test"])}
                reused = len(random_sides.reused) > n_before
                shared.append({"labels": label, "aug": aug or "none", "key": d, "reused": reused, "seconds": took})
                if reused:
                    tick(side_passes(n_grid))
            else:
                row[side] = train_side()
            spent[side] += time.time() - t_side
        results.append(row)
    main = next(r for r in results if r["labels"] == own and r["aug"] == (proto.aug or "none"))
    if member is not None and outside_reader:            # the set's side again, on its image member
        t_reader = time.time()
        member_data = {"x": member.images, "y": member.labels, "soft": member.logits,
                       "views": set_views(member, device)}
        got = _select_and_run(lambda r: member_data, recipes[(own, proto.aug)], len(ds.classes), cfg.lr_grid,
                              main["compressed"]["lr"], runs, tags=(seed, "fair-net", own, proto.aug or "none"),
                              val=(x_val, y_val), test=(x_test, y_test), device=device, tick=tick)
        reader_block = reader.with_accuracies(reader_block, ranking.summary(got["test"], 100, 2),
                                              ranking.summary(main["compressed"]["test"], 100, 2)["mean"])
        spent["outside_reader"] = time.time() - t_reader
    elif member is not None:
        reader_block = reader.skipped(reader_block)
    t_sets = time.time() - t0
    full_test = x_test
    if tuple(train.mean) != tuple(ds.mean) or tuple(train.std) != tuple(ds.std):   # --train is another input
        full_test = _renormalise(x_test, (ds.mean, ds.std), (train.mean, train.std))
    full = full_data_accuracy(train, pools, (full_test, y_test), model=proto.model, cfg=full_cfg, seed=seed,
                              device=device, test_key=test_key,
                              val_per_class=cfg.val_per_class, progress=progress)

    def accs(label: str, aug, side: str) -> list[float]:
        return next(r[side]["test"] for r in results if r["labels"] == label and r["aug"] == (aug or "none"))

    aug_lists = {}
    if cfg.ars:
        with_aug, no_aug = (proto.aug, other_aug) if proto.aug else (other_aug, proto.aug)
        aug_lists = {"set_aug": accs(own, with_aug, "compressed"), "random_aug": accs(own, with_aug, "random"),
                     "set_no_aug": accs(own, no_aug, "compressed"), "random_no_aug": accs(own, no_aug, "random")}
    scores = ranking.scores(full["accuracy"], accs("hard", proto.aug, "compressed"),
                            accs(own, proto.aug, "compressed"), accs(own, proto.aug, "random"),
                            lrs_weight=cfg.lrs_weight, ars_weight=cfg.ars_weight, **aug_lists)
    warnings = teacher_warnings(teach, accs("hard", proto.aug, "compressed"))
    for text in warnings:
        if log is not None:
            log({"event": "warning", "message": text})
    compressed = ranking.summary(main["compressed"]["test"], 100, 2)
    random_ = {**ranking.summary(main["random"]["test"], 100, 2),
               "labels": (f"teacher labels of {ds.num_views} views per image" if ds.views is not None else
                          "teacher soft labels") if soft else "hard labels", "lr": main["random"]["lr"]}
    for r in results:
        for side in ("compressed", "random"):
            r[side] = {**ranking.summary(r[side].pop("test"), 100, 2), **r[side]}
    return {"evaluation": "fair", "compressed": compressed, "random": random_,
            "delta": round(compressed["mean"] - random_["mean"], 2),
            "protocol": {**dataclasses.asdict(dataclasses.replace(proto, soft_labels=soft)),
                         "lr_used": main["compressed"]["lr"], "lr_source": main["compressed"]["lr_source"]},
            "samples": len(ds), "test_samples": n_test, "method": ds.block.method.name if ds.block.method else None,
            "fair": {"labels": own, "runs": runs, "lr_grid": list(cfg.lr_grid), "lr_search": cfg.lr_search,
                     **({"halving_eta": cfg.halving_eta} if cfg.lr_search == "halving" else {}),
                     "results": results,
                     "validation": {"per_class": cfg.val_per_class, "samples": int(val_idx.numel())},
                     "full_data": full, "teacher": teacher_info,
                     **({"random_sides": shared} if random_sides is not None else {})},
            "outside_reader": reader_block, "random_images": str(ds.image_format),
            "scores": scores, **({"warnings": warnings} if warnings else {}),
            "seconds": {"sets": round(t_sets, 1), "compressed": round(spent["compressed"], 1),
                        "random": round(spent["random"], 1),
                        **({"outside_reader": round(spent["outside_reader"], 1)} if "outside_reader" in spent else {}),
                        "full_data": full["seconds"] if not full["cached"] else 0.0}}


def teacher_warnings(teacher, hard_accuracies: list[float]) -> list[str]:
    """A warning when the teacher that labels both sides is less accurate on its validation split
    than the set is with its own hard labels: its soft labels then teach less than the classes."""
    val = (teacher.info if teacher is not None else {}).get("val_accuracy")
    hard = 100 * sum(hard_accuracies) / max(len(hard_accuracies), 1)
    if not isinstance(val, (int, float)) or 100 * val >= hard:
        return []
    return [f"the teacher's validation accuracy ({100 * val:.2f} %) is below the set's own hard-label accuracy "
            f"({hard:.2f} %): its soft labels may hurt; train a stronger one (`dcompress teacher`, docs/teacher.md)"]


def _renormalise(x: torch.Tensor, src, dst) -> torch.Tensor:
    """Images normalised with `src` (mean, std) re-expressed with `dst`: the full-data network
    reads batches normalised with the training input's own statistics."""
    def t(v):
        return torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1)
    return (x * t(src[1]) + t(src[0]) - t(dst[0])) / t(dst[1])


def _select_and_run(data: Callable[[int], dict], recipe: EvalProtocol, num_classes: int, grid: tuple[float, ...],
                    fixed_lr: float | None, runs: int, *, tags: tuple, val, test, device, tick,
                    how: str = "grid", eta: int = 3) -> dict:
    """Run 0 at the lrs of `grid` searched by `how` (train/lr_search.py: the full grid, or
    successive halving by `eta`), or at `fixed_lr`; the best validation accuracy picks the lr
    (the earliest on a tie) and run 0's network at it is tested; runs 1.. train at that lr.
    Test accuracies (fractions) in "test"; "val_grid" rows {lr, val %, passes};
    "network_passes": the passes trained (run 0's search and runs 1..)."""
    d = data(0)
    x, soft = d["x"].to(device), None if d["soft"] is None else d["soft"].to(device)   # once for every lr

    def make(lr: float) -> SetTrainer:
        return SetTrainer(x, d["y"], num_classes=num_classes, protocol=recipe, generator=derive(*tags, 0),
                          device=device, soft=soft, lr=lr, epoch_data=d["views"] if recipe.soft_labels else None)

    lrs = (fixed_lr,) if fixed_lr is not None else grid
    lr, net, grid_rows = search(lrs, make, lambda n: accuracy(n, val[0], val[1], device=device),
                                passes=recipe.epochs + 1, how=how, eta=eta, tick=tick)
    test_accs = [accuracy(net, test[0], test[1], device=device)]
    trained = sum(row["passes"] for row in grid_rows)
    for r in range(1, runs):
        d = data(r)
        t = SetTrainer(d["x"], d["y"], num_classes=num_classes, protocol=recipe, generator=derive(*tags, r),
                       device=device, soft=d["soft"], lr=lr, epoch_data=d["views"] if recipe.soft_labels else None)
        test_accs.append(accuracy(t.run_to(t.total), test[0], test[1], device=device))
        trained += t.passes
        tick(t.total)
    return {"lr": lr, "lr_source": "learned" if fixed_lr is not None else "grid", "val_grid": grid_rows,
            "network_passes": trained, "test": test_accs}


def _teacher(ds: CompressedDataset, train: RealData, device: torch.device, teacher: str | Path | None, log):
    """The teacher that relabels the random subsets: `--teacher`, else the one the set was
    relabelled with (its recorded config, loaded from the cache or retrained the same way),
    else (learned labels) the default teacher. Returns (Teacher, report info)."""
    from .teacher import TeacherConfig, get_teacher

    info = ds.block.labels.teacher or {}
    where, key = str(ds.manifest_path), "dcompress.labels.teacher"
    cfg = None
    if teacher is None and info.get("source") == "user":
        raise InputDataError(f"the set was relabelled by a user's teacher ({info.get('path')}); pass it again "
                             "with --teacher PATH so the random subsets get the same teacher's labels",
                             path=where, key=key)
    if teacher is None and isinstance(info.get("config"), dict):
        try:
            cfg = TeacherConfig(**info["config"])
        except (TypeError, UsageError) as e:
            raise InputDataError(f"recorded teacher config is not usable ({e})", path=where, key=key) from None
    spec = RunSpec(ipc=1, device=device, cache_dir=cache_root(), teacher=Path(teacher) if teacher else None)
    t = get_teacher(train, spec, cfg, log=log)
    same = bool(info.get("path")) and Path(str(info.get("path"))).resolve() == Path(str(t.info.get("path"))).resolve()
    return t, {"model": t.info.get("model"), "source": t.info.get("source"), "path": t.info.get("path"),
               "same_as_set": same if ds.label_kind == "teacher" else None, "set_labels": ds.label_kind}
