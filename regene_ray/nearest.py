"""Nearest training codes: the novelty filter's measure (an optional third filter step).

A generation is a near-copy when the classifier's code of the decoded image lies closer to the
code of a training image of its class than real held-out images of that class lie to theirs.
The space is the classifier's code: free at generation time (the image step already encodes the
image) and the latent bank holds every training image's code.

    holdout_distances   at training time (jobs/train.py): each held-out image's distance to its
                        nearest training code of its class, sorted per class -> RUN/novelty.json
    novelty_thresholds  tau_c = the q-quantile of class c's held-out distances
    NearestTrain        at generation time: exact nearest neighbours by batched matmul on the
                        worker's device, per class

Distances are Euclidean, computed as sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)) in float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from regene_ray.config import ConfigError, save_json
from regene_ray.data import to_float
from regene_ray.latent_bank import LatentBank

NOVELTY_FILE = "novelty.json"
BLOCK = 8192  # training codes per matmul block (bounds memory at B x BLOCK floats)


class NearestTrain:
    """Exact nearest training code of the same class, for batches of codes.

    Args:
        bank: the run's latent bank (every training image's code, id and label).
        num_classes: K.
        device: where the distances are computed.
    """

    def __init__(self, bank: LatentBank, num_classes: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        latents = bank.latents_tensor()
        self.codes, self.norms, self.ids = [], [], []
        for c in range(num_classes):
            rows = np.flatnonzero(bank.labels == c)
            z = latents[torch.from_numpy(rows)].to(self.device)  # (N_c, D)
            self.codes.append(z)
            self.norms.append(z.pow(2).sum(1))  # (N_c,)
            self.ids.append(torch.from_numpy(bank.ids[rows]).to(self.device))

    @torch.inference_mode()
    def __call__(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, D) and their classes (B,) -> (nearest training ids (B,) int64, distances
        (B,) float32), on this object's device; id -1 and distance inf for a class with no
        training codes."""
        z = z.to(self.device, torch.float32)
        labels = labels.to(self.device)
        best_d = torch.full((len(z),), float("inf"), device=self.device)
        best_id = torch.full((len(z),), -1, dtype=torch.int64, device=self.device)
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().squeeze(1)
            q = z[rows]
            qn = q.pow(2).sum(1, keepdim=True)  # (b, 1)
            d_best = torch.full((len(q),), float("inf"), device=self.device)
            i_best = torch.full((len(q),), -1, dtype=torch.int64, device=self.device)
            for start in range(0, len(self.codes[c]), BLOCK):
                ref = self.codes[c][start:start + BLOCK]
                d2 = qn + self.norms[c][start:start + BLOCK][None, :] - 2.0 * q @ ref.T
                d, i = d2.min(dim=1)
                better = d < d_best  # strict: ties keep the earlier block (the lower row)
                d_best = torch.where(better, d, d_best)
                i_best = torch.where(better, self.ids[c][start + i], i_best)
            best_d[rows] = d_best.clamp_min(0).sqrt()
            best_id[rows] = i_best
        return best_id, best_d


def holdout_distances(classifier: torch.nn.Module, bank: LatentBank, holdout_x: torch.Tensor,
                      holdout_y: torch.Tensor, num_classes: int, device: torch.device,
                      batch_size: int = 512) -> dict:
    """Each held-out image's distance from its code to the nearest training code of its class,
    sorted per class: what novelty_thresholds reads (saved as RUN/novelty.json)."""
    near = NearestTrain(bank, num_classes, device)
    classifier.eval()
    dists = []
    with torch.inference_mode():
        for xb, yb in zip(torch.split(holdout_x, batch_size), torch.split(holdout_y, batch_size),
                          strict=True):
            dists.append(near(classifier.encode(to_float(xb, device)), yb)[1].cpu())
    d = torch.cat(dists).numpy() if dists else np.zeros(0, np.float32)
    y = holdout_y.numpy()
    return {"space": "classifier code (Euclidean)",
            "holdout_distances": [np.sort(d[y == c]).astype(float).tolist()
                                  for c in range(num_classes)]}


def save_novelty(stats: dict, path: str | Path) -> None:
    save_json(stats, path)


def novelty_thresholds(stats: dict, quantile: float) -> list[float]:
    """tau_c per class: the `quantile` of class c's held-out nearest-train distances. A
    generation closer than tau_c to a training code of its class is rejected as a near-copy:
    about a `quantile` share of real held-out images would be too."""
    if not 0 < quantile < 1:
        raise ConfigError(f"--novelty-quantile {quantile} must be in (0, 1), e.g. 0.01")
    out = []
    for c, d in enumerate(stats["holdout_distances"]):
        if not d:
            raise ConfigError(f"novelty.json has no held-out distances for class {c}; retrain "
                              "with a larger holdout_fraction, or generate without --novelty")
        out.append(float(np.quantile(np.asarray(d, np.float64), quantile)))
    return out
