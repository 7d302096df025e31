"""What every command that reads shards is given: `InputSpec` (where the input is, how it is
decoded, how much damage is tolerated) and the one sequence that reads it: resolve the urls,
check that the output does not overlap them, decode (or reopen) the input's store."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import InputDataError
from ..io.decode import DecodeOptions
from ..io.labels import read_class_names
from ..io.urls import ResolvedInput, is_remote, resolve_urls
from ..limits import MAX_PIXELS
from .checks import check_limits

if TYPE_CHECKING:
    from ..core import RealData

ProgressFn = Callable[[int, int, str], None]


def decode_options(*, max_pixels: int | None = MAX_PIXELS, size: int | None = None, resize_mode: str = "crop",
                   label_key: str = "cls", class_names: str | Path | Iterable[str] | None = None,
                   channels: int | None = None) -> DecodeOptions:
    """The DecodeOptions of the input-reading keywords (UsageError for a bad value). `class_names`
    is a list of names or the path of a class-names file (one name per line; an unreadable or
    malformed file is an InputDataError naming it)."""
    check_limits(max_pixels=(max_pixels, 1))
    if isinstance(class_names, (str, Path)):
        class_names = read_class_names(class_names, error=InputDataError)
    return DecodeOptions(label_key=label_key, max_pixels=max_pixels, size=size, resize_mode=resize_mode,
                         channels=channels, class_names=tuple(class_names) if class_names is not None else None)


@dataclass(frozen=True)
class InputSpec:
    """A dataset to read: its urls as the user typed them (brace patterns, folders, manifests,
    remote urls), how it is decoded, and the reading limits. Built by `of` (every value checked,
    UsageError); `read` gives RealData over the input's decoded store."""

    urls: tuple[str, ...]
    decode: DecodeOptions = DecodeOptions()
    max_bad: int | None = None      # None: up to 100 bad samples, no damaged shard (io.stream.bad_limit)
    workers: int | None = None
    allow_manifest_urls: bool = False

    @classmethod
    def of(cls, urls: str | Iterable[str], *, max_bad: int | None = None, max_pixels: int | None = MAX_PIXELS,
           allow_manifest_urls: bool = False, workers: int | None = None, size: int | None = None,
           resize_mode: str = "crop", label_key: str = "cls",
           class_names: str | Path | Iterable[str] | None = None, channels: int | None = None,
           decode: DecodeOptions | None = None) -> InputSpec:
        """The input of the reading keywords every command takes (see `decode_options`); a built
        `decode` replaces the decoding ones."""
        check_limits(max_bad=(max_bad, 0), workers=(workers, 1))
        opts = decode or decode_options(max_pixels=max_pixels, size=size, resize_mode=resize_mode,
                                        label_key=label_key, class_names=class_names, channels=channels)
        return cls(urls=(urls,) if isinstance(urls, (str, Path)) else tuple(map(str, urls)), decode=opts,
                   max_bad=max_bad, workers=workers, allow_manifest_urls=allow_manifest_urls)

    def with_classes(self, class_names: Iterable[str]) -> InputSpec:
        """The same input with its labels mapped through `class_names` (a test set read with the
        training input's classes)."""
        return dataclasses.replace(self, decode=dataclasses.replace(self.decode, class_names=tuple(class_names)))

    @functools.cached_property
    def resolved(self) -> ResolvedInput:
        """The shard urls (and input manifest) the typed urls name; InputDataError/UsageError when
        they name nothing readable. Resolved once per spec."""
        return resolve_urls(list(self.urls), allow_manifest_urls=self.allow_manifest_urls)

    def check_output(self, out: str | Path) -> None:
        """UsageError when `out` would overwrite or sit inside the input (its local shards or folders)."""
        from ..io.atomic import check_not_input

        inp = self.resolved
        check_not_input(Path(out), [u for u in inp.urls if not is_remote(u)], inp.folders)

    def read(self, *, progress: ProgressFn | None = None, note: Callable[[str], None] | None = None) -> RealData:
        """The input as RealData over its decoded store: decoded by `workers` processes (default:
        one per core) on first use, reopened afterwards (docs/store.md)."""
        from ..io.reader import read_real

        return read_real(self.resolved, self.decode, max_bad=self.max_bad, workers=self.workers,
                         progress=(lambda done, total: progress(done, total, "decoding")) if progress else None,
                         note=note)


def as_input(urls: str | Iterable[str] | InputSpec | None, **reading) -> InputSpec:
    """`urls` when it is an InputSpec already, else `InputSpec.of(urls, **reading)` (None: no urls,
    for a caller that passes data it read itself)."""
    return urls if isinstance(urls, InputSpec) else InputSpec.of(() if urls is None else urls, **reading)


def load_real(urls: str | Iterable[str], *, progress: ProgressFn | None = None,
              note: Callable[[str], None] | None = None, **reading) -> RealData:
    """The dataset at `urls` as RealData: `InputSpec.of(urls, **reading).read(...)`."""
    return InputSpec.of(urls, **reading).read(progress=progress, note=note)
