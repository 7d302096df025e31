"""The generated fuzz corpus: malformed inputs for every stage, built on the fly (no blobs on disk).

Each `Case` writes its malformed input into a fresh folder and returns the CLI argv that feeds
it to dcompress (`Built`). The harness (tests/integration/test_fuzz.py) runs it, in-process
through typer's CliRunner or, for `proc` cases, as `python -m dcompress.cli` with a memory
cap and a timeout, and asserts the contract of `dcompress/errors.py`:

* the exit code is `code` (a tuple where the contract allows either);
* no traceback; stdout is exactly one JSON object with `status` ("error"/"ok"), and on
  failure `exit_code` equal to the exit code and `error` containing every `expect_in` string
  (the file name and/or the key at fault);
* the case folder is unchanged on failure (no `-o`, no `.OUT.tmp-*`, no `.OUT.dcompress-work`,
  inputs byte-identical), and on success only `Built.out` (and `Built.may_change`) changed.

Families (the ids' prefixes): tar, image, label, url, manifest, config, output, checkpoint,
experts, outputs. Where the contract is ambiguous the case says which reading it takes.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import pickle
import random as _random
import shutil
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tests.conftest import make_images, png_bytes, write_idx

FAMILIES = ("tar", "image", "label", "url", "manifest", "config", "output", "checkpoint", "experts", "outputs")
WIDS_KIND = "wids-shard-index-v1"
NET = "convnet_w16"          # the smallest network every tiny run uses
DM_SETS = ("--set", "iterations=2", "--set", f"model={NET}", "--set", "batch_real=2")
MTT_SETS = ("--set", "iterations=1", "--set", "syn_steps=1", "--set", "expert_epochs=1", "--set", "max_start_epoch=1",
            "--set", "memory=full", "--set", "batch_syn=2")


# ------------------------------------------------------------------------------------------ types

@dataclass
class Result:
    """What one run of the CLI produced (in-process: `exception` is CliRunner's)."""

    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr


@dataclass
class Built:
    """A case written to disk: the argv to run and what may change.

    out: the path the command may create or replace when it succeeds (`-o`, `--grid`, OUT).
    may_change: pre-existing paths a successful run may modify or remove (a run's work folder).
    aside: bytes of a damaged file the run must keep a copy of; new files with exactly these
        bytes may appear anywhere outside `out` (the "copy kept aside").
    check: extra assertions on the Result (markers that must not exist, messages).
    cwd: working directory for subprocess cases (default: the repository root).
    """

    argv: list[str]
    out: Path | None = None
    may_change: tuple[Path, ...] = ()
    aside: bytes | None = None
    check: Callable[[Result], None] | None = None
    cwd: Path | None = None


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    build: Callable[[Path, "Resources"], Built]
    code: int | tuple[int, ...]
    expect_in: tuple[str, ...] = ()
    proc: bool = False          # run as a real subprocess (real stderr, memory cap, timeout)
    timeout: float = 60.0
    note: str = ""

    @property
    def codes(self) -> tuple[int, ...]:
        return self.code if isinstance(self.code, tuple) else (self.code,)


CASES: list[Case] = []


def add(id: str, code, build, expect_in: Sequence[str] = (), *, proc: bool = False, timeout: float = 60.0,
        note: str = "") -> None:
    family = id.split("/", 1)[0]
    assert family in FAMILIES, id
    assert all(c.id != id for c in CASES), f"duplicate case id {id}"
    CASES.append(Case(id, family, build, code, tuple(expect_in), proc, timeout, note))


# ------------------------------------------------------------------------------------ tar writing

@dataclass(frozen=True)
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def members_of(samples: Sequence[dict]) -> list[Member]:
    return [Member(f"{s['__key__']}.{ext}", data) for s in samples for ext, data in s.items() if ext != "__key__"]


def write_members(path: Path, members: Sequence[Member], fmt: int = tarfile.GNU_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.mtime, ti.mode, ti.type, ti.linkname = 0, 0o644, m.type, m.linkname
            if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                ti.devmajor, ti.devminor = 1, 3
            if m.type == tarfile.REGTYPE:
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                tf.addfile(ti)
    return path


@functools.lru_cache(maxsize=None)
def _images(n_per_class: int, classes: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return make_images(n_per_class, classes=classes, size=size, seed=seed)


def samples(n_per_class: int = 2, classes: int = 2, size: int = 28, prefix: str = "k", seed: int = 0) -> list[dict]:
    """Good grayscale samples, keys `{prefix}0000`..., labels class-major (0, 0, 1, 1 by default)."""
    x, y = _images(n_per_class, classes, size, seed)
    return [{"__key__": f"{prefix}{i:04d}", "png": png_bytes(x[i]), "cls": str(int(y[i])).encode()}
            for i in range(len(y))]


def good_tar(path: Path, extra: Sequence[dict] = (), extra_members: Sequence[Member] = (), **kw) -> Path:
    return write_members(path, members_of([*samples(**kw), *extra]) + list(extra_members))


@functools.lru_cache(maxsize=None)
def good_tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for m in members_of(samples()):
            ti = tarfile.TarInfo(m.name)
            ti.mtime, ti.mode, ti.size = 0, 0o644, len(m.data)
            tf.addfile(ti, io.BytesIO(m.data))
    return buf.getvalue()


def tar_layout(data: bytes) -> tuple[list[tarfile.TarInfo], int]:
    """Members of a tar (offsets) and the byte where its end-of-archive marker starts."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ms = tf.getmembers()
    last = ms[-1]
    return ms, last.offset_data + 512 * ((last.size + 511) // 512)


def set_header_field(data: bytes, header_at: int, start: int, value: bytes, fix_checksum: bool = True) -> bytes:
    """Overwrites bytes [start, start+len) of the 512-byte header at `header_at`; recomputes its checksum."""
    b = bytearray(data)
    b[header_at + start:header_at + start + len(value)] = value
    if fix_checksum:
        hdr = b[header_at:header_at + 512]
        hdr[148:156] = b" " * 8
        b[header_at + 148:header_at + 156] = b"%06o\0 " % sum(hdr)
    return bytes(b)


# ---------------------------------------------------------------------------------- image bytes

def pil_bytes(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(typ: bytes, data: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(typ + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", crc if crc_ok else crc ^ 1)


def raw_png(width: int, height: int, *, depth: int = 8, color: int = 0, idat: bytes | None = None,
            crc_ok: bool = True) -> bytes:
    """A PNG with an arbitrary IHDR (dimensions are not checked against the data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64) if idat is None else idat
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr, crc_ok) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def gray(size: int = 28, seed: int = 0) -> np.ndarray:
    return _images(1, 1, size, seed)[0][0]


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real 28x28 JPEG whose SOF0 header is patched to declare width x height."""
    from PIL import Image

    data = bytearray(pil_bytes(Image.fromarray(gray()), "JPEG"))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype == object)
    return buf.getvalue()


class Evil:
    """Unpickling this creates `path`: proof that something unpickled untrusted data."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def object_npy(marker: Path) -> bytes:
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = Evil(marker), 1.0
    return npy_bytes(arr)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -------------------------------------------------------------------------------- check helpers

def marker_absent(marker: Path) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        assert not marker.exists(), f"{marker.name} exists: untrusted data was executed/unpickled"
    return check


def all_checks(*fns) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        for f in fns:
            if f is not None:
                f(r)
    return check


def mentions(*words: str) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        for w in words:
            assert w in r.text, f"the run did not say {w!r} (stdout+stderr: {r.text[-400:]!r})"
    return check


def not_mentions(*words: str) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        for w in words:
            assert w not in r.text, f"output contains {w!r} (a file was followed/leaked)"
    return check


# ------------------------------------------------------------------------------------ argv helpers

def distill(inputs, out: Path, *extra, method: str = "random", ipc: int | None = 1) -> list[str]:
    """`distill` on tiny input: hard labels, CPU, --max-bad 0 (per-sample problems are exit 3)."""
    ins = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    argv = ["distill", *map(str, ins), "--method", method, "-o", str(out), "--labels", "hard",
            "--device", "cpu", "--max-bad", "0", "--json"]
    if ipc is not None:
        argv += ["--ipc", str(ipc)]
    return argv + [str(e) for e in extra]


def evaluate(out: Path, test: Path, *extra) -> list[str]:
    return ["evaluate", str(out), "--test", str(test), "--no-random", "--runs", "1", "--epochs", "1",
            "--model", NET, "--device", "cpu", "--max-bad", "0", "--json", *map(str, extra)]


def on_tar(*extra, method: str = "random", ipc: int | None = 1, **tar_kw) -> Callable[[Path, "Resources"], Built]:
    """A build: a good `in.tar`, then `distill in.tar -o out ...extra`."""
    def build(tmp: Path, res: "Resources") -> Built:
        tar = good_tar(tmp / "in.tar", **tar_kw)
        return Built(distill(tar, tmp / "out", *extra, method=method, ipc=ipc), out=tmp / "out")
    return build


# -------------------------------------------------------------------------- shared resources

class Resources:
    """Inputs that cost a run to make, made once per session and copied per case."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def train_tar(self) -> Path:
        return good_tar(self.base / "train" / "train.tar", n_per_class=3)

    @functools.cached_property
    def test_tar(self) -> Path:
        return good_tar(self.base / "test" / "test.tar", n_per_class=2, seed=1, prefix="t")

    @functools.cached_property
    def good_output(self) -> Path:
        """A random selection, ipc 2 of 2 classes, 4 shards of one sample (io.output.output_shard_size:
        data-000000/1.tar: class 0, -000002/3: class 1)."""
        from dcompress.api import distill as api_distill

        out = self.base / "good-out"
        api_distill(str(self.train_tar), "random", out=out, ipc=2, labels="hard", device="cpu", shard_size=2)
        return out

    @functools.cached_property
    def soft_output(self) -> Path:
        """`good_output` in the layout with a `.logits.npy` member per sample (hard labels as
        older versions wrote them: one-hot float16), for the damaged soft-label members."""
        out = self.base / "soft-out"
        shutil.copytree(self.good_output, out)
        for p in sorted(out.glob("data-*.tar")):
            with tarfile.open(p) as tf:
                ms = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]
            key = ms[0][0].split(".")[0]
            y = int(dict(ms)[f"{key}.cls"])
            write_members(p, [Member(n, d) for n, d in ms] + [Member(f"{key}.logits.npy",
                                                                      npy_bytes(np.eye(2, dtype=np.float16)[y]))])
            _row_update(out, p.name)
        m = json.loads((out / "manifest.json").read_text())
        m["dcompress"]["labels"]["soft"] = "logits.npy"
        (out / "manifest.json").write_text(json.dumps(m))
        return out

    @functools.cached_property
    def buffer(self) -> Path:
        """An expert buffer: 1 expert, 2 epochs, convnet_w16, for 1x28x28 2-class input."""
        import torch

        from dcompress.api import load_real
        from dcompress.train.experts import ExpertConfig, train_experts

        out = self.base / "BUF"
        real = load_real(str(good_tar(self.base / "buf-in" / "in.tar")))
        train_experts(real, out, num_experts=1, config=ExpertConfig(model=NET, epochs=2, dsa_strategy="none"),
                      device=torch.device("cpu"))
        return out

    @functools.cached_property
    def ckpt(self) -> Path:
        """A folder holding `in.tar` and the work folder `.out.dcompress-work` of a dm run on it that
        stopped after its first checkpoint (the args equal `checkpoint_argv`'s)."""
        from dcompress.api import distill as api_distill

        d = self.base / "ckpt"
        tar = good_tar(d / "in.tar")

        class Stop(Exception):
            pass

        def log(event: dict) -> None:
            if event.get("event") == "iteration":
                raise Stop

        sets = [s for s in DM_SETS if s != "--set"]
        try:
            api_distill(str(tar), "dm", out=d / "out", ipc=1, seed=0, device="cpu", sets=sets, labels="hard",
                        max_bad=0, shard_size=1000, ckpt_every=1, log=log)
        except Stop:
            pass
        work = d / ".out.dcompress-work"
        assert (work / "state.pt").is_file() and (work / "run.json").is_file(), list(work.iterdir())
        return d

    @functools.cached_property
    def teacher_state(self) -> dict:
        from dcompress.nets import build_net

        return build_net(NET, 1, 2, (28, 28)).state_dict()


# ================================================================================================
# 1. tar structure (distill)
# ================================================================================================

TRUNCATIONS: dict[str, Callable[[list, int], int]] = {
    "one-byte": lambda m, end: 1,
    "mid-first-header": lambda m, end: 100,
    "first-header-only": lambda m, end: m[0].offset_data,
    "mid-first-data": lambda m, end: m[0].offset_data + m[0].size // 2,
    "first-data-unpadded": lambda m, end: m[0].offset_data + m[0].size,
    "at-sample-boundary": lambda m, end: m[2].offset,
    "mid-second-sample-header": lambda m, end: m[2].offset + 256,
    "before-last-sample": lambda m, end: m[-2].offset,
    "mid-last-image": lambda m, end: m[-2].offset_data + m[-2].size // 2,
    "no-end-marker": lambda m, end: end,
    "half-end-marker": lambda m, end: end + 512,
}


def _truncated(cut: Callable[[list, int], int]):
    def build(tmp: Path, res: Resources) -> Built:
        data = good_tar_bytes()
        ms, end = tar_layout(data)
        p = tmp / "trunc.tar"
        p.write_bytes(data[:cut(ms, end)])
        return Built(distill(p, tmp / "out"), out=tmp / "out")
    return build


for _name, _cut in TRUNCATIONS.items():
    add(f"tar/truncated-{_name}", 3, _truncated(_cut), ["trunc.tar"])
# a complete tar (end marker present) without the 10 KiB record padding is valid
add("tar/no-record-padding", 0, _truncated(lambda m, end: end + 1024))


def _bytes_as(name: str, data: bytes | Callable[[], bytes]):
    def build(tmp: Path, res: Resources) -> Built:
        p = tmp / name
        p.write_bytes(data() if callable(data) else data)
        return Built(distill(p, tmp / "out"), out=tmp / "out")
    return build


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for s in samples():
            z.writestr(f"{s['__key__']}.png", s["png"])
            z.writestr(f"{s['__key__']}.cls", s["cls"])
    return buf.getvalue()


_garbage = _random.Random(1).randbytes(5000)
# garbage named .tar: a corrupt shard (3) or an unusable input (4); both are acceptable
add("tar/garbage-bytes", (3, 4), _bytes_as("garbage.tar", _garbage), ["garbage.tar"], proc=True)
add("tar/text-file", (3, 4), _bytes_as("notes.tar", b"just some notes\n" * 64), ["notes.tar"])
add("tar/zip-archive", (3, 4), _bytes_as("zipped.tar", _zip_bytes), ["zipped.tar"])
add("tar/zero-length", 4, _bytes_as("empty.tar", b""), ["empty.tar"])
add("tar/end-marker-only", 4, _bytes_as("nothing.tar", bytes(10240)), ["nothing.tar"])
add("tar/gzip-valid", 0, _bytes_as("x.tar.gz", lambda: gzip.compress(good_tar_bytes(), mtime=0)),
    note="a valid gzip-compressed tar is a good shard, not a truncated one")
add("tar/gzip-corrupt-body", (3, 4), _bytes_as("bad.tar.gz", lambda: gzip.compress(good_tar_bytes(), mtime=0)[:20]
                                                + _garbage[:2000]), ["bad.tar.gz"])
add("tar/gzip-truncated", 3, _bytes_as("cut.tar.gz", lambda: gzip.compress(good_tar_bytes(), mtime=0)[:1500]),
    ["cut.tar.gz"])
add("tar/gzip-of-garbage", (3, 4), _bytes_as("gzgarbage.tar.gz", gzip.compress(_garbage, mtime=0)),
    ["gzgarbage.tar.gz"])


def _header_damage(fn, *extra: str):
    def build(tmp: Path, res: Resources) -> Built:
        data = good_tar_bytes()
        ms, end = tar_layout(data)
        p = tmp / "hdr.tar"
        p.write_bytes(fn(data, ms))
        return Built(distill(p, tmp / "out", *extra), out=tmp / "out")
    return build


add("tar/bad-header-checksum", 3, _header_damage(
    lambda d, ms: set_header_field(d, ms[2].offset, 0, b"X", fix_checksum=False)), ["hdr.tar"])
add("tar/non-octal-size-field", 3, _header_damage(
    lambda d, ms: set_header_field(d, ms[2].offset, 124, b"zzzzzzzzzzz\0")), ["hdr.tar"])
add("tar/size-beyond-eof", 3, _header_damage(
    lambda d, ms: set_header_field(d, ms[-2].offset, 124, b"%011o\0" % (1 << 30))), ["hdr.tar"])
# a size field declaring far more than the file holds: tarfile's stream mode skipped it block by
# block past the end, for ever with a base-256 size (2^80 bytes); now bounded (io.stream.EndGuard).
# --max-bad 100 (the last --max-bad wins) so the reader goes on past the first bad member.
add("tar/base256-size-2^80", 0, _header_damage(
    lambda d, ms: set_header_field(d, ms[-2].offset, 124, b"\x80" + (1 << 80).to_bytes(11, "big")),
    "--max-bad", "100"), proc=True, timeout=60)
add("tar/octal-size-8GiB", 0, _header_damage(
    lambda d, ms: set_header_field(d, ms[-2].offset, 124, b"77777777777\0"), "--max-bad", "100"),
    proc=True, timeout=60)
# bytes after a complete end-of-archive marker are ignored (like GNU tar)
add("tar/trailing-garbage-after-end", 0, _header_damage(lambda d, ms: d + _garbage))


def _with_members(extra: Sequence[Member], *, name: str = "m.tar", fmt: int = tarfile.GNU_FORMAT, base=None):
    def build(tmp: Path, res: Resources) -> Built:
        ms = members_of(samples()) if base is None else base()
        p = write_members(tmp / name, [*ms, *extra], fmt=fmt)
        # a link member is never followed: /etc/passwd's content must not surface anywhere
        return Built(distill(p, tmp / "out"), out=tmp / "out", check=not_mentions("root:x:0:0"))
    return build


CLS0 = Member("ln0001.cls", b"0")
# non-regular members are never followed: the link/device member is ignored, so its sample has
# no image and is a bad sample (3 with --max-bad 0)
add("tar/directory-member", 0, _with_members([Member("somedir", type=tarfile.DIRTYPE)]),
    note="directory members are ignored")
add("tar/symlink-image-to-etc-passwd", 3,
    _with_members([Member("ln0001.png", type=tarfile.SYMTYPE, linkname="/etc/passwd"), CLS0]),
    ["m.tar", "ln0001"])
add("tar/symlink-extra-member-to-etc-passwd", 0,
    _with_members([Member("k0000.txt", type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
    note="an extra symlink member is ignored, never read")
add("tar/hardlink-to-member", 3, _with_members([Member("ln0001.png", type=tarfile.LNKTYPE, linkname="k0000.png"),
                                                CLS0]), ["m.tar", "ln0001"])
add("tar/hardlink-to-etc-passwd", 3, _with_members([Member("ln0001.png", type=tarfile.LNKTYPE,
                                                           linkname="/etc/passwd"), CLS0]), ["m.tar", "ln0001"])
add("tar/char-device-member", 3, _with_members([Member("ln0001.png", type=tarfile.CHRTYPE), CLS0]),
    ["m.tar", "ln0001"])
add("tar/fifo-member", 3, _with_members([Member("ln0001.png", type=tarfile.FIFOTYPE), CLS0]), ["m.tar", "ln0001"])
# unsafe member names are bad samples: a careful pipeline never trusts '..' or absolute names
add("tar/dotdot-member-name", 3, _with_members(members_of([{**samples()[0], "__key__": "../evil0001"}])),
    ["m.tar", "evil0001"])
add("tar/absolute-member-name", 3, _with_members(members_of([{**samples()[0], "__key__": "/abs/evil0002"}])),
    ["m.tar", "evil0002"])
add("tar/nested-member-dirs", 0, _with_members([], base=lambda: members_of(
    [{**s, "__key__": f"train/part1/{s['__key__']}"} for s in samples()])),
    note="folders inside member names are normal webdataset practice")
add("tar/gnu-long-member-names", 0, _with_members([], base=lambda: members_of(
    [{**s, "__key__": s["__key__"] + "x" * 150} for s in samples()])))
add("tar/pax-long-member-names", 0, _with_members([], fmt=tarfile.PAX_FORMAT, base=lambda: members_of(
    [{**s, "__key__": s["__key__"] + "y" * 150} for s in samples()])))
# a member without an extension belongs to no sample: counted as a bad sample, not dropped silently
add("tar/member-without-extension", 3, _with_members([Member("noext0001", samples()[0]["png"])]),
    ["m.tar", "noext0001"])
add("tar/duplicate-key-in-shard", 4, _with_members(members_of([samples()[0]])), ["m.tar", "k0000"])
add("tar/duplicate-member-adjacent", 4, _with_members([], base=lambda: [
    *members_of(samples()[:1]), Member("k0000.png", samples()[1]["png"]), *members_of(samples()[1:])]),
    ["m.tar", "k0000"], note="the same file name twice in one sample is a duplicate key (4)")


def _two_shards(tmp: Path, res: Resources) -> Built:
    a = good_tar(tmp / "a.tar")
    b = good_tar(tmp / "b.tar")
    return Built(distill([a, b], tmp / "out"), out=tmp / "out")


add("tar/duplicate-key-across-shards", 4, _two_shards, ["k0000"])


def _dir_named_tar(tmp: Path, res: Resources) -> Built:
    d = tmp / "dataset"
    good_tar(d / "a.tar")
    (d / "b.tar").mkdir()
    return Built(distill(d, tmp / "out"), out=tmp / "out")


add("tar/directory-named-dot-tar-in-folder", (3, 4), _dir_named_tar, ["b.tar"])


# ================================================================================================
# 2. members and images
# ================================================================================================

def _odd(members: dict | Callable[[], dict], *extra, name: str = "img.tar", key: str = "odd0001",
         first: bool = False):
    """Good samples plus one sample `key` with `members` (ext -> bytes); with `first`, it comes first."""
    def build(tmp: Path, res: Resources) -> Built:
        m = members() if callable(members) else members
        odd = {"__key__": key, **m}
        ss = [odd, *samples()] if first else [*samples(), odd]
        p = write_members(tmp / name, members_of(ss))
        return Built(distill(p, tmp / "out", *extra), out=tmp / "out")
    return build


def _png_of(arr: np.ndarray) -> bytes:
    return png_bytes(arr)


def _good_png() -> bytes:
    return samples()[0]["png"]


def _mode_png(mode: str) -> Callable[[], bytes]:
    from PIL import Image

    return lambda: pil_bytes(Image.fromarray(gray()).convert(mode), "PNG")


BAD_IMAGES: dict[str, Callable[[], dict]] = {
    "no-image-member": lambda: {"cls": b"0", "txt": b"hello"},
    "unknown-image-extension": lambda: {"xyz": _good_png(), "cls": b"0"},
    "empty-png": lambda: {"png": b"", "cls": b"0"},
    "random-bytes-png": lambda: {"png": _garbage[:700], "cls": b"0"},
    "png-signature-only": lambda: {"png": b"\x89PNG\r\n\x1a\n", "cls": b"0"},
    "png-truncated-idat": lambda: {"png": _good_png()[:len(_good_png()) // 2], "cls": b"0"},
    "png-ihdr-bad-crc": lambda: {"png": raw_png(28, 28, crc_ok=False), "cls": b"0"},
    "png-bad-bit-depth": lambda: {"png": raw_png(28, 28, depth=7), "cls": b"0"},
    "png-bad-color-type": lambda: {"png": raw_png(28, 28, color=5), "cls": b"0"},
    "png-zero-width": lambda: {"png": raw_png(0, 28), "cls": b"0"},
    "png-zero-height": lambda: {"png": raw_png(28, 0), "cls": b"0"},
    "png-idat-not-zlib": lambda: {"png": raw_png(28, 28, idat=_garbage[:300]), "cls": b"0"},
    "text-as-jpg": lambda: {"jpg": b"hello, not a jpeg", "cls": b"0"},
    "jpeg-soi-only": lambda: {"jpg": b"\xff\xd8", "cls": b"0"},
    "truncated-jpeg": lambda: {"jpg": jpeg_with_size(28, 28)[:300], "cls": b"0"},
}
for _name, _m in BAD_IMAGES.items():
    add(f"image/{_name}", 3, _odd(_m), ["img.tar", "odd0001"])

# decompression bombs: dimensions come from the header; refused before decoding (--max-pixels,
# default 64 MP), fast and without allocating the image
for _name, (_w, _h, _fmt) in {"png-bomb-100000x100000": (100000, 100000, "png"),
                              "png-bomb-8200x8200": (8200, 8200, "png"),
                              "png-bomb-wide-strip": (2**31 - 1, 1, "png"),
                              "jpeg-bomb-65000x65000": (65000, 65000, "jpg")}.items():
    add(f"image/{_name}", 3, _odd((lambda w, h, f: lambda: {
        f: raw_png(w, h) if f == "png" else jpeg_with_size(w, h), "cls": b"0"})(_w, _h, _fmt)),
        ["img.tar", "odd0001", "pixels"], proc=_name == "png-bomb-100000x100000", timeout=30)
add("image/max-pixels-below-image-size", 3, on_tar("--max-pixels", "100"), ["in.tar", "k0000", "pixels"],
    note="28x28 = 784 pixels > --max-pixels 100: every sample is refused")
add("image/max-pixels-zero", 2, on_tar("--max-pixels", "0"), ["--max-pixels"])

add("image/mixed-sizes", 4, _odd(lambda: {"png": _png_of(gray(32)), "cls": b"0"}), ["img.tar", "odd0001", "--size"])
add("image/mixed-sizes-with-size", 0, _odd(lambda: {"png": _png_of(gray(32)), "cls": b"0"}, "--size", "20"),
    note="--size makes mixed sizes one size")
add("image/mixed-channels-with-channels", 0,
    _odd(lambda: {"png": _png_of(np.zeros((28, 28, 3), np.uint8)), "cls": b"0"}, "--channels", "1"))
add("image/mixed-channels", 4, _odd(lambda: {"png": _png_of(np.zeros((28, 28, 3), np.uint8)), "cls": b"0"}),
    ["img.tar", "odd0001"])
add("image/rgba-after-gray", 4, _odd(lambda: {"png": _mode_png("RGBA")(), "cls": b"0"}), ["img.tar", "odd0001"],
    note="RGBA decodes to RGB: 3 channels after 1")


def _mixed_size_shards(tmp: Path, res: Resources) -> Built:
    a = good_tar(tmp / "a.tar")
    b = good_tar(tmp / "b.tar", size=32, prefix="big")
    return Built(distill([a, b], tmp / "out"), out=tmp / "out")


add("image/mixed-sizes-across-shards", 4, _mixed_size_shards, ["b.tar", "big0000"])


def _all_mode(make: Callable[[np.ndarray], bytes], ext: str = "png"):
    def build(tmp: Path, res: Resources) -> Built:
        ss = [{"__key__": s["__key__"], ext: make(i), "cls": s["cls"]} for i, s in enumerate(samples())]
        p = write_members(tmp / "modes.tar", members_of(ss))
        return Built(distill(p, tmp / "out"), out=tmp / "out")
    return build


def _pil_mode(mode: str, fmt: str = "PNG"):
    from PIL import Image

    def make(i: int) -> bytes:
        x, _ = _images(2, 2, 28, 0)
        if mode == "I;16":
            return pil_bytes(Image.fromarray(x[i].astype(np.uint16) * 257), fmt)
        return pil_bytes(Image.fromarray(x[i]).convert(mode), fmt)
    return make


# image modes that decode fine (one mode per dataset): these must be accepted
for _mode, _fmt, _ext in [("I;16", "PNG", "png"), ("P", "PNG", "png"), ("RGBA", "PNG", "png"), ("LA", "PNG", "png"),
                          ("1", "PNG", "png"), ("CMYK", "JPEG", "jpg"), ("RGB", "BMP", "bmp"),
                          ("L", "TIFF", "tiff")]:
    add(f"image/all-{_mode.replace(';', '').lower()}-{_ext}", 0, _all_mode(_pil_mode(_mode, _fmt), _ext),
        note="decodes fine")


# ================================================================================================
# 3. labels (.cls)
# ================================================================================================

BAD_LABELS: dict[str, tuple[bytes | None, int]] = {
    "missing": (None, 3),
    "empty": (b"", 3),
    "whitespace-only": (b"  \n", 3),
    "word": (b"seven", 3),
    "float": (b"1.5", 3),
    "exponent": (b"1e3", 3),
    "hex": (b"0x1", 3),
    "python-underscore": (b"1_0", 3),    # int("1_0") == 10 in Python; not a label a shard writer meant
    "nan": (b"nan", 3),
    "two-numbers": (b"1 2", 3),
    "json-object": (b'{"label": 1}', 3),
    "non-ascii-bytes": (b"\xff\xfe1", 3),
    "nul-byte": (b"1\x00", 3),
    "arabic-indic-digit": ("١".encode(), 3),  # int() accepts Unicode digits; labels are ASCII
    "fullwidth-digit": ("１".encode(), 3),
    # beyond int64: an implausible label like 10^9 (exit 4, issue 23; was a bad sample, 3)
    "int64-overflow": (b"99999999999999999999999", 4),
    "int64-max-plus-one": (b"9223372036854775808", 4),
    "below-int64-min": (b"-9223372036854775809", 4),
    "negative": (b"-1", 4),
    "negative-large": (b"-1000000000", 4),
}


def _label(cls: bytes | None, *extra):
    def members() -> dict:
        return {"png": _good_png(), **({} if cls is None else {"cls": cls})}
    return _odd(members, *extra, name="lab.tar", key="lbl0001")


for _name, (_cls, _code) in BAD_LABELS.items():
    add(f"label/{_name}", _code, _label(_cls), ["lab.tar", "lbl0001"] if _code == 3 else ["lbl0001"])
# a label far beyond the number of samples fails at once (exit 4), without building a class list
# of that size; run with a memory cap
for _name, _cls in {"huge-1e9": b"1000000000", "beyond-int32": b"2147483648",
                    "int64-max": b"9223372036854775807"}.items():
    add(f"label/{_name}", 4, _label(_cls), ["lbl0001", _cls.decode()], proc=True, timeout=30)
add("label/trailing-newline", 0, _label(b"1\n"), note="surrounding whitespace is fine")


def _label_gap(tmp: Path, res: Resources) -> Built:
    ss = samples()
    ss[2]["cls"] = ss[3]["cls"] = b"2"          # classes 0 and 2, none of class 1
    p = write_members(tmp / "gap.tar", members_of(ss))
    return Built(distill(p, tmp / "out"), out=tmp / "out")


add("label/gap-in-classes", 4, _label_gap, ["class 1"])


def _all_bad_labels(tmp: Path, res: Resources) -> Built:
    ss = [{**s, "cls": b"x"} for s in samples()]
    p = write_members(tmp / "lab.tar", members_of(ss))
    return Built(distill(p, tmp / "out", "--max-bad", "100"), out=tmp / "out")


add("label/every-label-bad-under-max-bad", 4, _all_bad_labels, ["lab.tar"])


# labels under --label-key json:label / txt (other tools' shards): the good samples carry their
# label as {"label": "<class name>"}; one odd sample's member is malformed
BAD_JSON_LABELS: dict[str, tuple[bytes, int]] = {
    "not-json": (b'{"label": ', 3),
    "missing-field": (b'{"labels": "a"}', 3),
    "field-of-a-string": (b'"a"', 3),
    "bool": (b'{"label": true}', 3),
    "null": (b'{"label": null}', 3),
    "float": (b'{"label": 1.0}', 3),
    "list": (b'{"label": ["a"]}', 3),
    "empty-string": (b'{"label": "  "}', 3),
    "caption-not-a-name": (b'{"label": "' + b"word " * 100 + b'"}', 3),
    "int64-overflow": (b'{"label": 99999999999999999999999}', 4),   # issue 23: was 3
    "deep-nesting": (b"[" * 100000, 3),          # json.loads raises RecursionError, not ValueError
    "not-utf8": (b'{"label": "\xff"}', 3),
    "negative-int": (b'{"label": -1}', 4),
    "int-mixed-with-names": (b'{"label": 0}', 4),   # indices and class names without a class list
}


def _json_label(data: bytes, *extra, names: Sequence[str] | None = None):
    def build(tmp: Path, res: Resources) -> Built:
        name = {b"0": b"a", b"1": b"b"}
        ss = [{"__key__": s["__key__"], "png": s["png"], "json": b'{"label": "%s"}' % name[s["cls"]]}
              for s in samples()]
        ss.append({"__key__": "lbl0001", "png": _good_png(), "json": data})
        p = write_members(tmp / "lab.tar", members_of(ss))
        more = []
        if names is not None:
            (tmp / "names.txt").write_text("".join(f"{n}\n" for n in names))
            more = ["--class-names", str(tmp / "names.txt")]
        return Built(distill(p, tmp / "out", "--label-key", "json:label", *more, *extra), out=tmp / "out")
    return build


for _name, (_data, _code) in BAD_JSON_LABELS.items():
    add(f"label/json-{_name}", _code, _json_label(_data), ["lab.tar", "lbl0001"] if _code == 3 else ["lbl0001"])
add("label/json-good", 0, _json_label(b'{"label": "b"}'), note="string labels map to their sorted order")
add("label/json-not-in-class-names", 4, _json_label(b'{"label": "c"}', names=("a", "b")), ["lbl0001", "'c'"])
add("label/json-int-indexes-class-names", 0, _json_label(b'{"label": 1}', names=("a", "b")),
    note="with a class list, integer labels index it and names map by position")
add("label/class-names-file-duplicate", 4, _json_label(b'{"label": "a"}', names=("a", "b", "a")),
    ["names.txt", "appears twice"])
add("label/class-names-file-missing", 4, _json_label(b'{"label": "a"}', "--class-names", "/nonexistent/names.txt"),
    ["names.txt"], note="the last --class-names wins: a missing file names it")
add("label/bad-label-key", 2, _json_label(b'{"label": "a"}', "--label-key", "cls:label"), ["--label-key"])
add("label/resize-mode-without-size", 2, _json_label(b'{"label": "a"}', "--resize-mode", "pad"), ["--size"])


# ================================================================================================
# 5 (first: used by labels too). input manifests: a folder with shards + manifest.json
# ================================================================================================

def input_manifest(folder: Path, shards: Sequence[Path], class_names=("a", "b"), nsamples: int = 4) -> dict:
    rows = [{"url": p.name, "nsamples": nsamples, "filesize": p.stat().st_size, "md5sum": md5(p.read_bytes())}
            for p in shards]
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": "fuzz-train", "shardlist": rows,
            "dcompress": {"format_version": 1, "kind": "input", "split": "train", "num_samples": 4 * len(rows),
                          "class_names": list(class_names)}}


def _manifest_case(mutate: Callable[[dict, Path], dict | bytes | None], *, arg: str = "folder", extra_tar=None):
    """`in/train-000000.tar` + `in/manifest.json` = mutate(valid manifest, tmp); distill `in/`."""
    def build(tmp: Path, res: Resources) -> Built:
        d = tmp / "in"
        tar = good_tar(d / "train-000000.tar")
        if extra_tar is not None:
            extra_tar(tmp)
        m = mutate(input_manifest(d, [tar]), tmp)
        mp = d / "manifest.json"
        if isinstance(m, bytes):
            mp.write_bytes(m)
        elif m is not None:
            mp.write_text(json.dumps(m))
        src = d if arg == "folder" else mp
        return Built(distill(src, tmp / "out"), out=tmp / "out", check=marker_absent(tmp / "MARKER"))
    return build


def _set(path: str, value):
    """mutate: sets manifest[path] (dotted; `shardlist.0.url` indexes lists)."""
    def mutate(m: dict, tmp: Path) -> dict:
        parts = path.split(".")
        obj = m
        for p in parts[:-1]:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        v = value(tmp) if callable(value) else value
        if v is _DELETE:
            del obj[parts[-1]]
        elif isinstance(obj, list):
            obj[int(parts[-1])] = v
        else:
            obj[parts[-1]] = v
        return m
    return mutate


_DELETE = object()
MANIFEST_TEXT: dict[str, bytes] = {
    "not-json": b"{this is not json",
    "empty-file": b"",
    "invalid-utf8": b'\xff\xfe{"__kind__": 1}',
    "deeply-nested": b"[" * 100000 + b"]" * 100000,
    "json-array": b"[]",
    "json-number": b"42",
    "json-null": b"null",
    "json-string": b'"train-000000.tar"',
}
for _name, _text in MANIFEST_TEXT.items():
    add(f"manifest/{_name}", 4, _manifest_case((lambda t: lambda m, tmp: t)(_text)), ["manifest.json"])
add("manifest/direct-path-not-json", 4, _manifest_case(lambda m, tmp: b"{nope", arg="file"), ["manifest.json"])


def _outside_tar(tmp: Path) -> None:
    good_tar(tmp / "outside.tar", prefix="o")


def _pipe_url(tmp: Path) -> str:
    return f"pipe:touch {tmp / 'MARKER'}"


MANIFEST_FIELDS: list[tuple[str, str, object, tuple[str, ...]]] = [
    ("kind-wrong", "__kind__", "tar-index", ("manifest.json", "__kind__")),
    ("kind-missing", "__kind__", _DELETE, ("manifest.json", "__kind__")),
    ("shardlist-missing", "shardlist", _DELETE, ("manifest.json", "shardlist")),
    ("shardlist-object", "shardlist", {"url": "train-000000.tar"}, ("manifest.json", "shardlist")),
    ("shardlist-string", "shardlist", "train-000000.tar", ("manifest.json", "shardlist")),
    ("shardlist-empty", "shardlist", [], ("manifest.json", "shardlist")),
    ("row-not-object", "shardlist.0", "train-000000.tar", ("manifest.json", "shardlist")),
    ("row-without-url", "shardlist.0.url", _DELETE, ("manifest.json", "url")),
    ("url-not-string", "shardlist.0.url", 5, ("manifest.json", "url")),
    ("url-null", "shardlist.0.url", None, ("manifest.json", "url")),
    ("url-empty-string", "shardlist.0.url", "", ("manifest.json", "url")),
    ("url-missing-shard", "shardlist.0.url", "train-000009.tar", ("train-000009.tar",)),
    ("url-absolute-etc-passwd", "shardlist.0.url", "/etc/passwd", ("manifest.json", "/etc/passwd")),
    ("url-http", "shardlist.0.url", "http://127.0.0.1:9/x.tar", ("manifest.json", "http://127.0.0.1:9/x.tar")),
    ("url-file-scheme", "shardlist.0.url", "file:///etc/passwd", ("manifest.json", "file:///etc/passwd")),
    ("dcompress-block-list", "dcompress", ["class_names"], ("manifest.json", "dcompress")),
    ("class-names-string", "dcompress.class_names", "ab", ("manifest.json", "class_names")),
    ("class-names-ints", "dcompress.class_names", [0, 1], ("manifest.json", "class_names")),
    ("class-names-empty", "dcompress.class_names", [], ("k0000",)),
]
for _name, _path, _value, _expect in MANIFEST_FIELDS:
    add(f"manifest/{_name}", 4, _manifest_case(_set(_path, _value)), _expect)
# rows resolve inside the manifest's folder: no pipes, no '..', no absolute paths
add("manifest/url-pipe-command", 4, _manifest_case(_set("shardlist.0.url", _pipe_url)), ["manifest.json", "pipe:"])
add("manifest/url-dotdot", 4, _manifest_case(_set("shardlist.0.url", "../outside.tar"), extra_tar=_outside_tar),
    ["manifest.json", "../outside.tar"])
add("manifest/url-dotdot-nested", 4, _manifest_case(_set("shardlist.0.url", "sub/../../outside.tar"),
                                                    extra_tar=_outside_tar), ["manifest.json", "outside.tar"])
add("manifest/duplicate-rows", 4, _manifest_case(lambda m, tmp: {**m, "shardlist": m["shardlist"] * 2}), ["k0000"])
add("manifest/class-names-null", 0, _manifest_case(_set("dcompress.class_names", None)),
    note="null = absent: numeric class names")
add("manifest/valid", 0, _manifest_case(lambda m, tmp: m), proc=True, note="a success through a real process")


def _manifest_is_dir(tmp: Path, res: Resources) -> Built:
    d = tmp / "in"
    good_tar(d / "train-000000.tar")
    (d / "manifest.json").mkdir()
    return Built(distill(d, tmp / "out"), out=tmp / "out")


add("manifest/is-a-directory", 4, _manifest_is_dir, ["manifest.json"])


def _label_outside_manifest(tmp: Path, res: Resources) -> Built:
    d = tmp / "in"
    tar = good_tar(d / "train-000000.tar", extra=[{"__key__": "x0001", "png": _good_png(), "cls": b"2"}])
    # the row lists the 5 samples the shard holds (a row that disagrees is a damaged shard)
    (d / "manifest.json").write_text(json.dumps(input_manifest(d, [tar], nsamples=5)))
    return Built(distill(d, tmp / "out"), out=tmp / "out")


add("label/outside-manifest-class-list", 4, _label_outside_manifest, ["x0001"])


# ================================================================================================
# 4. URLs typed by the user
# ================================================================================================

def _urls(make: Callable[[Path], list[str]], *, cwd_tmp: bool = False):
    def build(tmp: Path, res: Resources) -> Built:
        return Built(distill(make(tmp), tmp / "out"), out=tmp / "out", cwd=tmp if cwd_tmp else None,
                     check=marker_absent(tmp / "MARKER"))
    return build


def _xshards(tmp: Path, *idx: int) -> None:
    for i in idx:
        good_tar(tmp / f"x-{i:06d}.tar", prefix=f"s{i}-")


def _folder_with(tmp: Path, files: dict[str, bytes]) -> Path:
    d = tmp / "nodata"
    d.mkdir()
    for n, b in files.items():
        (d / n).write_bytes(b)
    return d


add("url/missing-shard", 4, _urls(lambda t: [str(t / "nope.tar")]), ["nope.tar"])
add("url/missing-in-brace-range", 4, _urls(lambda t: (_xshards(t, 0, 2), [str(t / "x-{000000..000002}.tar")])[1]),
    ["x-000001.tar"])
add("url/unbalanced-open-brace", 2, _urls(lambda t: (_xshards(t, 0, 1), [str(t / "x-{000000..000001.tar")])[1]),
    ["x-{000000..000001.tar"])
add("url/unbalanced-close-brace", 2, _urls(lambda t: (_xshards(t, 0, 1), [str(t / "x-000000..000001}.tar")])[1]),
    ["x-000000..000001}.tar"])
add("url/nested-unbalanced-braces", 2, _urls(lambda t: [str(t / "x-{{000000..000001}.tar")]), ["x-{{000000"])
add("url/empty-brace-range", 2, _urls(lambda t: [str(t / "x-{}.tar")]), ["x-{}.tar"])
# braceexpand materialises ranges: a range of 1e9 names must not be built before the first miss
add("url/huge-brace-range", 2, _urls(lambda t: [str(t / "x-{000000000..999999999}.tar")]),
    ["x-{000000000..999999999}.tar", "more than"], proc=True, timeout=30,
    note="a pattern naming a billion shards is a typo: refused before expanding it")
add("url/folder-without-tars", 4, _urls(lambda t: [str(_folder_with(t, {"readme.txt": b"hi"}))]), ["nodata"])
add("url/empty-folder", 4, _urls(lambda t: [str(_folder_with(t, {}))]), ["nodata"])
add("url/glob-pattern", 0, _urls(lambda t: (_xshards(t, 0), [str(t / "*.tar")])[1]),
    note="a quoted glob works like a brace pattern")
add("url/glob-matches-nothing", 4, _urls(lambda t: [str(t / "nothing-*.tar")]), ["nothing-*.tar"])
add("url/manifest-json-path-missing", 4, _urls(lambda t: [str(t / "missing.json")]), ["missing.json"])
add("url/same-shard-twice", 4, _urls(lambda t: (_xshards(t, 0), [str(t / "x-000000.tar")] * 2)[1]), ["s0-0000"])
add("url/empty-string", 2, _urls(lambda t: [""], cwd_tmp=True), ["URL"],
    note="an empty URL is a usage error, never the current folder")
# nothing listens on port 9 (discard): the run fails fast, naming the URL and the network error
add("url/http-refused", 4, _urls(lambda t: ["http://127.0.0.1:9/x.tar"]),
    ["http://127.0.0.1:9/x.tar", "status 7 (could not connect)"], proc=True, timeout=30)
add("url/https-refused", 4, _urls(lambda t: ["https://127.0.0.1:9/x.tar"]),
    ["https://127.0.0.1:9/x.tar", "status 7 (could not connect)"])
# a pipe: URL typed by the user is allowed; a command that fails makes the input unusable (4)
add("url/user-pipe-fails", 4, _urls(lambda t: ["pipe:false"]), ["pipe:false", "status 1"])
add("url/user-pipe-cat", 0, _urls(lambda t: (_xshards(t, 0), [f"pipe:cat {t / 'x-000000.tar'}"])[1]))


# ================================================================================================
# 6. configs and options
# ================================================================================================

def _dm(*sets: str):
    """dm with tiny settings then `sets` (later --set wins)."""
    return on_tar(*DM_SETS, *sets, method="dm")


def _sets(*items: str) -> tuple[str, ...]:
    return tuple(x for it in items for x in ("--set", it))


CONFIG_SETS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    # (id, method, --set items, expect_in)
    ("set-lr-img-negative", "dm", ("lr_img=-1",), ("lr_img",)),
    ("set-lr-img-nan", "dm", ("lr_img=nan",), ("lr_img",)),
    ("set-lr-img-inf", "dm", ("lr_img=inf",), ("lr_img",)),
    ("set-iterations-negative", "dm", ("iterations=-5",), ("iterations",)),
    ("set-iterations-word", "dm", ("iterations=ten",), ("iterations",)),
    ("set-iterations-float", "dm", ("iterations=1.5",), ("iterations",)),
    ("set-iterations-bool", "dm", ("iterations=true",), ("iterations",)),
    ("set-batch-real-zero", "dm", ("batch_real=0",), ("batch_real",)),
    ("set-init-not-in-choices", "dm", ("pix_init=bogus",), ("pix_init",)),
    ("set-model-unknown", "dm", ("model=notanet",), ("notanet",)),
    ("set-model-empty", "dm", ("model=",), ("model",)),
    ("set-dsa-strategy-unknown-op", "dm", ("dsa_strategy=bogus_op",), ("bogus_op",)),
    ("set-yaml-python-tag-unknown-key", "random", ("evilkey=!!python/object/apply:os.system [echo hi]",),
     ("evilkey",)),
    ("set-yaml-unclosed-list", "dm", ("lr_img=[1, 2",), ("lr_img",)),
    ("set-yaml-mapping-for-float", "dm", ("lr_img={a: 1}",), ("lr_img",)),
    ("set-unknown-key", "random", ("foo=1",), ("foo",)),
    ("set-no-equals", "random", ("noequals",), ("noequals",)),
    ("set-empty-key", "random", ("=5",), ("=5",)),
]
for _name, _method, _items, _expect in CONFIG_SETS:
    _b = _dm(*_sets(*_items)) if _method == "dm" else on_tar(*_sets(*_items))
    add(f"config/{_name}", 2, _b, _expect)


def _python_tag_set(tmp: Path, res: Resources) -> Built:
    b = _dm("--set", f"lr_img=!!python/object/apply:os.system [\"touch {tmp / 'MARKER'}\"]")(tmp, res)
    return dataclasses.replace(b, check=marker_absent(tmp / "MARKER"))


add("config/set-yaml-python-tag-valid-key", 2, _python_tag_set, ["lr_img"])


def _config_file(content: bytes | Callable[[Path], bytes] | None, *, kind: str = "file", method: str = "random",
                 proc_marker: bool = False):
    def build(tmp: Path, res: Resources) -> Built:
        cfg = tmp / "cfg.yaml"
        if kind == "dir":
            cfg.mkdir()
        elif kind == "file":
            cfg.write_bytes(content(tmp) if callable(content) else content)
        extra = DM_SETS if method == "dm" else ()
        tar = good_tar(tmp / "in.tar")
        return Built(distill(tar, tmp / "out", "--config", cfg, *extra, method=method), out=tmp / "out",
                     check=marker_absent(tmp / "MARKER"))
    return build


def _alias_bomb() -> bytes:
    """`dsa_strategy:` a list whose last item nests 9 levels of 9 aliases (9^9 strings by reference)."""
    lines = ["dsa_strategy:", '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, n in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  - &{n} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines).encode()


add("config/file-binary", 2, _config_file(_garbage[:512] + b"\0\0"), ["cfg.yaml"])
add("config/file-is-folder", 2, _config_file(None, kind="dir"), ["cfg.yaml"])
add("config/file-missing", 2, _config_file(None, kind="missing"), ["cfg.yaml"])
add("config/file-yaml-list", 2, _config_file(b"- lr_img\n- 1\n"), ["cfg.yaml"])
add("config/file-yaml-scalar", 2, _config_file(b"hello\n"), ["cfg.yaml"])
add("config/file-invalid-yaml", 2, _config_file(b"lr_img: [1,\n"), ["cfg.yaml"])
add("config/file-unknown-key", 2, _config_file(b"bogus: 1\n"), ["cfg.yaml", "bogus"])
add("config/file-python-tag", 2, _config_file(
    lambda t: f"lr_img: !!python/object/apply:os.system [\"touch {t / 'MARKER'}\"]\n".encode(), method="dm"),
    ["cfg.yaml", "lr_img"])
add("config/file-non-string-key", 2, _config_file(b"1: 2\n", method="dm"), ["cfg.yaml"])
# 9^9 list elements by reference: neither coercion nor the error message may expand it
add("config/file-yaml-alias-bomb", 2, _config_file(_alias_bomb(), method="dm"), ["cfg.yaml", "dsa_strategy"],
    proc=True, timeout=30)
add("config/file-empty", 0, _config_file(b""), note="an empty config file is an empty mapping")

OPTION_CASES: list[tuple[str, tuple, dict, int, tuple[str, ...]]] = [
    # (id, extra argv, on_tar kwargs, code, expect_in)
    ("ipc-zero", ("--ipc", "0"), {}, 2, ("--ipc",)),
    ("ipc-negative", ("--ipc", "-3"), {}, 2, ("--ipc",)),
    ("ipc-exceeds-class-size", ("--ipc", "3"), {}, 4, ("--ipc 3",)),
    ("ratio-zero", ("--ratio", "0"), {"ipc": None}, 2, ("--ratio",)),
    ("ratio-above-one", ("--ratio", "1.5"), {"ipc": None}, 2, ("--ratio",)),
    ("ratio-negative", ("--ratio", "-0.1"), {"ipc": None}, 2, ("--ratio",)),
    ("ratio-nan", ("--ratio", "nan"), {"ipc": None}, 2, ("--ratio",)),
    ("ratio-inf", ("--ratio", "inf"), {"ipc": None}, 2, ("--ratio",)),
    ("ipc-and-ratio", ("--ratio", "0.5"), {}, 2, ("--ipc", "--ratio")),
    ("neither-ipc-nor-ratio", (), {"ipc": None}, 2, ("--ipc", "--ratio")),
    ("shard-size-zero", ("--shard-size", "0"), {}, 2, ("--shard-size",)),
    ("shard-size-negative", ("--shard-size", "-4"), {}, 2, ("--shard-size",)),
    ("labels-bogus", ("--labels", "bogus"), {}, 2, ("--labels",)),
    ("labels-learned-for-selection", ("--labels", "learned"), {}, 2, ("learned",)),
    ("device-tpu", ("--device", "tpu"), {}, 2, ("--device",)),
    ("device-empty", ("--device", ""), {}, 2, ("--device",)),
    ("device-cuda-99", ("--device", "cuda:99"), {}, 2, ("cuda",)),
    ("method-unknown", ("--method", "magic"), {}, 2, ("magic",)),
    ("method-empty", ("--method", ""), {}, 2, ("method",)),
    ("method-path-like", ("--method", "../random"), {}, 2, ("../random",)),
    ("max-bad-negative", ("--max-bad", "-1"), {}, 2, ("--max-bad",)),
    ("ckpt-every-negative", ("--ckpt-every", "-1"), {}, 2, ("--ckpt-every",)),
    ("seed-beyond-uint64", ("--seed", str(2**70)), {}, 2, ("--seed",)),
    ("experts-for-random", ("--experts", "/nonexistent-buffer"), {}, 2, ("--experts",)),
    # typer/click-level errors: still exit 2 and one JSON object on stdout with --json
    ("typer-unknown-flag", ("--bogus",), {}, 2, ("--bogus",)),
    ("typer-ipc-not-int", ("--ipc", "abc"), {}, 2, ("--ipc",)),
    ("typer-ratio-not-float", ("--ratio", "half"), {"ipc": None}, 2, ("--ratio",)),
    ("typer-max-bad-not-int", ("--max-bad", "many"), {}, 2, ("--max-bad",)),
]
for _name, _extra, _kw, _code, _expect in OPTION_CASES:
    add(f"config/{_name}", _code, on_tar(*_extra, **_kw), _expect)


def _argv_only(argv: Callable[[Path], list[str]], out: str | None = "out"):
    def build(tmp: Path, res: Resources) -> Built:
        good_tar(tmp / "in.tar")
        return Built([str(a) for a in argv(tmp)], out=(tmp / out) if out else None)
    return build


add("config/typer-missing-method", 2, _argv_only(lambda t: ["distill", t / "in.tar", "-o", t / "out", "--ipc", "1",
                                                             "--json"]), ["--method"])
add("config/typer-missing-urls", 2, _argv_only(lambda t: ["distill", "--method", "random", "-o", t / "out",
                                                           "--ipc", "1", "--json"]), ["URLS"])
add("config/typer-unknown-command", 2, _argv_only(lambda t: ["frobnicate", t / "in.tar", "--json"]), ["frobnicate"],
    note="--json anywhere on the line asks for a JSON error")
add("config/typer-experts-missing-num-experts", 2, _argv_only(
    lambda t: ["experts", t / "in.tar", "-o", t / "out", "--json"]), ["--num-experts"], proc=True)


def _eval_opts(*extra):
    def build(tmp: Path, res: Resources) -> Built:
        out = tmp / "out"
        shutil.copytree(res.good_output, out)
        return Built(evaluate(out, res.test_tar, *extra))
    return build


for _name, _extra, _expect in [("runs-zero", ("--runs", "0"), "--runs"), ("runs-negative", ("--runs", "-2"), "--runs"),
                               ("test-limit-zero", ("--test-limit", "0"), "--test-limit"),
                               ("test-limit-negative", ("--test-limit", "-5"), "--test-limit"),
                               ("epochs-zero", ("--epochs", "0"), "--epochs"),
                               ("model-unknown", ("--model", "notanet"), "notanet")]:
    add(f"config/evaluate-{_name}", 2, _eval_opts(*_extra), [_expect])
add("config/typer-evaluate-missing-test", 2, _argv_only(lambda t: ["evaluate", t / "out", "--json"], out=None),
    ["--test"])


# ---- `dcompress shard` sources (idx files, ImageFolder) and options

def _idx_folder(tmp: Path, images: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
    d = tmp / "idx"
    x, y = _images(2, 2, 28, 0)
    write_idx(d, "train", x if images is None else images, y if labels is None else labels)
    return d


def _shard(setup: Callable[[Path], Path], *extra):
    def build(tmp: Path, res: Resources) -> Built:
        src = setup(tmp)
        return Built(["shard", str(src), str(tmp / "shards"), "--json", *map(str, extra)], out=tmp / "shards")
    return build


def _idx_images_file(content: bytes, gz: bool = True):
    def setup(tmp: Path) -> Path:
        d = _idx_folder(tmp)
        img = d / "train-images-idx3-ubyte.gz"
        img.write_bytes(gzip.compress(content, mtime=0) if gz else content)
        return d
    return setup


add("config/shard-cmd-size-zero", 2, _shard(_idx_folder, "--shard-size", "0"), ["--shard-size"])
add("config/shard-cmd-size-negative", 2, _shard(_idx_folder, "--shard-size", "-1"), ["--shard-size"])
add("config/shard-split-bogus", 2, _shard(_idx_folder, "--split", "bogus"), ["--split"])
add("config/shard-format-bogus", 2, _shard(_idx_folder, "--format", "bogus"), ["--format"])
add("config/shard-source-missing", 4, _shard(lambda t: t / "nosuch"), ["nosuch"])
IDX_IMAGES: dict[str, bytes] = {
    "empty": b"",
    "short-header": b"\x00\x00\x08",
    "garbage": _garbage[:400],
    "ndim-255": b"\x00\x00\x08\xff" + bytes(8),
    "float-dtype": b"\x00\x00\x0d\x03" + struct.pack(">3I", 4, 28, 28) + bytes(4 * 28 * 28 * 4),
    "dims-overflow": b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(64),
    "body-short": b"\x00\x00\x08\x03" + struct.pack(">3I", 4, 28, 28) + bytes(2 * 28 * 28),
}
for _name, _content in IDX_IMAGES.items():
    add(f"config/shard-idx-{_name}", 4, _shard(_idx_images_file(_content)), ["train-images-idx3-ubyte"])
add("config/shard-idx-gzip-corrupt", 4, _shard(lambda t: (lambda d: ((d / "train-images-idx3-ubyte.gz").write_bytes(
    gzip.compress(bytes(100), mtime=0)[:30] + _garbage[:50]), d)[1])(_idx_folder(t))), ["train-images-idx3-ubyte"])


def _idx_labels(labels_raw: bytes | None):
    def setup(tmp: Path) -> Path:
        d = _idx_folder(tmp)
        lab = d / "train-labels-idx1-ubyte.gz"
        if labels_raw is None:
            lab.unlink()
        else:
            lab.write_bytes(gzip.compress(labels_raw, mtime=0))
        return d
    return setup


add("config/shard-idx-count-mismatch", 4, _shard(_idx_labels(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes(3))),
    ["idx"])
add("config/shard-idx-labels-2d", 4, _shard(_idx_labels(b"\x00\x00\x08\x02" + struct.pack(">2I", 4, 1) + bytes(4))),
    ["train-labels-idx1-ubyte"])
add("config/shard-idx-labels-missing", 4, _shard(_idx_labels(None)), ["train-labels"])
add("config/shard-idx-zero-samples", 4, _shard(lambda t: _idx_folder(t, np.zeros((0, 28, 28), np.uint8),
                                                                      np.zeros(0, np.uint8))), ["idx"])


def _imagefolder(classes: dict[str, dict[str, bytes]]):
    def setup(tmp: Path) -> Path:
        d = tmp / "folder"
        d.mkdir()
        (d / "README.txt").write_text("not a class")
        for c, files in classes.items():
            (d / c).mkdir()
            for n, b in files.items():
                (d / c / n).write_bytes(b)
        return d
    return setup


add("config/shard-imagefolder-no-classes", 4, _shard(_imagefolder({})), ["folder"])
add("config/shard-imagefolder-empty-classes", 4, _shard(_imagefolder({"cat": {}, "dog": {"notes.txt": b"x"}})),
    ["folder"])


# ================================================================================================
# 7. output location
# ================================================================================================

def _tree_input(tmp: Path) -> Path:
    """tmp/dataset_in/a.tar (+ a second shard)."""
    d = tmp / "dataset_in"
    good_tar(d / "a-000000.tar")
    good_tar(d / "a-000001.tar", prefix="b")
    return d


def _out_case(make_out: Callable[[Path, Path], Path], *extra, src: Callable[[Path, Path], object] | None = None):
    def build(tmp: Path, res: Resources) -> Built:
        d = _tree_input(tmp)
        out = make_out(tmp, d)
        inp = src(tmp, d) if src else d
        return Built(distill(inp, out, *extra), out=out)
    return build


# -o overlapping the input is a usage error (2), checked before anything else; input untouched
add("output/equals-input-folder", 2, _out_case(lambda t, d: d), ["dataset_in"])
add("output/inside-input-folder", 2, _out_case(lambda t, d: d / "out"), ["dataset_in"])
add("output/parent-of-input", 2, _out_case(lambda t, d: t), ["dataset_in"], note="checked before foreign-folder (5)")
add("output/equals-input-shard-file", 2, _out_case(lambda t, d: d / "a-000000.tar",
                                                   src=lambda t, d: d / "a-000000.tar"), ["a-000000.tar"])
add("output/equals-folder-of-brace-input", 2, _out_case(lambda t, d: d,
                                                        src=lambda t, d: d / "a-{000000..000001}.tar"),
    ["dataset_in"])


def _manifest_input_as_out(tmp: Path, res: Resources, extra=("--overwrite",)) -> Built:
    d = tmp / "dataset_in"
    tar = good_tar(d / "train-000000.tar")
    (d / "manifest.json").write_text(json.dumps(input_manifest(d, [tar])))
    return Built(distill(d, d, *extra), out=d)


add("output/equals-manifest-input-folder", 2, lambda t, r: _manifest_input_as_out(t, r, ()), ["dataset_in"],
    note="a `dcompress shard` folder is a dcompress folder, but never replaceable by the run reading it")
add("output/equals-manifest-input-even-with-overwrite", 2, _manifest_input_as_out, ["dataset_in"],
    note="a `dcompress shard` input folder is a dcompress folder, but never replaceable by its own run")


def _file_at(tmp: Path, name: str) -> Path:
    p = tmp / name
    p.write_text("precious\n")
    return p


add("output/under-regular-file", 5, _out_case(lambda t, d: _file_at(t, "file.txt") / "out"), ["file.txt"],
    proc=True)
add("output/existing-regular-file", 5, _out_case(lambda t, d: _file_at(t, "file.txt")), ["file.txt"])


def _foreign(tmp: Path, files: dict[str, bytes]) -> Path:
    out = tmp / "out"
    out.mkdir()
    for n, b in files.items():
        (out / n).write_bytes(b)
    return out


add("output/foreign-folder", 5, _out_case(lambda t, d: _foreign(t, {"precious.txt": b"keep"})), ["out"])
add("output/foreign-folder-with-bad-manifest", 5, _out_case(
    lambda t, d: _foreign(t, {"manifest.json": b"{garbage", "precious.txt": b"keep"})), ["out"])
add("output/foreign-folder-with-other-manifest", 5, _out_case(
    lambda t, d: _foreign(t, {"manifest.json": b'{"__kind__": "wids-shard-index-v1", "shardlist": []}'})), ["out"])
add("output/existing-empty-folder", 0, _out_case(lambda t, d: _foreign(t, {})))


def _existing_output(*extra: str):
    def build(tmp: Path, res: Resources) -> Built:
        d = _tree_input(tmp)
        out = tmp / "out"
        shutil.copytree(res.good_output, out)
        return Built(distill(d, out, *extra), out=out)
    return build


# replacing a previous output needs --overwrite; the message names what would be replaced
add("output/existing-output-without-overwrite", 2, _existing_output(), ["out", "--overwrite"])
add("output/existing-output-with-overwrite", 0, _existing_output("--overwrite"))


def _other_input_as_out(tmp: Path, res: Resources) -> Built:
    d = _tree_input(tmp)
    other = tmp / "other_in"
    tar = good_tar(other / "train-000000.tar")
    (other / "manifest.json").write_text(json.dumps(input_manifest(other, [tar])))
    return Built(distill(d, other), out=other)


add("output/existing-shard-input-folder", 2, _other_input_as_out, ["other_in"])


def _work_dir_is_file(tmp: Path, res: Resources) -> Built:
    d = _tree_input(tmp)
    (tmp / ".out.dcompress-work").write_text("not ours\n")
    return Built(distill(d, tmp / "out"), out=tmp / "out")


add("output/work-dir-path-is-a-file", 5, _work_dir_is_file, [".out.dcompress-work"],
    note="a file at the run's reserved work path is not ours to delete")


def _empty_out(tmp: Path, res: Resources) -> Built:
    d = _tree_input(tmp)
    argv = distill(d, "x")
    argv[argv.index("-o") + 1] = ""
    return Built(argv, cwd=tmp)


add("output/empty-string", 2, _empty_out, ["-o"], note="never the current folder")
add("output/shard-dest-regular-file", 5, _shard(lambda t: (_file_at(t, "shards"), _idx_folder(t))[1]), ["shards"])
add("output/shard-dest-foreign-folder", 5, _shard(lambda t: (_foreign(t, {"x.txt": b"x"}).rename(t / "shards"),
                                                             _idx_folder(t))[1]), ["shards"])


# ================================================================================================
# 8. checkpoints and teachers
# ================================================================================================

def checkpoint_argv(tmp: Path) -> list[str]:
    return distill(tmp / "in.tar", tmp / "out", "--ckpt-every", "1", *DM_SETS, method="dm")


def _ckpt(state: Callable[[Path, bytes], bytes | None], *, aside: bool = True, run_json: bytes | None = None):
    """Copies the interrupted dm run (input + work folder), replaces state.pt with state(tmp, old)."""
    def build(tmp: Path, res: Resources) -> Built:
        shutil.copy(res.ckpt / "in.tar", tmp / "in.tar")
        work = tmp / ".out.dcompress-work"
        shutil.copytree(res.ckpt / ".out.dcompress-work", work)
        sp = work / "state.pt"
        new = state(tmp, sp.read_bytes())
        if new is None:
            sp.unlink()
            sp.mkdir()
        else:
            sp.write_bytes(new)
        if run_json is not None:
            (work / "run.json").write_bytes(run_json)
        def work_cleared(r: Result) -> None:
            if r.code == 0:
                left = [p.name for p in (work / "state.pt", work / "run.json") if p.exists()]
                assert not left, f"{work.name}/{left} left beside -o after a successful run"

        checks = [marker_absent(tmp / "MARKER"), work_cleared]
        if aside:
            checks.append(mentions("state.pt"))
        return Built(checkpoint_argv(tmp), out=tmp / "out", may_change=(work,),
                     aside=new if aside and new else None, check=all_checks(*checks))
    return build


def _torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# a damaged checkpoint: the run says so (naming state.pt), keeps a copy aside, starts fresh, exits 0;
# nothing in it is ever unpickled
add("checkpoint/state-garbage", 0, _ckpt(lambda t, old: _garbage[:1000]), proc=True)
add("checkpoint/state-empty", 0, _ckpt(lambda t, old: b""))
add("checkpoint/state-truncated", 0, _ckpt(lambda t, old: old[:len(old) // 2]))
add("checkpoint/state-legacy-pickle-with-reduce", 0, _ckpt(lambda t, old: pickle.dumps({"iteration": 1,
                                                                                         "x": Evil(t / "MARKER")})))
add("checkpoint/state-torch-zip-with-reduce", 0, _ckpt(lambda t, old: _torch_bytes({"iteration": 1,
                                                                                    "x": Evil(t / "MARKER")})))
add("checkpoint/state-not-a-dict", 0, _ckpt(lambda t, old: _torch_bytes([1, 2, 3])))
add("checkpoint/state-wrong-shapes", 0, _ckpt(lambda t, old: _torch_bytes({"iteration": 1, "images": __import__(
    "torch").zeros(3), "optimizer": {}, "generator": __import__("torch").zeros(2, dtype=__import__("torch").uint8)})))
add("checkpoint/state-is-a-directory", 0, _ckpt(lambda t, old: None))
# an unreadable run.json means "not this run": the old state is discarded quietly
add("checkpoint/run-json-garbage", 0, _ckpt(lambda t, old: old, aside=False, run_json=b"{garbage"))


def _teacher(make: Callable[[Path, Resources], None], *, pt: str = "T.pt"):
    """random with --labels teacher --teacher tmp/T.pt; make() writes T.pt / T.json."""
    def build(tmp: Path, res: Resources) -> Built:
        tar = good_tar(tmp / "in.tar")
        make(tmp, res)
        return Built(distill(tar, tmp / "out", "--labels", "teacher", "--teacher", tmp / pt), out=tmp / "out",
                     check=marker_absent(tmp / "MARKER"))
    return build


def _write_teacher(state=None, sidecar: bytes | None = b'{"model": "%s"}' % NET.encode(), raw: bytes | None = None):
    def make(tmp: Path, res: Resources) -> None:
        pt = tmp / "T.pt"
        if raw is not None:
            pt.write_bytes(raw)
        elif state is not None:
            pt.write_bytes(_torch_bytes(state(tmp, res)))
        if sidecar is not None:
            (tmp / "T.json").write_bytes(sidecar)
    return make


def _teacher_for(channels: int, classes: int):
    def state(tmp: Path, res: Resources) -> dict:
        from dcompress.nets import build_net

        return build_net(NET, channels, classes, (28, 28)).state_dict()
    return state


GOOD_STATE = lambda t, r: r.teacher_state  # noqa: E731
TEACHER_CASES = {
    "missing-file": _write_teacher(None),
    "garbage": _write_teacher(raw=_garbage[:800]),
    "empty-file": _write_teacher(raw=b""),
    "sidecar-missing": _write_teacher(GOOD_STATE, sidecar=None),
    "sidecar-invalid-json": _write_teacher(GOOD_STATE, sidecar=b"{nope"),
    "sidecar-json-list": _write_teacher(GOOD_STATE, sidecar=b"[]"),
    "sidecar-without-model": _write_teacher(GOOD_STATE, sidecar=b"{}"),
    "sidecar-unknown-model": _write_teacher(GOOD_STATE, sidecar=b'{"model": "notanet"}'),
    "wrong-num-classes": _write_teacher(_teacher_for(1, 10)),
    "wrong-channels": _write_teacher(_teacher_for(3, 2)),
    "empty-state-dict": _write_teacher(lambda t, r: {}),
    "pickle-with-reduce": _write_teacher(lambda t, r: {"x": Evil(t / "MARKER")}),
    "legacy-pickle-with-reduce": lambda t, r: _write_teacher(raw=pickle.dumps({"x": Evil(t / "MARKER")}))(t, r),
}
for _name, _make in TEACHER_CASES.items():
    add(f"checkpoint/teacher-{_name}", 4, _teacher(_make), ["T."])


def _teacher_dir(tmp: Path, res: Resources) -> None:
    (tmp / "T.pt").mkdir()
    (tmp / "T.json").write_text(json.dumps({"model": NET}))


add("checkpoint/teacher-is-a-directory", 4, _teacher(_teacher_dir), ["T.pt"])
add("checkpoint/teacher-valid", 0, _teacher(_write_teacher(GOOD_STATE)))


# ================================================================================================
# 9. expert buffers
# ================================================================================================

def _buf(damage: Callable[[Path], object] | None, *, where: str = "BUF"):
    """mtt with --experts tmp/BUF (a copy of the session buffer, then damage(BUF))."""
    def build(tmp: Path, res: Resources) -> Built:
        buf = tmp / "BUF"
        shutil.copytree(res.buffer, buf)
        if damage is not None:
            damage(buf)
        tar = good_tar(tmp / "in.tar")
        return Built(distill(tar, tmp / "out", "--experts", tmp / where, *MTT_SETS, method="mtt"), out=tmp / "out",
                     check=marker_absent(tmp / "MARKER"))
    return build


def _bm(fn: Callable[[dict], object]):
    """damage: edits the buffer's manifest.json in place (fn's return value is ignored)."""
    def damage(buf: Path) -> None:
        m = json.loads((buf / "manifest.json").read_text())
        fn(m)
        (buf / "manifest.json").write_text(json.dumps(m))
    return damage


def _npy(arr_or_bytes):
    def damage(buf: Path) -> None:
        p = buf / "expert-00000.npy"
        v = arr_or_bytes(buf) if callable(arr_or_bytes) else arr_or_bytes
        if isinstance(v, np.ndarray):
            p.write_bytes(npy_bytes(v))
        else:
            p.write_bytes(v)
    return damage


def _good_traj(buf: Path) -> np.ndarray:
    return np.load(buf / "expert-00000.npy")


def _huge_header(buf: Path) -> bytes:
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 100000000000000), }"
    hdr = hdr + " " * (127 - 10 - len(hdr)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + bytes(64)


def _rm_npy_make_dir(buf: Path) -> None:
    (buf / "expert-00000.npy").unlink()
    (buf / "expert-00000.npy").mkdir()


BUFFER_CASES: dict[str, tuple[Callable | None, str, tuple[str, ...]]] = {
    "folder-missing": (lambda b: shutil.rmtree(b), "BUF", ("BUF",)),
    "not-a-folder": (lambda b: (shutil.rmtree(b), b.write_text("x")), "BUF", ("BUF",)),
    "no-manifest": (lambda b: (b / "manifest.json").unlink(), "BUF", ("BUF",)),
    "manifest-not-json": (lambda b: (b / "manifest.json").write_text("{nope"), "BUF", ("manifest.json",)),
    "manifest-json-list": (lambda b: (b / "manifest.json").write_text("[]"), "BUF", ("manifest.json",)),
    "manifest-empty-object": (lambda b: (b / "manifest.json").write_text("{}"), "BUF", ("manifest.json", "format")),
    "wrong-format": (_bm(lambda m: m.update(format="something-else")), "BUF", ("manifest.json", "format")),
    "format-version-future": (_bm(lambda m: m.update(format_version=99)), "BUF", ("manifest.json", "format_version")),
    "format-version-string": (_bm(lambda m: m.update(format_version="1")), "BUF", ("manifest.json", "format_version")),
    "network-missing": (_bm(lambda m: m.pop("network")), "BUF", ("manifest.json", "network")),
    "param-count-not-int": (_bm(lambda m: m["network"].update(param_count="abc")), "BUF",
                            ("manifest.json", "param_count")),
    "training-epochs-missing": (_bm(lambda m: m["training"].pop("epochs")), "BUF", ("manifest.json", "epochs")),
    "network-name-unknown": (_bm(lambda m: m["network"].update(name="notanet")), "BUF", ("notanet",)),
    "network-classes-mismatch": (_bm(lambda m: m["network"].update(num_classes=10)), "BUF", ("BUF",)),
    "no-complete-expert": (lambda b: (b / "expert-00000.json").unlink(), "BUF", ("BUF",)),
    "npy-wrong-shape": (_npy(lambda b: _good_traj(b)[:, :10]), "BUF", ("expert-00000.npy",)),
    "npy-float64": (_npy(lambda b: _good_traj(b).astype(np.float64)), "BUF", ("expert-00000.npy",)),
    "npy-big-endian": (_npy(lambda b: _good_traj(b).astype(">f4")), "BUF", ("expert-00000.npy",)),
    "npy-truncated": (_npy(lambda b: (b / "expert-00000.npy").read_bytes()[:300]), "BUF", ("expert-00000.npy",)),
    "npy-garbage": (_npy(_garbage[:600]), "BUF", ("expert-00000.npy",)),
    "npy-is-a-directory": (_rm_npy_make_dir, "BUF", ("expert-00000.npy",)),
    "sidecar-invalid-json": (lambda b: (b / "expert-00000.json").write_text("{nope"), "BUF", ("expert-00000.json",)),
    "sidecar-json-list": (lambda b: (b / "expert-00000.json").write_text("[]"), "BUF", ("expert-00000.json",)),
}
for _name, (_damage, _where, _expect) in BUFFER_CASES.items():
    add(f"experts/{_name}", 4, _buf(_damage, where=_where), _expect)
add("experts/npy-object-dtype", 4, lambda t, r: _buf(_npy(object_npy(t / "MARKER")))(t, r), ["expert-00000.npy"],
    proc=True, note="never unpickled")
add("experts/npy-huge-header-shape", 4, _buf(_npy(_huge_header)), ["expert-00000.npy"])
add("experts/valid-buffer", 0, _buf(None))


def _experts_cmd(make_out: Callable[[Path, Resources], Path], *extra: str):
    def build(tmp: Path, res: Resources) -> Built:
        tar = good_tar(tmp / "in.tar")
        out = make_out(tmp, res)
        return Built(["experts", str(tar), "-o", str(out), "--num-experts", "1", "--epochs", "1", "--set",
                      f"model={NET}", "--device", "cpu", "--max-bad", "0", "--json", *extra], out=out)
    return build


add("experts/out-regular-file", 5, _experts_cmd(lambda t, r: _file_at(t, "buf.txt")), ["buf.txt"])
add("experts/out-under-regular-file", 5, _experts_cmd(lambda t, r: _file_at(t, "buf.txt") / "BUF"), ["buf.txt"])
# a folder that is not an expert buffer is foreign: output location unusable (5), like distill's -o
add("experts/out-foreign-folder", 5, _experts_cmd(lambda t, r: _foreign(t, {"precious.txt": b"keep"})), ["out"])
add("experts/out-compressed-output-folder", 5, _experts_cmd(
    lambda t, r: (shutil.copytree(r.good_output, t / "out"), t / "out")[1]), ["out"])
add("experts/num-experts-zero", 2, _experts_cmd(lambda t, r: t / "BUF", "--num-experts", "0"), ["--num-experts"])
add("experts/epochs-zero", 2, _experts_cmd(lambda t, r: t / "BUF", "--epochs", "0"), ["--epochs"])
add("experts/holdout-out-of-range", 2, _experts_cmd(lambda t, r: t / "BUF", "--holdout", "1.5"), ["holdout"])
add("experts/optimizer-unknown", 2, _experts_cmd(lambda t, r: t / "BUF", "--optimizer", "adam"), ["optimizer"])


# ================================================================================================
# 10. damaged outputs: evaluate / inspect / verify
# ================================================================================================

def _row_update(out: Path, shard: str) -> None:
    mp = out / "manifest.json"
    m = json.loads(mp.read_text())
    data = (out / shard).read_bytes()
    for row in m["shardlist"]:
        if row["url"] == shard:
            row["filesize"], row["md5sum"] = len(data), md5(data)
    mp.write_text(json.dumps(m, indent=2))


def _rewrite(shard: str, fn: Callable[[list[tuple[str, bytes]], Path], list[tuple[str, bytes]]],
             update_manifest: bool = True):
    """damage: rewrites one shard's members (name, bytes) and, by default, its manifest row."""
    def damage(out: Path, tmp: Path) -> None:
        p = out / shard
        with tarfile.open(p) as tf:
            ms = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]
        write_members(p, [Member(n, d) for n, d in fn(ms, tmp)])
        if update_manifest:
            _row_update(out, shard)
    return damage


def _member(name: str, value: Callable[[Path], bytes | None]):
    def fn(ms, tmp):
        out = []
        for n, d in ms:
            if n == name:
                v = value(tmp)
                if v is None:
                    continue
                d = v
            out.append((n, d))
        return out
    return fn


def _om(fn: Callable[[dict, Path], object]):
    """damage: edits the output's manifest.json in place; a bytes return value replaces the file."""
    def damage(out: Path, tmp: Path) -> None:
        mp = out / "manifest.json"
        m = json.loads(mp.read_text())
        r = fn(m, tmp)
        if isinstance(r, bytes):
            mp.write_bytes(r)
        else:
            mp.write_text(json.dumps(m))
    return damage


def _tamper_byte(out: Path, tmp: Path) -> None:
    p = out / "data-000000.tar"
    with tarfile.open(p) as tf:
        at = next(m.offset_data for m in tf.getmembers() if m.name.endswith(".cls"))
    b = bytearray(p.read_bytes())
    b[at] = ord("1") if b[at] == ord("0") else ord("0")   # another valid class: only the md5 tells
    p.write_bytes(bytes(b))


def _elsewhere(out: Path, tmp: Path, url: str) -> None:
    (tmp / "elsewhere").mkdir(exist_ok=True)
    shutil.copy(out / "data-000000.tar", tmp / "elsewhere" / "data-000000.tar")
    m = json.loads((out / "manifest.json").read_text())
    m["shardlist"][0]["url"] = url.format(tmp=tmp)
    (out / "manifest.json").write_text(json.dumps(m))


K = "c0001-00000"      # first sample of class 1, alone in data-000002.tar
S1 = "data-000002.tar"
DAMAGES: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "missing-shard": (lambda o, t: (o / S1).unlink(), (S1,)),
    "truncated-shard": (lambda o, t: (o / S1).write_bytes((o / S1).read_bytes()[:1500]), (S1,)),
    "md5-mismatch-one-byte": (_tamper_byte, ("data-000000.tar",)),
    "cls-not-integer": (_rewrite(S1, _member(f"{K}.cls", lambda t: b"abc")), (S1, K)),
    "cls-out-of-range": (_rewrite(S1, _member(f"{K}.cls", lambda t: b"7")), (S1, K)),
    "cls-missing": (_rewrite(S1, _member(f"{K}.cls", lambda t: None)), (S1, K)),
    "png-garbage": (_rewrite(S1, _member(f"{K}.png", lambda t: _garbage[:500])), (S1, K)),
    "png-wrong-size": (_rewrite(S1, _member(f"{K}.png", lambda t: png_bytes(gray(32)))), (S1, K)),
    "png-missing": (_rewrite(S1, _member(f"{K}.png", lambda t: None)), (S1, K)),
    "logits-object-dtype": (_rewrite(S1, _member(f"{K}.logits.npy", lambda t: object_npy(t / "MARKER"))), (S1, K)),
    "logits-wrong-length": (_rewrite(S1, _member(f"{K}.logits.npy", lambda t: npy_bytes(
        np.zeros(3, np.float16)))), (S1, K)),
    "logits-garbage": (_rewrite(S1, _member(f"{K}.logits.npy", lambda t: _garbage[:100])), (S1, K)),
    "logits-missing": (_rewrite(S1, _member(f"{K}.logits.npy", lambda t: None)), (S1, K)),
    "manifest-missing": (lambda o, t: (o / "manifest.json").unlink(), ("manifest.json",)),
    "manifest-not-json": (_om(lambda m, t: b"{nope"), ("manifest.json",)),
    "manifest-no-dcompress": (_om(lambda m, t: m.pop("dcompress")), ("manifest.json", "dcompress")),
    "manifest-no-class-names": (_om(lambda m, t: m["dcompress"].pop("class_names")), ("manifest.json", "class_names")),
    "manifest-no-normalization": (_om(lambda m, t: m["dcompress"].pop("normalization")),
                                  ("manifest.json", "normalization")),
    "manifest-no-eval-protocol": (_om(lambda m, t: m["dcompress"].pop("eval_protocol")),
                                  ("manifest.json", "eval_protocol")),
    "manifest-no-labels-block": (_om(lambda m, t: m["dcompress"].pop("labels")), ("manifest.json", "labels")),
    "class-names-string": (_om(lambda m, t: m["dcompress"].update(class_names="ab")), ("manifest.json", "class_names")),
    "normalization-std-zero": (_om(lambda m, t: m["dcompress"]["normalization"].update(std=[0.0])),
                               ("manifest.json", "normalization")),
    "normalization-wrong-length": (_om(lambda m, t: m["dcompress"]["normalization"].update(mean=[0.1, 0.2, 0.3])),
                                   ("manifest.json", "normalization")),
    "eval-protocol-unknown-field": (_om(lambda m, t: m["dcompress"]["eval_protocol"].update(bogus=1)),
                                    ("manifest.json", "eval_protocol")),
    "eval-protocol-epochs-word": (_om(lambda m, t: m["dcompress"]["eval_protocol"].update(epochs="many")),
                                  ("manifest.json", "epochs")),
    "shard-row-dotdot": (lambda o, t: _elsewhere(o, t, "../elsewhere/data-000000.tar"), ("manifest.json", "..")),
    "shard-row-absolute": (lambda o, t: _elsewhere(o, t, "{tmp}/elsewhere/data-000000.tar"), ("manifest.json",)),
    "kind-not-compressed": (_om(lambda m, t: m["dcompress"].update(kind="input")), ("manifest.json", "kind")),
}


def _damaged(damage: Callable[[Path, Path], None], command: str, *extra):
    def build(tmp: Path, res: Resources) -> Built:
        out = tmp / "out"
        soft = any(damage is DAMAGES[n][0] for n in DAMAGES if n.startswith("logits-"))
        shutil.copytree(res.soft_output if soft else res.good_output, out)
        damage(out, tmp)
        check = marker_absent(tmp / "MARKER")
        if command == "evaluate":
            return Built(evaluate(out, res.test_tar, *extra), check=check)
        if command == "inspect":
            grid = tmp / "grid.png"
            return Built(["inspect", str(out), "--grid", str(grid), "--json", *extra], out=grid, check=check)
        return Built(["verify", str(out), "--json"], check=check)
    return build


for _name, (_damage, _expect) in DAMAGES.items():
    add(f"outputs/evaluate-{_name}", 4, _damaged(_damage, "evaluate"), _expect)
for _name in ("missing-shard", "truncated-shard", "md5-mismatch-one-byte", "cls-not-integer", "png-garbage",
              "logits-object-dtype", "manifest-no-class-names", "class-names-string", "shard-row-dotdot"):
    add(f"outputs/inspect-{_name}", 4, _damaged(DAMAGES[_name][0], "inspect"), DAMAGES[_name][1])
for _name in ("missing-shard", "truncated-shard", "md5-mismatch-one-byte"):
    add(f"outputs/verify-{_name}", 6, _damaged(DAMAGES[_name][0], "verify"), DAMAGES[_name][1])
add("outputs/verify-manifest-not-json", 4, _damaged(DAMAGES["manifest-not-json"][0], "verify"), ["manifest.json"])
add("outputs/verify-row-without-md5sum", 4, _damaged(_om(lambda m, t: m["shardlist"][0].pop("md5sum")), "verify"),
    ["manifest.json", "md5sum"])
add("outputs/verify-shard-row-dotdot", 4, _damaged(DAMAGES["shard-row-dotdot"][0], "verify"), ["manifest.json", ".."])


def _source(value):
    return _om(lambda m, t: m["dcompress"].__setitem__("source", value(t)) if callable(value)
               else m["dcompress"].pop("source"))


def _with_random(damage: Callable[[Path, Path], None]):
    """evaluate with the random baseline and no --train: the manifest's source urls are read."""
    def build(tmp: Path, res: Resources) -> Built:
        out = tmp / "out"
        soft = any(damage is DAMAGES[n][0] for n in DAMAGES if n.startswith("logits-"))
        shutil.copytree(res.soft_output if soft else res.good_output, out)
        damage(out, tmp)
        argv = ["evaluate", str(out), "--test", str(res.test_tar), "--random", "--runs", "1", "--epochs", "1",
                "--model", NET, "--device", "cpu", "--max-bad", "0", "--json"]
        return Built(argv, check=marker_absent(tmp / "MARKER"))
    return build


# the manifest's source urls are data, not commands: a pipe: url there is refused (4), never run
add("outputs/evaluate-source-url-pipe-command", 4, _with_random(_source(lambda t: {
    "urls": [f"pipe:touch {t / 'MARKER'}"], "num_samples": 6})), ["manifest.json", "pipe:"])
add("outputs/evaluate-source-url-missing-shard", 4, _with_random(_source(lambda t: {
    "urls": [str(t / "gone" / "train.tar")], "num_samples": 6})), ["train.tar"])
add("outputs/evaluate-source-urls-string", 4, _with_random(_source(lambda t: {"urls": "train.tar"})),
    ["manifest.json", "urls"])
add("outputs/evaluate-source-missing", 4, _with_random(_source(None)), ["manifest.json", "source"])


def _eval_test(make_test: Callable[[Path], Path]):
    def build(tmp: Path, res: Resources) -> Built:
        out = tmp / "out"
        shutil.copytree(res.good_output, out)
        return Built(evaluate(out, make_test(tmp)))
    return build


add("outputs/evaluate-test-garbage-tar", (3, 4), _eval_test(lambda t: _bytes_at(t / "test.tar", _garbage)),
    ["test.tar"])
add("outputs/evaluate-test-image-size-mismatch", 4, _eval_test(lambda t: good_tar(t / "test.tar", size=32)),
    ["test.tar"])
add("outputs/evaluate-test-labels-beyond-classes", 4, _eval_test(lambda t: good_tar(t / "test.tar", classes=3)),
    ["test.tar"], note="test labels must lie in the compressed set's class list")


def _bytes_at(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _grid(make_grid: Callable[[Path], Path]):
    def build(tmp: Path, res: Resources) -> Built:
        out = tmp / "out"
        shutil.copytree(res.good_output, out)
        grid = make_grid(tmp)
        return Built(["inspect", str(out), "--grid", str(grid), "--json"], out=grid)
    return build


add("outputs/inspect-grid-under-regular-file", 5, _grid(lambda t: _file_at(t, "file.txt") / "grid.png"),
    ["file.txt"], proc=True)
add("outputs/inspect-grid-is-a-directory", 5, _grid(lambda t: (t / "grid.png").mkdir() or t / "grid.png"),
    ["grid.png"])
add("outputs/inspect-valid", 0, _grid(lambda t: t / "grid.png"))
add("outputs/evaluate-valid", 0, _eval_test(lambda t: good_tar(t / "test.tar", seed=1, prefix="t")))


def by_id() -> dict[str, Case]:
    return {c.id: c for c in CASES}
