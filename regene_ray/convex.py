"""Generation primitives: keyed randomness, parent sampling, mixing weights, mixing.

All randomness is a pure function of (seed, candidate id, stream): a vectorised counter-based
hash (splitmix64), so a candidate gets the same parents and weights whatever batch, worker or
machine it lands on. Nothing here knows about decoders or filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import gammaincinv

# streams: independent random quantities per candidate
STREAM_N_PARENTS, STREAM_PARENTS, STREAM_WEIGHTS, STREAM_LABEL = 1, 2, 3, 4
# affine weights beyond this reach lose the float32 sum to 1 and decode to noise
MAX_REACH = 10.0
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


class KeyedRNG:
    """Uniform numbers that depend only on (seed, id, stream, column).

    Args:
        seed: the job seed.
        ids: candidate ids, (B,) integers.
    """

    def __init__(self, seed: int, ids: np.ndarray | Sequence[int]):
        self.seed = int(seed)
        self.ids = np.asarray(ids, dtype=np.int64)
        with np.errstate(over="ignore"):
            base = _splitmix64(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0xA5A5A5A5))
            self._keys = _splitmix64(base ^ self.ids.astype(np.uint64))  # (B,)

    def __len__(self) -> int:
        return len(self.ids)

    def uniform(self, stream: int, k: int = 1) -> np.ndarray:
        """(B, k) float64 uniforms in the open interval (0, 1)."""
        cols = np.arange(k, dtype=np.uint64) + np.uint64(stream) * np.uint64(1 << 20)
        with np.errstate(over="ignore"):
            h = _splitmix64(_splitmix64(self._keys[:, None] ^ (cols[None, :] * np.uint64(
                0xD1B54A32D192ED03) & _M64)))
        return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


# weights


@dataclass(frozen=True)
class WeightScheme:
    """How mixing weights are drawn: 'uniform' (1/n), 'dirichlet' (alpha), fixed 'ratios', or
    'affine' (reach): Dirichlet(1) weights stretched away from the centroid, so each lies in
    [-reach, 1 + (n - 1) reach] and they still sum to 1. Affine mixes leave the parents' convex
    hull (extrapolation, DeVries and Taylor 2017): Lemma 1 no longer holds for them, so the
    generator's latent step also asks the head's argmax of them."""

    kind: str
    alpha: float = 1.0
    ratios: tuple[float, ...] = ()
    reach: float = 0.0

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "affine":
            return f"affine:{self.reach:g}"
        if self.kind == "ratios":
            return ",".join(f"{r:g}" for r in self.ratios)
        return "uniform"


def parse_weights(spec: str | WeightScheme) -> WeightScheme:
    """'uniform' | 'dirichlet:<alpha>' | 'affine:<reach>' | comma ratios such as '0.3,0.7' (or
    one ratio r for n=2)."""
    if isinstance(spec, WeightScheme):
        return spec
    s = str(spec).strip().lower()
    if s == "uniform":
        return WeightScheme("uniform")
    kind = s.partition(":")[0].strip()
    if kind == "affine":
        reach = _number_after_colon(s)
        if not 0 <= reach <= MAX_REACH:
            raise ValueError(f"weights '{spec}': affine needs a reach >= 0 and <= {MAX_REACH:g}, "
                             "e.g. affine:0.5 (each weight then lies in [-0.5, 1.5] for two "
                             "parents)")
        return WeightScheme("affine", reach=reach)
    if kind == "dirichlet":
        alpha = _number_after_colon(s, default=1.0)
        if not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"weights '{spec}': dirichlet needs a positive alpha, e.g. dirichlet:1.0")
        return WeightScheme("dirichlet", alpha=alpha)
    try:
        ratios = tuple(float(r) for r in s.split(","))
    except ValueError:
        raise ValueError(
            f"weights '{spec}' not understood; use uniform, dirichlet:<alpha>, affine:<reach> or "
            "ratios like 0.3,0.7"
        ) from None
    if len(ratios) == 1:
        ratios = (ratios[0], 1.0 - ratios[0])
    if any(r < 0 or not np.isfinite(r) for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"weights '{spec}': ratios must be >= 0 and sum to 1 (got {sum(ratios):g})")
    return WeightScheme("ratios", ratios=ratios)


def _number_after_colon(s: str, default: float = float("nan")) -> float:
    """The number after 'kind:' ('dirichlet:2' -> 2.0); `default` when there is none, NaN when
    it is not a number."""
    _, _, a = s.partition(":")
    try:
        return float(a) if a else default
    except ValueError:
        return float("nan")


def sample_convex_weights(k: int, scheme: str | WeightScheme, rng: KeyedRNG) -> np.ndarray:
    """Mixing weights (B, k), rows summing to 1: convex (non-negative) for every scheme but
    'affine', whose rows are Dirichlet(1) draws stretched by 1 + k * reach about 1/k.

    Args:
        k: parents per candidate.
        scheme: see parse_weights.
        rng: keyed randomness for the B candidates.
    """
    scheme = parse_weights(scheme)
    n = len(rng)
    if scheme.kind == "uniform":
        return np.full((n, k), 1.0 / k, dtype=np.float32)
    if scheme.kind == "ratios":
        if len(scheme.ratios) != k:
            raise ValueError(
                f"weights {scheme} give {len(scheme.ratios)} ratios but n_parents is {k}; "
                "give one ratio per parent"
            )
        return np.tile(np.asarray(scheme.ratios, dtype=np.float32), (n, 1))
    # Dirichlet by inverse-CDF gamma draws, normalised (exact for any alpha).
    alpha = 1.0 if scheme.kind == "affine" else scheme.alpha
    g = gammaincinv(alpha, rng.uniform(STREAM_WEIGHTS, k))  # (B, k)
    g = np.maximum(g, 1e-300)
    w = g / g.sum(axis=1, keepdims=True)
    if scheme.kind == "affine":  # (1 + k r) (w - 1/k) + 1/k = (1 + k r) w - r: still sums to 1
        w = (1.0 + k * scheme.reach) * w - scheme.reach
        return w.astype(np.float32)
    w = w.astype(np.float32)
    return w / w.sum(axis=1, keepdims=True)


# parents


def sample_parents(pools: Sequence[np.ndarray], labels: np.ndarray, k: int, rng: KeyedRNG
                   ) -> np.ndarray:
    """k distinct parents per candidate from its class pool (without replacement).

    Args:
        pools: pools[c] = bank row indices eligible as class-c parents.
        labels: (B,) intended class per candidate.
        k: parents per candidate (>= 2).
        rng: keyed randomness for the B candidates.
    Returns:
        (B, k) int64 bank row indices.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if k < 2:
        raise ValueError(f"n_parents {k} must be at least 2 (a mix needs two codes)")
    sizes = np.array([len(p) for p in pools], dtype=np.int64)
    short = sorted({int(c) for c in labels if sizes[c] < k})
    if short:
        raise ValueError(
            f"class(es) {short} have fewer than {k} eligible codes in the latent bank "
            f"(sizes {[int(sizes[c]) for c in short]}); lower n_parents or train on more data"
        )
    u = rng.uniform(STREAM_PARENTS, k)  # (B, k)
    m = sizes[labels]  # (B,)
    # Sequential sampling without replacement: draw r_j in [0, m - j), then skip the positions
    # already taken (in ascending order), which maps r_j onto the j-th remaining position.
    chosen = np.empty((len(labels), k), dtype=np.int64)
    for j in range(k):
        r = np.minimum((u[:, j] * (m - j)).astype(np.int64), m - j - 1)
        taken = np.sort(chosen[:, :j], axis=1)
        for t in range(j):
            r = r + (r >= taken[:, t])
        chosen[:, j] = r
    out = np.empty_like(chosen)
    for c in np.unique(labels):
        rows = labels == c
        out[rows] = pools[c][chosen[rows]]
    return out


def choose_n_parents(options: Sequence[int], rng: KeyedRNG) -> np.ndarray:
    """Per-candidate parent count drawn uniformly from `options`: (B,) int64."""
    options = np.asarray(list(options), dtype=np.int64)
    if len(options) == 1:
        return np.full(len(rng), options[0], dtype=np.int64)
    idx = (rng.uniform(STREAM_N_PARENTS, 1)[:, 0] * len(options)).astype(np.int64)
    return options[np.minimum(idx, len(options) - 1)]


def mix(latents: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mix z = sum_i theta_i z_i (convex unless the weights are affine): (B, k, D), (B, k)
    -> (B, D)."""
    return torch.einsum("bkd,bk->bd", latents, weights.to(latents.dtype))
