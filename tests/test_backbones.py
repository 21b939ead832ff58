"""The resnet and densenet backbones through the three jobs: jobs/train.py on a config that names
`classifier.backbone`, jobs/mass_generate.py on its run folder, jobs/evaluate.py on both. Each
job's own main runs in this process (the import of torch is paid once) on the module's Ray."""

from __future__ import annotations

import io
import json

import pytest
import torch
import yaml
from conftest import REPO, load_job, tiny_run_config
from masstools import generate, read_out
from PIL import Image

from regene_ray.classifier import ArchConfig, Classifier
from regene_ray.config import to_dict
from regene_ray.decoder import Decoder
from regene_ray.search.space import load_search_space


@pytest.fixture(scope="module")
def neutral_cache(tmp_path_factory):
    """One neutral judge for both reports: it depends on the data, not on the backbone."""
    return tmp_path_factory.mktemp("neutral") / "cache"


@pytest.fixture
def one_thread():
    """One torch thread, as evaluate's --threads 1 sets: on 2 cores shared with other work, two
    threads made the training 30x slower (OpenMP threads waiting on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backbone", ["resnet", "densenet"])
def test_train_generate_evaluate(backbone, ray_cluster, neutral_cache, one_thread, tmp_path):
    """A config naming the backbone trains a run of that backbone (codes good enough to
    generate from), which mass generation and the report take like any other."""
    cfg = tiny_run_config()  # digits at 16x16, classifier-feature perceptual loss
    cfg.classifier = ArchConfig(backbone=backbone, depth=2, convs_per_block=1, base_channels=8,
                                latent_dim=32)
    cfg.classifier_training.epochs = cfg.decoder_training.epochs = 3  # test accuracy ~0.95
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert f"backbone: {backbone}" in config.read_text()
    run = tmp_path / "run"
    train = load_job("train")
    metrics = train.main(train.get_args_parser().parse_args(
        ["--config", str(config), "--out", str(run), "--device", "cpu"]))
    assert metrics["perceptual_backend"] == "classifier" and metrics["test_accuracy"] > 0.5
    clf, dec = Classifier.load(run / "classifier"), Decoder.load(run / "decoder")
    assert clf.cfg.backbone == dec.cfg.backbone == backbone

    out = tmp_path / "generated"
    summary = generate(run, out, "--smoke-test", "--count", "20")
    table = read_out(out)
    assert summary.requested == table.num_rows == 20
    image = Image.open(io.BytesIO(table["image"][0]["bytes"].as_py()))
    assert image.size == (16, 16)

    evaluate = load_job("evaluate")
    report = tmp_path / "report"
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--run", str(run), "--generated", str(out), "--out", str(report), "--smoke-test",
         "--device", "cpu", "--threads", "1", "--neutral-cache", str(neutral_cache),
         "--neutral-width", "4", "--neutral-epochs", "1", "--seeds", "1", "--fid-samples", "40",
         "--novelty-samples", "20", "--dirichlet-alpha", "0"]))
    m = json.loads((report / "metrics.json").read_text())
    assert m["generated"]["evaluated"] == 20 and m["generated"]["source"] != "in-process"
    assert 0 <= m["generation_accuracy"]["overall"] <= 1
    assert 0 < m["autoencoder"]["test_mae"] < 1  # the backbone's encoder, trained end to end
    assert (report / "report.html").is_file()


def test_shipped_spaces_search_the_backbone():
    """mnist, fashion_mnist and cifar10 search it (their extremes validated on load); digits,
    whose timing the demo and fast tests depend on, does not."""
    for name in ("mnist", "fashion_mnist", "cifar10"):
        space = load_search_space(REPO / "search_spaces" / f"{name}.yaml")
        assert space.search["classifier.backbone"].choices == ["vgg", "resnet", "densenet"]
        cfg = space.run_config({"classifier.backbone": "densenet"})
        assert cfg.classifier.backbone == "densenet"
    assert "classifier.backbone" not in load_search_space(REPO / "search_spaces" / "digits.yaml"
                                                          ).search


def test_space_validation_knows_each_backbones_sides():
    """The extreme-config check builds every backbone choice with every depth extreme: at 12
    pixels resnet (12 -> 6 -> 3 -> 2 -> 1) fits depth 4, densenet's pools (12 -> 6 -> 3 -> 1)
    do not; an unknown name is refused with the choices."""
    from regene_ray.config import ConfigError
    from regene_ray.search.space import parse_search_space

    base = {"data": {"dataset": "digits", "image_size": 12}, "classifier": {"backbone": "resnet"}}
    depth = {"classifier.depth": {"low": 1, "high": 4}}
    space = parse_search_space({"base": base, "search": depth})
    assert space.run_config({"classifier.depth": 4}).classifier.backbone == "resnet"
    with pytest.raises(ConfigError, match="the combination search.classifier.depth = 4, "
                       "search.classifier.backbone = 'densenet': image_size 12 is too small"):
        parse_search_space({"base": base, "search": {
            **depth, "classifier.backbone": {"choices": ["resnet", "densenet"]}}})
    with pytest.raises(ConfigError, match="search.classifier.backbone = 'vit': backbone 'vit' "
                       "must be one of"):
        parse_search_space({"base": base, "search": {
            "classifier.backbone": {"choices": ["resnet", "vit"]}}})
