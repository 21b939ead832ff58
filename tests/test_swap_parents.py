"""benchmarks/swap_parents.py: one run's networks with another run's training images as parents
(issue 23's diagnostic of what limits the low-data gain)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import yaml
from conftest import REPO

from regene_ray.checkpoint import file_sha256
from regene_ray.data import load_data
from regene_ray.latent_bank import BANK_FILE, LatentBank
from regene_ray.run import RUN_CONFIG_FILE, load_run_config


def swap(*args):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "swap_parents.py"),
                           *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_the_bank_holds_the_other_runs_training_split_encoded_by_these_networks(tiny_run,
                                                                                 tmp_path):
    cfg = yaml.safe_load((tiny_run / RUN_CONFIG_FILE).read_text())
    cfg["data"]["max_train"] = 300  # a smaller subset of the same dataset: other parents
    parents = tmp_path / "parents"
    parents.mkdir()
    (parents / RUN_CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    out = tmp_path / "swapped"
    p = swap("--networks", tiny_run, "--parents", parents, "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]

    data = load_data(load_run_config(parents / RUN_CONFIG_FILE).data)
    bank = LatentBank.load(out / BANK_FILE)
    own = LatentBank.load(tiny_run / BANK_FILE)
    assert len(bank.labels) == len(data.train_y) < len(own.labels)
    np.testing.assert_array_equal(bank.labels, data.train_y.numpy())
    for name in ("classifier/weights.pt", "decoder/weights.pt", "thresholds.json"):
        assert file_sha256(out / name) == file_sha256(tiny_run / name)
    assert (out / "parents_config.yaml").read_text() == (parents / RUN_CONFIG_FILE).read_text()
    assert not (out / "novelty.json").exists()  # calibrated against the networks run's bank

    again = swap("--networks", tiny_run, "--parents", parents, "--out", out)
    assert again.returncode == 2 and "exists; pick a new folder" in again.stderr
    bad = swap("--networks", tmp_path, "--parents", parents, "--out", tmp_path / "new")
    assert bad.returncode == 2 and "is not a run folder" in bad.stderr
    assert not (tmp_path / "new").exists()
