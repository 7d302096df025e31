"""What the user typed -> shard urls: folders, manifests, brace patterns, globs, remote urls.

Torch-free. A url the user typed may be a `pipe:` command or an http(s)/s3/gs object (read
through its command-line client); a url read from a manifest is data and must name a file
inside the manifest's folder (`io.manifest.shard_paths`).
"""
from __future__ import annotations

import glob
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from braceexpand import braceexpand

from ..errors import InputDataError, UsageError, unreadable
from ..limits import MAX_SHARDS
from .manifest import MANIFEST, read_manifest, shard_paths

REMOTE = ("pipe:", "http:", "https:", "s3:", "gs:")
# user-typed remote urls -> (client program, shell command reading the object to stdout). curl gets
# short timeouts: webdataset's own (30 retries x 30 s connect timeout) hides an unreachable host
# for many minutes.
_CLIENTS = {
    "http": ("curl", "curl -f -sS -L --connect-timeout 15 --retry 2 --retry-delay 1 {url}"),
    "https": ("curl", "curl -f -sS -L --connect-timeout 15 --retry 2 --retry-delay 1 {url}"),
    "s3": ("aws", "aws s3 cp --quiet {url} -"),
    "gs": ("gsutil", "gsutil -q cat {url}"),
}


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE)


def opener_url(url: str) -> str:
    """What webdataset opens for a user-typed url: local paths and `pipe:` as they are; http(s),
    s3 and gs objects through their command-line client (UsageError naming the missing client)."""
    import shlex
    import shutil

    scheme = url.split(":", 1)[0]
    if scheme not in _CLIENTS:
        return url
    client, command = _CLIENTS[scheme]
    if shutil.which(client) is None:
        raise UsageError(f"{scheme}:// urls are read with `{client}`, which is not on PATH; install it, or read "
                         f"the shard with your own command as a pipe: url", path=url)
    return "pipe:" + command.format(url=shlex.quote(url))


@dataclass
class ResolvedInput:
    """Shard URLs plus the input manifest when one was found.

    `folders` are the folders given as input (shard folders, manifest folders): an output
    must never overlap them nor its local shard files (`io.atomic.check_not_input`).
    """

    urls: list[str]
    manifest: dict | None = None
    description: str = ""
    folders: list[Path] = field(default_factory=list)


def _pattern_size(item: str) -> int:
    """How many urls a brace pattern names, counted without expanding it (numeric ranges and
    comma lists; a conservative product over the groups)."""
    size = 1
    for group in re.findall(r"\{([^{}]*)\}", item):
        m = re.fullmatch(r"\s*(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\s*", group)
        if m:
            step = abs(int(m.group(3) or 1)) or 1
            size *= abs(int(m.group(2)) - int(m.group(1))) // step + 1
        else:
            size *= group.count(",") + 1
    return size


def _check_shard_file(url: str, source: str | None = None) -> None:
    """InputDataError unless `url` is a non-empty regular file (named in `source`'s terms)."""
    p = Path(url)
    where = f" (listed in {source})" if source else ""
    if not p.exists():
        raise InputDataError(f"shard not found{where}", path=url)
    if not p.is_file():
        raise InputDataError(f"expected a shard file, found a {'folder' if p.is_dir() else 'special file'}{where}",
                             path=url)
    if p.stat().st_size == 0:
        raise InputDataError(f"shard is an empty file{where}", path=url)
    os.close(os.open(p, os.O_RDONLY))        # unreadable (permissions): OSError, reported as exit 4


def _expand(item: str) -> list[str]:
    """Brace pattern or quoted glob -> list of urls (the user's own words: pipe: is theirs)."""
    from braceexpand import UnbalancedBracesError

    if "{}" in item:
        raise UsageError(f"empty brace group '{{}}' in URL {item!r}")
    if _pattern_size(item) > MAX_SHARDS:
        raise UsageError(f"URL pattern {item!r} expands to more than {MAX_SHARDS} shards")
    try:
        urls = list(itertools.islice(braceexpand(item), MAX_SHARDS + 1))
    except UnbalancedBracesError:
        raise UsageError(f"unbalanced braces in URL {item!r}") from None
    if len(urls) > MAX_SHARDS:
        raise UsageError(f"URL pattern {item!r} expands to more than {MAX_SHARDS} shards")
    if is_remote(item) or not any(ch in item for ch in "*?["):
        return urls
    found = [u for pattern in urls for u in sorted(glob.glob(pattern))]
    if not found:
        raise InputDataError("no file matches this glob pattern", path=item)
    return found


def resolve_urls(spec: str | Iterable[str], *, allow_manifest_urls: bool = False) -> ResolvedInput:
    """Turns the CLI's URLS argument into a list of shard URLs.

    Accepts: a folder written by `dcompress shard`/`distill` (its manifest.json, else its
    *.tar files), a manifest.json path, brace patterns (`d/train-{000000..000005}.tar`), quoted
    globs (`'d/train-*.tar'`), several of those, and `pipe:`/`http(s):` URLs typed by the user
    (passed to webdataset). Rows of a manifest must be files inside its folder unless
    `allow_manifest_urls` (a manifest is data and never runs a command).
    """
    items = [str(spec)] if isinstance(spec, (str, os.PathLike)) else [str(s) for s in spec]
    if not items or not all(items):
        raise UsageError("no input URLs given" if not items else "empty input URL")
    try:
        return _resolve(items, allow_manifest_urls)
    except OSError as e:                   # an input file or folder we may not read: exit 4, naming it
        raise unreadable(e, items[0]) from None


def _resolve(items: list[str], allow_manifest_urls: bool) -> ResolvedInput:
    urls: list[str] = []
    folders: list[Path] = []
    manifest = None
    for item in items:
        p = Path(item)
        if not is_remote(item) and (p.is_dir() or p.suffix == ".json"):
            mpath = p / MANIFEST if p.is_dir() else p
            if mpath.exists() and not mpath.is_file():
                raise InputDataError("manifest.json is not a file", path=str(mpath))
            if mpath.is_file():
                manifest = read_manifest(mpath)
                rows = shard_paths(mpath, manifest, trust_urls=allow_manifest_urls)
                for url in rows:
                    if not is_remote(url):
                        _check_shard_file(url, str(mpath))
                urls += rows
                folders.append(mpath.parent.absolute())
                continue
            if p.is_dir():
                os.scandir(p).close()        # an unreadable folder is not an empty one (OSError)
                tars = sorted(str(t) for ext in ("tar", "tar.gz", "tgz") for t in p.glob(f"*.{ext}"))
                if not tars:
                    raise InputDataError("folder has neither manifest.json nor *.tar shards (for an image "
                                         "folder, run `dcompress shard` first)", path=item)
                urls += tars
                folders.append(p.absolute())
                continue
            raise InputDataError("manifest file not found", path=item)
        for url in _expand(item):
            if not is_remote(url):
                _check_shard_file(url)
            urls.append(url)
    if manifest is None:
        manifest = _sibling_manifest(urls)
    return ResolvedInput(urls=urls, manifest=manifest, description=" ".join(items), folders=folders)


def recorded_urls(urls, *, manifest: str | Path) -> list[str]:
    """Shard urls recorded in a manifest (`dcompress.source.urls`), checked as data: local files
    only, never a command or a network fetch."""
    key = "dcompress.source.urls"
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise InputDataError("must be a non-empty list of shard paths", path=str(manifest), key=key)
    for u in urls:
        if ":" in u.split("/", 1)[0] or ".." in Path(u).parts:
            raise InputDataError(f"refusing recorded url {u!r}: only local shard files are re-read from a "
                                 "manifest; pass --train URLS", path=str(manifest), key=key)
        if not Path(u).is_file():
            raise InputDataError(f"recorded training shard {u} is gone; pass --train URLS or --no-random",
                                 path=str(manifest), key=key)
    return urls


def _sibling_manifest(urls: list[str]) -> dict | None:
    """The manifest.json beside local shards, when every shard is listed in it (class names)."""
    local = [Path(u) for u in urls if not is_remote(u)]
    if not local or len({p.parent for p in local}) != 1:
        return None
    mpath = local[0].parent / MANIFEST
    if not mpath.exists():
        return None
    try:
        manifest = read_manifest(mpath)
    except InputDataError:
        return None
    listed = {row["url"] for row in manifest["shardlist"]}
    return manifest if all(p.name in listed for p in local) else None
