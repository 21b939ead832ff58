"""The chunk planner of a Ray Data stream, in an async Ray actor (see regene_ray.mass.ray_stage).

Its own module, free of torch: the actor's worker process imports only this and the planner
(numpy, pyarrow: about 0.2 s), not the stages' torch (about 1.5 s), which on a small box would
compete with the actor pool starting beside it (BENCHMARKS.md section 12).
"""

from __future__ import annotations

import asyncio

from regene_ray.mass.plan import WAIT, ChunkInfo, ChunkPlanner


class PlannerOnRay:
    """A ChunkPlanner in an async Ray actor (zero CPUs), shared by the stages of one stream:
    the first stage takes chunks from it, the last one records them. A take that must wait
    (every unfinished class has enough in flight) waits inside the actor until a record
    changes that: no polling."""

    def __init__(self, planner: ChunkPlanner):
        self.planner = planner
        self.changed: asyncio.Condition | None = None  # made in the actor's event loop

    def _condition(self) -> asyncio.Condition:
        if self.changed is None:
            self.changed = asyncio.Condition()
        return self.changed

    async def take(self, slot: int):
        changed = self._condition()
        async with changed:
            while (key := self.planner.take(slot)) == WAIT:
                await changed.wait()
        return key

    def outstanding(self, landed: int) -> int:
        """Chunks taken whose rows the driver has not seen, given the `landed` chunks it has:
        those in flight, and those recorded here whose rows are still on their way."""
        return self.planner.in_flight() + len(self.planner.done) - landed

    async def record(self, infos: list[dict]) -> None:
        changed = self._condition()
        async with changed:
            for info in infos:
                self.planner.record(ChunkInfo(**info))
            changed.notify_all()
