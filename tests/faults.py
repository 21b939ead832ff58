"""Fault injection for tests, kept out of production code: a mass-generation stage whose worker
process dies abruptly the first time it meets a given chunk.

Ray workers cannot import this tests/ module, so callers register it with cloudpickle to travel
by value (`use_dying_stage`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from regene_ray.mass import ray_stream
from regene_ray.mass.chunks import chunk_table
from regene_ray.mass.ray_stage import CommitOnRay, WriteChunksOnNode


class DiesOnceOnChunk(WriteChunksOnNode):
    """WriteChunksOnNode whose process exits (os._exit, no cleanup) after generating chunk
    `CHUNK` and before committing it, the first time any worker meets it (a marker file
    records that it happened)."""

    CHUNK: tuple[int, int] = (0, 0)
    MARKER: str = ""

    def write_chunk(self, label: int, chunk: int):
        marker = Path(self.MARKER)
        if (label, chunk) == tuple(self.CHUNK) and not marker.exists():
            self.generate(label, chunk)  # the work is done, then the process dies
            marker.write_text(f"worker {os.getpid()} died on chunk {label},{chunk}\n")
            os._exit(1)
        return super().write_chunk(label, chunk)


class CommitDiesOnceOnChunk(CommitOnRay):
    """The split pipeline's commit stage, whose process exits after writing chunk `CHUNK`'s
    PNG files and before its Parquet file, the first time any worker meets it."""

    CHUNK: tuple[int, int] = (0, 0)
    MARKER: str = ""

    def commit(self, label: int, chunk: int, g):
        marker = Path(self.MARKER)
        if (label, chunk) == tuple(self.CHUNK) and not marker.exists():
            table, _ = chunk_table(g, label, chunk, self.num_classes)
            image = table.column("image").combine_chunks()
            self.out.write_many(list(zip(image.field("path").to_pylist(),
                                         image.field("bytes").to_pylist(), strict=True)))
            marker.write_text(f"worker {os.getpid()} died committing chunk {label},{chunk}\n")
            os._exit(1)
        return super().commit(label, chunk, g)


def use_dying_stage(monkeypatch, chunk: tuple[int, int], marker: Path,
                    where: str = "fused") -> None:
    """Make the Ray stage of jobs/mass_generate.py run DiesOnceOnChunk (where='fused') or the
    split pipeline's commit stage run CommitDiesOnceOnChunk (where='commit')."""
    import sys

    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    base, kw = {"fused": (DiesOnceOnChunk, "stage"),
                "commit": (CommitDiesOnceOnChunk, "commit_stage")}[where]
    stage = type("DiesOnce", (base,), {"CHUNK": chunk, "MARKER": str(marker)})
    monkeypatch.setattr(ray_stream, "RayStream", functools.partial(ray_stream.RayStream,
                                                                    **{kw: stage}))
