"""jobs/train_on_generated.py: a classifier trained on generated Parquet streamed through Ray
Data (alone, or mixed with real images), tested on the real test set."""

from __future__ import annotations

import json
import math

import pytest
import ray
import torch
from conftest import load_job
from masstools import generate

from regene_ray.config import ConfigError
from regene_ray.data import load_data
from regene_ray.ownership import OwnershipError
from regene_ray.resnet import ResNet, accuracy
from regene_ray.run import load_run_config

FAST = ["--depth", "8", "--width", "4", "--epochs", "2", "--batch-size", "64", "--threads", "1",
        "--device", "cpu"]


job = load_job("train_on_generated")


def train(*flags):
    return job.main(job.get_args_parser().parse_args([str(f) for f in flags]))


@pytest.fixture(scope="module")
def generated(ray_cluster, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tog") / "gen"
    generate(tiny_run, out, "--count", "300", "--n-parents", "2", "--batch-size", "50",
             "--workers", "1", "--seed", "4")
    return out


def test_generated_only_streams_every_row_each_epoch(generated, tiny_run, tmp_path):
    out = tmp_path / "cas"
    m = train("--run", tiny_run, "--generated", generated, "--out", out, *FAST)
    assert m["trained_on"]["generated_rows"] == 300 and m["trained_on"]["real_images"] == 0
    assert [h["images"] for h in m["history"]] == [300, 300]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == m["test_accuracy"]
    # the saved model is the one scored: its accuracy on the run's real test split, again
    data = load_data(load_run_config(tiny_run / "config.yaml").data)
    model = ResNet.load(out / "model")
    assert model.cfg.width == 4 and m["test_images"] == len(data.test_x)
    assert accuracy(model, data.test_x, data.test_y, "cpu") == m["test_accuracy"]
    # the same command again: refused without --overwrite; with it, the same result (seeded
    # shuffle of an order-preserving stream)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        train("--run", tiny_run, "--generated", generated, "--out", out, *FAST)
    again = train("--run", tiny_run, "--generated", generated, "--out", out, "--overwrite", *FAST)
    assert again["test_accuracy"] == m["test_accuracy"]
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in m["history"]]


def test_real_share_of_every_batch(generated, tiny_run, tmp_path):
    m = train("--run", tiny_run, "--generated", generated, "--out", tmp_path / "mix",
              "--real-fraction", "0.5", "--real-images", "100", *FAST)
    # 32 generated + 32 real per batch: ceil(300 / 32) batches, each with 32 real images
    batches = math.ceil(300 / 32)
    assert [h["images"] for h in m["history"]] == [300 + 32 * batches] * 2
    assert m["trained_on"]["real_images"] == 100 and m["trained_on"]["real_fraction"] == 0.5


def test_real_only_reference(tiny_run, tmp_path):
    m = train("--run", tiny_run, "--real-only", "--real-images", "200", "--out",
              tmp_path / "real", *FAST)
    assert [h["images"] for h in m["history"]] == [200, 200]
    assert m["trained_on"]["generated_rows"] == 0


@pytest.mark.parametrize("flags, error, message", [
    (["--real-only", "--generated", "x"], ConfigError, "not both or neither"),
    ([], ConfigError, "not both or neither"),
    (["--generated", "x", "--real-images", "5"], ConfigError, "none are used"),
    (["--generated", "x", "--real-fraction", "1.0"], ConfigError, "must be in \\[0, 1\\)"),
])
def test_bad_flags(tiny_run, tmp_path, flags, error, message):
    with pytest.raises(error, match=message):
        train("--run", tiny_run, "--out", tmp_path / "o", *flags, *FAST)
    assert not (tmp_path / "o").exists()


def test_bad_folders(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="is not a run folder"):
        train("--run", tmp_path, "--real-only", "--out", tmp_path / "o", *FAST)
    with pytest.raises(FileNotFoundError, match="has no data/\\*.parquet"):
        train("--run", tiny_run, "--generated", tmp_path, "--out", tmp_path / "o", *FAST)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OwnershipError, match="not a jobs/train_on_generated.py result"):
        train("--run", tiny_run, "--real-only", "--out", tmp_path / "mine", "--overwrite", *FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"




def test_class_interleaved_order():
    from regene_ray.evaluation.stream import class_interleaved

    files = [f"s3://b/gen/data/c{c:03d}-k{k:07d}.parquet" for c in range(3) for k in range(2)]
    names = [f.rsplit("/", 1)[1] for f in class_interleaved([*files, "x/other.parquet"])]
    assert names == ["c000-k0000000.parquet", "c001-k0000000.parquet", "c002-k0000000.parquet",
                     "c000-k0000001.parquet", "c001-k0000001.parquet", "c002-k0000001.parquet",
                     "other.parquet"]


def test_a_max_rows_prefix_holds_every_class(ray_cluster, tiny_run, tmp_path):
    """One class per data file, in class order: the first rows in file order were of the first
    classes only."""
    from regene_ray.evaluation.stream import generated_batches
    from regene_ray.generated import GeneratedFolder

    out = tmp_path / "gen"
    generate(tiny_run, out, "--count", "600", "--n-parents", "2", "--chunk-size", "24",
             "--batch-size", "24", "--workers", "1", "--seed", "4")
    before = ray.data.DataContext.get_current().execution_options.preserve_order
    epoch, rows = generated_batches([GeneratedFolder(out)], batch_size=50, seed=0, max_rows=200)
    # the order is kept on the dataset's own context: the process's is as it was
    assert ray.data.DataContext.get_current().execution_options.preserve_order == before
    labels = torch.cat([y for _, y in epoch(0, torch.Generator().manual_seed(0))])
    assert rows == 200 == len(labels)
    assert torch.bincount(labels, minlength=10).min() >= 10  # 20 a class, give or take a file
