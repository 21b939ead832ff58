"""The novelty step (a third filter step at generation time): exact nearest training codes, the
per-class calibration on held-out images, a planted copy rejected, and the mass job's columns,
counts and resume."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from masstools import JOB, generate, kill_after_chunks, read_out

from regene_ray import mass, nearest
from regene_ray.config import ConfigError
from regene_ray.generator import ConvexGenerator
from regene_ray.latent_bank import LatentBank
from regene_ray.nearest import NOVELTY_FILE, NearestTrain, novelty_thresholds

K = 10


def bank_of(latents: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None,
            correct: np.ndarray | None = None) -> LatentBank:
    n = len(latents)
    return LatentBank(ids=np.arange(n, dtype=np.int64) if ids is None else ids,
                      labels=labels.astype(np.int64), latents=latents.astype(np.float32),
                      confidence=np.ones(n, np.float32),
                      correct=np.ones(n, bool) if correct is None else correct)


@pytest.mark.parametrize("block", [nearest.BLOCK, 7])  # one block, and many (ties across them)
def test_nearest_is_exact_brute_force(monkeypatch, block):
    monkeypatch.setattr(nearest, "BLOCK", block)
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(200, 16)).astype(np.float32)
    lab = rng.integers(0, 3, 200)
    ids = rng.permutation(10_000)[:200].astype(np.int64)
    lat[150] = lat[3]  # a duplicated training code: the lower row wins the tie
    lab[150] = lab[3]
    near = NearestTrain(bank_of(lat, lab, ids), 3)
    q = np.concatenate([rng.normal(size=(40, 16)), lat[[3, 10]]]).astype(np.float32)
    ql = np.concatenate([rng.integers(0, 3, 40), lab[[3, 10]]])
    got_id, got_d = near(torch.from_numpy(q), torch.from_numpy(ql))
    for i in range(len(q)):
        rows = np.flatnonzero(lab == ql[i])
        d = np.linalg.norm(lat[rows] - q[i], axis=1)
        assert got_id[i] == ids[rows[np.argmin(d)]]
        assert got_d[i].item() == pytest.approx(d.min(), abs=2e-3)
    assert got_id[-2] == ids[3] and got_d[-2] < 2e-3  # an exact copy: distance ~0


def test_thresholds_are_quantiles_of_holdout_distances():
    stats = {"holdout_distances": [[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0]]}
    assert novelty_thresholds(stats, 0.25) == [2.0, 12.5]  # numpy's linear quantile
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\)"):
        novelty_thresholds(stats, 1.5)
    with pytest.raises(ConfigError, match="no held-out distances for class 1"):
        novelty_thresholds({"holdout_distances": [[1.0], []]}, 0.1)


def test_training_writes_the_calibration(tiny_run):
    stats = json.loads((tiny_run / NOVELTY_FILE).read_text())
    d = stats["holdout_distances"]
    assert len(d) == K and all(len(c) > 0 and c == sorted(c) for c in d)
    assert all(x > 0 for c in d for x in c)  # held-out images are not training images


def test_a_planted_copy_is_rejected(tiny_run):
    """Append to the bank, as a training code of its class, the code of a generation the
    novelty step kept: the same candidate is then rejected, its nearest training id is the
    planted one, and every other candidate is decided as before."""
    gen = ConvexGenerator.from_run(tiny_run)
    tau = novelty_thresholds(json.loads((tiny_run / NOVELTY_FILE).read_text()), 0.05)
    gen.set_novelty(tau)
    labels = np.arange(200) % K
    before = gen(labels, n_parents=2, seed=3)
    assert before.accepted.sum() > 50
    pick = int(np.flatnonzero(before.accepted)[0])
    with torch.inference_mode():
        code = gen.classifier.encode(torch.from_numpy(before.images[pick:pick + 1]).float() / 255)
    b = gen.bank
    planted = LatentBank(  # not `correct`: never a parent, so the mixes stay the same
        ids=np.append(b.ids, 10**9), labels=np.append(b.labels, labels[pick]),
        latents=np.concatenate([b.latents, code.numpy()]),
        confidence=np.append(b.confidence, 1.0), correct=np.append(b.correct, False))
    gen2 = ConvexGenerator(planted, gen.classifier, gen.decoder,
                           {"latent": gen.tau_latent.tolist(), "image": gen.tau_image.tolist()})
    gen2.set_novelty(tau)
    after = gen2(labels, n_parents=2, seed=3)
    np.testing.assert_array_equal(after.parent_ids, before.parent_ids)
    assert not after.accepted[pick] and not after.novel[pick]
    # "the same code" up to float32 noise: |a|^2 + |b|^2 - 2a.b cancels to ~eps * |a|^2 (codes of
    # norm ~25 here: ~0.01 after the sqrt, CPU-dependent), while real held-out images of the
    # class lie at least min_real from every training code
    min_real = min(json.loads((tiny_run / NOVELTY_FILE).read_text())
                   ["holdout_distances"][labels[pick]])
    assert after.nearest_train_id[pick] == 10**9
    assert after.nearest_train_distance[pick] < 0.05 * min_real
    others = np.arange(200) != pick
    np.testing.assert_array_equal(after.accepted[others], before.accepted[others])
    # rows that failed a confidence step are never measured
    failed = ~before.latent_pass
    assert (before.nearest_train_id[failed] == -1).all()


def test_novelty_off_changes_nothing(tiny_run):
    gen = ConvexGenerator.from_run(tiny_run)
    labels = np.arange(60) % K
    a = gen(labels, n_parents=3, seed=1)
    gen.set_novelty([0.0] * K)  # a threshold of 0 rejects nothing
    b = gen(labels, n_parents=3, seed=1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.accepted, b.accepted)
    assert (a.nearest_train_id == -1).all() and a.novel.all()
    assert (b.nearest_train_id[b.accepted] >= 0).all()


FLAGS = ["--count", "200", "--n-parents", "2", "--batch-size", "40", "--seed", "2",
         "--novelty-quantile", "0.2"]


@pytest.fixture(scope="module")
def novel_out(ray_cluster, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("novel") / "out"
    return out, generate(tiny_run, out, *FLAGS, "--workers", "1")


def test_mass_job_counts_and_columns(novel_out, tiny_run):
    out, s = novel_out
    t = read_out(out)
    assert t.num_rows == 200
    rejected = s.novelty_rejected_per_class
    assert set(rejected) == {str(c) for c in range(K)} and sum(rejected.values()) > 0
    assert 0 < s.acceptance["novelty_step_given_image"] < 1
    ident = json.loads((out / mass.JOB_FILE).read_text())
    tau = ident["novelty"]["thresholds"]
    assert ident["novelty"]["quantile"] == 0.2 and len(tau) == K
    # every kept row is at least tau_c from every training code of its class
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    ids, d = t["nearest_train_id"].to_numpy(), t["nearest_train_distance"].to_numpy()
    labels = t["label"].to_numpy()
    assert (d >= np.asarray(tau)[labels]).all()
    label_of = dict(zip(bank.ids.tolist(), bank.labels.tolist(), strict=True))
    assert all(label_of[i] == c for i, c in zip(ids.tolist(), labels.tolist(), strict=True))
    meta = json.loads(pq.read_schema(sorted((out / "data").glob("*.parquet"))[0])
                      .metadata[b"huggingface"])["info"]["features"]
    assert meta["label"] == {"names": [str(c) for c in range(K)], "_type": "ClassLabel"}
    summary = json.loads((out / mass.SUMMARY_FILE).read_text())
    assert summary["novelty_rejected_per_class"] == rejected


def test_mass_job_with_novelty_resumes_exactly(novel_out, tiny_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(JOB), "--run", str(tiny_run), *FLAGS, "--workers", "2",
           "--out", str(out)]
    kill_after_chunks(cmd, out, 2, timeout_s=120)
    assert not (out / mass.SUMMARY_FILE).exists(), "the job finished before it was killed"
    s = generate(tiny_run, out, *FLAGS, "--workers", "2", "--resume")
    assert s.resumed
    assert read_out(out).equals(read_out(novel_out[0]))
    assert s.novelty_rejected_per_class == novel_out[1].novelty_rejected_per_class


def test_novelty_without_calibration_says_what_to_do(ray_cluster, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "old-run"
    shutil.copytree(tiny_run, run)
    (run / NOVELTY_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="run jobs/train.py again on this run"):
        generate(run, tmp_path / "out", *FLAGS)
    assert not (tmp_path / "out").exists()
