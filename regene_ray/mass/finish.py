"""Mass generation, finalising: OUT/data made to hold exactly the kept rows (chunks 0..k*-1 of
every class moved in, chunk k* trimmed, surplus chunks and their PNGs deleted), idempotently, so
a crash anywhere in it is repaired by running it again. No Ray.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from regene_ray.mass.output import (
    CHUNK_RE,
    CHUNKS_DIR,
    DATA_DIR,
    PNG_DIR,
    PNG_RE,
    ForeignChunkError,
    chunk_name,
)
from regene_ray.mass.plan import ChunkInfo
from regene_ray.mass.sinks import PNG_SHARD, png_relpath, read_metadata, write_parquet_atomic
from regene_ray.storage import Storage

log = logging.getLogger(__name__)


def _png_paths(table: pa.Table, num_classes: int) -> list[str]:
    """The PNG paths of `table`'s rows, each checked to be exactly the path this job gives its
    id (sinks.png_relpath): a path read from a file is never trusted for a delete."""
    ids = table.column("id").to_pylist()
    paths = table.column("image").combine_chunks().field("path").to_pylist()
    for i, p in zip(ids, paths, strict=True):
        if p != png_relpath(i % num_classes, i // num_classes, i):
            raise ForeignChunkError(f"row {i} points at {p!r}, not the PNG this job writes for "
                                    "it; the chunk file was not written by regene-ray")
    return paths


def _delete_pngs(out: Storage, table: pa.Table, num_classes: int) -> None:
    out.delete_many(_png_paths(table, num_classes))


def finalize(out: Storage, done: dict[tuple[int, int], ChunkInfo],
             cut: dict[int, tuple[int, int]], png: bool, num_classes: int) -> int:
    """Make OUT/data hold exactly the kept rows; returns the number of Parquet files there.

    Idempotent: a crash anywhere in here is repaired by running it again (a chunk found in both
    OUT/_chunks and OUT/data, as an object-store move cut short leaves it, counts as moved).
    """
    out.makedirs(DATA_DIR)
    for (c, chunk), info in sorted(done.items()):
        last_chunk, keep = cut[c]
        final = f"{DATA_DIR}/{chunk_name(c, chunk)}"
        src = info.path
        if chunk < last_chunk or (chunk == last_chunk and keep == info.accepted):
            if src != final:
                out.move(src, final)
        elif chunk == last_chunk:
            table = pq.read_table(out.path(src), filesystem=out.fs)
            if table.num_rows != keep:  # not trimmed yet
                if png:
                    _delete_pngs(out, table.slice(keep), num_classes)
                meta = read_metadata(src, out)
                meta["chunk"]["kept"] = keep
                write_parquet_atomic(table.slice(0, keep), final, meta, out)
            if src != final:
                out.delete(src)
        else:  # surplus: past the quota
            if png:
                _delete_pngs(out, pq.read_table(out.path(src), columns=["id", "image"],
                                                filesystem=out.fs), num_classes)
            out.delete(src)
        # a copy left in staging by a crash between the write above and the delete
        out.delete(f"{CHUNKS_DIR}/{chunk_name(c, chunk)}")
    if png:
        for c in cut:
            delete_orphan_pngs(out, c, num_classes)
    return sum(1 for n in out.list(DATA_DIR) if CHUNK_RE.match(n))


def delete_orphan_pngs(out: Storage, label: int, num_classes: int) -> int:
    """Delete class `label`'s PNG files that no kept row points to; returns how many.

    Left by chunks whose PNGs were written but whose Parquet file never landed (a worker or the
    driver killed in between) or was later trimmed or regenerated with fewer rows. Only files
    named as this job names its PNGs (<shard>/<id>.png with an id of this class, in its shard)
    are candidates; anything else under png/ is left alone and reported.
    """
    kept = set()
    for name in out.list(DATA_DIR):
        m = CHUNK_RE.match(name)
        if m and int(m[1]) == label:
            ids = pq.read_table(out.path(f"{DATA_DIR}/{name}"), columns=["id"],
                                filesystem=out.fs).column("id").to_pylist()
            kept.update(ids)
    base = f"{PNG_DIR}/{label}"
    orphans, strangers = [], 0
    for rel in out.list(base, recursive=True):
        m = PNG_RE.match(rel)
        if m is None or int(m[2]) % num_classes != label or \
                int(m[1]) != int(m[2]) // num_classes // PNG_SHARD:
            strangers += 1
            continue
        if int(m[2]) not in kept:
            orphans.append(f"{base}/{rel}")
    if strangers:
        log.warning("%d files under %s were not written by this job; left in place", strangers,
                    out.display(base))
    if orphans:
        log.info("deleting %d PNG files of class %d that no row points to (chunks cut short or "
                 "trimmed)", len(orphans), label)
        out.delete_many(orphans)
    return len(orphans)


