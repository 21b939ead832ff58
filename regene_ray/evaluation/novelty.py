"""Novelty and memorisation: are generations new images, or copies of training images?

As in the paper's Fig. 6, each generation is compared with its closest training images by pixel
MSE, by SSIM (pytorch-msssim) and by neutral-classifier features. To tell "close" from "copied",
the nearest-neighbour distances of generations to the training set are set against the same
distances for real test images, which are new by construction: a generation closer to the
training set than the closest `copy_quantile` of test images is flagged as a likely copy. For
novel generations about `copy_quantile` of them are flagged by chance; for copies, all are.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ssim

# nearest neighbours


def _flat(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, C*H*W) in [0, 1]."""
    return x.reshape(len(x), -1).float().div_(255.0)


def nearest_l2(query: torch.Tensor, ref: torch.Tensor, *, exclude_self: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest reference row by mean squared difference: (Q, D), (N, D) float -> (Q,), (Q,).

    Args:
        exclude_self: query and ref are the same set; a row never matches itself.
    Returns:
        (distance = mean squared difference per dimension, index into ref).
    """
    ref = ref.float()
    chunk = max(1, (1 << 24) // max(1, len(ref)))  # query rows per (chunk, N) distance block
    ref_sq = (ref * ref).sum(1)  # (N,)
    dists, idx = [], []
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk].float()
        d = (q * q).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * q @ ref.T  # (q, N)
        if exclude_self:
            rows = torch.arange(len(q))
            d[rows, rows + start] = float("inf")
        best, arg = d.min(1)
        dists.append(best.clamp_min(0) / query.shape[1])
        idx.append(arg)
    return torch.cat(dists), torch.cat(idx)


def _win_size(side: int) -> int:
    """The largest odd SSIM window <= 11 that fits the image."""
    w = min(11, side)
    return w if w % 2 else w - 1


@torch.no_grad()
def nearest_ssim(query: torch.Tensor, ref: torch.Tensor, chunk: int = 4096
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Most similar reference image by SSIM, exhaustively: uint8 (Q, C, H, W), (N, C, H, W).

    Returns:
        (best SSIM (Q,), index into ref (Q,)).
    """
    win = _win_size(ref.shape[-1])
    r = ref.float().div(255.0)
    best_s, best_i = [], []
    for q in query.float().div(255.0):
        scores = torch.cat([
            ssim(q.expand(len(rc), -1, -1, -1), rc, data_range=1.0, size_average=False,
                 win_size=win)
            for rc in torch.split(r, chunk)])
        s, i = scores.max(0)
        best_s.append(s)
        best_i.append(i)
    return torch.stack(best_s), torch.stack(best_i)


# memorisation


def _low_quantile(d: np.ndarray, q: float) -> float:
    """The q quantile of distances `d`, kept strictly positive (exact duplicates among test
    images would make it 0 and flag nothing)."""
    thr = float(np.quantile(d, q))
    if thr <= 0:
        thr = float(np.min(d[d > 0], initial=1e-6)) * 0.5
    return thr


def copy_report(gen_dist: np.ndarray, test_dist: np.ndarray, copy_quantile: float = 0.01,
                gen_labels: np.ndarray | None = None, test_labels: np.ndarray | None = None
                ) -> dict:
    """Flag generations closer to the training set than real test images usually are.

    With labels, each generation is compared with real test images of its own class (some
    classes, such as MNIST's plain 1s, sit much closer to their training images than others, and a
    global threshold would flag only them); a class without test images uses the global one.

    Args:
        gen_dist: (G,) nearest-training-image distance of each generation.
        test_dist: (T,) the same for real test images (the "novel" reference).
        copy_quantile: the threshold is this quantile of `test_dist` (per class with labels).
        gen_labels, test_labels: optional (G,), (T,) classes.
    Returns:
        {"threshold" (global), "class_thresholds" ({c: thr}, with labels), "flags" (G,) bool,
        "copy_fraction", "expected_fraction" (the same rule applied to the test images),
        quantiles of both distributions and the median ratio gen/test}.
    """
    gen_dist, test_dist = np.asarray(gen_dist, np.float64), np.asarray(test_dist, np.float64)
    thr = _low_quantile(test_dist, copy_quantile)
    class_thr: dict[str, float] = {}
    if gen_labels is not None and test_labels is not None:
        gen_labels, test_labels = np.asarray(gen_labels), np.asarray(test_labels)
        for c in np.union1d(np.unique(gen_labels), np.unique(test_labels)):
            m = test_labels == c
            class_thr[str(int(c))] = _low_quantile(test_dist[m], copy_quantile) if m.any() else thr

        def limit(labels: np.ndarray) -> np.ndarray:
            return np.array([class_thr[str(int(c))] for c in labels], dtype=np.float64)

        flags, test_flags = gen_dist < limit(gen_labels), test_dist < limit(test_labels)
    else:
        flags, test_flags = gen_dist < thr, test_dist < thr
    qs = (0.01, 0.05, 0.25, 0.5, 0.75)
    return {
        "threshold": thr,
        "class_thresholds": class_thr,
        "flags": flags,
        "copy_fraction": float(flags.mean()) if len(flags) else float("nan"),
        "expected_fraction": float(test_flags.mean()),
        "gen_quantiles": {str(q): float(np.quantile(gen_dist, q)) for q in qs},
        "test_quantiles": {str(q): float(np.quantile(test_dist, q)) for q in qs},
        "median_ratio": float(np.median(gen_dist) / max(np.median(test_dist), 1e-12)),
    }


def near_duplicate_fraction(gen: torch.Tensor, threshold: float) -> float:
    """Fraction of generations whose nearest other generation is closer than `threshold`.

    Args:
        gen: (G, D) float rows (pixels in [0, 1] or features), same space as the threshold.
        threshold: a distance in `nearest_l2`'s units.
    """
    if len(gen) < 2:
        return 0.0
    d, _ = nearest_l2(gen, gen, exclude_self=True)
    return float((d < threshold).float().mean())


def novelty(gen_x: torch.Tensor, test_x: torch.Tensor, train_x: torch.Tensor,
            features=None, copy_quantile: float = 0.01, gen_labels: np.ndarray | None = None,
            test_labels: np.ndarray | None = None) -> dict:
    """Nearest-training-image distances of generations vs real test images, in pixel space and
    (when `features` is given) in a feature space; copy flags and near-duplicate fractions.

    Args:
        gen_x, test_x, train_x: uint8 (N, C, H, W).
        features: optional callable uint8 images -> (N, d) float features.
        gen_labels, test_labels: optional classes, for per-class copy thresholds.
    Returns:
        {"pixel": {...}, "feature": {...}} with copy_report fields (flags as a list of indices),
        each plus "near_duplicate_fraction" (and the same for the test images, as a reference),
        "gen_distances", "test_distances" and "gen_nearest".
    """
    spaces = {"pixel": _flat}
    if features is not None:
        spaces["feature"] = lambda x: features(x).float()
    out = {}
    for name, f in spaces.items():
        tr = f(train_x)
        g, t = f(gen_x), f(test_x)
        gd, gi = nearest_l2(g, tr)
        td, _ = nearest_l2(t, tr)
        rep = copy_report(gd.numpy(), td.numpy(), copy_quantile, gen_labels, test_labels)
        flags = rep.pop("flags")
        rep |= {
            "flagged": np.flatnonzero(flags).tolist(),
            "near_duplicate_fraction": near_duplicate_fraction(g, rep["threshold"]),
            # the same among as many real test images: what chance closeness looks like
            "test_near_duplicate_fraction": near_duplicate_fraction(t, rep["threshold"]),
            "gen_distances": gd.numpy().tolist(),
            "test_distances": td.numpy().tolist(),
            "gen_nearest": gi.numpy().tolist(),
            "generations": len(gen_x), "test_images": len(test_x), "train_images": len(train_x),
        }
        out[name] = rep
    return out
