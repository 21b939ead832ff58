"""The classifier's and the decoder's training: resume equals an unbroken run, errors say what
to do, and training leaves the caller's random state alone."""

import pytest
import torch
import yaml

from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.data import DataConfig, load_data
from regene_ray.decoder import Decoder, DecoderConfig
from regene_ray.losses import LossConfig, build_perceptual
from regene_ray.train import (
    ClassifierTrainConfig,
    DecoderTrainConfig,
    evaluate_decoder,
    train_classifier,
    train_decoder,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(dataset="digits", image_size=16, max_train=400, max_test=100))


def models(seed=0):
    torch.manual_seed(seed)
    cfg = ClassifierConfig(image_size=16, depth=2, convs_per_block=1, base_channels=8,
                           latent_dim=16, dropout=0.2)
    return Classifier(cfg), Decoder(DecoderConfig.mirror(cfg))


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def cb(e, stats):
        if e == epoch:
            raise _Stop
    return cb


def _without_speed(history):
    return [{k: v for k, v in h.items() if k != "images_per_s"} for h in history]


def test_classifier_resume_matches_unbroken_run(data, tmp_path):
    cfg = ClassifierTrainConfig(epochs=3, batch_size=64)
    a, _ = models()
    rng = torch.get_rng_state()
    hist_a = train_classifier(a, data, cfg, CPU, seed=5)
    # dropout is seeded per epoch inside the training, not by reseeding the caller's RNG
    assert torch.equal(torch.get_rng_state(), rng)
    b, _ = models()
    ckpt = tmp_path / "clf.pt"
    # crash after the first epoch, then resume in a fresh model from the checkpoint
    with pytest.raises(_Stop):
        train_classifier(b, data, cfg, CPU, seed=5, checkpoint=ckpt, on_epoch=_stop_after(0))
    b2, _ = models(seed=99)  # a fresh process would rebuild the model from scratch
    hist_b = train_classifier(b2, data, cfg, CPU, seed=5, checkpoint=ckpt)
    assert [h["epoch"] for h in hist_b] == [0, 1, 2]
    for pa, pb in zip(a.state_dict().values(), b2.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert _without_speed(hist_b) == _without_speed(hist_a)


def test_decoder_learns_and_a_resumed_training_equals_an_unbroken_one(data, tmp_path):
    clf, dec = models()
    train_classifier(clf, data, ClassifierTrainConfig(epochs=2, batch_size=64), CPU)
    cfg = DecoderTrainConfig(epochs=3, batch_size=64, lr=1e-2,
                             loss=LossConfig(perceptual="classifier"))
    perc, _ = build_perceptual(cfg.loss, clf)
    untrained = evaluate_decoder(dec, clf, data.holdout_x, CPU)["mae"]  # about 0.32
    unbroken = train_decoder(dec, clf, data, cfg, CPU, perc, seed=2)
    assert unbroken[-1]["val_mae"] < 0.85 * untrained  # it learns (0.24 here)
    assert unbroken[0]["w_ssim"] > unbroken[-1]["w_ssim"]  # and follows the paper's schedule
    _, broken = models()  # the same init as `dec`
    ckpt = tmp_path / "dec.pt"
    with pytest.raises(_Stop):  # crash after the first epoch
        train_decoder(broken, clf, data, cfg, CPU, perc, checkpoint=ckpt, seed=2,
                      on_epoch=_stop_after(0))
    _, resumed = models(seed=3)  # a fresh process rebuilds the decoder with another init
    hist = train_decoder(resumed, clf, data, cfg, CPU, perc, checkpoint=ckpt, seed=2)
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert _without_speed(hist) == _without_speed(unbroken)
    for a, b in zip(dec.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_shift_augments_both_stages_deterministically_and_zero_changes_nothing(data):
    """shift = 0 (the default) trains exactly as before the option existed: the shift draws come
    from their own stream, so turning it on leaves the batch order alone; shift > 0 trains on
    shifted images (another model) and is as repeatable as the plain training."""
    def classifier(shift):
        clf, _ = models()
        train_classifier(clf, data, ClassifierTrainConfig(epochs=2, batch_size=64, shift=shift),
                         CPU, seed=1)
        return clf

    def decoder(clf, shift):
        _, dec = models()
        hist = train_decoder(dec, clf, data, DecoderTrainConfig(epochs=2, batch_size=64, lr=1e-2,
                             loss=LossConfig(perceptual="none"), shift=shift), CPU, None, seed=1)
        return dec, hist

    plain, shifted, again = classifier(0), classifier(2), classifier(2)
    same = [torch.equal(a, b) for a, b in zip(shifted.state_dict().values(),
                                              again.state_dict().values(), strict=True)]
    assert all(same)
    assert not torch.equal(plain.encode(data.holdout_x[:8].float() / 255),
                           shifted.encode(data.holdout_x[:8].float() / 255))
    _, h_plain = decoder(plain, 0)
    _, h_shift = decoder(plain, 2)
    _, h_again = decoder(plain, 2)
    assert _without_speed(h_shift) == _without_speed(h_again)
    assert h_shift[-1]["train_loss"] != h_plain[-1]["train_loss"]
    assert h_shift[-1]["val_mae"] < 0.3  # it still learns to invert the codes (0.32 untrained)
    with pytest.raises(ValueError, match="shifted images need the classifier"):
        from regene_ray.train import decoder_epoch

        _, dec = models()
        decoder_epoch(dec, None, None, torch.zeros(4, 16), data.train_x[:4],
                      DecoderTrainConfig(shift=2), 0, CPU)


def test_nan_loss_is_reported(data):
    clf, _ = models()
    with pytest.raises(FloatingPointError, match="classifier loss became (nan|inf|-inf) in "
                       "epoch 0; lower the learning rate"):
        train_classifier(clf, data, ClassifierTrainConfig(epochs=1, lr=1e30), CPU)


def test_resume_from_a_different_model_is_refused(data, tmp_path):
    clf, _ = models()
    ckpt = tmp_path / "c.pt"
    train_classifier(clf, data, ClassifierTrainConfig(epochs=1), CPU, checkpoint=ckpt)
    torch.manual_seed(0)
    other = Classifier(ClassifierConfig(image_size=16, depth=2, base_channels=4, latent_dim=8))
    with pytest.raises(ConfigError, match="saved for a different model"):
        train_classifier(other, data, ClassifierTrainConfig(epochs=2), CPU, checkpoint=ckpt)


def test_train_config_errors():
    with pytest.raises(ConfigError, match="epochs 0 and batch_size 1 must be >= 1"):
        ClassifierTrainConfig(epochs=0, batch_size=1)
    with pytest.raises(ConfigError, match="lr -1"):
        DecoderTrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="shift -1 must be >= 0 pixels"):
        DecoderTrainConfig(shift=-1)


def test_run_folder_of_an_older_version_resumes_with_its_own_config(tmp_path):
    """A config.yaml written before a field existed (here classifier.backbone) is read with
    that field's default, so the same config resumes instead of being refused as different."""
    from regene_ray.run import RUN_CONFIG_FILE, RunConfig, inspect_out_dir, prepare_out_dir

    cfg = RunConfig()
    out = tmp_path / "run"
    assert prepare_out_dir(out, cfg, overwrite=False) is False
    old = yaml.safe_load((out / RUN_CONFIG_FILE).read_text())
    del old["classifier"]["backbone"]
    (out / RUN_CONFIG_FILE).write_text(yaml.safe_dump(old))
    assert inspect_out_dir(out, cfg, overwrite=False) == "resume"
    cfg.classifier.backbone = "resnet"  # a real difference is still refused
    with pytest.raises(ConfigError, match="different config"):
        inspect_out_dir(out, cfg, overwrite=False)
