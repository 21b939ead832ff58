import pytest
import torch

from regene_ray.checkpoint import CheckpointError
from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.decoder import Decoder, DecoderArch, DecoderConfig, check_compatible


def tiny(**kw):
    base = dict(in_channels=1, image_size=16, num_classes=10, depth=2, convs_per_block=1,
                base_channels=8, latent_dim=16)
    base.update(kw)
    return ClassifierConfig(**base)


def test_shapes_and_odd_sizes():
    torch.manual_seed(0)
    for size, depth in ((16, 2), (28, 3), (32, 4), (9, 3)):
        cfg = tiny(image_size=size, depth=depth)
        clf, dec = Classifier(cfg), Decoder(DecoderConfig.mirror(cfg))
        x = torch.rand(3, 1, size, size)
        z = clf.encode(x)
        assert z.shape == (3, 16) and clf(x).shape == (3, 10)
        assert dec(z).shape == x.shape
        assert len(clf.features(x)) == depth


@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "transpose"])
def test_every_upsampling_reaches_every_side(upsample):
    """Odd and even sides (28 -> 14 -> 7 -> 3): transpose picks its padding per block."""
    torch.manual_seed(0)
    for size, depth in ((16, 2), (28, 3), (32, 4), (9, 3), (64, 5)):
        cfg = tiny(image_size=size, depth=depth)
        dec = Decoder(DecoderConfig.mirror(cfg, DecoderArch(upsample=upsample)))
        assert dec(torch.rand(2, 16)).shape == (2, 1, size, size)


def test_transpose_learns_its_upsampling():
    cfg = tiny(image_size=28, depth=3, convs_per_block=2)
    dec = Decoder(DecoderConfig.mirror(cfg, DecoderArch(upsample="transpose")))
    ups = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [u.stride for u in ups] == [(2, 2)] * 3
    assert not any(isinstance(m, torch.nn.Upsample) for m in dec.modules())
    # the transposed conv takes the place of the block's first conv: 2 layers per block still
    assert sum(isinstance(m, torch.nn.Conv2d) for m in dec.blocks.modules()) == 3


def test_decoder_arch_widens_and_deepens_the_mirror():
    cfg = tiny(depth=2, base_channels=8)  # classifier widths 8, 16; one conv per block
    d = DecoderConfig.mirror(cfg, DecoderArch(width=2.0, convs_per_block=2))
    assert d.block_channels == [16, 32] and d.convs_per_block == 2
    assert DecoderConfig.mirror(cfg).block_channels == [8, 16]
    assert DecoderConfig.mirror(cfg).convs_per_block == 1


def test_bad_decoder_arch():
    with pytest.raises(ConfigError, match="decoder.upsample 'pixelshuffle' must be one of"):
        DecoderArch(upsample="pixelshuffle")
    with pytest.raises(ConfigError, match="decoder.width 0"):
        DecoderArch(width=0)
    with pytest.raises(ConfigError, match="decoder.convs_per_block -1"):
        DecoderArch(convs_per_block=-1)


def test_relu_codes_are_sparse_and_none_codes_dense():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 16, 16)
    assert (Classifier(tiny()).encode(x) == 0).float().mean() > 0.1
    assert (Classifier(tiny(latent_activation="none")).encode(x) == 0).float().mean() == 0


def test_image_too_small_for_depth_names_values():
    with pytest.raises(ConfigError, match="image_size 8 is too small for depth 4.*lower depth to 3"):
        tiny(image_size=8, depth=4)


def test_decoder_classifier_mismatch_names_both_values():
    cfg = tiny(latent_dim=32)
    dec_cfg = DecoderConfig.mirror(tiny(latent_dim=16))
    with pytest.raises(ConfigError, match="latent_dim 32 != decoder.latent_dim 16"):
        check_compatible(cfg, dec_cfg)
    with pytest.raises(ConfigError, match="image_size 16 != decoder.image_size 28"):
        check_compatible(cfg, DecoderConfig.mirror(tiny(image_size=28, latent_dim=32)))


def test_bad_channels_list():
    with pytest.raises(ConfigError, match="channels \\[8\\] has 1 entries but depth is 2"):
        tiny(channels=[8])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny()
    clf, dec = Classifier(cfg).eval(), Decoder(DecoderConfig.mirror(cfg)).eval()
    clf.save(tmp_path / "c")
    dec.save(tmp_path / "d")
    clf2, dec2 = Classifier.load(tmp_path / "c"), Decoder.load(tmp_path / "d")
    assert clf2.cfg == cfg and dec2.cfg == dec.cfg
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(clf(x), clf2(x))
        assert torch.equal(dec(clf.encode(x)), dec2(clf2.encode(x)))


def test_corrupt_checkpoint_says_what_to_do(tmp_path):
    Classifier(tiny()).save(tmp_path / "c")
    (tmp_path / "c" / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a regene-ray checkpoint.*retrain"):
        Classifier.load(tmp_path / "c")


def test_weights_from_another_config_are_refused(tmp_path):
    Classifier(tiny(latent_dim=16)).save(tmp_path / "a")
    Classifier(tiny(latent_dim=24)).save(tmp_path / "b")
    (tmp_path / "b" / "weights.pt").replace(tmp_path / "a" / "weights.pt")
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        Classifier.load(tmp_path / "a")


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a saved model folder"):
        Decoder.load(tmp_path)


def test_pickled_code_is_not_executed(tmp_path):
    """weights_only=True: a checkpoint holding arbitrary objects is rejected, not unpickled."""
    Classifier(tiny()).save(tmp_path / "c")
    torch.save({"x": object.__new__(Evil)}, tmp_path / "c" / "weights.pt")
    with pytest.raises(CheckpointError, match="corrupt or not a regene-ray checkpoint"):
        Classifier.load(tmp_path / "c")


class Evil:
    pass
