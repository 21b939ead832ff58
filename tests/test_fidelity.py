"""Precision, recall, density and coverage (regene_ray.evaluation.fidelity) on cases with known
answers: a set against itself, a set far from the real one, a collapsed set, and the stage's
rows with the real-vs-real floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from regene_ray.evaluation.fid import FeatureNet
from regene_ray.evaluation.fidelity import PRDC, REAL_FLOOR, fidelity_stage, prdc
from regene_ray.evaluation.streams import Streams


def _points(n: int, seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_a_set_against_itself_scores_exactly_one():
    x = _points(400, 0)
    assert prdc(x, x.copy(), nearest_k=5) == {k: 1.0 for k in PRDC}


def test_a_set_far_from_the_real_one_scores_zero():
    x = _points(300, 0)
    assert prdc(x, _points(300, 1) + 100.0, nearest_k=5) == {k: 0.0 for k in PRDC}


def test_a_collapsed_set_is_realistic_but_covers_little():
    """Generations that all sit near 5% of the real images: precision stays high, recall and
    coverage fall (what FID alone cannot tell apart from a set of lesser realism)."""
    real = _points(1000, 0)
    rng = np.random.default_rng(2)
    modes = real[rng.permutation(1000)[:50]]
    fake = modes[rng.integers(0, 50, 1000)] + 0.01 * rng.normal(size=(1000, 8)).astype(np.float32)
    same = prdc(real, _points(1000, 3), nearest_k=5)
    collapsed = prdc(real, fake, nearest_k=5)
    assert collapsed["precision"] > 0.95 and same["precision"] > 0.9
    # recall: only the 50 modes lie within the collapsed set's tiny k-NN radii (50 / 1000);
    # coverage: the real images whose k-NN ball holds a mode, about (k + 1) * 50 / 1000
    assert collapsed["recall"] <= 0.06 and same["recall"] > 0.9
    assert collapsed["coverage"] < 0.4 and same["coverage"] > 0.9


def test_too_few_images_for_k_are_refused():
    with pytest.raises(ValueError, match="more than k = 5"):
        prdc(_points(5, 0), _points(50, 1), nearest_k=5)


class _Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_stage_rows_floor_and_samples():
    """One row per generated set and the real-vs-real floor, each with its sample sizes; a set
    too small for k neighbours is left out; the same seed gives the same figures."""
    g = torch.Generator().manual_seed(0)
    org = torch.randint(0, 256, (400, 1, 4, 4), generator=g, dtype=torch.uint8)
    sets = {"org": org, "recon": org[:10],
            "gen": org[torch.randperm(400, generator=g)[:300]],  # real images: realistic
            "gen_n3": torch.full((100, 1, 4, 4), 255, dtype=torch.uint8)
            - torch.randint(0, 3, (100, 1, 4, 4), generator=g, dtype=torch.uint8),
            "gen_n5": org[:4]}  # 4 images: no 5th neighbour
    net = FeatureNet("flatten", _Flatten(), 16)
    cfg = type("Cfg", (), {"prdc_samples": 150, "prdc_k": 5})()
    names = {"org_vs_gen": "Org vs Gen"}
    run = fidelity_stage(sets, names, net, cfg, torch.device("cpu"), Streams(0))
    assert set(run.rows) == {REAL_FLOOR, "org_vs_gen", "org_vs_gen_n3"}
    assert run.rows["org_vs_gen"]["name"] == "Org vs Gen" and run.rows["org_vs_gen_n3"]["name"] \
        == "gen_n3"
    assert [(r["real"], r["generated"]) for r in run.rows.values()] == \
        [(150, 150), (150, 150), (150, 100)]
    # near-white images are nowhere near the real ones; real images are
    assert run.rows["org_vs_gen_n3"]["precision"] == 0 == run.rows["org_vs_gen_n3"]["coverage"]
    assert run.rows["org_vs_gen"]["precision"] > 0.5 and run.rows[REAL_FLOOR]["precision"] > 0.5
    again = fidelity_stage(sets, names, net, cfg, torch.device("cpu"), Streams(0))
    assert again.rows == run.rows and run.nearest_k == 5 and run.features == "flatten"
