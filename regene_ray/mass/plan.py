"""Mass generation, pure planning: candidate ids, chunks, per-class quotas and the planner that
hands out chunks until the quotas are reached. No I/O except reading the run's prior acceptance;
no Ray.

A candidate of class c with per-class index j has the id `j * K + c` (K = the model's number of
classes). Chunk (c, chunk) holds the candidates of class c with j in [chunk*C, (chunk+1)*C),
C = the chunk size. See regene_ray.mass for the whole design.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from regene_ray.storage import Storage

log = logging.getLogger(__name__)

# The stage layouts regene_ray.mass.ray_stage runs: fused (one actor pool does everything) or
# split (CPU mixing -> network actors, the only ones given GPUs -> CPU commit actors). --pipeline
# auto picks split with GPUs and, without, the faster of the two on the 2-core CPU box
# (BENCHMARKS.md, section 8).
PIPELINES = ("fused", "split")
CPU_PIPELINE = "fused"


MAX_COUNT = 2**40  # ids are j * K + c in int64; this keeps them far from overflow


def parse_count(text: str) -> int:
    """'1e6', '1000000' or '1_000_000' -> 1000000; zero, negatives, fractions and NaN raise."""
    s = str(text).strip()
    try:
        value = Decimal(s.replace("_", "")) if re.fullmatch(r"[0-9_.eE+-]+|nan|inf", s.lower()) \
            else Decimal("nan")
    except InvalidOperation:
        value = Decimal("nan")
    if not value.is_finite():
        raise ValueError(f"--count {text!r} is not a number; give a positive whole number such as "
                         "1000, 1_000_000 or 1e6")
    if value != value.to_integral_value():
        raise ValueError(f"--count {text!r} is a fraction; give a whole number of images")
    if value <= 0:
        raise ValueError(f"--count {text!r} must be at least 1")
    if value > MAX_COUNT:
        raise ValueError(f"--count {text!r} is larger than the supported {MAX_COUNT:.3g}")
    return int(value)


def quotas(count: int, classes: Sequence[int], weights: Sequence[int] = ()) -> dict[int, int]:
    """Per-class quotas that sum to `count`.

    Without weights: balanced, count // n each, the remainder to the first classes. With
    weights (one per class, such as the training split's class sizes): proportional, by the
    largest-remainder method (each class gets floor(count * w / sum w), the leftover images go
    to the largest fractional parts, ties to the earlier class), so weights equal to the
    training counts and count equal to their sum give exactly the training counts.
    """
    n = len(classes)
    if not weights:
        return {int(c): count // n + (1 if i < count % n else 0) for i, c in enumerate(classes)}
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"class weights {list(weights)} must be {n} non-negative whole numbers "
                         "with a positive sum, one per class")
    total = sum(int(w) for w in weights)
    base = [count * int(w) // total for w in weights]
    rest = [count * int(w) % total for w in weights]  # exact integer remainders
    for i in sorted(range(n), key=lambda i: (-rest[i], i))[:count - sum(base)]:
        base[i] += 1
    return {int(c): q for c, q in zip(classes, base, strict=True)}


def auto_chunk_size(count: int, num_classes: int, batch_size: int, *, min_chunks: int = 8,
                    max_batches: int = 16) -> int:
    """Chunk size for --chunk-size auto: whole decoder batches, at least `min_chunks` chunks per
    class quota (small jobs waste little past their quota) and at most `max_batches` batches
    (so resume loses little and a Parquet file holds a few thousand rows)."""
    per_class = -(-count // num_classes)
    batches = -(-per_class // (min_chunks * batch_size))
    return batch_size * min(max(batches, 1), max_batches)


def candidate_ids(label: int, chunk: int, chunk_size: int, num_classes: int) -> np.ndarray:
    """Ids of chunk (label, chunk): j * K + label for j in [chunk*C, (chunk+1)*C). (C,) int64."""
    j = np.arange(chunk * chunk_size, (chunk + 1) * chunk_size, dtype=np.int64)
    return j * num_classes + label


@dataclass
class ChunkInfo:
    """Statistics of one finished chunk (from its Parquet metadata or from a worker)."""

    label: int
    chunk: int
    tried: int
    latent_passed: int
    accepted: int  # accepted rows of the full chunk (before any trimming)
    path: str | None = None  # relative to the output folder
    node: str = ""  # the Ray node that ran its networks in this run (when the runner says)
    stage_gpus: dict[str, float] = field(default_factory=dict)  # GPUs of each stage's actor
    novelty_rejected: int = 0  # passed both confidence steps, rejected as near-copies
    actors: dict[str, str] = field(default_factory=dict)  # the actor of each stage (on Ray)
    taken_at: float = 0.0  # wall clock when a worker took it from the planner (this run)


def prior_rates(run_dir: str | Path, n_parents: Sequence[int]
                ) -> dict[int, float] | float | None:
    """Acceptance measured by jobs/train.py (metrics.json), averaged over the n_parents options:
    per class where the run kept it, else one rate for all classes, else None."""
    try:
        acc = Storage(run_dir).read_json("metrics.json")["acceptance"]
        per = [acc[str(n)].get("per_class", {}).get("accepted") for n in n_parents]
        if all(isinstance(p, list) for p in per):
            rates = np.nanmean(np.asarray(per, np.float64), axis=0)
            return {c: float(r) for c, r in enumerate(rates) if 0 < r <= 1}
        rate = float(np.mean([acc[str(n)]["accepted"] for n in n_parents]))
    except (OSError, KeyError, ValueError, TypeError, AttributeError):
        return None
    return rate if 0 < rate <= 1 else None


WAIT = "wait"  # ChunkPlanner.take: nothing to hand out until a chunk in flight reports


@dataclass
class _ClassState:
    """A class's tallies in a ChunkPlanner (kept up to date, so each call is O(classes))."""

    quota: int
    tried: int = 0
    accepted: int = 0
    chunks: dict[int, int] = field(default_factory=dict)  # finished chunk -> accepted rows
    in_flight: set[int] = field(default_factory=set)
    done: bool = False  # chunks 0..k* finished and hold the quota

    def add(self, chunk: int, info: ChunkInfo) -> None:
        if chunk in self.chunks:  # recorded twice (a retried commit): count it once
            return
        self.chunks[chunk] = info.accepted
        self.tried += info.tried
        self.accepted += info.accepted
        got, k = 0, 0
        while not self.done and k in self.chunks:
            got += self.chunks[k]
            self.done = got >= self.quota
            k += 1
        self.done = self.done or self.quota == 0

    def next_chunk(self) -> int:
        k = 0
        while k in self.chunks or k in self.in_flight:
            k += 1
        return k


class ChunkPlanner:
    """Hands out chunks one at a time, as workers ask for work, until every class's chunks
    0..k* are done and hold its quota (`cutoffs`): one stream of work for the whole job.

    A class is served while the accepted rows it can expect (those of its finished chunks, plus
    its chunks in flight at its acceptance rate) fall short of its quota by more than a 2-sigma
    margin; the class furthest from its quota, relative to the quota, goes first, so classes
    finish together and the job's tail is about one chunk. The rate is measured once a class
    ran a chunk's worth of candidates, else the run's prior (metrics.json), else DEFAULT_RATE.
    Which chunks run never changes which rows are kept, so the hand-out order does not matter
    for the output, only for the time.

    `take(slot)` is idempotent per slot: a worker retried after a crash asks again with the
    same slot and gets the same chunk, so a chunk lost in flight is never left waiting.
    Pure Python: the Ray stage holds one in an actor; the serial runner calls it directly.
    """

    DEFAULT_RATE = 0.5  # planning rate of a class before anything is known about it

    def __init__(self, quota: dict[int, int], chunk_size: int,
                 done: dict[tuple[int, int], ChunkInfo] | None = None,
                 prior: dict[int, float] | float | None = None):
        self.quota = {int(c): int(q) for c, q in quota.items()}
        self.chunk_size = int(chunk_size)
        self.prior = prior
        self.done: dict[tuple[int, int], ChunkInfo] = {}
        self.classes = {c: _ClassState(q) for c, q in self.quota.items()}
        self.assigned: dict[int, tuple[int, int]] = {}  # slot -> chunk, until it reports
        self.taken = 0  # chunks handed out
        for info in (done or {}).values():
            self.record(info)

    def rate(self, c: int) -> float:
        st = self.classes[c]
        if st.tried >= self.chunk_size:
            return max(st.accepted, 0.5) / st.tried
        prior = self.prior.get(c) if isinstance(self.prior, dict) else self.prior
        return prior or self.DEFAULT_RATE

    def complete(self) -> bool:
        return all(st.done for st in self.classes.values())

    def in_flight(self) -> int:
        return sum(len(st.in_flight) for st in self.classes.values())

    def _shortfall(self, c: int) -> float | None:
        """How far class c is from its quota, relative to it, counting chunks in flight at
        its rate (None: nothing to hand out to it now)."""
        st = self.classes[c]
        if st.done:
            return None
        if not st.in_flight:
            return 1.0  # unfinished and nothing on the way (also a gap left by a resume)
        rate = self.rate(c)
        expected = st.accepted + len(st.in_flight) * rate * self.chunk_size
        margin = 2.0 * math.sqrt(st.quota * (1 - rate)) + 1.0  # 2 sigma of the accepted count
        short = st.quota + margin - expected
        return short / st.quota if short > 0 else None

    def take(self, slot: int | None = None) -> tuple[int, int] | str | None:
        """The next chunk (label, chunk) to run; WAIT when every unfinished class has enough
        in flight; None when the job is complete."""
        if slot is not None and slot in self.assigned:
            return self.assigned[slot]
        if self.complete():
            return None
        short = {c: s for c in self.quota if (s := self._shortfall(c)) is not None}
        if not short:
            return WAIT
        c = max(short, key=lambda c: (short[c], -c))
        key = (c, self.classes[c].next_chunk())
        self.classes[c].in_flight.add(key[1])
        if slot is not None:
            self.assigned[slot] = key
        self.taken += 1
        return key

    def record(self, info: ChunkInfo) -> None:
        """A finished chunk's statistics (from whichever worker committed it)."""
        key = (info.label, info.chunk)
        self.done[key] = info
        st = self.classes.get(info.label)
        if st is not None:
            st.in_flight.discard(info.chunk)
            st.add(info.chunk, info)
        self.assigned = {s: k for s, k in self.assigned.items() if k != key}

    def check(self) -> None:
        """Raise when a class has tried many candidates and accepted none (its thresholds are
        out of reach): the job would otherwise never end."""
        for c, st in self.classes.items():
            if st.tried >= 8 * self.chunk_size and not st.accepted:
                raise ValueError(
                    f"class {c}: none of {st.tried} candidates passed both filter steps; its "
                    "thresholds are out of reach for this run (check thresholds.json, retrain, or "
                    "leave the class out with --classes)")

    SLOT_MARGIN = 2.0  # work slots per chunk expected to be needed (slots left once the job
    # is complete are never run: a stream ends when the last chunk taken has landed)

    def work_slots(self, workers: int) -> int:
        """Work slots for a stream of `workers` actors: the chunks expected to be needed, with
        a margin for rates below the estimate, and a few per actor. A stream whose slots run
        out before the job is complete (acceptance below half the estimate) is followed by
        another (run_job)."""
        return math.ceil(self.expected_chunks() * self.SLOT_MARGIN) + 2 * workers + 2

    def expected_chunks(self) -> int:
        """Chunks the unfinished classes still need at their current rates (for sizing the
        stream of work slots)."""
        return sum(max(0, math.ceil((st.quota - st.accepted) / (self.rate(c) * self.chunk_size)))
                   for c, st in self.classes.items() if not st.done)


def cutoffs(done: dict[tuple[int, int], ChunkInfo], quota: dict[int, int]
            ) -> dict[int, tuple[int, int]] | None:
    """{class: (k*, rows to keep from chunk k*)} when the output can be finalised, else None."""
    cut = {}
    for c, q in quota.items():
        got, chunk = 0, 0
        while got < q:
            info = done.get((c, chunk))
            if info is None:
                return None
            if got + info.accepted >= q:
                cut[c] = (chunk, q - got)
            got += info.accepted
            chunk += 1
    return cut


# sizing the split pipeline's actor pools (ray_stream.split_pools_here reads the cluster)


MIX_CPUS = 0.5  # CPUs reserved by a mixing actor of the split pipeline (light work)
MIX_ACTORS = 2  # the most mixing actors (Ray Data grows the pool from one as needed)


# How long Ray Data waits for an actor pool's first actors (its default: forever). Actors that
# no node can hold, and no autoscaler adds, then fail the job instead of hanging it.
ACTOR_WAIT_S = 600


@dataclass(frozen=True)
class Pools:
    """Actor pools of a job: the network stage's (fused, or score in the split) and, in the
    split, the CPU commit stage's; mixing is one or two light actors."""

    workers: tuple[int, int]  # network-stage actors, MIN..MAX
    cpu_workers: tuple[int, int] = (1, 1)  # commit actors (split only)
    commit_cpus: float = 1.0  # CPUs reserved per commit actor
    mix_cpus: float = MIX_CPUS


def split_pools(cpus: float, workers: tuple[int, int], cpu_workers: tuple[int, int] | None = None,
                *, network_cpus: float | None = None) -> Pools:
    """Size the split pipeline on `cpus` CPUs: each network actor reserves one CPU (it feeds its
    GPU), `network_cpus` of them out of `cpus` (default: all, workers[1]), the mixer MIX_CPUS,
    and commit actors (PNG, Parquet) take what is left, one CPU each, or one actor on the
    fraction left on a small box.

    Raises:
        ValueError: when nothing is left for the commit stage.
    """
    taken = workers[1] if network_cpus is None else network_cpus
    left = cpus - taken - MIX_CPUS
    if cpu_workers is not None:
        if 0 < left < cpu_workers[1]:  # share what is left (a small box)
            return Pools(workers, cpu_workers, commit_cpus=left / cpu_workers[1])
        if left <= 0:
            log.warning("no CPU is free for the %d..%d commit actors now: they wait up to "
                        "%d s for nodes an autoscaler launches for them", *cpu_workers,
                        ACTOR_WAIT_S)
        return Pools(workers, cpu_workers, commit_cpus=1.0)
    if left <= 0:
        raise ValueError(
            f"the split pipeline needs CPUs besides the {taken:g} its network actors take (one "
            f"per actor) and the mixer's {MIX_CPUS:g}, but the cluster has {cpus:g} now; lower "
            "--workers, pass --cpu-workers MIN,MAX on an autoscaling cluster (CPU nodes are "
            "launched for them), or use --pipeline fused")
    if left >= 1:
        return Pools(workers, (1, int(left)), commit_cpus=1.0)
    return Pools(workers, (1, 1), commit_cpus=left)
