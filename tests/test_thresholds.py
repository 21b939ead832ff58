"""The filter thresholds tau_c as the paper defines them, pinned on hand-made holdouts, and the
named 'reconstructions' option checked against the generator's own stored-pixel path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regene_ray.bank_build import compute_thresholds
from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.data import load_data
from regene_ray.decoder import Decoder, DecoderConfig
from regene_ray.generator import ConvexGenerator, Mixes
from regene_ray.run import RunConfig, load_run_config, smoke_run_config

CPU = torch.device("cpu")


def fixed_logits_classifier(logits: list[float]) -> Classifier:
    """A real Classifier whose weights are zero except the head's bias: every image gets
    `logits`, so each class's confidence is a known softmax value."""
    clf = Classifier(ClassifierConfig(image_size=8, depth=1, base_channels=4, latent_dim=4,
                                      num_classes=len(logits)))
    with torch.no_grad():
        for p in clf.parameters():
            p.zero_()
        clf.head.bias.copy_(torch.tensor(logits))
    return clf.eval()


@pytest.mark.parametrize("rule", ["originals", "reconstructions"])
def test_tau_is_the_mean_confidence_in_the_images_own_class(rule):
    # softmax([0, ln 3, 0]) = [0.2, 0.6, 0.2]; a holdout of 3, 1 and 2 images of classes 0, 1, 2
    clf = fixed_logits_classifier([0.0, math.log(3.0), 0.0])
    dec = Decoder(DecoderConfig.mirror(clf.cfg)).eval()
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    t = compute_thresholds(clf, dec, x, y, 3, CPU, image_rule=rule)
    # the confidence in each image's own class, averaged per class: not the top class's
    # confidence (0.6 for all) and not an average over every image
    np.testing.assert_allclose(t["latent"], [0.2, 0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(t["image"], [0.2, 0.6, 0.2], rtol=1e-6)
    assert t["holdout_count"] == [3, 1, 2] and t["image_rule"] == rule


def test_a_class_missing_from_the_holdout_is_refused():
    clf = fixed_logits_classifier([0.0, 0.0, 0.0])
    dec = Decoder(DecoderConfig.mirror(clf.cfg)).eval()
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"no images of class\(es\) \[2\]"):
        compute_thresholds(clf, dec, x, torch.tensor([0, 1]), 3, CPU)


@pytest.fixture(scope="module")
def holdout(tiny_run):
    data = load_data(load_run_config(tiny_run / "config.yaml").data)
    gen = ConvexGenerator.from_run(tiny_run)
    return gen, data.holdout_x, data.holdout_y, data.num_classes


def test_originals_tau_is_the_classifiers_confidence_on_the_holdout(holdout):
    gen, x, y, K = holdout
    t = compute_thresholds(gen.classifier, gen.decoder, x, y, K, CPU)
    with torch.no_grad():
        conf = gen.classifier(x.float() / 255).softmax(1)[torch.arange(len(y)), y].double()
    expect = [float(conf[y == c].mean()) for c in range(K)]
    np.testing.assert_allclose(t["latent"], expect, rtol=1e-5)
    assert t["image"] == t["latent"]  # the paper: one tau per class for both steps


def test_reconstruction_tau_judges_stored_pixels_as_generations_are(holdout):
    """The 'reconstructions' option equals the image confidences the generator stores for the
    held-out codes themselves (decoded, rounded to uint8, re-classified), averaged per class."""
    gen, x, y, K = holdout
    t = compute_thresholds(gen.classifier, gen.decoder, x, y, K, CPU,
                           image_rule="reconstructions")
    with torch.no_grad():
        z = gen.classifier.encode(x.float() / 255).numpy()
    n = len(y)
    m = Mixes(ids=np.arange(n), labels=y.numpy().astype(np.int64), n_parents=np.ones(n, np.int64),
              parent_ids=np.arange(n)[:, None], weights=np.ones((n, 1), np.float32), z=z)
    scored = gen.score(m, filter=False)
    conf = scored.image_confidence.astype(np.float64)
    expect = [conf[y.numpy() == c].mean() for c in range(K)]
    np.testing.assert_allclose(t["image"], expect, rtol=1e-5)
    assert t["image"] != t["latent"]


def test_the_rule_is_a_run_option():
    assert smoke_run_config().image_threshold == "originals"
    assert RunConfig(image_threshold="reconstructions").image_threshold == "reconstructions"
    with pytest.raises(ConfigError, match="image_threshold 'held-out' must be one of"):
        RunConfig(image_threshold="held-out")
