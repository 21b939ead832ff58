"""Shared fixtures: tiny seeded models and a tiny trained run folder on the embedded digits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_run_config(**overrides):
    """A digits run that trains in seconds on 2 CPU cores."""
    from regene_ray.run import smoke_run_config

    cfg = smoke_run_config()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete run folder (classifier, decoder, bank, thresholds) trained on digits."""
    from regene_ray.run import train_run

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_run_config(), out, device="cpu")
    return out


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The MNIST data root ($REGENE_DATA_ROOT or ../shared/data); skips when absent."""
    root = Path(os.environ.get("REGENE_DATA_ROOT", SHARED_DATA))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST files not under {root}; set REGENE_DATA_ROOT")
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray (2 CPUs, no dashboard) for one test module."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
