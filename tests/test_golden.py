"""Golden values: outputs that resumable jobs depend on, pinned so that a silent change fails.

A resumed mass generation keeps the chunks an earlier run wrote and generates the rest; if the
keyed random streams (n_parents, parents, weights) or the PNG bytes of a generation changed in
between, one output would mix two kinds of rows. Such a change must be deliberate, and then bump
`regene_ray.mass.FORMAT` (which makes every older output a "different job") and these values.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from regene_ray import mass
from regene_ray.bank_build import build_bank
from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.convex import (
    STREAM_N_PARENTS,
    STREAM_PARENTS,
    STREAM_WEIGHTS,
    KeyedRNG,
    choose_n_parents,
    sample_convex_weights,
    sample_parents,
)
from regene_ray.decoder import Decoder, DecoderConfig
from regene_ray.latent_bank import BANK_FILE, THRESHOLDS_FILE, save_thresholds

IDS = np.array([0, 1, 7, 123_456_789, 2**40 + 3], dtype=np.int64)


def test_format_version_is_pinned():
    # bump this together with the golden values below, never one without the other
    assert mass.FORMAT == "regene-ray mass generation v4"


def test_keyed_uniforms():
    u = KeyedRNG(0, IDS).uniform(STREAM_PARENTS, 2)
    assert u.tolist() == GOLDEN_UNIFORMS
    assert KeyedRNG(7, IDS).uniform(STREAM_N_PARENTS, 1)[:, 0].tolist() == GOLDEN_UNIFORMS_SEED7


def test_keyed_n_parents_parents_and_weights():
    rng = KeyedRNG(3, IDS)
    assert choose_n_parents([2, 3, 5], rng).tolist() == [3, 3, 3, 3, 2]
    pools = [np.arange(0, 50), np.arange(50, 53), np.arange(53, 60) * 10]
    labels = np.array([0, 1, 2, 0, 2])
    assert sample_parents(pools, labels, 3, rng).tolist() == GOLDEN_PARENTS
    w = sample_convex_weights(3, "dirichlet:1", rng)
    np.testing.assert_allclose(w, GOLDEN_DIRICHLET, rtol=1e-6)  # scipy's gammaincinv, float32
    w = sample_convex_weights(3, "affine:0.5", rng)  # the same draws, stretched
    np.testing.assert_allclose(w, GOLDEN_AFFINE, rtol=1e-6, atol=1e-7)
    assert rng.uniform(STREAM_WEIGHTS, 1).dtype == np.float64


@pytest.fixture
def seeded_run(tmp_path):
    """A run folder of an untrained, seeded 8-channel model: no training noise in the values."""
    torch.manual_seed(0)
    cfg = ClassifierConfig(depth=2, convs_per_block=1, base_channels=8, latent_dim=16,
                           image_size=16, num_classes=3)
    clf, dec = Classifier(cfg).eval(), Decoder(DecoderConfig.mirror(cfg)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (90, 1, 16, 16), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        y = clf(x.float() / 255).argmax(1)  # the model's own labels: every code is "correct"
    clf.save(tmp_path / "classifier")
    dec.save(tmp_path / "decoder")
    build_bank(clf, x, y, torch.device("cpu")).save(tmp_path / BANK_FILE)
    save_thresholds({"latent": [0.0] * 3, "image": [0.0] * 3, "holdout_count": [1] * 3},
                    tmp_path / THRESHOLDS_FILE)
    return tmp_path, torch.bincount(y, minlength=3)


def test_png_bytes_of_a_seeded_generation(seeded_run):
    """The mass-generation batch transform (channels_last, one torch thread, CPU), end to end:
    ids, parents, weights and PNG bytes of one chunk."""
    run, counts = seeded_run
    label = int(counts.argmax())
    threads = torch.get_num_threads()
    try:
        stage = mass.GenerateChunks(str(run), n_parents=(2, 3), weights="dirichlet:1", seed=5,
                                    chunk_size=24, batch_size=8, torch_threads=1)
        table, info = stage.generate(label, 1)
    finally:
        torch.set_num_threads(threads)
    h = hashlib.sha256()
    for col in ("id", "parent_ids", "weights"):
        h.update(repr(table.column(col).to_pylist()).encode())
    for png in table.column("image").combine_chunks().field("bytes").to_pylist():
        h.update(png)
    assert (label, info.tried, info.accepted) == GOLDEN_CHUNK
    assert h.hexdigest() == GOLDEN_CHUNK_SHA256


GOLDEN_UNIFORMS = [[0.969278748682546, 0.8435048460682748], [0.9022528202295985, 0.05857794277745437],
                   [0.019124506762547344, 0.13945819456293745], [0.9740049685554528, 0.8661280162925673],
                   [0.7406896016489031, 0.9607556445693766]]
GOLDEN_UNIFORMS_SEED7 = [0.3634172214061863, 0.9041926378632055, 0.2162413975054331, 0.13345346443890765,
                         0.4915061115977513]
GOLDEN_PARENTS = [[18, 24, 38], [51, 52, 50], [540, 590, 570], [8, 3, 32], [540, 560, 590]]
GOLDEN_DIRICHLET = [[0.026038380339741707, 0.851359486579895, 0.1226021870970726],
                    [0.11476060748100281, 0.5416057109832764, 0.3436336815357208],
                    [0.485248327255249, 0.1211300939321518, 0.3936215937137604],
                    [0.11435156315565109, 0.06746693700551987, 0.8181815147399902],
                    [0.7326289415359497, 0.010400316677987576, 0.2569707930088043]]
GOLDEN_AFFINE = [[-0.4349040389060974, 1.6283985376358032, -0.1934945434331894],
                 [-0.21309848129749298, 0.8540142774581909, 0.35908418893814087],
                 [0.7131208181381226, -0.19717475771903992, 0.48405393958091736],
                 [-0.21412110328674316, -0.33133265376091003, 1.5454537868499756],
                 [1.3315722942352295, -0.4739992022514343, 0.14242693781852722]]
GOLDEN_CHUNK = (1, 24, 24)  # (label, tried, accepted): thresholds 0 keep every candidate
GOLDEN_CHUNK_SHA256 = "2054fe10ca80923dd68eb53a3394818de1a335e223956a9008370b5a9471757e"
