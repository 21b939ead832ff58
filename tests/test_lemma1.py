"""Lemma 1 on a trained head: convex mixes of codes the head assigns to class c stay in c."""

import numpy as np
import torch

from regene_ray.classifier import Classifier
from regene_ray.generator import ConvexGenerator, LatentMixer
from regene_ray.latent_bank import LatentBank


def head64(run):
    clf = Classifier.load(run / "classifier")
    w = clf.head.weight.detach().double()  # (K, D)
    b = clf.head.bias.detach().double()  # (K,)
    return lambda z: z @ w.T + b


def test_convex_mixes_stay_in_class(tiny_run):
    head = head64(tiny_run)
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    z = bank.latents_tensor().double()  # (N, D)
    pred = head(z).argmax(1).numpy()
    rng = np.random.default_rng(0)
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


def test_the_property_is_not_vacuous(tiny_run):
    """Mixing codes of two different classes does leave a class region, so the test can fail."""
    head = head64(tiny_run)
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    z = bank.latents_tensor().double()
    pred = head(z).argmax(1).numpy()
    a, b = np.flatnonzero(pred == 0)[:50], np.flatnonzero(pred == 1)[:50]
    mixed = 0.5 * z[a] + 0.5 * z[b]
    out = head(mixed).argmax(1).numpy()
    assert (out != 0).any() and (out != 1).any()


# Lemma 1 through the code that generates: the float32 mixer and the trained head, with parents
# drawn from the bank's eligible pools (codes the head assigns to their own label).


def violations(mixer: LatentMixer, head, classes, n: int, weights: str, seed: int) -> float:
    """Fraction of the mixer's candidates of `classes` that `head` puts outside their class."""
    labels = np.repeat(np.asarray(classes), 400)
    m = mixer(labels, n, weights, seed=seed)
    with torch.no_grad():
        pred = head(torch.from_numpy(m.z)).argmax(1).numpy()
    return float((pred != labels).mean())


def test_lemma1_through_the_generators_mixer_and_head(tiny_run):
    gen = ConvexGenerator.from_run(tiny_run)
    for n, weights in [(2, "uniform"), (3, "dirichlet:0.3"), (5, "dirichlet:1"), (2, "0.1,0.9")]:
        assert violations(gen.mixer, gen.classifier.classify_latent, range(10), n, weights,
                          seed=n) == 0.0


class TwoSidedHead(torch.nn.Module):
    """A non-linear head: class 0 where |(z - mu) . v| > s (two disjoint half-spaces, so not a
    convex region), class 1 elsewhere. Lemma 1 needs a linear head; this one breaks it."""

    def __init__(self, mu: torch.Tensor, v: torch.Tensor, s: float, num_classes: int):
        super().__init__()
        self.mu, self.v, self.s, self.k = mu, v, s, num_classes

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(z), self.k)
        out[:, 0] = (((z - self.mu) @ self.v) / self.s) ** 2 - 1.0
        out[:, 1] = 1e-6  # ties go to class 1
        return out


def test_the_same_check_fails_when_the_head_is_not_linear(tiny_run):
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    z0 = torch.from_numpy(bank.latents[bank.labels == 0])
    mu = z0.mean(0)
    v = torch.linalg.svd(z0 - mu, full_matrices=False).Vh[0]  # the main axis of class 0's codes
    s = float(((z0 - mu) @ v).abs().median())
    head = TwoSidedHead(mu, v, s, 10)
    with torch.no_grad():
        pred = head(bank.latents_tensor()).argmax(1).numpy()
    swapped = LatentBank(ids=bank.ids, labels=bank.labels, latents=bank.latents,
                         confidence=bank.confidence, correct=pred == bank.labels)
    mixer = LatentMixer(swapped, 10)
    assert len(mixer.pools[0]) >= 8  # eligible class-0 parents on both sides of the gap
    assert violations(mixer, head, [0], 2, "uniform", seed=0) > 0.1
