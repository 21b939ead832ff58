import logging

import pytest
import torch

from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.losses import (
    LossConfig,
    ReconstructionLoss,
    build_perceptual,
    scheduled_weight,
    ssim_score,
)


@pytest.mark.parametrize("kind", ["cosine", "linear", "exponential"])
def test_schedule_decays_from_start_to_end(kind):
    ws = [scheduled_weight(1.0, 0.1, e, 10, kind) for e in range(10)]
    assert ws[0] == pytest.approx(1.0) and ws[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(ws, ws[1:], strict=False))


def test_mae_weight_constant_and_ssim_perceptual_decay():
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    loss = ReconstructionLoss(LossConfig(perceptual="classifier"),
                              build_perceptual(LossConfig(perceptual="classifier"), clf)[0])
    first, last = loss.weights(0, 5), loss.weights(4, 5)
    assert first["mae"] == last["mae"] == 1.0
    assert first["ssim"] > last["ssim"] and first["perceptual"] > last["perceptual"]


def test_identical_images_have_zero_loss_terms():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    assert float(ssim_score(x, x)) == pytest.approx(1.0, abs=1e-5)
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    perc, _ = build_perceptual(LossConfig(perceptual="classifier"), clf)
    assert float(perc(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(perc(x, torch.rand_like(x))) > 0.01


def test_auto_without_lpips_weights_uses_classifier_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: no VGG weights
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    with caplog.at_level(logging.WARNING):
        module, backend = build_perceptual(LossConfig(perceptual="auto"), clf)
    assert backend == "classifier" and module is not None
    assert "lpips vgg weights not found" in caplog.text


def test_lpips_without_weights_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    with pytest.raises(ConfigError, match="needs the pretrained vgg backbone.*vgg16-397923af.pth"):
        build_perceptual(LossConfig(perceptual="lpips"), clf)


def test_none_backend():
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    assert build_perceptual(LossConfig(perceptual="none"), clf) == (None, "none")


def test_bad_loss_config():
    with pytest.raises(ConfigError, match="perceptual 'vgg' must be one of"):
        LossConfig(perceptual="vgg")
    with pytest.raises(ConfigError, match="ssim_weight_end -1"):
        LossConfig(ssim_weight_end=-1)
