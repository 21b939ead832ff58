import pytest
import torch

from regene_ray.checkpoint import CheckpointError
from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.config import ConfigError
from regene_ray.decoder import Decoder, DecoderArch, DecoderConfig, check_compatible


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second torch thread, and on 2 cores shared with other
    work two threads waiting on each other made this file 3x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# backbones: vgg (the paper's), resnet and densenet (torchvision's blocks), one code and head


BACKBONES = ["vgg", "resnet", "densenet"]
# (side, depth, stage sides): pools floor odd sides, resnet's stride-2 convs ceil them
SIDES = {
    "vgg": [(28, 3, [28, 14, 7, 3]), (16, 2, [16, 8, 4]), (32, 4, [32, 16, 8, 4, 2])],
    "resnet": [(28, 3, [28, 14, 7, 4]), (16, 2, [16, 8, 4]), (32, 4, [32, 16, 8, 4, 2])],
    "densenet": [(28, 3, [28, 14, 7, 3]), (16, 2, [16, 8, 4]), (32, 4, [32, 16, 8, 4, 2])],
}


@pytest.fixture(scope="module")
def digits16():
    """32 real 8x8 digits upsampled to 16x16, in [0, 1]."""
    from regene_ray.data import DataConfig, load_data, to_float

    data = load_data(DataConfig(dataset="digits", image_size=16, max_train=100, max_test=10))
    return to_float(data.train_x[:32])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_codes_classifies_and_decodes_every_side(backbone, digits16):
    """Code (B, latent_dim), logits, one feature map per stage at the stage's side, and a
    decoder output of the input's shape for every upsampling, on odd and even sides."""
    torch.manual_seed(0)
    cases = [(size, depth, sides, torch.rand(3, 1, size, size))
             for size, depth, sides in SIDES[backbone]]
    cases.append((16, 2, [16, 8, 4], digits16[:3]))
    for size, depth, sides, x in cases:
        cfg = tiny(backbone=backbone, image_size=size, depth=depth, convs_per_block=2)
        assert cfg.sizes == sides
        clf = Classifier(cfg).eval()
        with torch.no_grad():
            z = clf.encode(x)
            feats = clf.features(x)
            assert z.shape == (3, 16) and clf(x).shape == (3, 10)
        assert [f.shape[1:] for f in feats] == [
            (c, s, s) for c, s in zip(cfg.block_channels, sides[1:], strict=True)]
        for upsample in ("nearest", "bilinear", "transpose"):
            dcfg = DecoderConfig.mirror(cfg, DecoderArch(upsample=upsample))
            assert dcfg.backbone == backbone and dcfg.sizes == sides
            with torch.no_grad():
                assert Decoder(dcfg).eval()(z).shape == x.shape


def test_backbones_are_built_from_torchvision_blocks():
    from torchvision.models.densenet import _DenseBlock, _Transition
    from torchvision.models.resnet import BasicBlock

    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    res = tiny(backbone="resnet", depth=2, convs_per_block=2)
    clf, dec = Classifier(res), Decoder(DecoderConfig.mirror(res))
    assert count(clf, BasicBlock) == 4 and count(dec, BasicBlock) == 4
    firsts = [stage[-2] for stage in clf.blocks]  # each stage: [stem,] BasicBlock, BasicBlock
    assert [b.conv1.stride for b in firsts] == [(2, 2)] * 2
    assert all(b.downsample is not None for b in firsts)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in clf.modules())

    dense = tiny(backbone="densenet", depth=2, convs_per_block=3)
    clf, dec = Classifier(dense), Decoder(DecoderConfig.mirror(dense))
    assert count(clf, _DenseBlock) == 2 and count(clf, _Transition) == 2
    assert count(dec, _DenseBlock) == 2 and not count(dec, _Transition)  # decoder keeps sides
    blocks = [m for m in clf.modules() if isinstance(m, _DenseBlock)]
    assert [len(b) for b in blocks] == [3, 3]  # convs_per_block dense layers per stage
    # growth rate: half the stage width (8 -> 4, 16 -> 8); bottleneck 4x growth
    assert [b.denselayer1.conv2.out_channels for b in blocks] == [4, 8]
    assert [b.denselayer1.conv1.out_channels for b in blocks] == [16, 32]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_head_is_one_linear_and_convex_mixes_keep_the_class(backbone):
    """Lemma 1 for every backbone: the head is exactly one nn.Linear on the code, so a convex
    mix of two codes it assigns to class c is assigned to c."""
    torch.manual_seed(0)
    clf = Classifier(tiny(backbone=backbone)).eval()
    assert type(clf.head) is torch.nn.Linear and not list(clf.head.children())
    w, b = clf.head.weight.detach().double(), clf.head.bias.detach().double()  # (K, D), (K,)

    def head(z):
        return z @ w.T + b

    with torch.no_grad():
        z = clf.encode(torch.rand(16, 1, 16, 16))  # (16, latent_dim)
        assert torch.allclose(clf.classify_latent(z).double(), head(z.double()), atol=1e-5)
    z = z.double()
    theta = torch.linspace(0, 1, 101, dtype=torch.float64)[:, None]  # (101, 1)
    for c in range(10):
        pair = []
        for z0 in (z[c], z[c + 1]):  # two real codes, pushed along w_c until the head says c
            step = 0.0
            while int(head(z0 + step * w[c]).argmax()) != c:
                step = step * 2 or 0.5
            pair.append(z0 + step * w[c])
        mixes = theta * pair[0] + (1 - theta) * pair[1]  # (101, latent_dim)
        assert (head(mixes).argmax(1) == c).all()
    # not vacuous: between codes of two classes the head's class changes
    a, a2 = z[0] + 50 * w[0], z[1] + 50 * w[1]
    assert set(head(theta * a + (1 - theta) * a2).argmax(1).tolist()) >= {0, 1}


def test_too_small_images_per_backbone_name_the_deepest_that_fits():
    # 9: pools 9 -> 4 -> 2 -> 1 (3 stages); stride-2 convs 9 -> 5 -> 3 -> 2 -> 1 (4 stages)
    for backbone in ("vgg", "densenet"):
        with pytest.raises(ConfigError, match="image_size 9 is too small for depth 4: 4 "
                           ".*need at least 16 pixels; lower depth to 3"):
            tiny(backbone=backbone, image_size=9, depth=4)
    assert tiny(backbone="resnet", image_size=9, depth=4).sizes == [9, 5, 3, 2, 1]
    with pytest.raises(ConfigError, match="image_size 9 is too small for depth 5: 5 stride-2 "
                       "stages \\(resnet\\) need at least 17 pixels; lower depth to 4"):
        tiny(backbone="resnet", image_size=9, depth=5)
    with pytest.raises(ConfigError, match="too small for decoder depth 3"):
        DecoderConfig(image_size=4, block_channels=[8, 8, 8], backbone="resnet")


def test_transpose_upsampling_reaches_ceil_halved_sides():
    """out = 2 * in - 2 * pad + 1 + output_padding: 2in + 1, 2in and (resnet) 2in - 1."""
    from regene_ray.decoder import transpose_padding

    assert [transpose_padding(3, 7), transpose_padding(7, 14), transpose_padding(4, 7)] == [
        (0, 0), (1, 1), (1, 0)]
    with pytest.raises(ConfigError, match="cannot take side 4 to 10"):
        transpose_padding(4, 10)
    cfg = tiny(backbone="resnet", image_size=28, depth=3)  # 28 -> 14 -> 7 -> 4
    dec = Decoder(DecoderConfig.mirror(cfg, DecoderArch(upsample="transpose")))
    x = dec.fc(torch.rand(2, 16)).view(-1, *dec.start)
    sides = []
    for block in dec.blocks:
        x = block(x)
        sides.append(x.shape[-1])
    assert sides == [7, 14, 28]
    ups = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.padding, u.output_padding) for u in ups] == [((1, 1), (0, 0)), ((1, 1), (1, 1)),
                                                            ((1, 1), (1, 1))]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_round_trip_every_backbone(backbone, tmp_path):
    torch.manual_seed(0)
    cfg = tiny(backbone=backbone, image_size=28, depth=3, convs_per_block=2)
    clf = Classifier(cfg).eval()
    dec = Decoder(DecoderConfig.mirror(cfg, DecoderArch(upsample="transpose"))).eval()
    clf.save(tmp_path / "c")
    dec.save(tmp_path / "d")
    clf2, dec2 = Classifier.load(tmp_path / "c"), Decoder.load(tmp_path / "d")
    assert clf2.cfg == cfg and clf2.cfg.backbone == backbone and dec2.cfg.backbone == backbone
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(clf(x), clf2(x))
        assert torch.equal(dec(clf.encode(x)), dec2(clf2.encode(x)))
    # a checkpoint of one backbone does not load as another
    cfg_json = tmp_path / "c" / "config.json"
    other = "vgg" if backbone != "vgg" else "resnet"
    cfg_json.write_text(cfg_json.read_text().replace(f'"{backbone}"', f'"{other}"'))
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        Classifier.load(tmp_path / "c")


# the state-dict keys of a vgg classifier and decoder (depth 2, one conv per block) as saved
# before backbones existed: old checkpoints must keep loading
OLD_VGG_CLASSIFIER_KEYS = [
    *(f"blocks.{i}.{j}.{k}" for i in range(2) for j, k in
      [(0, "weight"), (1, "weight"), (1, "bias"), (1, "running_mean"), (1, "running_var"),
       (1, "num_batches_tracked")]),
    "to_latent.1.weight", "to_latent.1.bias", "head.weight", "head.bias"]
OLD_VGG_DECODER_KEYS = [
    "fc.0.weight", *(f"fc.1.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                            "num_batches_tracked")),
    *(f"blocks.{i}.{j}.{k}" for i in range(2) for j, k in
      [(1, "weight"), (2, "weight"), (2, "bias"), (2, "running_mean"), (2, "running_var"),
       (2, "num_batches_tracked")]),
    "to_image.0.weight", "to_image.0.bias"]


def test_old_vgg_config_json_without_backbone_loads_as_vgg(tmp_path):
    import json

    torch.manual_seed(0)
    cfg = tiny(convs_per_block=1)
    clf, dec = Classifier(cfg).eval(), Decoder(DecoderConfig.mirror(cfg)).eval()
    assert list(clf.state_dict()) == OLD_VGG_CLASSIFIER_KEYS
    assert list(dec.state_dict()) == OLD_VGG_DECODER_KEYS
    clf.save(tmp_path / "c")
    dec.save(tmp_path / "d")
    for part in ("c", "d"):  # what a checkpoint written before backbones existed holds
        path = tmp_path / part / "config.json"
        old = json.loads(path.read_text())
        del old["backbone"]
        path.write_text(json.dumps(old))
    clf2, dec2 = Classifier.load(tmp_path / "c"), Decoder.load(tmp_path / "d")
    assert clf2.cfg.backbone == dec2.cfg.backbone == "vgg"
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(dec(clf.encode(x)), dec2(clf2.encode(x)))


def test_unknown_backbone_names_the_choices():
    from regene_ray.config import from_dict
    from regene_ray.run import RunConfig

    choices = "must be one of \\('vgg', 'resnet', 'densenet'\\)"
    with pytest.raises(ConfigError, match=f"backbone 'vit' {choices}"):
        tiny(backbone="vit")
    with pytest.raises(ConfigError, match=f"backbone 'ResNet' {choices}"):
        from_dict(RunConfig, {"classifier": {"backbone": "ResNet"}}, source="run.yaml")
    with pytest.raises(ConfigError, match=f"decoder backbone 'unet' {choices}"):
        DecoderConfig(backbone="unet")
    with pytest.raises(ConfigError, match="key 'classifier.backbone' must be a string"):
        from_dict(RunConfig, {"classifier": {"backbone": 3}}, source="run.yaml")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_classifier_perceptual_loss_every_backbone(backbone):
    """The 'classifier' perceptual backend compares every stage's features and trains a decoder."""
    from regene_ray.losses import LossConfig, build_perceptual

    torch.manual_seed(0)
    cfg = tiny(backbone=backbone)
    clf = Classifier(cfg).eval().requires_grad_(False)
    dec = Decoder(DecoderConfig.mirror(cfg))
    perc, name = build_perceptual(LossConfig(perceptual="classifier"), clf)
    assert name == "classifier"
    x = torch.rand(4, 1, 16, 16)
    assert float(perc(x, x)) == pytest.approx(0.0, abs=1e-6)
    loss = perc(dec(clf.encode(x)), x)
    assert float(loss.detach()) > 0
    loss.backward()
    grads = [p.grad for p in dec.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in clf.parameters())  # the classifier stays frozen
