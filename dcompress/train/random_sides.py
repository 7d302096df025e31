"""The random side of a fair evaluation, trained once and shared (`dcompress frontier`).

Under the fair protocol (train/fair.py) the random side of one label x augmentation setting is
`runs` networks on class-matched random real subsets: run 0 at the lrs of the grid (every lr the
whole schedule, or successive halving), the rest at the lr picked on the validation split.
Nothing of the compressed set enters it except the per-class sample counts, the recipe, the
normalisation, the way its labels are stored (teacher, top-K, views) and a lossy image format
(the random subsets are encoded the same way). `side_key` lists exactly those inputs; two sets that agree on them
(every method of a frontier at the same budget-derived IPC and labels) get the same random
networks, so `RandomSides` trains them once and hands the result to the others.

`RandomSides(folder)` keeps one `<digest>.json` per key (atomic writes): it survives an
interrupted frontier, and `trained`/`reused` count what this process did. A side is trained
under a lock (`.<digest>.lock`, removed after): processes that want it at once (the ranks of a
frontier under torchrun) train it once, the others wait and read it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

KIND = "fair-random-side-v1"


def side_key(*, ds, train, test_key: dict, counts: list[int], recipe, grid: tuple[float, ...], runs: int, seed: int,
             label: str, aug: str | None, val_per_class: int, teacher_info: dict | None, device,
             lr_search: str = "grid", eta: int = 3) -> dict:
    """Everything that decides the random side's accuracies (JSON-able). A lossy image format
    adds `images` (`jpeg:75`) and the lr search enters only when it is not the grid
    (`lr_search`, `halving_eta`); png sets searched by the grid keep the key they had before
    either existed, so their stored sides stay valid."""
    views = ds.views
    fmt = ds.image_format
    search = {"lr_search": lr_search, "halving_eta": eta} if lr_search != "grid" else {}
    return {"kind": KIND, "train": train.source.get("fingerprint"), "test": test_key, "counts": list(counts),
            "recipe": dataclasses.asdict(recipe), "grid": list(grid), **search, "runs": runs, "seed": seed,
            "labels": label, "aug": aug or "none", "val_per_class": val_per_class, "mean": list(ds.mean),
            "std": list(ds.std),
            "topk": ds.label_topk if label == "soft" else None,
            "teacher": ({k: teacher_info.get(k) for k in ("model", "sha256", "path", "source")}
                        if label == "soft" and teacher_info else None),
            "views": ({"config": repr(views.config), "seed": views.seed, "num": ds.num_views}
                      if label == "soft" and views is not None else None),
            "device": str(getattr(device, "type", device)),
            **({"images": str(fmt)} if fmt.lossy else {})}


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RandomSides:
    """A folder of finished random sides, keyed by `side_key`; `side(key, train)` returns the
    stored result (`reused`) or runs `train()` and stores it (`trained`)."""

    def __init__(self, folder: str | Path, note: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.note = note
        self.trained: list[str] = []
        self.reused: list[str] = []

    def get(self, key: dict) -> dict | None:
        """The stored record (`result`, `seconds` it took to train) for `key`, or None."""
        try:
            rec = json.loads((self.folder / f"{digest(key)}.json").read_text())
        except (OSError, ValueError):
            return None                       # none yet, or truncated: trained again
        if not isinstance(rec, dict) or rec.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        return rec if isinstance(rec.get("result"), dict) else None

    def side(self, key: dict, train: Callable[[], dict]) -> tuple[dict, str, float]:
        """(result, digest, seconds it took to train): the stored result for `key`, else
        `train()`'s, stored."""
        from ..io.atomic import made_once
        from ..io.safe_write import write_json

        d = digest(key)
        made = []

        def make() -> dict:
            t0 = time.time()
            rec = {"key": key, "result": train()}
            rec["seconds"] = round(time.time() - t0, 1)
            write_json(self.folder / f"{d}.json", rec)
            made.append(d)
            return rec

        # torchrun ranks running frontier points at once: one trains the side, the others wait and read it
        rec = made_once(self.folder / f".{d}.lock", lambda: self.get(key), make, note=self.note,
                        what="training this random side")
        (self.trained if made else self.reused).append(d)
        return rec["result"], d, float(rec.get("seconds", 0.0))
