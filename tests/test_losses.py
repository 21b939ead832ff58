import logging

import pytest
import torch

from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.data import DataConfig, load_data
from regene_ray.losses import (
    AUTO_FALLBACK,
    LossConfig,
    ReconstructionLoss,
    build_perceptual,
    scheduled_weight,
    ssim_score,
)
from regene_ray.resnet import ResNet, ResNetConfig, ResNetTrainConfig, load_or_train_resnet


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
    with torch.no_grad():
        assert float(perc(x, x)) == pytest.approx(0.0, abs=1e-6)
        assert float(perc(x, torch.rand_like(x))) > 0.01


def judge_net(width=4):
    torch.manual_seed(1)
    return ResNet(ResNetConfig(depth=8, width=width)).eval().requires_grad_(False)


def test_auto_without_lpips_weights_falls_back_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: no VGG weights
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    cfg = LossConfig(perceptual="auto")
    assert cfg.backend() == AUTO_FALLBACK
    with caplog.at_level(logging.WARNING):
        module, backend = build_perceptual(cfg, clf, judge_net())
    assert AUTO_FALLBACK == "none" and (module, backend) == (None, "none")
    assert "lpips vgg weights not found" in caplog.text and "using 'none' instead" in caplog.text


def test_judge_features_come_from_the_judge_not_the_classifier():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    judge = judge_net()
    perc, backend = build_perceptual(LossConfig(perceptual="judge"), clf, judge)
    assert backend == "judge-resnet8"
    assert float(perc(x, x)) == pytest.approx(0.0, abs=1e-6)
    x_hat = torch.rand_like(x, requires_grad=True)
    d = perc(x_hat, x)
    d.backward()
    assert float(d.detach()) > 0.01 and x_hat.grad.abs().sum() > 0
    # the classifier's weights do not enter: changing them leaves the distance alone
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(1.0)
    assert float(perc(x_hat, x).detach()) == pytest.approx(float(d.detach()), rel=1e-6)
    # stem + 3 stages, shallow to deep, at 16, 16, 8, 4 pixels
    assert [f.shape[-1] for f in judge.stage_features(x)] == [16, 16, 8, 4]


def test_judge_backend_without_a_judge_says_what_to_do():
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    with pytest.raises(ConfigError, match="needs the run's judge network.*'classifier' or 'none'"):
        build_perceptual(LossConfig(perceptual="judge"), clf)
    with pytest.raises(ConfigError, match="judge_depth 10 must be 6n \\+ 2"):
        LossConfig(judge_depth=10)


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


def test_ssim_known_answers_on_differing_images():
    # two flat images a, b: no contrast or structure, so SSIM is the luminance term alone,
    # (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * data_range)^2: 0.636 for dark greys
    # 0.01 and 0.03, where C1 matters (without it: 0.6)
    a, b, c1 = 0.01, 0.03, 0.01**2
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    assert float(ssim_score(x, y)) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1),
                                                    rel=1e-4)
    # an image against its negative: same contrast, structure anti-correlated, SSIM < 0
    torch.manual_seed(0)
    img = torch.rand(2, 1, 16, 16)
    assert float(ssim_score(img, 1 - img)) < -0.5
    per_image = ssim_score(img, torch.cat([img[:1], 1 - img[1:]]), reduce=False)
    assert per_image[0] == pytest.approx(1.0, abs=1e-5) and per_image[1] < -0.5


def test_the_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(1)
    clf = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=8, latent_dim=8))
    clf.requires_grad_(False)  # frozen, as in training: the terms are plain numbers
    cfg = LossConfig(perceptual="classifier", mae_weight=2.0, ssim_weight_start=0.7,
                     ssim_weight_end=0.1, perceptual_weight_start=0.3, perceptual_weight_end=0.05)
    perc, _ = build_perceptual(cfg, clf)
    loss = ReconstructionLoss(cfg, perc)
    x, x_hat = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    for epoch in (0, 2, 4):
        total, parts = loss(x_hat, x, epoch, 5)
        w = loss.weights(epoch, 5)
        mae = float((x_hat - x).abs().mean())
        expect = (w["mae"] * mae + w["ssim"] * (1 - float(ssim_score(x_hat, x)))
                  + w["perceptual"] * float(perc(x_hat, x)))
        assert float(total) == pytest.approx(expect, rel=1e-5)
        assert parts["mae"] == pytest.approx(mae, rel=1e-6)
    assert loss.weights(0, 5)["ssim"] == pytest.approx(0.7)
    assert loss.weights(4, 5)["perceptual"] == pytest.approx(0.05)


# the judge network itself (regene_ray.resnet; the evaluation's neutral classifier too)


def test_a_saved_resnet_is_reused_for_its_config_and_replaced_for_another(tmp_path, caplog):
    data = load_data(DataConfig(dataset="digits", image_size=16, max_train=100, max_test=20))
    cfg, train = ResNetConfig(depth=8, width=4), ResNetTrainConfig(epochs=1, batch_size=32)
    cpu = torch.device("cpu")
    rng = torch.get_rng_state()
    model, m = load_or_train_resnet(tmp_path, data, cfg, train, cpu)
    assert torch.equal(torch.get_rng_state(), rng)  # seeded from train.seed, in a scope
    assert not m["cached"] and m["history"][0]["images"] == len(data.train_x) == 90
    again, m2 = load_or_train_resnet(tmp_path, data, cfg, train, cpu)
    assert m2["cached"] and m2["test_accuracy"] == m["test_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values(), strict=True))
    assert ResNet.load(tmp_path).cfg == cfg
    with caplog.at_level(logging.WARNING):
        other, m3 = load_or_train_resnet(tmp_path, data, cfg,
                                         ResNetTrainConfig(epochs=1, batch_size=32, seed=1), cpu)
    assert not m3["cached"] and "holds a model for another config; retraining" in caplog.text
    assert not torch.equal(other.fc.weight, model.fc.weight)
