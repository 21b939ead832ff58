"""Mass generation, pure planning: candidate ids, chunks, per-class quotas and the waves of chunks
that reach them. No I/O except reading the run's prior acceptance; no Ray.

A candidate of class c with per-class index j has the id `j * K + c` (K = the model's number of
classes). Chunk (c, chunk) holds the candidates of class c with j in [chunk*C, (chunk+1)*C),
C = the chunk size. See regene_ray.mass for the whole design.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from regene_ray.storage import Storage

MAX_COUNT = 2**40  # ids are j * K + c in int64; this keeps them far from overflow


SPLIT_CANDIDATES = 20_000  # per class: above this a prior-planned wave is split (plan_wave)


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


def prior_rate(run_dir: str | Path, n_parents: Sequence[int]) -> float | None:
    """Acceptance measured by jobs/train.py (metrics.json), averaged over the n_parents options."""
    try:
        acc = Storage(run_dir).read_json("metrics.json")["acceptance"]
        rate = float(np.mean([acc[str(n)]["accepted"] for n in n_parents]))
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return rate if 0 < rate <= 1 else None


def class_rates(done: dict[tuple[int, int], ChunkInfo], classes: Sequence[int],
                prior: float | None, min_tried: int) -> dict[int, tuple[float, bool] | None]:
    """Acceptance per class as (rate, measured): measured once min_tried candidates ran, else
    the prior (which pools all classes), else None."""
    rates = {}
    for c in classes:
        tried = sum(i.tried for (cc, _), i in done.items() if cc == c)
        acc = sum(i.accepted for (cc, _), i in done.items() if cc == c)
        if tried >= min_tried:
            if acc == 0 and tried >= 8 * min_tried:
                raise ValueError(
                    f"class {c}: none of {tried} candidates passed both filter steps; its "
                    "thresholds are out of reach for this run (check thresholds.json, retrain, or "
                    "leave the class out with --classes)")
            rates[c] = (max(acc, 0.5) / tried, True)
        else:
            rates[c] = None if prior is None else (prior, False)
    return rates


def plan_wave(done: dict[tuple[int, int], ChunkInfo], quota: dict[int, int], chunk_size: int,
              rates: dict[int, tuple[float, bool] | None]) -> list[tuple[int, int]]:
    """Chunks to run next, or [] when every class's chunks 0..k* are done and reach its quota.

    With a measured rate, chunks are added in order until the expected accepted rows reach q_c
    plus a 2-sigma margin. With only the prior (which pools all classes), a class is planned at
    0.9x the prior, since a shortfall costs a whole extra wave (seconds of actor start-up); when
    that would plan more than `SPLIT_CANDIDATES` candidates, only half of them run first, so the
    rest is planned from the class's measured rate and the 10% surplus is not paid at scale.
    With no rate at all, a class gets one pilot chunk.
    """
    todo = []
    for c, q in quota.items():
        if rates.get(c) is None:
            if (c, 0) not in done:
                todo.append((c, 0))  # pilot chunk: measure before planning more
            continue
        rate, measured = rates[c]
        if not measured:
            rate *= 0.9
        slack = 2.0 * math.sqrt(q / rate) + 1.0
        got, chunk, planned = 0.0, 0, []
        while got < q + (slack if planned else 0.0):
            if (c, chunk) in done:
                got += done[(c, chunk)].accepted
            else:
                planned.append((c, chunk))
                got += rate * chunk_size
            chunk += 1
        if not measured and len(planned) * chunk_size > SPLIT_CANDIDATES:
            planned = planned[:max(1, len(planned) // 2)]
        todo += planned
    return todo


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
