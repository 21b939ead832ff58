import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from regene_ray.config import ConfigError
from regene_ray.data import DataConfig, iterate_batches, load_data


def test_digits_splits_are_deterministic_and_disjoint():
    a = load_data(DataConfig(dataset="digits", image_size=16, seed=1))
    b = load_data(DataConfig(dataset="digits", image_size=16, seed=1))
    assert a.train_x.shape[1:] == (1, 16, 16) and a.train_x.dtype == torch.uint8
    assert a.num_classes == 10
    # a fixed fifth for test (359), then a tenth of the rest held out (144)
    assert (len(a.train_x), len(a.holdout_x), len(a.test_x)) == (1294, 144, 359)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.holdout_y, b.holdout_y)
    c = load_data(DataConfig(dataset="digits", image_size=16, seed=2))
    assert not torch.equal(a.train_y, c.train_y)
    # the three splits partition the dataset: at the native 8 x 8, every (image, label) of
    # scikit-learn's digits, duplicates included, lands in exactly one of them
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))  # 0..16 -> 0..255
    n = load_data(DataConfig(dataset="digits", image_size=8, seed=1))
    assert (rows(n.train_x, n.train_y) + rows(n.holdout_x, n.holdout_y)
            + rows(n.test_x, n.test_y)) == rows(x, torch.from_numpy(d.target))


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """How often each (image bytes, label) pair occurs."""
    return Counter(zip((bytes(r) for r in x.reshape(len(x), -1).numpy()), y.tolist(),
                       strict=True))


def test_missing_mnist_names_folder_and_files(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(dataset="mnist", data_root=str(tmp_path)))
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "REGENE_DATA_ROOT" in msg


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REGENE_DATA_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="elsewhere"):
        load_data(DataConfig(dataset="fashion-mnist"))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*digits"):
        DataConfig(dataset="imagenet")


def test_mnist_real_files(mnist_root):
    d = load_data(DataConfig(dataset="mnist", data_root=str(mnist_root), max_train=500,
                             max_test=100))
    assert d.train_x.shape[1:] == (1, 28, 28)
    assert len(d.train_x) + len(d.holdout_x) == 500 and len(d.test_x) == 100
    assert d.class_names[0].startswith("0")


def test_folder_dataset_resizes_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(12):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    d = load_data(DataConfig(dataset=f"folder:{tmp_path}", image_size=16))
    assert d.class_names == ["cat", "dog"]
    assert d.train_x.shape[1:] == (3, 16, 16)
    assert len(d.train_x) + len(d.holdout_x) + len(d.test_x) == 24


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_data(DataConfig(dataset=f"folder:{tmp_path / 'missing'}"))
    (tmp_path / "only").mkdir()
    with pytest.raises(ConfigError, match="at least 2 class sub-folders"):
        load_data(DataConfig(dataset=f"folder:{tmp_path}"))


def test_iterate_batches_covers_everything_once():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in iterate_batches(x, y, 3, shuffle=True,
                                                      generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    xb, _ = next(iterate_batches(x, y, 4))
    assert xb.dtype == torch.float32 and float(xb.max()) == pytest.approx(3 / 255)


def test_a_relative_data_root_env_is_pinned_for_trials_run_elsewhere(monkeypatch, tmp_path):
    from regene_ray.data import DATA_ROOT_ENV, pin_data_root_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ROOT_ENV, "../shared/data")
    pin_data_root_env()
    assert os.environ[DATA_ROOT_ENV] == str((tmp_path / "../shared/data").resolve())
    monkeypatch.setenv(DATA_ROOT_ENV, "/abs/root")
    pin_data_root_env()
    assert os.environ[DATA_ROOT_ENV] == "/abs/root"
    monkeypatch.delenv(DATA_ROOT_ENV)  # unset: the ./data it defaults to, pinned the same way
    pin_data_root_env()
    assert os.environ[DATA_ROOT_ENV] == str((tmp_path / "data").resolve())
