import numpy as np
import pytest
import torch

from regene_ray.convex import (
    KeyedRNG,
    choose_n_parents,
    mix,
    parse_weights,
    sample_convex_weights,
    sample_parents,
)


def test_keyed_rng_depends_only_on_seed_and_id():
    a = KeyedRNG(7, [5, 6, 7]).uniform(2, 4)
    b = KeyedRNG(7, [7, 100, 5]).uniform(2, 4)
    assert np.array_equal(a[0], b[2]) and np.array_equal(a[2], b[0])
    assert not np.array_equal(a, KeyedRNG(8, [5, 6, 7]).uniform(2, 4))
    assert not np.array_equal(a, KeyedRNG(7, [5, 6, 7]).uniform(3, 4))
    u = KeyedRNG(0, np.arange(200_000)).uniform(1, 1)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


def pools():
    return [np.arange(0, 50), np.arange(50, 53), np.arange(53, 60) * 10]


def test_parents_are_distinct_and_in_class():
    labels = np.array([0, 1, 2] * 300)
    p = sample_parents(pools(), labels, 3, KeyedRNG(0, np.arange(len(labels))))
    assert p.shape == (900, 3)
    for row, c in zip(p, labels, strict=True):
        assert len(set(row)) == 3 and set(row) <= set(pools()[c])
    # class 1 has exactly 3 codes, so every row is a permutation of them
    assert (np.sort(p[labels == 1], axis=1) == [50, 51, 52]).all()


def test_parents_cover_the_pool_uniformly():
    labels = np.zeros(20_000, dtype=np.int64)
    p = sample_parents([np.arange(10)], labels, 2, KeyedRNG(1, np.arange(20_000)))
    counts = np.bincount(p.ravel(), minlength=10)
    assert counts.min() > 0.9 * 4000 and counts.max() < 1.1 * 4000


def test_too_few_parents_and_too_small_n():
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have fewer than 4 eligible codes"):
        sample_parents(pools(), np.array([0, 1]), 4, KeyedRNG(0, [0, 1]))
    with pytest.raises(ValueError, match="n_parents 1 must be at least 2"):
        sample_parents(pools(), np.array([0]), 1, KeyedRNG(0, [0]))


@pytest.mark.parametrize("spec", ["uniform", "dirichlet:0.3", "dirichlet:5", "0.2,0.3,0.5"])
def test_weights_are_convex(spec):
    w = sample_convex_weights(3, spec, KeyedRNG(0, np.arange(5000)))
    assert w.shape == (5000, 3) and w.dtype == np.float32
    assert (w >= 0).all() and np.allclose(w.sum(1), 1, atol=1e-6)


def test_dirichlet_mean_matches_theory():
    w = sample_convex_weights(4, "dirichlet:2", KeyedRNG(3, np.arange(40_000)))
    assert np.allclose(w.mean(0), 0.25, atol=0.005)
    # Var of a Dirichlet(2,2,2,2) marginal: a(a0-a)/(a0^2(a0+1)) = 2*6/(64*9)
    assert w[:, 0].var() == pytest.approx(12 / 576, rel=0.05)


def test_affine_weights_stretch_dirichlet_1_about_the_centroid():
    rng = KeyedRNG(0, np.arange(20_000))
    d = sample_convex_weights(3, "dirichlet:1", rng)
    assert np.allclose(sample_convex_weights(3, "affine:0", rng), d, atol=1e-6)  # Dirichlet(1)
    w = sample_convex_weights(3, "affine:0.5", rng)
    assert w.dtype == np.float32 and np.allclose(w.sum(1), 1, atol=1e-5)
    assert np.allclose(w, 2.5 * d - 0.5, atol=1e-6)  # (1 + 3 * 0.5) w - 0.5
    assert w.min() >= -0.5 - 1e-6 and w.max() <= 2.0 + 1e-6
    assert (w < 0).any(axis=1).mean() > 0.5  # most rows leave the parents' hull
    assert str(parse_weights("affine:0.5")) == "affine:0.5"


def test_weight_spec_errors():
    assert parse_weights("0.3").ratios == (0.3, 0.7)
    with pytest.raises(ValueError, match="sum to 1"):
        parse_weights("0.3,0.3")
    with pytest.raises(ValueError, match="positive alpha"):
        parse_weights("dirichlet:-1")
    for bad in ("affine", "affine:-0.1", "affine:x", "affine:inf", "affine:nan", "affine:11"):
        with pytest.raises(ValueError, match="affine needs a reach >= 0"):
            parse_weights(bad)
    for bad in ("gaussian", "afine:1", "affinex:1", "dirichletx:1"):
        with pytest.raises(ValueError, match="not understood; use uniform, dirichlet:<alpha>, aff"):
            parse_weights(bad)
    with pytest.raises(ValueError, match="give one ratio per parent"):
        sample_convex_weights(3, "0.3,0.7", KeyedRNG(0, [0]))


def test_n_parents_choice_and_mix():
    n = choose_n_parents([2, 3, 5], KeyedRNG(0, np.arange(3000)))
    assert set(np.unique(n)) == {2, 3, 5} and min(np.bincount(n)[[2, 3, 5]]) > 900
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(mix(z, torch.tensor([[0.25, 0.75]])), torch.tensor([[0.25, 0.75]]))
