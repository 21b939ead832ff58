"""jobs/train.py as users run it: a subprocess, real files, real error messages."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import REPO

JOB = [sys.executable, str(REPO / "jobs" / "train.py")]


def run(*args, check=True):
    p = subprocess.run([*JOB, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "run"
    p = run("--smoke-test", "--out", out, "--device", "cpu")
    return out, p


def test_smoke_run_writes_the_whole_run_folder(smoke_run):
    out, p = smoke_run
    for f in ("config.yaml", "classifier/config.json", "classifier/weights.pt",
              "decoder/config.json", "decoder/weights.pt", "latent_bank.parquet",
              "thresholds.json", "metrics.json", "reconstructions.png", "generations.png"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    for k in ("test_accuracy", "recon_test_mae", "recon_test_ssim", "test_latent_sparsity",
              "perceptual_backend", "acceptance"):
        assert k in m
    assert m["perceptual_backend"] in ("none", "lpips-vgg")  # auto: no lpips weights offline
    bank = pq.read_table(out / "latent_bank.parquet")
    assert bank.column_names[:3] == ["id", "label", "latent"]
    assert bank.num_rows == m["train_images"]
    thr = json.loads((out / "thresholds.json").read_text())
    assert len(thr["latent"]) == len(thr["image"]) == 10
    assert "run folder:" in p.stdout


def test_rerun_same_config_resumes_without_retraining(smoke_run):
    out, _ = smoke_run
    before = (out / "classifier" / "weights.pt").stat().st_mtime_ns
    p = run("--smoke-test", "--out", out, "--device", "cpu")
    assert "resuming the run" in p.stderr
    assert (out / "classifier" / "weights.pt").stat().st_mtime_ns == before


def test_judge_backend_trains_its_own_network_once(tmp_path):
    """perceptual judge: a ResNet with its own seed, cached in RUN/judge/, named in metrics;
    a rerun reuses it; --overwrite with another config removes it with the rest of the run."""
    out = tmp_path / "run"
    p = run("--smoke-test", "--out", out, "--device", "cpu", "--perceptual", "judge",
            "--upsample", "transpose")
    m = json.loads((out / "metrics.json").read_text())
    assert m["perceptual_backend"] == "judge-resnet8"
    assert m["judge"]["network"] == "resnet8-w8" and m["judge"]["seed"] == 7777
    # 600 images x 2 epochs teach a ResNet nothing: the run says so
    assert 0 <= m["judge"]["test_accuracy"] <= 1
    if m["judge"]["test_accuracy"] < 0.2:
        assert "judge network: test accuracy" in p.stderr and "near chance" in p.stderr
    assert (out / "judge" / "weights.pt").is_file()
    dec = json.loads((out / "decoder" / "config.json").read_text())
    assert dec["upsample"] == "transpose"
    before = (out / "judge" / "weights.pt").stat().st_mtime_ns
    (out / "decoder" / "weights.pt").unlink()  # retrain the decoder: the judge is reused
    run("--smoke-test", "--out", out, "--device", "cpu", "--perceptual", "judge",
        "--upsample", "transpose")
    assert (out / "judge" / "weights.pt").stat().st_mtime_ns == before
    run("--smoke-test", "--out", out, "--device", "cpu", "--perceptual", "none", "--overwrite")
    assert not (out / "judge").exists()
    assert json.loads((out / "metrics.json").read_text())["judge"] is None


def test_different_config_in_same_folder_is_refused(smoke_run):
    out, _ = smoke_run
    p = run("--smoke-test", "--out", out, "--latent-dim", "16", check=False)
    assert p.returncode == 2
    assert "holds a run with a different config; pass --overwrite" in p.stderr
    assert "Traceback" not in p.stderr


def test_non_run_folder_and_missing_config_are_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    p = run("--smoke-test", "--out", tmp_path, check=False)
    assert p.returncode == 2 and "not a regene-ray run" in p.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    p = run("--config", tmp_path / "nope.yaml", "--out", tmp_path / "x", check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_bad_flag_values_get_clear_errors(tmp_path):
    p = run("--smoke-test", "--out", tmp_path / "a", "--depth", "9", check=False)
    assert p.returncode == 2 and "image_size 16 is too small for depth 9" in p.stderr
    p = run("--out", tmp_path / "b", "--dataset", "mnist", "--data-root", tmp_path, check=False)
    assert p.returncode == 2 and "MNIST" in p.stderr and "REGENE_DATA_ROOT" in p.stderr
    p = run("--smoke-test", "--out", tmp_path / "c", "--perceptual", "vgg", check=False)
    assert p.returncode == 2 and "perceptual 'vgg' must be one of" in p.stderr


def test_config_yaml_round_trips_through_the_job(smoke_run, tmp_path):
    out, _ = smoke_run
    p = run("--config", out / "config.yaml", "--out", tmp_path / "again", "--device", "cpu")
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"]  # same config + seed -> same run
    assert p.returncode == 0
