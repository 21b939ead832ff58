"""Fault injection for tests, kept out of production code: a mass-generation stage whose worker
process dies abruptly the first time it meets a given chunk.

Ray workers cannot import this tests/ module, so callers register it with cloudpickle to travel
by value (`use_dying_stage`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from regene_ray.mass import ray_stage
from regene_ray.mass.ray_stage import WriteChunksOnNode


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


def use_dying_stage(monkeypatch, chunk: tuple[int, int], marker: Path) -> None:
    """Make the Ray stage of jobs/mass_generate.py run DiesOnceOnChunk."""
    import sys

    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = type("DiesOnce", (DiesOnceOnChunk,), {"CHUNK": chunk, "MARKER": str(marker)})
    monkeypatch.setattr(ray_stage, "ray_runner", functools.partial(ray_stage.ray_runner,
                                                                   stage=stage))
