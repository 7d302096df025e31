"""The write stage of `distill`: the labelled set into its output folder, atomically, and the
order of the write collectives under torchrun (the one place that knows it).

In one process: a temp folder, every shard, the folder's other files, the swap. Under torchrun
rank 0 owns the temp folder and sends its path to the other ranks; each rank writes its share
of the shards (shard k on rank k mod W, numbered as one process numbers them, so the folder is
the one-process folder), the ranks all-gather their shards' rows and member sizes, and rank 0
completes the folder and swaps it into place."""
from __future__ import annotations

from pathlib import Path

from .. import dist
from ..core import CompressedSet, RealData
from ..io.atomic import AtomicDir
from ..io.output import MIN_SHARDS, finish_output, image_bytes, one_writer, output_shard_size, write_rows
from ..io.schema import CompressedBlock


def write_set(out: Path, cset: CompressedSet, real: RealData, *, method: str, block: CompressedBlock | None,
              shard_size: int, label_topk: int | None, metrics: list[dict] | None, encoded: list[bytes] | None = None,
              image_member: str = "png", sample_json: bool = False, min_shards: int = MIN_SHARDS) -> dict | None:
    """Writes `cset` into `out` (rank 0's `block` and `metrics` describe it; other ranks pass
    None) in shards of `io.output.output_shard_size(len(cset), shard_size, min_shards)` samples. `encoded`:
    the images' bytes in member `image_member` (api/distill.encode_stage; None: PNG);
    `sample_json`: also each sample's `.json`. Returns the manifest on rank 0, None on the other
    ranks. Every rank must call it."""
    shard_size = output_shard_size(len(cset), shard_size, min_shards)
    u8 = image_bytes(cset, real.mean, real.std)
    kw = dict(class_names=real.class_names, method=method, u8=u8, shard_size=shard_size, label_topk=label_topk,
              encoded=encoded, image_member=image_member, sample_json=sample_json)
    if not dist.is_main():
        dist.all_gather_object(_own_shards(Path(dist.broadcast_object(None)), cset, **kw))
        return None
    with AtomicDir(out) as tmp:
        dist.broadcast_object(tmp)
        parts = dist.all_gather_object(_own_shards(tmp, cset, **kw))
        shards = [row for rows, _ in parts for row in rows]
        sizes: dict[str, int] = {}
        for _, part in parts:
            for ext, n in part.items():
                sizes[ext] = sizes.get(ext, 0) + n
        return finish_output(tmp, cset, shards, dict(sorted(sizes.items())), name=f"{method}-{out.name}",
                             class_names=real.class_names, u8=u8, block=block, metrics=metrics)


def _own_shards(tmp: Path, cset: CompressedSet, *, shard_size: int, **kw) -> tuple[list, dict[str, int]]:
    """This rank's shards (their manifest rows) and their member sizes: all of them in one
    process, or when one writer must write them all (`io.output.one_writer`, rank 0)."""
    n = len(cset)
    if not dist.active() or one_writer(cset, shard_size):
        parts = [(0, range(n))] if dist.is_main() and n else []
    else:
        parts = [(k, range(k * shard_size, min(n, (k + 1) * shard_size))) for k in dist.spread(-(-n // shard_size))]
    sizes: dict[str, int] = {}
    rows = [row for k, r in parts for row in write_rows(tmp, cset, r, start=k, shard_size=shard_size, sizes=sizes,
                                                         **kw)]
    return rows, sizes
