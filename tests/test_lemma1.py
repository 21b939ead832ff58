"""Lemma 1 on a trained head: convex mixes of codes the head assigns to class c stay in c."""

import numpy as np
import torch

from regene_ray.classifier import Classifier
from regene_ray.latent_bank import LatentBank


def head64(run):
    clf = Classifier.load(run / "classifier")
    w = clf.head.weight.detach().double()  # (K, D)
    b = clf.head.bias.detach().double()  # (K,)
    return lambda z: z @ w.T + b


def test_convex_mixes_stay_in_class(tiny_run):
    head = head64(tiny_run)
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    z = torch.from_numpy(bank.latents).double()  # (N, D)
    pred = head(z).argmax(1).numpy()
    rng = np.random.default_rng(0)
    checked = 0
    for c in range(10):
        pool = np.flatnonzero(pred == c)  # codes the head assigns to c
        assert len(pool) >= 8
        for _ in range(300):
            k = int(rng.integers(2, 9))
            parents = rng.choice(pool, size=k, replace=False)
            alpha = float(rng.choice([0.05, 0.5, 1.0, 10.0]))  # from near-vertices to the centre
            theta = torch.from_numpy(rng.dirichlet(np.full(k, alpha)))
            mixed = theta @ z[parents]  # (D,)
            assert int(head(mixed[None]).argmax(1)) == c
            checked += 1
    assert checked == 3000


def test_the_property_is_not_vacuous(tiny_run):
    """Mixing codes of two different classes does leave a class region, so the test can fail."""
    head = head64(tiny_run)
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    z = torch.from_numpy(bank.latents).double()
    pred = head(z).argmax(1).numpy()
    a, b = np.flatnonzero(pred == 0)[:50], np.flatnonzero(pred == 1)[:50]
    mixed = 0.5 * z[a] + 0.5 * z[b]
    out = head(mixed).argmax(1).numpy()
    assert (out != 0).any() and (out != 1).any()
