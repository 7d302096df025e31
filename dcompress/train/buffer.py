"""The expert-buffer format on disk: names, the read-only `ExpertBuffer` view, damage checks.

Format: docs/experts-format.md. Snapshots are memory-mapped `.npy` files; nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import InputDataError, UsageError
from ..io.experts_schema import ExpertsManifest
from ..io.manifest import MANIFEST, read_experts_manifest

DTYPE = "<f4"


def expert_name(expert: int, suffix: str) -> str:
    return f"expert-{expert:05d}.{suffix}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def expert_problem(out: Path, expert: int, shape: tuple[int, int]) -> tuple[Path, str] | None:
    """(file, what is wrong) when expert `expert` of buffer `out` is not a whole, readable expert
    of `shape` [E+1, P]; None when its sidecar is a JSON object and its `.npy` header says float32
    little-endian `shape` with exactly the bytes that implies. Reads headers only (no unpickling)."""
    side, npy = out / expert_name(expert, "json"), out / expert_name(expert, "npy")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict):
            return side, "sidecar is not a JSON object"
    except FileNotFoundError:
        return side, "sidecar is missing"
    except (OSError, ValueError) as e:
        return side, f"sidecar is not valid JSON ({e})"
    try:
        with open(npy, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
            found, fortran, dtype = read(f)
            offset = f.tell()
        size = npy.stat().st_size
    except FileNotFoundError:
        return npy, "snapshot file is missing"
    except (OSError, ValueError, EOFError) as e:
        return npy, f"not a readable .npy file ({e})"
    if dtype != np.dtype(DTYPE) or tuple(found) != tuple(shape) or fortran:
        return npy, f"expected {DTYPE} {tuple(shape)} C-order, found {dtype.str} {tuple(found)}"
    if size != offset + int(np.prod(shape)) * 4:
        return npy, f"file is {size} bytes, expected {offset + int(np.prod(shape)) * 4} (truncated?)"
    return None


# ---------------------------------------------------------------------------------------------
# Reading


class ExpertBuffer:
    """Read-only view of a buffer folder; snapshots are memory-mapped, never loaded whole.

    Attributes:
        manifest: the validated manifest.json (ExpertsManifest: network, input, normalization,
            training, split).
        config: the same as a JSON dict; network: `config["network"]` (name, channels,
            num_classes, im_size, param_count). Kept for callers that index the JSON.
        ids: ids of the complete experts (those with a sidecar), ascending.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        self.manifest: ExpertsManifest = read_experts_manifest(self.path)
        self.config: dict = self.manifest.to_dict()
        self.network: dict = self.config["network"]
        self.epochs: int = self.manifest.epochs
        self.param_count: int = self.manifest.network.param_count
        from ..nets import NetConfigError, check_name

        try:
            check_name(str(self.manifest.network.name))
        except NetConfigError as e:
            raise InputDataError(f"buffer was made with a network this dcompress does not know ({e})",
                                 path=str(mpath), key="network.name") from None
        self.ids = complete_ids(self.path)
        for i in self.ids:   # headers only: a damaged expert fails here, not hours into a run
            bad = expert_problem(self.path, i, (self.epochs + 1, self.param_count))
            if bad is not None:
                raise InputDataError(f"expert {i} is damaged: {bad[1]}; delete its .npy and .json and "
                                     "rerun `dcompress experts` to retrain it", path=str(bad[0]))
        self._maps: dict[int, np.ndarray] = {}

    @property
    def num_experts(self) -> int:
        return len(self.ids)

    def meta(self, expert: int) -> dict:
        """The sidecar of the `expert`-th complete expert (0-based position in `ids`)."""
        p = self.path / expert_name(self.ids[expert], "json")
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise InputDataError(f"sidecar is not readable JSON ({e})", path=str(p)) from None

    def trajectory(self, expert: int) -> np.ndarray:
        """Memory-mapped float32 [E+1, P] array of the `expert`-th complete expert (read-only)."""
        if expert not in self._maps:
            if not 0 <= expert < self.num_experts:
                raise UsageError(f"expert {expert} out of range: buffer has {self.num_experts} complete experts")
            p = self.path / expert_name(self.ids[expert], "npy")
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise InputDataError(f"not a readable float32 .npy ({e})", path=str(p)) from None
            if arr.dtype != np.dtype(DTYPE) or arr.shape != (self.epochs + 1, self.param_count):
                raise InputDataError(f"expected {DTYPE} {(self.epochs + 1, self.param_count)}, found {arr.dtype} "
                                     f"{arr.shape}", path=str(p))
            self._maps[expert] = arr
        return self._maps[expert]

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        """Flat parameters [P] (float32, CPU) of expert `expert` after `epoch` epochs (0 = init)."""
        if not 0 <= epoch <= self.epochs:
            raise UsageError(f"epoch {epoch} out of range: experts have snapshots 0..{self.epochs}")
        return torch.from_numpy(np.array(self.trajectory(expert)[epoch], dtype=np.float32))

    def verify(self, expert: int) -> bool:
        """True when the .npy still matches the sha256 recorded in its sidecar."""
        return _sha256(self.path / expert_name(self.ids[expert], "npy")) == self.meta(expert)["sha256"]


def complete_ids(path: Path) -> list[int]:
    """Expert ids whose sidecar and .npy both exist (the sidecar marks completion)."""
    ids = []
    for p in Path(path).glob("expert-*.json"):
        stem = p.name[len("expert-"):-len(".json")]
        if stem.isdigit() and (p.with_suffix(".npy")).exists():
            ids.append(int(stem))
    return sorted(ids)
