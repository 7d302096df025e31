"""`manifest.json`: a wids shard index plus a `dcompress` provenance block.

Schema: docs/format.md. The wids part (`__kind__`, `wids_version`, `shardlist`) is read by
`wids.ShardListDataset`; everything dcompress-specific lives under the `dcompress` key.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import InputDataError, VerifyError

MANIFEST = "manifest.json"
WIDS_KIND = "wids-shard-index-v1"
FORMAT_VERSION = 1


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def shard_entry(path: Path, nsamples: int) -> dict:
    """One `shardlist` row; `url` is relative to the manifest's folder."""
    return {"url": path.name, "nsamples": int(nsamples), "filesize": path.stat().st_size,
            "md5sum": md5_file(path)}


def build_manifest(name: str, shards: list[dict], block: dict) -> dict:
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": shards,
            "dcompress": {"format_version": FORMAT_VERSION, **block}}


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict:
    """Reads and sanity-checks a manifest; InputDataError names the file and key."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError("no manifest.json here (not a dcompress output?)", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise InputDataError(f"not valid JSON ({e})", path=str(path)) from None
    for key in ("__kind__", "shardlist"):
        if key not in obj:
            raise InputDataError("missing key in manifest", path=str(path), key=key)
    if obj["__kind__"] != WIDS_KIND:
        raise InputDataError(f"unexpected __kind__ {obj['__kind__']!r}", path=str(path), key="__kind__")
    return obj


def shard_paths(manifest_path: Path, manifest: dict) -> list[Path]:
    base = manifest_path.parent if manifest_path.is_file() or manifest_path.suffix == ".json" else manifest_path
    return [base / row["url"] for row in manifest["shardlist"]]


def verify(out_dir: str | Path) -> dict:
    """Re-checks every shard's size, md5 and sample count against the manifest.

    Returns a report dict; raises VerifyError listing every mismatch.
    """
    from .shards import count_samples

    out_dir = Path(out_dir)
    mpath = out_dir / MANIFEST if out_dir.is_dir() else out_dir
    manifest = read_manifest(mpath)
    problems, total = [], 0
    for row, path in zip(manifest["shardlist"], shard_paths(mpath, manifest)):
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != row["filesize"]:
            problems.append(f"{path}: size {path.stat().st_size} != manifest {row['filesize']}")
        digest = md5_file(path)
        if digest != row["md5sum"]:
            problems.append(f"{path}: md5 {digest} != manifest {row['md5sum']}")
            continue
        n = count_samples(path)
        if n != row["nsamples"]:
            problems.append(f"{path}: {n} samples != manifest {row['nsamples']}")
        total += n
    declared = manifest.get("dcompress", {}).get("num_samples")
    if declared is not None and not problems and total != declared:
        problems.append(f"{mpath}: {total} samples in shards != dcompress.num_samples {declared}")
    if problems:
        raise VerifyError("; ".join(problems), path=str(mpath))
    return {"manifest": str(mpath), "shards": len(manifest["shardlist"]), "samples": total, "ok": True}
