"""The chunk planner of a Ray Data stream, in an async Ray actor (see regene_ray.mass.ray_stream).

Its own module, free of torch: the actor's worker process imports only this and the planner
(numpy, pyarrow: about 0.2 s), not the stages' torch (about 1.5 s), which on a small box would
compete with the actor pool starting beside it (BENCHMARKS.md section 12).

A stream started before the job's inputs are known (regene_ray.mass.ray_stream) starts with no
planner and no stage arguments: its actors report their runtime here, wait here for their
constructor arguments, and take no chunk until the driver hands over the planner.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from regene_ray.mass.plan import WAIT, ChunkInfo, ChunkPlanner

# How long a take waits for a chunk in flight to land before it gives its slot up. A stage calls
# take in its actor's one call thread, so while it waits, the retry of a chunk whose actor died
# and was restarted may be queued behind it on that actor: the very chunk it waits for. Giving
# the slot up (a no-op; a stream has slots to spare) lets the retry run. At least TAKE_WAIT_S,
# and TAKE_WAIT_CHUNKS times the median time a chunk of the stream has taken so far (from its
# latest take, so a retry's queueing is not counted, to its record; the median, so one first
# chunk slowed by an actor's set-up does not set it): where chunks take longer than TAKE_WAIT_S
# (large images, a slow CPU), a fixed limit would give a slot up every TAKE_WAIT_S in the job's
# tail until the stream ran out of slots and a second one (new actor pools) followed.
TAKE_WAIT_S = 10.0
TAKE_WAIT_CHUNKS = 3.0


class PlannerOnRay:
    """A ChunkPlanner in an async Ray actor (zero CPUs), shared by the stages of one stream:
    the first stage takes chunks from it, the last one records them. A take that must wait
    (every unfinished class has enough in flight, or no planner yet) waits inside the actor
    until a record or `start` changes that: no polling.

    For a stream started early it is also the stream's notice board: `report_runtime` /
    `runtime` (the first network actor's runtime, which the job's identity needs), `post` /
    `stage_args` (each stage's constructor arguments, once the driver has checked the run)."""

    def __init__(self, planner: ChunkPlanner | None = None):
        self.planner = planner
        self.stage_arguments: dict | None = None
        self.finished = False
        self.runtime_here: dict | None = None
        self.changed: asyncio.Condition | None = None  # made in the actor's event loop
        self.taken_at: dict[tuple[int, int], float] = {}  # chunks in flight: latest take
        self.chunk_s: list[float] = []  # how long each landed chunk took, take to record

    def _condition(self) -> asyncio.Condition:
        if self.changed is None:
            self.changed = asyncio.Condition()
        return self.changed

    async def _until(self, ready) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(ready)

    async def _set(self, **fields) -> None:
        changed = self._condition()
        async with changed:
            for name, value in fields.items():
                setattr(self, name, value)
            changed.notify_all()

    async def start(self, planner: ChunkPlanner) -> None:
        """Hand over the planner (after the driver took the output's lease): takes begin."""
        await self._set(planner=planner)

    async def post(self, stage_arguments: dict) -> None:
        """{stage: (args, kwargs)}: what each stage's constructor is called with."""
        await self._set(stage_arguments=stage_arguments)

    async def finish(self) -> None:
        """End the stream: every take from now on gets None (no work), and stages still
        waiting for their arguments get None (they stay idle), so its slots run as no-ops."""
        await self._set(finished=True, planner=ChunkPlanner({}, 1))

    async def stage_args(self, stage: str) -> tuple | None:
        await self._until(lambda: self.stage_arguments is not None or self.finished)
        return self.stage_arguments[stage] if self.stage_arguments is not None else None

    async def report_runtime(self, runtime: dict) -> None:
        if self.runtime_here is None:
            await self._set(runtime_here=runtime)

    async def runtime(self) -> dict:
        await self._until(lambda: self.runtime_here is not None)
        return self.runtime_here

    def wait_limit(self, wait_s: float = TAKE_WAIT_S) -> float:
        """How long a take waits for a chunk in flight: `wait_s`, or TAKE_WAIT_CHUNKS times
        the median chunk so far where that is longer."""
        return max(wait_s, TAKE_WAIT_CHUNKS * statistics.median(self.chunk_s or [0.0]))

    async def take(self, slot: int, wait_s: float = TAKE_WAIT_S):
        """The planner's chunk for `slot` (None: none, the slot is a no-op), waiting while it
        says WAIT, at most `wait_limit(wait_s)`, and while there is no planner yet."""
        changed = self._condition()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_limit(wait_s)
        async with changed:
            while self.planner is None or (key := self.planner.take(slot)) == WAIT:
                try:
                    await asyncio.wait_for(changed.wait(), None if self.planner is None else
                                           max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    return None
        if key is not None:
            self.taken_at[key] = time.monotonic()  # a retry's take starts its clock again
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
                taken = self.taken_at.pop((info["label"], info["chunk"]), None)
                if taken is not None:
                    self.chunk_s.append(time.monotonic() - taken)
            changed.notify_all()
