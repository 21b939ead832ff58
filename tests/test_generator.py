import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.decoder import Decoder, DecoderConfig
from regene_ray.generator import ConvexGenerator, encode_png, to_uint8
from regene_ray.latent_bank import LatentBank


@pytest.fixture(scope="module")
def gen(tiny_run):
    return ConvexGenerator.from_run(tiny_run)


def test_same_seed_same_parents_weights_and_bytes(gen):
    labels = np.arange(60) % 10
    a = gen(labels, n_parents=[2, 3, 5], weights="dirichlet:1", seed=11)
    b = gen(labels, n_parents=[2, 3, 5], weights="dirichlet:1", seed=11)
    assert np.array_equal(a.parent_ids, b.parent_ids) and np.array_equal(a.weights, b.weights)
    assert [encode_png(i) for i in a.images] == [encode_png(i) for i in b.images]
    c = gen(labels, n_parents=[2, 3, 5], weights="dirichlet:1", seed=12)
    assert not np.array_equal(a.parent_ids, c.parent_ids)


def test_randomness_follows_the_candidate_id_not_the_batch(gen):
    ids = np.arange(100, 140)
    labels = ids % 10
    a = gen(labels, n_parents=3, weights="dirichlet:0.5", seed=1, ids=ids)
    order = np.random.default_rng(0).permutation(40)[:25]
    b = gen(labels[order], n_parents=3, weights="dirichlet:0.5", seed=1, ids=ids[order])
    assert np.array_equal(a.parent_ids[order], b.parent_ids)
    assert np.array_equal(a.weights[order], b.weights)
    assert np.array_equal(a.latent_confidence[order], b.latent_confidence)


def test_provenance_and_filters(gen, tiny_run):
    thr = json.loads((tiny_run / "thresholds.json").read_text())
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    out = gen(np.arange(400) % 10, n_parents=[2, 3, 5], seed=3)
    acc = out.accepted_only()
    assert 0 < len(acc) <= 400
    # every accepted row: parents of its own class, weights convex, confidences over tau_c
    for i in range(len(acc)):
        k = acc.n_parents[i]
        pid, w = acc.parent_ids[i, :k], acc.weights[i, :k]
        assert (acc.parent_ids[i, k:] == -1).all() and len(set(pid)) == k
        assert (bank.labels[pid] == acc.labels[i]).all() and bank.correct[pid].all()
        assert w.sum() == pytest.approx(1.0, abs=1e-6)
        c = acc.labels[i]
        assert acc.latent_confidence[i] >= thr["latent"][c]
        assert acc.image_confidence[i] >= thr["image"][c]
    # rejected rows failed at least one step
    rej = out.select(~out.accepted)
    for i in range(len(rej)):
        c = rej.labels[i]
        assert (rej.latent_confidence[i] < thr["latent"][c]
                or rej.image_confidence[i] < thr["image"][c])
    # re-mix the stored parents with the stored weights and decode: the stored image comes back
    clf, dec = gen.classifier, gen.decoder
    with torch.no_grad():
        for i in range(min(30, len(acc))):
            k = acc.n_parents[i]
            z = torch.from_numpy(acc.weights[i, :k]) @ torch.from_numpy(
                bank.latents[acc.parent_ids[i, :k]])
            img = to_uint8(dec(z[None]))[0].numpy()
            assert np.abs(img.astype(int) - acc.images[i].astype(int)).max() <= 1
            # and the stored PNG bytes give back the stored image confidence
            png = np.array(Image.open(io.BytesIO(encode_png(acc.images[i]))))
            x = torch.from_numpy(png).float().div(255)[None, None]
            conf = clf(x).softmax(1)[0, acc.labels[i]]
            assert float(conf) == pytest.approx(float(acc.image_confidence[i]), abs=1e-4)


def test_affine_mixes_leave_the_hull_and_pass_only_inside_their_class_region(gen, tiny_run):
    """Lemma 1 does not cover affine mixes: some leave their class region of the head. With
    thresholds of 0.5 or less the label's confidence alone would pass some of them, so the
    latent step also asks the head's argmax of an affine mix; convex rows keep the paper's
    test (conf >= tau) alone."""
    labels = np.arange(400) % 10
    mixes = gen.mixer(labels, 2, "affine:2", seed=4)
    assert np.allclose(mixes.weights.sum(1), 1, atol=1e-5)
    outside = (mixes.weights < 0).any(1)
    assert outside.mean() > 0.5
    with torch.no_grad():
        p = gen.classifier.classify_latent(torch.from_numpy(mixes.z)).softmax(1).numpy()
    left = p.argmax(1) != labels
    assert left.any() and not left[~outside].any()  # only affine rows leave (Lemma 1)
    low = ConvexGenerator(gen.bank, gen.classifier, gen.decoder,
                          {"latent": [0.05] * 10, "image": [0.05] * 10})
    out = low.score(mixes)
    conf = p[np.arange(400), labels]
    np.testing.assert_allclose(out.latent_confidence, conf, atol=1e-5)
    fooled = left & (out.latent_confidence >= np.float32(0.05))
    assert fooled.any()  # the confidence test alone would have passed these
    assert not out.latent_pass[left].any() and not out.accepted[left].any()
    assert np.array_equal(out.latent_pass[~left], out.latent_confidence[~left] >= np.float32(0.05))
    same = gen(labels, n_parents=2, weights="affine:2", seed=4)  # the run's own thresholds
    assert np.array_equal(same.weights, mixes.weights) and not same.accepted[left].any()


def test_unfiltered_mode_decodes_everything(gen):
    out = gen(np.arange(50) % 10, n_parents=2, seed=0, filter=False)
    assert not np.isnan(out.image_confidence).any()
    assert out.images.reshape(50, -1).max(1).min() > 0


def test_bad_labels_and_mismatched_pair(gen, tiny_run):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        gen([0, 10])
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    cfg = ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=bank.latent_dim)
    other = Decoder(DecoderConfig.mirror(ClassifierConfig(image_size=16, depth=2, latent_dim=7)))
    with pytest.raises(ConfigError, match="latent_dim 32 != decoder.latent_dim 7"):
        ConvexGenerator(bank, Classifier(cfg), other, {"latent": [0] * 10, "image": [0] * 10})


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="create one with jobs/train.py"):
        ConvexGenerator.from_run(tmp_path / "nope")


def test_a_loaded_bank_is_a_read_only_view_and_round_trips(tiny_run, tmp_path):
    """The bank is not copied on load (220 MB for the MNIST-size run; BENCHMARKS.md section 12):
    its codes are a read-only view of what Arrow read, shared with the tensor the mixer indexes,
    and they save and load back bit for bit."""
    path = tiny_run / "latent_bank.parquet"
    bank = LatentBank.load(path)
    assert not bank.latents.flags.writeable and not bank.latents.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        bank.latents[0, 0] = 1.0
    t = bank.latents_tensor()
    assert t.dtype == torch.float32 and t.data_ptr() == bank.latents.ctypes.data
    bank.save(tmp_path / "again.parquet")
    again = LatentBank.load((tmp_path / "again.parquet").read_bytes())
    for name in ("ids", "labels", "latents", "confidence", "correct"):
        np.testing.assert_array_equal(getattr(again, name), getattr(bank, name))
