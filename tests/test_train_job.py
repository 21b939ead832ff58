"""jobs/train.py as users run it: a subprocess, real files, real error messages."""

import json

import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, load_job, run_job

from regene_ray.classifier import Classifier
from regene_ray.data import load_data
from regene_ray.losses import lpips_weights_present
from regene_ray.resnet import ResNet, accuracy
from regene_ray.run import load_run_config, near_chance


def run(*args, check=True):
    return run_job("train", *args, check=check)


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
    # auto: lpips where its weights are on disk, else none (offline machines, CI)
    assert m["perceptual_backend"] == ("lpips-vgg" if lpips_weights_present("vgg") else "none")
    # --smoke-test keeps 600 of digits' 1438 training images (a tenth held out) and 200 test ones
    assert (m["train_images"], m["holdout_images"], m["test_images"]) == (540, 60, 200)
    bank = pq.read_table(out / "latent_bank.parquet")
    assert bank.column_names[:3] == ["id", "label", "latent"]
    assert bank.num_rows == m["train_images"]
    thr = json.loads((out / "thresholds.json").read_text())
    assert len(thr["latent"]) == len(thr["image"]) == 10
    assert "run folder:" in p.stdout


def test_rerun_same_config_resumes_without_retraining(smoke_run):
    out, _ = smoke_run
    first = comparable(out / "metrics.json")
    before = [(out / part / "weights.pt").stat().st_mtime_ns for part in ("classifier", "decoder")]
    p = run("--smoke-test", "--out", out, "--device", "cpu")
    assert "resuming the run" in p.stderr and "classifier epoch" not in p.stderr
    assert [(out / part / "weights.pt").stat().st_mtime_ns
            for part in ("classifier", "decoder")] == before
    # the networks are loaded, their curves kept; what is recomputed comes out the same
    assert comparable(out / "metrics.json") == first


def test_judge_backend_trains_its_own_network_once(tmp_path):
    """perceptual judge: a ResNet with its own seed, cached in RUN/judge/, named in metrics;
    a rerun reuses it; --overwrite with another config removes it with the rest of the run."""
    out = tmp_path / "run"
    p = run("--smoke-test", "--out", out, "--device", "cpu", "--perceptual", "judge",
            "--upsample", "transpose")
    m = json.loads((out / "metrics.json").read_text())
    assert m["perceptual_backend"] == "judge-resnet8"
    assert m["judge"]["network"] == "resnet8-w8" and m["judge"]["seed"] == 7777
    # the accuracy recorded is the saved judge's on the run's test split, and the run warns
    # exactly when it is near chance (600 images x 2 epochs teach a ResNet little)
    data = load_data(load_run_config(out / "config.yaml").data)
    judge = ResNet.load(out / "judge")
    assert (judge.cfg.depth, judge.cfg.width) == (8, 8)
    acc = accuracy(judge, data.test_x, data.test_y, "cpu")
    assert m["judge"]["test_accuracy"] == acc
    assert ("judge network: test accuracy" in p.stderr) == near_chance(acc, 10)
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
    """The run's config.yaml trains the same run again: same config + seed -> same weights."""
    out, _ = smoke_run
    again = tmp_path / "again"
    run("--config", out / "config.yaml", "--out", again, "--device", "cpu")
    assert comparable(again / "metrics.json") == comparable(out / "metrics.json")
    first, second = Classifier.load(out / "classifier"), Classifier.load(again / "classifier")
    for x, y in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def comparable(metrics_file) -> str:
    """A run's results without what differs between two identical runs (seconds and speeds),
    as JSON text, so NaNs (a class without eligible parents) compare equal."""
    m = json.loads(metrics_file.read_text())
    keep = {k: m[k] for k in ("test_accuracy", "recon_test_mae", "recon_test_ssim",
                              "acceptance", "judge", "perceptual_backend")}
    for k in ("classifier_history", "decoder_history"):
        keep[k] = [{s: v for s, v in h.items() if s != "images_per_s"} for h in m[k]]
    return json.dumps(keep, sort_keys=True)


def test_the_model_seed_leaves_the_data_split_unchanged():
    """--seed is the model's (init, shuffling, sampling); --data-seed the split's: runs that
    differ only in --seed train on the same images and can share one neutral judge."""
    job = load_job("train")

    def config(*flags):
        return job.build_config(job.get_args_parser().parse_args(["--out", "x", "--smoke-test",
                                                                  *flags]))

    a, b, c = config("--seed", "1"), config("--seed", "2"), config("--data-seed", "3")
    assert (a.seed, b.seed, c.seed) == (1, 2, 0) and a.data == b.data
    assert (a.data.seed, c.data.seed) == (0, 3)
    da, db, dc = load_data(a.data), load_data(b.data), load_data(c.data)
    assert torch.equal(da.train_x, db.train_x) and torch.equal(da.holdout_x, db.holdout_x)
    assert not torch.equal(da.holdout_x, dc.holdout_x)  # another split
    for flag in ("--seed", "--data-seed"):
        p = run("--out", "never-made", "--smoke-test", flag, "-1", check=False)
        assert p.returncode == 2 and f"{flag})" in p.stderr.strip().splitlines()[-1]
        assert not (REPO / "never-made").exists()


def test_decoder_shift_augments_the_decoder_alone_and_label_smoothing_the_classifier():
    job = load_job("train")
    parse = job.get_args_parser().parse_args
    cfg = job.build_config(parse(["--out", "x", "--decoder-shift", "2"]))
    assert (cfg.classifier_training.shift, cfg.decoder_training.shift) == (0, 2)
    cfg = job.build_config(parse(["--out", "x", "--shift", "1", "--decoder-shift", "3"]))
    assert (cfg.classifier_training.shift, cfg.decoder_training.shift) == (1, 3)
    cfg = job.build_config(parse(["--out", "x", "--label-smoothing", "0.1"]))
    assert cfg.classifier_training.label_smoothing == 0.1
    p = run("--out", "never-made", "--smoke-test", "--label-smoothing", "1", check=False)
    assert p.returncode == 2 and "label_smoothing 1.0 must be in [0, 1)" in p.stderr
    p = run("--out", "never-made", "--smoke-test", "--decoder-shift", "-1", check=False)
    assert p.returncode == 2 and "shift -1 must be >= 0 pixels" in p.stderr
    assert not (REPO / "never-made").exists()


def test_shift_sets_the_augmentation_of_both_stages_and_a_bad_one_is_refused():
    job = load_job("train")
    cfg = job.build_config(job.get_args_parser().parse_args(["--out", "x", "--shift", "2"]))
    assert (cfg.classifier_training.shift, cfg.decoder_training.shift) == (2, 2)
    p = run("--out", "never-made", "--smoke-test", "--shift", "-1", check=False)
    assert p.returncode == 2 and "shift -1 must be >= 0 pixels" in p.stderr
    assert not (REPO / "never-made").exists()
