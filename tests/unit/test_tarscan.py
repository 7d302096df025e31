"""The header scan (io/tarscan.py) yields exactly webdataset's samples on well-formed local tars of
every header format tarfile writes, and hands anything else back to webdataset (scan -> None):
compressed, truncated, bad checksums, base-256 numbers, sparse files, global pax headers, names
that are not UTF-8. `read_shard` results (samples, bad-sample messages, errors) are compared with
the scan on and off."""
from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from dcompress.errors import InputDataError
from dcompress.io import tarscan
from dcompress.io.stream import BadSamples, read_shard, tar_truncation

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = kw.get("mtime", 1_700_000_000)
    info.mode = 0o644
    if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
        info.linkname = kw.get("linkname", "target.txt")
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else 0
    info.pax_headers = kw.get("pax", {})
    tf.addfile(info, io.BytesIO(data) if info.size else None)


def write_tar(path: Path, members: list[tuple], fmt: str = "gnu") -> Path:
    with tarfile.open(path, "w", format=FORMATS[fmt]) as tf:
        for m in members:
            add(tf, *m[:3]) if len(m) <= 3 else add(tf, m[0], m[1], m[2], **m[3])
    return path


def read(url: str, scan: bool) -> tuple[list[dict], list[str], bool | str]:
    """(samples, bad-sample messages, complete flag) of read_shard, or the InputDataError text."""
    saved = tarscan.scan
    if not scan:
        tarscan.scan = lambda path: None
    try:
        bad = BadSamples(max_bad=10_000)
        try:
            samples, complete = read_shard(url, bad)
            samples = list(samples)
        except InputDataError as e:
            return [], bad.as_dict().get("examples", []), f"InputDataError: {e}"
        return samples, [str(x) for x in bad.as_dict().get("examples", [])] + [bad.as_dict().get("count")], complete
    finally:
        tarscan.scan = saved


def assert_same(url: str, *, fast: bool) -> list[dict]:
    """read_shard with and without the scan agree; `fast`: the scan took the shard."""
    assert (tarscan.scan(url) is not None) is fast
    with_scan, bad1, complete = read(url, True)
    without, bad2, _ = read(url, False)
    assert with_scan == without and bad1 == bad2
    if fast:
        assert complete is True and tar_truncation(url) is None
    return with_scan


def dataset_members(n: int = 5, rng: random.Random | None = None) -> list[tuple]:
    rng = rng or random.Random(0)
    out = []
    for i in range(n):
        out.append((f"s{i:04d}.png", rng.randbytes(rng.randint(0, 1500))))
        out.append((f"s{i:04d}.cls", str(i % 3).encode()))
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_plain_dataset_tars_take_the_fast_path_with_the_same_samples(tmp_path, fmt):
    samples = assert_same(str(write_tar(tmp_path / "a.tar", dataset_members(), fmt)), fast=True)
    assert [s["__key__"] for s in samples] == [f"s{i:04d}" for i in range(5)]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_names_links_dirs_and_metadata(tmp_path, fmt):
    long_dir = "d" * 60 + "/" + "e" * 60                       # > 100 chars: ustar prefix, GNU 'L', pax path
    members = [
        ("sub/", b"", tarfile.DIRTYPE), (f"{long_dir}/", b"", tarfile.DIRTYPE),
        ("sub/k1.jpg", b"jpeg-ish"), ("sub/k1.JSON", b'{"label": 1}'),        # the suffix is lowercased
        (f"{long_dir}/k2.png", b"x" * 700), (f"{long_dir}/k2.cls", b"2"),
        ("link.png", b"", tarfile.SYMTYPE), ("hard.png", b"", tarfile.LNKTYPE),
        ("fifo.png", b"", tarfile.FIFOTYPE), ("__meta__", b"meta"), ("__dir__/x.png", b"m"),
        ("noext", b"bad name"), (".hidden.png", b"bad"), ("k3.tar.gz", b"multi dot"), ("k3.txt", b"t"),
        ("empty.png", b""), ("ünïcode.png", b"u"), ("k4.png", b"a", tarfile.AREGTYPE), ("k4.cls", b"0", tarfile.CONTTYPE),
    ]
    if fmt != "ustar":                                          # ustar cannot hold a 120-char basename
        members += [("f" * 120 + ".png", b"long"), ("f" * 120 + ".cls", b"1")]
    url = str(write_tar(tmp_path / "b.tar", members, fmt))
    samples = assert_same(url, fast=True)
    keys = [s["__key__"] for s in samples]
    assert "sub/k1" in keys and f"{long_dir}/k2" in keys and "k3" in keys
    assert next(s for s in samples if s["__key__"] == "sub/k1")["json"] == b'{"label": 1}'


def test_pax_headers_of_members(tmp_path):
    members = [("a.png", b"x" * 10, tarfile.REGTYPE, {"pax": {"comment": "hi", "mtime": "1.5", "uname": "ü"}}),
               ("a.cls", b"1", tarfile.REGTYPE, {"pax": {"path": "b.cls"}})]         # pax path renames
    samples = assert_same(str(write_tar(tmp_path / "p.tar", members, "pax")), fast=True)
    assert [s["__key__"] for s in samples] == ["a", "b"]


def test_members_larger_than_the_read_window(tmp_path):
    big = os.urandom(5 << 20)
    members = [("a.png", big), ("a.cls", b"1"), ("b.png", big[:1_000_001]), ("b.cls", b"2")]
    samples = assert_same(str(write_tar(tmp_path / "w.tar", members)), fast=True)
    assert samples[0]["png"] == big and samples[1]["png"] == big[:1_000_001]


def test_duplicate_member_is_the_same_error(tmp_path):
    url = str(write_tar(tmp_path / "d.tar", [("a.png", b"1"), ("a.cls", b"1"), ("a.png", b"2")]))
    assert tarscan.scan(url) is not None
    assert read(url, True) == read(url, False)
    assert "appears twice" in read(url, True)[2]


def test_random_member_mixes(tmp_path):
    """120 generated tars: random formats, member kinds, names and sizes."""
    rng = random.Random(5)
    kinds = [tarfile.REGTYPE] * 8 + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.AREGTYPE]
    for t in range(120):
        members = []
        for i in range(rng.randint(0, 12)):
            stem = rng.choice([f"k{rng.randint(0, 4)}", f"dir{rng.randint(0, 2)}/k{i}", "x" * rng.randint(90, 140)])
            ext = rng.choice(["png", "cls", "jpg", "json", "txt", "PNG", "a.b", ""])
            name = f"{stem}.{ext}" if ext else stem
            members.append((name, rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000])), rng.choice(kinds)))
        fmt = rng.choice(["gnu", "pax"] if any(len(m[0]) > 99 for m in members) else sorted(FORMATS))
        url = str(write_tar(tmp_path / f"r{t}.tar", members, fmt))
        assert tarscan.scan(url) is not None
        assert read(url, True)[:2] == read(url, False)[:2], (t, fmt, [m[0] for m in members])


# ------------------------------------------------------------------ shards the scan hands back to webdataset

def raw_tar(members, fmt="gnu") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=FORMATS[fmt]) as tf:
        for m in members:
            add(tf, *m)
    return buf.getvalue()


def header_with(data: bytes, offset: int, field: bytes, *, fix_checksum: bool = True) -> bytes:
    """`data` with bytes at `offset` of its first header replaced, the checksum recomputed."""
    b = bytearray(data)
    b[offset:offset + len(field)] = field
    if fix_checksum:
        b[148:156] = b" " * 8
        b[148:156] = b"%06o\0 " % sum(b[:512])
    return bytes(b)


def fallback_cases() -> dict[str, bytes]:
    base = raw_tar(dataset_members(3))
    signed = bytearray(header_with(base, 265, "é".encode("latin-1") * 4, fix_checksum=False))  # uname bytes > 127
    signed[148:156] = b"%06o\0 " % (256 + sum((x - 256 if x > 127 else x) for x in signed[:148] + signed[156:512]))
    sparse = bytearray(base)
    sparse[156:157] = b"S"
    sparse = header_with(bytes(sparse), 156, b"S")
    b256 = header_with(base, 124, b"\x80" + (1000).to_bytes(11, "big"))
    return {
        "gzip": gzip.compress(base),
        "truncated mid-data": base[:700],
        "truncated at a member boundary": base[:1024],
        "one zero block": _one_zero_block(base),
        "no end marker": _strip_end(base),
        "bad checksum": header_with(base, 0, b"z", fix_checksum=False),
        "only the signed checksum matches": bytes(signed),
        "base-256 size": b256,
        "non-octal mtime": header_with(base, 136, b"9999999"),
        "sparse member": sparse,
        "global pax header": _global_pax(),
        "non-UTF-8 name": header_with(base, 0, b"\xff\xfe.png\0"),
        "directory with a size": header_with(base, 156, b"5"),
        "empty file": b"",
        "bz2-looking start": header_with(base, 0, b"BZh91AY&SY"),
    }


def _end_of(data: bytes) -> int:
    pos = 0
    while data[pos:pos + 512] != bytes(512):
        size = int(data[pos + 124:pos + 136].split(b"\0")[0].strip() or b"0", 8)
        pos += 512 + (size + 511) // 512 * 512
    return pos


def _one_zero_block(data: bytes) -> bytes:
    return data[:_end_of(data) + 512]


def _strip_end(data: bytes) -> bytes:
    return data[:_end_of(data)]


def _global_pax() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}) as tf:
        add(tf, "a.png", b"1")
        add(tf, "a.cls", b"1")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(fallback_cases()))
def test_unusual_or_broken_shards_go_to_webdataset(tmp_path, case):
    path = tmp_path / "x.tar"
    path.write_bytes(fallback_cases()[case])
    assert tarscan.scan(str(path)) is None
    samples, bad, complete = read(str(path), True)
    assert complete is not True                               # the truncation check still runs
    assert (samples, bad) == read(str(path), False)[:2]


def test_a_shard_that_shrinks_while_read_is_a_counted_bad_sample(tmp_path):
    url = str(write_tar(tmp_path / "s.tar", dataset_members(40)))
    index = tarscan.scan(url)
    assert index is not None
    os.truncate(url, 4096)
    bad = BadSamples(max_bad=100)
    from webdataset.tariterators import group_by_keys
    from dcompress.io.stream import describe_stream_error

    def handler(exn):
        bad.add(describe_stream_error(exn))
        return True

    got = list(group_by_keys(tarscan.files(index, url, None, handler), handler=handler))
    assert 0 < len(got) < 40 and bad.count >= 1
    assert "shrank while it was read" in str(bad.as_dict()["examples"][0])


def test_corrupted_headers_read_as_webdataset_reads_them(tmp_path):
    """Differential fuzz: 400 tars with bytes of a random header replaced (the checksum recomputed
    in half of them, so the scan must judge the fields itself): the same samples, bad-sample
    messages and errors with the scan as without it."""
    rng = random.Random(9)
    bases = [raw_tar(dataset_members(4, random.Random(1)), fmt) for fmt in sorted(FORMATS)]
    bases.append(raw_tar([("x" * 120 + ".png", b"1"), ("x" * 120 + ".cls", b"2")], "pax"))
    bases.append(raw_tar([("y" * 120 + ".png", b"1"), ("y" * 120 + ".cls", b"2")], "gnu"))
    fast = 0
    for t in range(400):
        data = bytearray(bases[t % len(bases)])
        headers = []
        pos = 0
        while data[pos:pos + 512] != bytes(512):
            headers.append(pos)
            pos += 512 + (int(data[pos + 124:pos + 136].split(b"\0")[0].strip() or b"0", 8) + 511) // 512 * 512
        h = rng.choice(headers)
        for _ in range(rng.randint(1, 3)):
            data[h + rng.choice([rng.randrange(512), rng.randrange(100, 160), rng.randrange(156, 157)])] = rng.choice(
                [0, 32, 48, 55, 56, 0x35, 0x4C, 0x78, 0x80, 0xFF, rng.randrange(256)])
        if t % 2:
            data[h + 148:h + 156] = b" " * 8
            data[h + 148:h + 156] = b"%06o\0 " % sum(data[h:h + 512])
        path = tmp_path / f"c{t}.tar"
        path.write_bytes(bytes(data))
        fast += tarscan.scan(str(path)) is not None
        assert read(str(path), True)[:2] == read(str(path), False)[:2], t
    assert fast > 50                                            # the scan took a fair share of them
