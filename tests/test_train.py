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


def test_classifier_resume_matches_unbroken_run(data, tmp_path):
    cfg = ClassifierTrainConfig(epochs=3, batch_size=64)
    a, _ = models()
    hist_a = train_classifier(a, data, cfg, CPU, seed=5)
    b, _ = models()
    ckpt = tmp_path / "clf.pt"
    # crash after the first epoch, then resume in a fresh model from the checkpoint
    try:
        train_classifier(b, data, cfg, CPU, seed=5, checkpoint=ckpt,
                         on_epoch=_stop_after(0))
    except _Stop:
        pass
    b2, _ = models(seed=99)  # a fresh process would rebuild the model from scratch
    hist_b = train_classifier(b2, data, cfg, CPU, seed=5, checkpoint=ckpt)
    assert len(hist_b) == 3 and [h["epoch"] for h in hist_b] == [0, 1, 2]
    for pa, pb in zip(a.state_dict().values(), b2.state_dict().values(), strict=True):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-5)
    assert hist_b[-1]["val_accuracy"] == pytest.approx(hist_a[-1]["val_accuracy"])


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def cb(e, stats):
        if e == epoch:
            raise _Stop
    return cb


def test_decoder_learns_and_resumes(data, tmp_path):
    clf, dec = models()
    train_classifier(clf, data, ClassifierTrainConfig(epochs=2, batch_size=64), CPU)
    cfg = DecoderTrainConfig(epochs=3, batch_size=64, loss=LossConfig(perceptual="classifier"))
    perc, _ = build_perceptual(cfg.loss, clf)
    ckpt = tmp_path / "dec.pt"
    try:
        train_decoder(dec, clf, data, cfg, CPU, perc, checkpoint=ckpt, on_epoch=_stop_after(1))
    except _Stop:
        pass
    _, dec2 = models(seed=3)
    hist = train_decoder(dec2, clf, data, cfg, CPU, perc, checkpoint=ckpt)
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[-1]["val_mae"] < hist[0]["val_mae"]
    assert hist[0]["w_ssim"] > hist[-1]["w_ssim"]


def test_nan_loss_is_reported(data):
    clf, _ = models()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
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
