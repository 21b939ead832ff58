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
