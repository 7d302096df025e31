"""`manifest.json`: a wids shard index (`ShardRow` rows) plus a `dcompress` provenance block.

The blocks' schema lives in `io/schema.py` (input and compressed outputs) and
`io/experts_schema.py` (expert buffers); this module reads and checks the wids part, resolves
shard urls safely and verifies shards. The wids part (`__kind__`, `wids_version`, `shardlist`)
is read by `wids.ShardListDataset`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputDataError, VerifyError

from .experts_schema import ExpertsManifest
from .schema import CompressedBlock, InputBlock, _class_names, _is_int

MANIFEST = "manifest.json"
WIDS_KIND = "wids-shard-index-v1"


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The wids part


@dataclass(frozen=True)
class ShardRow:
    """One `shardlist` row; `url` is relative to the manifest's folder. Sizes in bytes."""

    url: str
    nsamples: int | None = None
    filesize: int | None = None
    md5sum: str | None = None

    @classmethod
    def of_file(cls, path: Path, nsamples: int) -> ShardRow:
        """The row of a shard just written at `path` holding `nsamples` samples."""
        return cls(url=path.name, nsamples=int(nsamples), filesize=path.stat().st_size, md5sum=md5_file(path))

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, row, path, index: int) -> ShardRow:
        where = f"shardlist[{index}]"
        if not isinstance(row, dict):
            raise InputDataError("shard row must be an object", path=str(path), key=where)
        if not isinstance(row.get("url"), str) or not row["url"]:
            raise InputDataError("shard row needs a non-empty string 'url'", path=str(path), key=f"{where}.url")
        for k in ("nsamples", "filesize"):
            if k in row and (not _is_int(row[k]) or row[k] < 0):
                raise InputDataError(f"must be a non-negative integer, found {row[k]!r}", path=str(path),
                                     key=f"{where}.{k}")
        if "md5sum" in row and not isinstance(row["md5sum"], str):
            raise InputDataError("must be a string", path=str(path), key=f"{where}.md5sum")
        return cls(url=row["url"], nsamples=row.get("nsamples"), filesize=row.get("filesize"),
                   md5sum=row.get("md5sum"))


def shard_entry(path: Path, nsamples: int) -> ShardRow:
    """One `shardlist` row for a shard just written (see ShardRow.of_file)."""
    return ShardRow.of_file(path, nsamples)


def build_manifest(name: str, shards: list[ShardRow], block: InputBlock | CompressedBlock) -> dict:
    """The manifest.json object: wids shard index + `dcompress` block."""
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": [r.to_dict() for r in shards],
            "dcompress": block.to_dict()}


# ---------------------------------------------------------------------------------------------
# Reading


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputDataError("no manifest.json here (not a dcompress output?)", path=str(path)) from None
    except IsADirectoryError:
        raise InputDataError("manifest path is a folder", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputDataError(f"not valid JSON ({e})", path=str(path)) from None
    except RecursionError:
        raise InputDataError("JSON nested too deeply", path=str(path)) from None
    except OSError as e:
        raise InputDataError(f"cannot read manifest ({e.strerror or e})", path=str(path)) from None
    if not isinstance(obj, dict):
        raise InputDataError(f"expected a JSON object, found {type(obj).__name__}", path=str(path))
    return obj


def manifest_path(path: str | Path) -> Path:
    """`path` itself, or `path/manifest.json` when `path` is a folder."""
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def read_manifest(path: str | Path) -> dict:
    """Reads and checks a manifest's structure; InputDataError (exit 4) names the file and key.

    Checks the wids part (`__kind__`, `shardlist` rows: see ShardRow.from_dict) and, when
    present, the `dcompress` block's `class_names` (the part common to input and compressed
    manifests). Row urls are not resolved here: `shard_paths` does that, refusing unsafe ones.
    Returns the parsed JSON object; `read_compressed` and `read_input` give the typed view.
    """
    path = manifest_path(path)
    obj = _load_json(path)
    for key in ("__kind__", "shardlist"):
        if key not in obj:
            raise InputDataError("missing key in manifest", path=str(path), key=key)
    if obj["__kind__"] != WIDS_KIND:
        raise InputDataError(f"unexpected __kind__ {obj['__kind__']!r}", path=str(path), key="__kind__")
    rows = obj["shardlist"]
    if not isinstance(rows, list):
        raise InputDataError(f"must be a list of shard rows, found {type(rows).__name__}", path=str(path),
                             key="shardlist")
    if not rows:
        raise InputDataError("lists no shards", path=str(path), key="shardlist")
    for i, row in enumerate(rows):
        ShardRow.from_dict(row, path, i)
    block = obj.get("dcompress")
    if block is not None:
        if not isinstance(block, dict):
            raise InputDataError("must be an object", path=str(path), key="dcompress")
        _class_names(block, path, required=False)
    return obj


def shard_rows(manifest: dict, path: str | Path) -> list[ShardRow]:
    """The typed `shardlist` of a manifest returned by `read_manifest`."""
    return [ShardRow.from_dict(row, path, i) for i, row in enumerate(manifest["shardlist"])]


def read_compressed(path: str | Path) -> tuple[dict, list[ShardRow], CompressedBlock]:
    """A compressed set's manifest (folder or manifest.json): (the parsed JSON, its rows, its
    validated block). InputDataError names the file and `dcompress.<key>`."""
    path = manifest_path(path)
    manifest = read_manifest(path)
    return manifest, shard_rows(manifest, path), CompressedBlock.from_dict(manifest.get("dcompress"), path)


def read_input(path: str | Path) -> tuple[dict, list[ShardRow], InputBlock | None]:
    """An input manifest: (the parsed JSON, its rows, its `dcompress` block or None when it has none)."""
    path = manifest_path(path)
    manifest = read_manifest(path)
    block = manifest.get("dcompress")
    return manifest, shard_rows(manifest, path), InputBlock.from_dict(block, path) if block is not None else None


def read_experts_manifest(folder: str | Path) -> ExpertsManifest:
    """The validated manifest.json of the expert buffer `folder`."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    try:
        obj = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise InputDataError("not an expert buffer (no manifest.json); create one with `dcompress experts`",
                             path=str(folder)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputDataError(f"manifest.json is not valid JSON ({e})", path=str(mpath)) from None
    except OSError as e:
        raise InputDataError(f"cannot read manifest.json ({e.strerror or e})", path=str(mpath)) from None
    return ExpertsManifest.from_dict(obj, mpath)


def manifest_dir(manifest_path: Path) -> Path:
    """The folder a manifest's relative shard urls are resolved against."""
    p = Path(manifest_path)
    return p.parent if p.suffix == ".json" or p.is_file() else p


def check_row_url(url: str, *, manifest: str | Path, key: str = "url") -> None:
    """Refuses a shard url read from a file unless it names a file inside the manifest's folder.

    A manifest is data: it never gets to run a command (`pipe:`), fetch from the network, or
    point outside its own folder (absolute paths, `..`).
    """
    if ":" in url.split("/", 1)[0]:
        raise InputDataError(f"refusing url {url!r} from a manifest: only files inside the manifest's folder "
                             "are read (pass --allow-manifest-urls to trust this manifest)", path=str(manifest),
                             key=key)
    parts = Path(url).parts
    if Path(url).is_absolute() or ".." in parts:
        raise InputDataError(f"refusing url {url!r} from a manifest: it points outside the manifest's folder "
                             "(pass --allow-manifest-urls to trust this manifest)", path=str(manifest), key=key)


def shard_paths(manifest_path: Path, manifest: dict, *, trust_urls: bool = False) -> list[str]:
    """The shard locations of a manifest's rows, relative urls resolved against its folder.

    Unless `trust_urls`, every row must be a relative path inside the manifest's folder
    (`check_row_url`); a trusted row may also be absolute or a `pipe:`/`http(s):` url.
    """
    base = manifest_dir(manifest_path)
    out = []
    for i, row in enumerate(manifest["shardlist"]):
        url = row["url"]
        if not trust_urls:
            check_row_url(url, manifest=manifest_path, key=f"shardlist[{i}].url")
        out.append(url if ":" in url.split("/", 1)[0] else str(base / url))
    return out


def count_samples(path: str | Path) -> int:
    """Number of distinct keys in one local tar shard (stdlib only: `verify` needs no torch)."""
    import tarfile

    keys = set()
    with tarfile.open(path, "r") as tf:
        for member in tf:
            if member.isreg():
                keys.add(member.name.split(".", 1)[0])
    return len(keys)


def verify(out_dir: str | Path) -> dict:
    """Re-checks every shard's size, md5 and sample count against the manifest.

    Returns a report dict; raises VerifyError listing every mismatch.
    """
    import tarfile

    out_dir = Path(out_dir)
    mpath = manifest_path(out_dir)
    manifest = read_manifest(mpath)
    problems, total = [], 0
    for row, path in zip(manifest["shardlist"], map(Path, shard_paths(mpath, manifest))):
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        missing = [k for k in ("filesize", "md5sum", "nsamples") if k not in row]
        if missing:
            raise InputDataError(f"row has no {', '.join(missing)}: nothing to verify against", path=str(mpath),
                                 key=f"shardlist[{manifest['shardlist'].index(row)}]")
        if path.stat().st_size != row["filesize"]:
            problems.append(f"{path}: size {path.stat().st_size} != manifest {row['filesize']}")
        digest = md5_file(path)
        if digest != row["md5sum"]:
            problems.append(f"{path}: md5 {digest} != manifest {row['md5sum']}")
            continue
        try:
            n = count_samples(path)
        except (tarfile.TarError, EOFError) as e:
            problems.append(f"{path}: not a readable tar ({e})")
            continue
        if n != row["nsamples"]:
            problems.append(f"{path}: {n} samples != manifest {row['nsamples']}")
        total += n
    declared = (manifest.get("dcompress") or {}).get("num_samples")
    if declared is not None and not problems and total != declared:
        problems.append(f"{mpath}: {total} samples in shards != dcompress.num_samples {declared}")
    if problems:
        raise VerifyError("; ".join(problems), path=str(mpath))
    return {"status": "ok", "manifest": str(mpath), "shards": len(manifest["shardlist"]), "samples": total,
            "ok": True}
