"""The sweep on a real embedded Ray (one per module): outputs, Pareto flags, failing trials.

Trials are tiny (digits, 600 images, 2 + 2 epochs, 8-channel models), a few seconds each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from regene_ray.run import load_run_config
from regene_ray.search.outputs import METRICS, STOPPED_EARLY, study_url
from regene_ray.search.pareto import (
    choose_within_tolerance,
    hypervolume_2d,
    knee_point,
    pareto_mask,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))
import search as search_job  # noqa: E402  (jobs/search.py)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024**2,
             include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(*argv: str) -> dict:
    return search_job.main(search_job.get_args_parser().parse_args(list(argv)))


BACKBONES = ["vgg", "resnet", "densenet"]


@pytest.fixture(scope="module")
def backbone_space(tmp_path_factory) -> Path:
    """search_spaces/digits.yaml with the backbone searched too."""
    doc = yaml.safe_load((REPO / "search_spaces" / "digits.yaml").read_text())
    doc["search"]["classifier.backbone"] = {"choices": BACKBONES}
    path = tmp_path_factory.mktemp("space") / "digits-backbones.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, backbone_space) -> Path:
    root = tmp_path_factory.mktemp("sweeps")
    _run("--space", str(backbone_space), "--storage-path", str(root),
         "--name", "smoke", "--smoke-test", "--num-samples", "4", "--accuracy-tolerance", "0.05",
         "--scheduler", "none")
    return root / "smoke"


def test_smoke_search_writes_all_outputs(smoke_sweep):
    for name in ("trials.parquet", "pareto.png", "best_config.yaml", "optuna.sqlite",
                 "summary.json", "pareto.parquet", "hypervolume.png"):
        assert (smoke_sweep / name).is_file(), name
    for png in ("pareto.png", "hypervolume.png"):
        assert (smoke_sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = pd.read_parquet(smoke_sweep / "trials.parquet")
    assert len(df) == 4 and df.trial_id.is_unique
    assert {"classifier.depth", "classifier.latent_dim", "val_accuracy", "val_mae",
            "latent_sparsity", "status", "is_pareto"} <= set(df.columns)
    assert (df.status == "TERMINATED").all()
    assert df[METRICS].notna().all().all() and (df.val_mae < 1).all()
    assert df.chosen.sum() == 1
    assert set(df["classifier.backbone"]) <= set(BACKBONES)
    assert df["classifier.backbone"].nunique() >= 2  # the sweep compared backbones


def test_pareto_flags_match_brute_force_and_optuna(smoke_sweep):
    df = pd.read_parquet(smoke_sweep / "trials.parquet")
    v = df[METRICS].to_numpy()
    brute = [not any((b[0] >= a[0] and b[1] <= a[1]) and (b[0] > a[0] or b[1] < a[1])
                     for b in v) for a in v]
    np.testing.assert_array_equal(df.is_pareto.to_numpy(), brute)
    np.testing.assert_array_equal(df.is_pareto.to_numpy(), pareto_mask(v, [True, False]))
    study = optuna.load_study(study_name="smoke", storage=study_url(smoke_sweep))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    theirs = sorted(tuple(t.values) for t in study.best_trials)
    ours = sorted(map(tuple, df.loc[df.is_pareto, METRICS].to_numpy().tolist()))
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]


def test_pareto_tools(smoke_sweep):
    """pareto.parquet is the front, the hypervolume column is the front's area as trials
    finished, and best_config.yaml names the knee point beside the paper's rule."""
    df = pd.read_parquet(smoke_sweep / "trials.parquet")
    front = pd.read_parquet(smoke_sweep / "pareto.parquet")
    assert sorted(front.trial_id) == sorted(df.trial_id[df.is_pareto])
    assert front.val_mae.is_monotonic_increasing
    by_time = df.sort_values("finished_at", kind="stable")
    assert by_time.hypervolume.is_monotonic_increasing
    for k in range(len(by_time)):  # recomputed from scratch for the trials finished by then
        seen = by_time.iloc[:k + 1]
        assert by_time.hypervolume.iloc[k] == pytest.approx(
            hypervolume_2d(seen.val_accuracy, seen.val_mae, (0.0, 1.0)))
    summary = json.loads((smoke_sweep / "summary.json").read_text())
    assert summary["hypervolume"] == pytest.approx(by_time.hypervolume.iloc[-1])
    k = knee_point(df.val_accuracy, df.val_mae)
    assert df.knee.to_numpy().nonzero()[0].tolist() == [k] and df.is_pareto[k]
    assert summary["knee"]["trial_id"] == df.trial_id[k]
    header = (smoke_sweep / "best_config.yaml").read_text().split("\nclassifier")[0]
    assert "knee point of the front" in header and f"trial {df.trial_id[k]}" in header


def test_best_config_follows_rule_and_trains(smoke_sweep, tmp_path):
    """The chosen config (of a sweep over backbones too) trains, generates and evaluates."""
    df = pd.read_parquet(smoke_sweep / "trials.parquet")
    i = choose_within_tolerance(df.val_accuracy, df.val_mae, 0.05)
    assert df.chosen.to_numpy().nonzero()[0].tolist() == [i] and df.is_pareto[i]
    cfg = load_run_config(smoke_sweep / "best_config.yaml")
    assert cfg.classifier.backbone == df["classifier.backbone"][i]
    assert cfg.classifier.depth == df["classifier.depth"][i]
    assert cfg.classifier.latent_dim == df["classifier.latent_dim"][i]
    assert cfg.classifier_training.lr == pytest.approx(df["classifier_training.lr"][i])
    # exactly what a user runs next
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config",
         str(smoke_sweep / "best_config.yaml"), "--out", str(out), "--device", "cpu",
         # the smoke test's sizes with more epochs: codes good enough to generate every class
         "--max-test", "200", "--base-channels", "8", "--latent-dim",
         "32", "--classifier-epochs", "6", "--decoder-epochs", "6"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "metrics.json").is_file() and (out / "classifier").is_dir()
    gen, report = tmp_path / "generated", tmp_path / "report"
    for job, argv in (("mass_generate", ["--run", out, "--out", gen, "--smoke-test", "--count",
                                         "20", "--address", ray.get_runtime_context().gcs_address]),
                      ("evaluate", ["--run", out, "--generated", gen, "--out", report,
                                    "--smoke-test", "--device", "cpu", "--threads", "1",
                                    "--neutral-width", "4", "--neutral-epochs", "1", "--seeds",
                                    "1", "--fid-samples", "40", "--novelty-samples", "20",
                                    "--dirichlet-alpha", "0"])):
        proc = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"),
                               *map(str, argv)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, job + proc.stderr[-3000:]
    assert sum(pq.read_metadata(f).num_rows for f in (gen / "data").glob("*.parquet")) == 20
    assert json.loads((report / "metrics.json").read_text())["generated"]["evaluated"] == 20


def test_rerun_of_finished_sweep_runs_nothing(smoke_sweep, backbone_space):
    dirs = sorted(p.name for p in smoke_sweep.iterdir() if p.name.startswith("train_trial"))
    summary = _run("--space", str(backbone_space), "--storage-path",
                   str(smoke_sweep.parent), "--name", "smoke", "--smoke-test", "--num-samples",
                   "4", "--accuracy-tolerance", "0.05", "--scheduler", "none")
    assert summary["resumed"] and summary["trials"] == 4
    assert sorted(p.name for p in smoke_sweep.iterdir() if p.name.startswith("train_trial")) == dirs


def test_resume_with_another_space_is_refused(smoke_sweep, backbone_space):
    from regene_ray.config import ConfigError

    with pytest.raises(ConfigError, match="different search space"):
        _run("--space", str(REPO / "search_spaces" / "digits.yaml"), "--storage-path",
             str(smoke_sweep.parent), "--name", "smoke", "--smoke-test", "--num-samples", "4",
             "--scheduler", "none")
    with pytest.raises(ConfigError, match="different search space"):
        _run("--space", str(backbone_space), "--storage-path",
             str(smoke_sweep.parent), "--name", "smoke", "--smoke-test", "--num-samples", "5",
             "--scheduler", "none")


def test_failing_trial_is_recorded_and_sweep_goes_on(tmp_path):
    # lr = .inf turns the weights into inf/NaN after one step: the core raises FloatingPointError
    space = yaml.safe_load((REPO / "search_spaces" / "digits.yaml").read_text())
    space["search"] = {"classifier_training.lr": {"choices": [0.003, float("inf")]},
                       "classifier.depth": {"low": 1, "high": 2}}
    space["sampler"] = "random"
    space["seed"] = 1
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(space))
    summary = _run("--space", str(path), "--storage-path", str(tmp_path), "--name", "fail",
                   "--smoke-test", "--num-samples", "4", "--max-failures", "0",
                   "--scheduler", "none")
    df = pd.read_parquet(tmp_path / "fail" / "trials.parquet")
    assert len(df) == 4
    bad = df["classifier_training.lr"] == float("inf")
    assert bad.any() and (~bad).any(), "the seed must draw both learning rates"
    assert (df.status[bad] == "ERROR").all() and (df.status[~bad] == "TERMINATED").all()
    assert df.error[bad].str.contains("loss became nan").all()
    assert df.val_mae[bad].isna().all() and not df.is_pareto[bad].any()
    assert summary["status_counts"]["ERROR"] == bad.sum()
    assert summary["matches_optuna_best_trials"]
    study = optuna.load_study(study_name="fail", storage=study_url(tmp_path / "fail"))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == bad.sum()


def test_asha_stops_only_in_classifier_phase(tmp_path):
    summary = _run("--space", str(REPO / "search_spaces" / "digits.yaml"), "--storage-path",
                   str(tmp_path), "--name", "asha", "--smoke-test", "--num-samples", "4",
                   "--scheduler", "asha")
    df = pd.read_parquet(tmp_path / "asha" / "trials.parquet")
    stopped = df.status == "STOPPED"
    assert set(df.status) <= {"TERMINATED", "STOPPED"} and stopped.any()
    # stopped while the classifier trained (2 epochs in the smoke test): no decoder epoch ran
    assert (df.epochs_done[stopped] <= 2).all() and (df.epochs_done[~stopped] == 4).all()
    assert df.val_mae[stopped].isna().all() and not df.is_pareto[stopped].any()
    assert summary["matches_optuna_best_trials"]


def test_moasha_stops_by_both_objectives_and_resumes_its_rungs(tmp_path):
    """jobs/search.py --scheduler moasha on the smoke space (2 + 2 epochs: rungs at 1 and 2,
    both in the classifier phase, so each rung report carries the early MAE estimate)."""
    argv = ["--space", str(REPO / "search_spaces" / "digits.yaml"), "--storage-path",
            str(tmp_path), "--name", "mo", "--smoke-test", "--num-samples", "5",
            "--scheduler", "moasha", "--max-concurrent", "1"]
    summary = _run(*argv)
    exp = tmp_path / "mo"
    df = pd.read_parquet(exp / "trials.parquet").set_index("trial_id")
    state = yaml.safe_load((exp / "moasha_rungs.yaml").read_text())
    assert set(state["rungs"]) == {"1", "2"}
    assert set(state["rungs"]["1"]) == set(df.index)  # every trial was judged at rung 1
    stopped = {d["trial_id"] for d in state["decisions"] if d["action"] == "STOP"}
    assert stopped and stopped == set(df.index[df.status == "STOPPED"])
    assert (df.status[list(stopped)] == "STOPPED").all() and not df.is_pareto[list(stopped)].any()
    assert (df.status[~df.index.isin(stopped)] == "TERMINATED").all()
    # each decision was made on the estimate the trial reported at that rung
    for d in state["decisions"]:
        trial_dir = next(exp.glob(f"train_trial_{d['trial_id']}_*"))
        rows = [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines()]
        row = next(r for r in rows if r["training_iteration"] == d["milestone"])
        assert row["phase"] == "classifier" and row["mae_estimate_s"] > 0
        assert d["val_mae_early"] == row["val_mae_early"] < 1
        assert d["val_accuracy"] == row["val_accuracy"]
    # Optuna was told each stopped trial's estimate at the rung that stopped it, marked as such
    study = optuna.load_study(study_name="mo", storage=study_url(exp))
    told = sorted(t.values[1] for t in study.trials if t.user_attrs.get(STOPPED_EARLY))
    assert told == sorted(d["val_mae_early"] for d in state["decisions"] if d["action"] == "STOP")
    assert summary["matches_optuna_best_trials"]
    # a rerun restores the sweep and the scheduler's rungs; nothing is judged twice
    again = _run(*argv)
    assert again["resumed"]
    assert yaml.safe_load((exp / "moasha_rungs.yaml").read_text())["decisions"] == \
        state["decisions"]


def test_time_budget_flag_and_trials_cut_off_before_reporting(tmp_path):
    from types import SimpleNamespace

    from regene_ray.config import ConfigError
    from regene_ray.search.outputs import trials_table
    from regene_ray.search.space import load_search_space

    with pytest.raises(ConfigError, match="--time-budget-s 0.0 must be > 0"):
        _run("--space", str(REPO / "search_spaces" / "digits.yaml"), "--storage-path",
             str(tmp_path), "--name", "b", "--time-budget-s", "0")
    # what Tune's ResultGrid holds for a trial the budget ended before it ever reported
    space = load_search_space(REPO / "search_spaces" / "digits.yaml")
    cut = SimpleNamespace(config=None, metrics=None, error=None, path=str(tmp_path / "t"))
    ran = SimpleNamespace(config={k: d.extremes()[0] for k, d in space.search.items()},
                          metrics={"trial_id": "a", "val_accuracy": 0.5, "phase": "classifier",
                                   "epoch": 0, "timestamp": 1.0}, error=None,
                          path=str(tmp_path / "a"))
    table = trials_table([cut, ran], space)
    assert table.trial_id.tolist() == ["a"] and table.status.tolist() == ["STOPPED"]
    # a budget that ended before any trial reported: an empty table, and a message saying so
    empty = trials_table([cut], space)
    assert len(empty) == 0 and list(empty.columns) == list(table.columns)
    from regene_ray.search.outputs import write_outputs

    folder = tmp_path / "none-reported"
    folder.mkdir()
    optuna.create_study(study_name="n", storage=study_url(folder),
                        directions=["maximize", "minimize"])
    with pytest.raises(RuntimeError, match=r"no trial reported\): .*--time-budget-s"):
        write_outputs(empty, space, folder, "n", 0.005)
    assert len(pq.read_table(folder / "trials.parquet")) == 0


def test_trials_ask_for_a_gpu_only_when_told():
    from regene_ray.config import ConfigError
    from regene_ray.search.sweep import trial_resources

    assert trial_resources(1, 0) == {"cpu": 1}  # no "gpu" key at all: 0 has been read as a request
    assert trial_resources(2, 0.25) == {"cpu": 2, "gpu": 0.25}
    with pytest.raises(ConfigError, match="--gpus-per-trial -1 >= 0"):
        trial_resources(1, -1)


def test_moasha_adaptors_keep_their_own_sweeps_rungs(tmp_path):
    """Each MO-ASHA scheduler finds its rungs file from its own sweep's location (nothing
    process-wide): two sweeps in one process write their own, and one unpickled as
    Tuner.restore does reads its sweep's rungs back."""
    import pickle
    from types import SimpleNamespace

    from regene_ray.search.space import load_search_space
    from regene_ray.search.tuner import make_scheduler
    from regene_ray.storage import Storage

    space = load_search_space(REPO / "search_spaces" / "digits.yaml")
    a, b = (make_scheduler("moasha", space, Storage(tmp_path / n)) for n in "ab")
    restored = pickle.loads(pickle.dumps(a))  # as in tuner.pkl: before any result
    result = {"training_iteration": 1, "val_accuracy": 0.9, "val_mae_early": 0.2}
    assert a.on_trial_result(None, SimpleNamespace(trial_id="t1"), result) == "CONTINUE"
    assert b.on_trial_result(None, SimpleNamespace(trial_id="t2"), result) == "CONTINUE"
    for name, trial in (("a", "t1"), ("b", "t2")):
        rungs = yaml.safe_load((tmp_path / name / "moasha_rungs.yaml").read_text())["rungs"]
        assert rungs["1"] == {trial: [0.9, 0.2]}
    # t3 is dominated by t1, which the restored scheduler read back from a's file: stopped
    assert restored.on_trial_result(None, SimpleNamespace(trial_id="t3"), {
        **result, "val_accuracy": 0.8}) == "STOP"


def test_searcher_tells_optuna_of_a_restored_trial_it_never_asked_for(tmp_path):
    """Tune uploads the searcher's state and its trial list apart: a driver killed between the
    two resumes a trial the restored searcher never asked for. Its result still reaches the
    study, with the config it ran with."""
    from regene_ray.search.searcher import StudySearch
    from regene_ray.search.space import load_search_space
    from regene_ray.storage import Storage

    space = load_search_space(REPO / "search_spaces" / "digits.yaml")
    searcher = StudySearch(space, Storage(tmp_path), "s", num_samples=4)
    config = {k: d.extremes()[1] for k, d in space.search.items()}
    searcher.on_trial_complete("never-asked", {"config": config, "val_accuracy": 0.9,
                                               "val_mae": 0.1})
    searcher.on_trial_complete("no-config", None, error=True)  # nothing to tell: left out
    study = optuna.load_study(study_name="s", storage=study_url(tmp_path))
    assert [(t.params, t.values, t.state) for t in study.trials] == \
        [(config, [0.9, 0.1], optuna.trial.TrialState.COMPLETE)]


def test_restored_search_state_follows_the_trial_list(tmp_path):
    """Tune's three state files restored from different moments: the generator counts the
    list's trials; the limiter frees the slots of finished trials and of one the list never
    recorded (failed in the study, to be asked anew) and holds one for each unfinished trial;
    the study hears once of every trial (one told after the searcher state was saved is found by
    its Tune id, not asked again); results come flattened, as Tune hands them over, and a rerun
    of an errored trial (an id the limiter never gave out) still reaches the study."""
    from ray.tune.experiment import Trial
    from ray.tune.utils import flatten_dict

    from regene_ray.search.searcher import StudySearch, SweepSearch
    from regene_ray.search.space import load_search_space
    from regene_ray.storage import Storage

    space = load_search_space(REPO / "search_spaces" / "digits.yaml")
    search = SweepSearch(StudySearch(space, Storage(tmp_path), "s", num_samples=6), 3)
    limiter, base = search.searcher, search.searcher.searcher
    configs = {t: limiter.suggest(t) for t in ("done", "lost", "told")}  # all running here
    search._counter = 3
    base._ot_study.tell(base._ot_trials.pop("told"), [0.8, 0.2])  # the study newer than this
    unasked = {k: d.extremes()[1] for k, d in space.search.items()}  # what later/rerun ran

    def result(trial_id: str, acc: float, mae: float) -> dict:
        return {"val_accuracy": acc, "val_mae": mae, "phase": "decoder",
                "config": configs.get(trial_id, unasked)}

    def trial(trial_id: str, status: str, last: dict) -> Trial:
        t = Trial("train_trial", stub=True, config=last.get("config", {}), trial_id=trial_id)
        t.set_status(status)
        t.run_metadata.last_result = last
        return t

    def states() -> list:
        study = optuna.load_study(study_name="s", storage=study_url(tmp_path))
        return [(t.values, t.state.name) for t in study.trials]

    listed = [trial("done", Trial.TERMINATED, result("done", 0.9, 0.1)),
              trial("told", Trial.TERMINATED, result("told", 0.8, 0.2)),
              trial("later", Trial.RUNNING, {})]  # unknown to the state, running on
    search.reconcile(listed)
    assert search._counter == 3 and limiter.live_trials == {"later"}
    assert limiter.num_unfinished_live_trials == 1
    assert states() == [([0.9, 0.1], "COMPLETE"), (None, "FAIL"), ([0.8, 0.2], "COMPLETE")]
    search.reconcile(listed)  # nothing twice
    assert len(states()) == 3
    search.on_trial_complete("later", flatten_dict(result("later", 0.7, 0.3)))
    search.on_trial_complete("rerun", flatten_dict(result("rerun", 0.6, 0.4)))
    assert states()[3:] == [([0.7, 0.3], "COMPLETE"), ([0.6, 0.4], "COMPLETE")]
    study = optuna.load_study(study_name="s", storage=study_url(tmp_path))
    assert study.trials[3].params == study.trials[4].params == unasked
