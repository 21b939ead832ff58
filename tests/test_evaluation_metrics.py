"""Evaluation metrics on cases with known answers: FID, the neutral classifier, novelty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regene_ray.config import ConfigError, to_dict
from regene_ray.data import DataConfig, load_data
from regene_ray.evaluation.fid import (
    INCEPTION_FILE,
    FeatureNet,
    NeutralFeatures,
    choose_feature_net,
    fid,
    fid_from_features,
    fid_table,
    mifid_from_features,
)
from regene_ray.evaluation.neutral import (
    NeutralClassifier,
    NeutralTrainConfig,
    ResNetConfig,
    load_or_train_neutral,
    random_shift,
    score_generations,
)
from regene_ray.evaluation.novelty import (
    copy_report,
    near_duplicate_fraction,
    nearest_l2,
    nearest_ssim,
    novelty,
)
from regene_ray.evaluation.stages import fid_row_name, fid_sets
from regene_ray.evaluation.streams import STREAMS, Streams, stage_rng, stage_seed
from regene_ray.generated import GeneratedSet

TINY = ResNetConfig(depth=8, width=16)  # 3 epochs on digits reach ~0.95 in about 15 s on 2 cores
TINY_TRAIN = NeutralTrainConfig(epochs=3, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # one thread: on a loaded 2-core machine, 2 threads made small-batch training 10x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits", image_size=16, holdout_fraction=0.15))


@pytest.fixture(scope="module")
def neutral(digits, tmp_path_factory):
    run = tmp_path_factory.mktemp("neutral-run")
    ident = to_dict(DataConfig(dataset="digits", image_size=16, holdout_fraction=0.15))
    model, metrics = load_or_train_neutral(run, digits, TINY, TINY_TRAIN, torch.device("cpu"),
                                           ident)
    return run, model, metrics, ident


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (x.float() + sigma * torch.randn(x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


# FID


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(digits, neutral):
    _, model, _, _ = neutral
    net = FeatureNet("neutral", NeutralFeatures(model), model.num_features)
    x = digits.train_x[:500]
    assert abs(fid(x, x, net)) < 1e-6
    values = [fid(x, _noisy(x, s), net) for s in (8, 32, 96)]
    assert values[0] > 1e-4
    assert values[0] < values[1] < values[2], values


def test_fid_matches_the_gaussian_closed_form():
    # two Gaussians with identity covariance, means 3 apart in one coordinate: FID = 9
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    b[:, 0] += 3.0
    assert fid_from_features(a, b) == pytest.approx(9.0, abs=0.25)
    # scaled covariance: Tr(I + 4I - 2*2I) = d = 4
    assert fid_from_features(a, 2 * b - torch.tensor([6.0, 0, 0, 0], dtype=torch.float64)
                             ) == pytest.approx(4.0, abs=0.25)


def test_mifid_is_fid_for_new_samples_and_grows_for_copies():
    """MiFID = FID / d, d = mean cosine distance of each fake to its nearest real when below
    eps (else 1): fresh samples of a wide Gaussian sit far from every real point in angle, so
    MiFID = FID; near-copies of the reals (tiny noise) have d ~ 0 and a MiFID far above FID."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 64, generator=g, dtype=torch.float64)
    new = torch.randn(2000, 64, generator=g, dtype=torch.float64)
    assert mifid_from_features(real, new) == pytest.approx(fid_from_features(real, new),
                                                           rel=1e-6)
    copies = real + 1e-3 * torch.randn(2000, 64, generator=g, dtype=torch.float64)
    f, m = fid_from_features(real, copies), mifid_from_features(real, copies)
    assert f < 1e-3 and m > 100 * f


def test_fid_table_rows_seeds_and_floor(digits, neutral):
    _, model, _, _ = neutral
    net = FeatureNet("neutral", NeutralFeatures(model), model.num_features)
    sets = {"org": digits.train_x[:400], "gen": _noisy(digits.train_x[400:800], 40)}
    rows = fid_table(sets, [("org", "gen"), ("org", "org")], seeds=3, sample_size=150,
                     net=net, device="cpu", mifid_pairs=frozenset({("org", "gen")}))
    assert set(rows) == {"org_vs_gen", "org_vs_org"}
    assert rows["org_vs_gen"]["mifid_mean"] >= rows["org_vs_gen"]["mean"] > 0
    assert "mifid_mean" not in rows["org_vs_org"]
    for r in rows.values():
        assert len(r["values"]) == 3 and r["sample_size"] == 150 and r["features"] == "neutral"
        assert r["std"] > 0  # different samples per seed
    assert rows["org_vs_gen"]["mean"] > rows["org_vs_org"]["mean"]
    again = fid_table(sets, [("org", "gen")], seeds=3, sample_size=150, net=net, device="cpu")
    assert again["org_vs_gen"]["values"] == rows["org_vs_gen"]["values"]  # seeded


def test_feature_net_choice_is_explicit(neutral, tmp_path, monkeypatch):
    _, model, _, _ = neutral
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = choose_feature_net(model)
    assert net.name == "neutral-resnet8-penultimate" and net.dim == 64
    assert "weights-inception" in net.note
    with pytest.raises(FileNotFoundError, match="inception-weights"):
        choose_feature_net(model, tmp_path / "missing.pth")


def test_inception_weights_without_torch_fidelity_are_reported_not_hidden(neutral, tmp_path,
                                                                          monkeypatch):
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    monkeypatch.setattr(tm_fid, "_TORCH_FIDELITY_AVAILABLE", False)  # as without torch-fidelity
    _, model, _, _ = neutral
    weights = tmp_path / "hub" / "checkpoints" / INCEPTION_FILE
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = choose_feature_net(model)  # found the file, cannot build the network: says so
    assert net.name.startswith("neutral") and "torch-fidelity is not installed" in net.note
    with pytest.raises(ValueError, match="torch-fidelity"):
        choose_feature_net(model, weights)  # asked for explicitly: an error, not a fallback


# neutral classifier


def test_resnet20_has_the_papers_parameter_count():
    # ResNet-20 v1 with option-A shortcuts on CIFAR: 0.27M parameters (He et al. 2016, Table 6)
    m = NeutralClassifier(ResNetConfig(depth=20, in_channels=3, num_classes=10))
    assert 0.26e6 < sum(p.numel() for p in m.parameters()) < 0.28e6
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert m.features(torch.rand(2, 3, 28, 28)).shape == (2, 64)
    with pytest.raises(ConfigError, match="6n"):
        ResNetConfig(depth=21)


def test_random_shift_moves_pixels_without_changing_shape():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.all(y.sum((1, 2, 3)) == 1)
    assert random_shift(x, 0, torch.Generator()) is x


def test_neutral_scores_real_test_images_at_its_test_accuracy(digits, neutral):
    _, model, metrics, _ = neutral
    assert metrics["test_accuracy"] > 0.8 and not metrics["cached"]
    s = score_generations(model, digits.test_x, digits.test_y.numpy(), None, 10, "cpu")
    assert s["overall"] == pytest.approx(metrics["test_accuracy"])
    assert s["count"] == len(digits.test_x) and set(s["per_class"]) == {str(c) for c in range(10)}
    held = score_generations(model, digits.holdout_x, digits.holdout_y.numpy(), None, 10, "cpu")
    assert abs(held["overall"] - metrics["test_accuracy"]) < 0.1


def test_score_breaks_down_by_n_and_class(digits, neutral):
    _, model, _, _ = neutral
    x, y = digits.test_x[:90], digits.test_y[:90].numpy()
    n = np.array([2, 3, 5] * 30)
    wrong = (y + 1) % 10
    s = score_generations(model, x, np.where(n == 5, wrong, y), n, 10, "cpu")
    assert set(s["per_n"]) == {"2", "3", "5"}
    assert s["per_n"]["5"] < 0.2 < 0.6 < s["per_n"]["2"]  # wrong intended labels score low


def test_neutral_is_cached_by_config(digits, neutral):
    run, model, _, ident = neutral
    again, metrics = load_or_train_neutral(run, digits, TINY, TINY_TRAIN, torch.device("cpu"),
                                           ident)
    assert metrics["cached"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert NeutralClassifier.load(run).cfg == TINY  # the cache folder holds the model itself


# novelty


def test_nearest_l2_and_ssim_find_exact_matches(digits):
    ref = digits.train_x[:300]
    q = ref[[5, 17, 250]]
    d, i = nearest_l2(q.reshape(3, -1).float(), ref.reshape(300, -1).float())
    assert i.tolist() == [5, 17, 250] and torch.all(d < 1e-6)
    s, j = nearest_ssim(q, ref)
    assert j.tolist() == [5, 17, 250] and torch.allclose(s, torch.ones(3), atol=1e-4)
    d2, i2 = nearest_l2(q.reshape(3, -1).float(), q.reshape(3, -1).float(), exclude_self=True)
    assert all(i2[k] != k for k in range(3)) and torch.all(d2 > 0)  # never matches itself


def test_training_images_are_flagged_as_copies_and_test_images_are_not(digits, neutral):
    _, model, _, _ = neutral

    def feats(x):
        return NeutralFeatures(model)(x.float() / 255)

    train = digits.train_x
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:150]
    ref_x, ref_y = digits.test_x[150:300], digits.test_y[150:300].numpy()
    for labels in (None, (digits.train_y[pick].numpy(), ref_y)):  # global, then per class
        kw = {} if labels is None else {"gen_labels": labels[0], "test_labels": labels[1]}
        rep = novelty(train[pick], ref_x, train, feats, **kw)
        for space in ("pixel", "feature"):
            assert rep[space]["copy_fraction"] == 1.0, space
            assert rep[space]["median_ratio"] < 1e-3
        kw = {} if labels is None else {"gen_labels": digits.test_y[:150].numpy(),
                                        "test_labels": ref_y}
        fresh = novelty(digits.test_x[:150], ref_x, train, feats, **kw)
        for space in ("pixel", "feature"):
            assert fresh[space]["copy_fraction"] <= 0.15, space
            assert 0.3 < fresh[space]["median_ratio"] < 3


def test_copy_report_and_near_duplicates_known_answers():
    rep = copy_report(np.array([0.0, 0.5, 2.0, 3.0]), np.linspace(1, 10, 101), 0.01)
    assert rep["threshold"] == pytest.approx(1.09)
    assert rep["flags"].tolist() == [True, True, False, False] and rep["copy_fraction"] == 0.5
    # per class: class 1 sits close to its training images, class 0 far; a 1 at 0.5 is normal
    test_d = np.concatenate([np.linspace(1, 10, 101), np.linspace(0.1, 1.0, 101)])
    test_y = np.repeat([0, 1], 101)
    rep = copy_report(np.array([0.5, 0.5, 0.05]), test_d, 0.01, np.array([0, 1, 1]), test_y)
    assert rep["class_thresholds"]["0"] == pytest.approx(1.09)
    assert rep["class_thresholds"]["1"] == pytest.approx(0.109)
    assert rep["flags"].tolist() == [True, False, True]
    assert rep["expected_fraction"] == pytest.approx(2 / 202)
    x = torch.rand(10, 16)
    dup = torch.cat([x, x])  # every row has an exact twin
    assert near_duplicate_fraction(dup, 1e-6) == 1.0
    assert near_duplicate_fraction(x, 1e-6) == 0.0


def test_table1_gen_side_holds_the_two_parent_mixes_and_other_n_get_extra_rows():
    n = np.array([2, 3, 2, 5, 2, 3, 5, 5])
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    gset = GeneratedSet(images=images, labels=np.zeros(8, np.int64), n_parents=n,
                        parent_ids=None, source="in-process", total_rows=8)
    org = recon = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    sets, pairs = fid_sets(org, recon, gset)
    assert sets["gen"][:, 0, 0, 0].tolist() == [0, 2, 4]  # the n = 2 rows only
    assert sets["gen_n3"][:, 0, 0, 0].tolist() == [1, 5]
    assert sets["gen_n5"][:, 0, 0, 0].tolist() == [3, 6, 7]
    assert ("org", "gen") in pairs and ("org", "org") in pairs and ("recon", "gen") in pairs
    assert pairs[-2:] == [("org", "gen_n3"), ("org", "gen_n5")]
    assert fid_row_name("org_vs_gen_n5") == "Org vs Gen, n = 5 (extra row)"
    # n unknown (generations from elsewhere): every row is Gen
    unknown = GeneratedSet(images=images, labels=np.zeros(8, np.int64), n_parents=None,
                           parent_ids=None, source="in-process", total_rows=8)
    sets, pairs = fid_sets(org, recon, unknown)
    assert len(sets["gen"]) == 8 and len(pairs) == 4


def test_features_are_extracted_with_tf32_off_and_the_flags_restored():
    from regene_ray.evaluation.fid import FeatureNet, extract_features

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return x.flatten(1)[:, :3]

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        f = extract_features(FeatureNet("probe", Probe(), 3),
                             torch.zeros(5, 1, 2, 2, dtype=torch.uint8), "cpu", batch_size=2)
        assert seen == [(False, False)] * 3 and f.dtype == torch.float64
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_a_corrupt_inception_weights_file_is_named(neutral, tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    _, model, _, _ = neutral
    weights = tmp_path / "hub" / "checkpoints" / INCEPTION_FILE
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = choose_feature_net(model)  # found by itself: neutral features, and the note says why
    assert net.name.startswith("neutral") and "cannot be loaded" in net.note
    assert str(weights) in net.note
    with pytest.raises(ValueError, match="--inception-weights .* cannot be loaded.*FID Inception"):
        choose_feature_net(model, weights)  # asked for explicitly: an error, not a fallback


# random streams


def test_every_sampling_stage_draws_from_its_own_stream():
    """A generator candidate is keyed by (seed, id): two stages with one seed would draw the same
    candidates for the same ids (as the in-process sample's n = 3 ids once met the
    interpolation rows'). Every stage's seed differs from every other stage's, for every
    evaluation seed, and none is a small number such as a run's or a mass generation's seed."""
    assert len(set(STREAMS.values())) == len(STREAMS)
    seeds = [stage_seed(s, k) for s in range(100) for k in STREAMS]
    assert len(set(seeds)) == len(seeds) and min(seeds) > 10_000
    firsts = [stage_rng(0, k).integers(2**62) for k in STREAMS]
    assert len(set(firsts)) == len(firsts)
    # pinned: renumbering a stream changes that stage's samples
    assert stage_seed(0, "sample") == 2617721224
    assert stage_rng(0, "fid").integers(100) == np.random.default_rng([0, 1]).integers(100)
    streams = Streams(7)
    streams.rng("novelty")
    assert streams.seed("sample") == stage_seed(7, "sample")
    assert set(streams.used) == {"novelty", "sample"}
    with pytest.raises(KeyError, match="add it to STREAMS"):
        streams.seed("a new stage")
