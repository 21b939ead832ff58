"""Pareto front, the paper's selection rule and 2-D hypervolume, as pure numpy functions.

The search trades classification accuracy (maximise) against reconstruction MAE (minimise).
Nothing here knows about Ray or Optuna; the sweep calls these on its trial table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Which rows are non-dominated.

    Row j dominates row i when j is at least as good in every objective and strictly better in
    one. Rows with a NaN are never on the front (a trial without both metrics). Equal rows do not
    dominate each other, so duplicates are all on the front (as in Optuna's best_trials).

    Args:
        values: (N, M) objective values.
        maximize: M flags, True where larger is better.
    Returns:
        (N,) bool mask of the front.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(maximize):
        raise ValueError(f"values has shape {v.shape}; expected (N, {len(maximize)})")
    sign = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    loss = v * sign  # (N, M), smaller is better everywhere
    valid = ~np.isnan(loss).any(axis=1)
    lv = loss[valid]
    le = (lv[:, None, :] <= lv[None, :, :]).all(axis=2)  # le[j, i]: j no worse than i everywhere
    lt = (lv[:, None, :] < lv[None, :, :]).any(axis=2)  # lt[j, i]: j strictly better somewhere
    dominated = (le & lt).any(axis=0)  # (n_valid,)
    mask = np.zeros(len(v), dtype=bool)
    mask[np.flatnonzero(valid)[~dominated]] = True
    return mask


def choose_within_tolerance(accuracy: np.ndarray, mae: np.ndarray, tolerance: float) -> int:
    """The paper's rule: the lowest MAE among rows whose accuracy is within `tolerance` of the best.

    Ties go to the higher accuracy, then to the earlier row, so the choice is on the front.

    Returns:
        The row index, or -1 when no row has both metrics.
    """
    acc, err = np.asarray(accuracy, float), np.asarray(mae, float)
    ok = ~(np.isnan(acc) | np.isnan(err))
    if not ok.any():
        return -1
    if tolerance < 0:
        raise ValueError(f"tolerance {tolerance} must be >= 0")
    eligible = ok & (acc >= acc[ok].max() - tolerance)
    idx = np.flatnonzero(eligible)
    order = np.lexsort((idx, -acc[idx], err[idx]))  # by mae, then -accuracy, then row
    return int(idx[order[0]])


def hypervolume_2d(accuracy: np.ndarray, mae: np.ndarray, ref: tuple[float, float]) -> float:
    """Area dominated by the points (accuracy up, MAE down) and bounded by ref=(acc_ref, mae_ref).

    Points worse than the reference in either objective add nothing. Larger is better.
    """
    acc, err = np.asarray(accuracy, float), np.asarray(mae, float)
    ok = ~(np.isnan(acc) | np.isnan(err)) & (acc > ref[0]) & (err < ref[1])
    pts = np.stack([acc[ok], err[ok]], axis=1)
    if not len(pts):
        return 0.0
    pts = pts[pareto_mask(pts, [True, False])]
    pts = pts[np.argsort(-pts[:, 0])]  # accuracy descending -> MAE descending along the front
    area, prev_err = 0.0, ref[1]
    for a, e in pts:
        if e < prev_err:
            area += (a - ref[0]) * (prev_err - e)
            prev_err = e
    return float(area)


def nondominated_ranks(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, and so on.

    Rows with a NaN come after every front (rank = the number of fronts).

    Returns:
        (N,) int ranks.
    """
    v = np.asarray(values, dtype=float)
    ranks = np.full(len(v), -1, dtype=int)
    left = ~np.isnan(v).any(axis=1) if v.ndim == 2 else np.zeros(0, bool)
    rank = 0
    while left.any():
        idx = np.flatnonzero(left)
        front = idx[pareto_mask(v[idx], maximize)]
        ranks[front] = rank
        left[front] = False
        rank += 1
    ranks[ranks < 0] = rank
    return ranks


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row within its set: per objective, the gap between its
    two neighbours in sorted order over the objective's range, summed; the extremes of every
    objective get infinity. Sets of one or two rows are all infinite."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(v.shape[1]):
        order = np.argsort(v[:, k], kind="stable")
        col = v[order, k]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def promotion_order(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Rows best first, as MO-ASHA promotes them (Schmucker et al. 2021, NSGA-II's order):
    by non-dominated rank, then by crowding distance within the rank (larger first, so the
    front's extremes and its sparse stretches go first), then by row (earlier first).

    Returns:
        (N,) row indices.
    """
    v = np.asarray(values, dtype=float)
    ranks = nondominated_ranks(v, maximize)
    crowd = np.zeros(len(v))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        if not np.isnan(v[members]).any():
            crowd[members] = crowding_distance(v[members])
    return np.lexsort((np.arange(len(v)), -crowd, ranks))


def knee_point(accuracy: np.ndarray, mae: np.ndarray) -> int:
    """The knee of the front: after scaling both objectives to [0, 1] over the front, the front
    point farthest beyond the straight line joining the front's two ends (Das 1999), i.e. the
    point where giving up accuracy buys the most MAE. Fronts of one or two points: the point
    nearest the ideal (best accuracy, best MAE) in the same scaling. Ties: the earlier row.

    Returns:
        The row index, or -1 when no row has both metrics.
    """
    acc, err = np.asarray(accuracy, float), np.asarray(mae, float)
    front = np.flatnonzero(pareto_mask(np.stack([acc, err], axis=1), [True, False]))
    if not len(front):
        return -1
    a, e = acc[front], err[front]
    # scaled "losses" in [0, 1]: 0 is the front's best value of each objective
    la = (a.max() - a) / (np.ptp(a) or 1.0)
    le = (e - e.min()) / (np.ptp(e) or 1.0)
    if len(front) <= 2 or np.ptp(a) == 0 or np.ptp(e) == 0:
        score = -np.hypot(la, le)
    else:
        # the ends are (0, 1) (best accuracy) and (1, 0) (best MAE): distance below la + le = 1
        score = (1.0 - la - le) / np.sqrt(2.0)
    best = np.flatnonzero(score == score.max())
    return int(front[best].min())
