"""Fidelity and diversity of each generated set, apart: improved precision and recall
(Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020), computed by the `prdc`
package (the authors' implementation) in the FID table's feature network.

Precision and density say how much of a set lies where real images are (realism); recall and
coverage how much of the real distribution the set reaches (diversity). FID mixes the two; a
user choosing n, the weights or the novelty step needs them apart. Every generated set of the
FID table (n = 2, each other n, the Dirichlet row) is compared with one fixed sample of real
training images; the same measure between that sample and a disjoint real one is the floor (what
real images score against real images at this size). Identical sets score exactly 1 on all four.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch

from regene_ray.evaluation.fid import FeatureNet, extract_features
from regene_ray.evaluation.streams import Streams

REAL_FLOOR = "org_vs_org"  # the real-vs-real row
PRDC = ("precision", "recall", "density", "coverage")


def prdc(real: np.ndarray, fake: np.ndarray, nearest_k: int) -> dict[str, float]:
    """prdc.compute_prdc on two (N, D) feature arrays, as floats (its progress print dropped).

    Raises:
        ValueError: when a side has no more than `nearest_k` rows (no k-th neighbour).
    """
    from prdc import compute_prdc

    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(f"precision/recall need more than k = {nearest_k} images per side; "
                         f"got {len(real)} real and {len(fake)} generated")
    with contextlib.redirect_stdout(io.StringIO()):
        out = compute_prdc(real, fake, nearest_k)
    return {k: float(out[k]) for k in PRDC}


@dataclass
class FidelityResult:
    rows: dict  # key -> name, precision, recall, density, coverage, real, generated
    features: str  # the feature network's name
    nearest_k: int


def fidelity_stage(sets: dict[str, torch.Tensor], names: dict[str, str], net: FeatureNet,
                   cfg, dev: torch.device, streams: Streams) -> FidelityResult:
    """Precision, recall, density and coverage of each generated set in `sets` (keys starting
    "gen") against a fixed sample of `sets["org"]`, and the real-vs-real floor.

    Args:
        sets: uint8 image sets by key, as the FID stage built them ("org": real training images).
        names: key -> the row's name in the report.
        net: the feature network (the FID table's).
        cfg: cfg.prdc_samples images per side (at most; capped by the sets), cfg.prdc_k.
    """
    rng = streams.rng("fidelity")
    org = sets["org"]
    size = min(cfg.prdc_samples, len(org) // 2)
    perm = rng.permutation(len(org))
    real = _features(net, org, perm[:size], dev)
    rows = {REAL_FLOOR: {"name": "Org vs Org (real-vs-real floor)",
                         **prdc(real, _features(net, org, perm[size:2 * size], dev), cfg.prdc_k),
                         "real": size, "generated": size}}
    for key in sorted(k for k in sets if k.startswith("gen")):
        pick = rng.permutation(len(sets[key]))[:size]
        if len(pick) <= cfg.prdc_k:
            continue  # too few generations of this kind to have k neighbours
        row = prdc(real, _features(net, sets[key], pick, dev), cfg.prdc_k)
        rows[f"org_vs_{key}"] = {"name": names.get(f"org_vs_{key}", key), **row,
                                 "real": size, "generated": len(pick)}
    return FidelityResult(rows, net.name, cfg.prdc_k)


def _features(net: FeatureNet, images: torch.Tensor, rows: np.ndarray,
              dev: torch.device) -> np.ndarray:
    picked = images[torch.from_numpy(np.sort(rows))]
    return extract_features(net, picked, dev).float().cpu().numpy()
