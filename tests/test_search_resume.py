"""Kill the sweep's driver mid-sweep (SIGKILL) and re-run it: the sweep finishes, finished trials
are not run again, and an interrupted trial continues from its epoch checkpoint."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLF_EPOCHS, DEC_EPOCHS = 2, 6  # a trial reports CLF_EPOCHS + DEC_EPOCHS times
LAST = CLF_EPOCHS + DEC_EPOCHS  # its last training_iteration


def resume_space(tmp_path: Path) -> Path:
    """digits.yaml at the smoke test's sizes, with 6 decoder epochs instead of 2: the trial
    interrupted below still has a few epochs to go when the kill lands, however busy the
    machine, and each costs a fraction of a second."""
    doc = yaml.safe_load((REPO / "search_spaces" / "digits.yaml").read_text())
    base = doc["base"]
    base["data"].update(max_train=600, max_test=200)
    base["classifier"].update(base_channels=8, max_channels=32)
    base["classifier_training"]["epochs"] = CLF_EPOCHS
    base["decoder_training"]["epochs"] = DEC_EPOCHS
    doc["search"]["classifier.latent_dim"] = {"choices": [16, 32]}
    doc["final"] = {}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def saved_trials(state: str | bytes) -> dict[str, tuple[str, int]]:
    """trial id -> (status, its last training_iteration) in a Tune experiment state file's
    text: what a resume starts from ({} for a file being rewritten)."""
    try:
        data = json.loads(state)
    except ValueError:
        return {}
    out = {}
    for trial, meta in data["trial_data"]:
        trial, meta = json.loads(trial), json.loads(meta)
        out[trial["trial_id"]] = (trial["status"],
                                  meta["last_result"].get("training_iteration") or 0)
    return out


def _trial_states(exp: Path) -> dict[str, tuple[str, int]]:
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    try:
        return saved_trials(Path(files[-1]).read_text()) if files else {}
    except OSError:  # being replaced
        return {}


def _trial_dirs(exp: Path) -> dict[str, Path]:
    return {p.name.split("_")[2]: p for p in exp.glob("train_trial_*") if p.is_dir()}


def _reports(trial_dir: Path) -> list[str]:
    """The trial's result.json lines written so far (whole lines only)."""
    path = trial_dir / "result.json"
    text = path.read_text() if path.is_file() else ""
    return text.splitlines()[:text.count("\n")]


def _digest(p: Path) -> str:
    return hashlib.sha256((p / "result.json").read_bytes()).hexdigest()


def _cmd(space: Path, root: Path, scheduler: str, n: int) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "search.py"), "--space", str(space),
            "--storage-path", str(root), "--name", "resume", "--num-samples", str(n),
            "--max-concurrent", "1", "--num-cpus", "2", "--scheduler", scheduler]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's own process group (the driver and the Ray it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def run_driver(cmd: list[str], env: dict, log: Path, timeout: float = 300) -> str:
    """Run a sweep's driver to the end and return its output (stdout and stderr, kept in `log`);
    fails the test, with the output's tail, if it exits non-zero or hangs (then its process
    group, Ray included, is killed)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            pytest.fail(f"the driver hung for {timeout:.0f} s:\n{log.read_text()[-8000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-8000:]
    return text


def _kill_mid_sweep(cmd: list[str], exp: Path, env: dict, log: Path, n_done: int
                    ) -> tuple[dict[str, str], str | None, list[str]]:
    """Start the driver and SIGKILL it once `n_done` trials finished and another one is part-way:
    Tune's saved state holds a result (and so a checkpoint) of it, and its result.json shows at
    least three epochs still to run. Returns the finished trials' result.json digests, the
    interrupted trial and its result.json lines at the kill."""
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and first.poll() is None:
                states, dirs = _trial_states(exp), _trial_dirs(exp)
                done = [t for t, (s, _) in states.items() if s in ("TERMINATED", "STOPPED")]
                for t, (status, saved) in states.items():
                    lines = _reports(dirs[t]) if t in dirs else []
                    if len(done) >= n_done and status == "RUNNING" and saved >= 1 and \
                            len(lines) <= LAST - 3:
                        return {d: _digest(dirs[d]) for d in done}, t, lines
                time.sleep(0.05)
        finally:
            _kill_group(first)
    return {}, None, []


# (scheduler, trials, finished before the kill): FIFO needs one finished trial and one
# interrupted; ASHA and MO-ASHA four, so that a trial also starts after the resume and is judged
# (MO-ASHA: against the rungs on disk; Tune's ASHA restarts with empty rungs)
CASES = [("none", 2, 1), ("asha", 4, 2), ("moasha", 4, 2)]


@pytest.mark.parametrize("scheduler, n, n_done", CASES, ids=[c[0] for c in CASES])
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path, scheduler, n, n_done):
    exp = tmp_path / "resume"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = _cmd(resume_space(tmp_path), tmp_path, scheduler, n)
    finished, in_flight, lines = _kill_mid_sweep(cmd, exp, env, tmp_path / "first.log", n_done)
    assert in_flight is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert not (exp / "trials.parquet").exists()  # the first driver did not finish
    rungs = exp / "moasha_rungs.yaml"
    before = yaml.safe_load(rungs.read_text())["decisions"] if scheduler == "moasha" else []

    run_driver(cmd, env, tmp_path / "second.log")
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["resumed"] and summary["matches_optuna_best_trials"]

    df = pd.read_parquet(exp / "trials.parquet")
    finished_status = {"TERMINATED"} | ({"STOPPED"} if scheduler != "none" else set())
    assert len(df) == n and set(df.status) <= finished_status
    if scheduler == "moasha":  # the rungs judged before the kill were kept, none judged twice
        after = yaml.safe_load(rungs.read_text())["decisions"]
        assert before and after[:len(before)] == before
        # trials that started after the resume were judged too (every trial reaches rung 1)
        assert {d["trial_id"] for d in after if d["milestone"] == 1} == set(df.trial_id)
        judged = [(d["trial_id"], d["milestone"]) for d in after]
        assert len(judged) == len(set(judged))
        assert set(df.trial_id[df.status == "STOPPED"]) == \
            {d["trial_id"] for d in after if d["action"] == "STOP"}
    dirs = _trial_dirs(exp)
    assert len(dirs) == n  # no trial was added twice
    for t, digest in finished.items():  # finished trials were not run again
        assert _digest(dirs[t]) == digest, t
    # the interrupted trial continued from a checkpoint, in its own folder: its reports from
    # before the kill are kept; one after the restore counts fewer iterations since the restore
    # than in all; and every epoch is Tune's iteration count - 1 (a restart from epoch 0 under
    # the restored count would break that; a trial restored after its last epoch repeats it)
    rows = _reports(dirs[in_flight])
    assert rows[:len(lines)] == lines and len(rows) > len(lines)
    rows = [json.loads(r) for r in rows]
    assert any(r["iterations_since_restore"] < r["training_iteration"] for r in rows)
    assert all(r["epoch"] == min(r["training_iteration"], LAST) - 1 for r in rows)
    stopped = df.status[df.trial_id == in_flight].item() == "STOPPED"
    assert stopped or rows[-1]["epoch"] == LAST - 1


def _make_searcher_state_stale(exp: Path, finished: str) -> None:
    """Rewrite the search algorithm's saved state (search_gen_state-*.json, a cloudpickled dict)
    as it was while `finished` was the only trial: one trial created, and the concurrency
    limiter counting it as running. Tune writes this file and the trial list
    (experiment_state-*.json) separately and uploads them one by one, so a driver killed between
    the two leaves exactly this beside a newer trial list."""
    import ray.cloudpickle as cloudpickle

    [path] = exp.glob("search_gen_state-*.json")
    state = cloudpickle.loads(path.read_bytes())
    limiter = state["name:ConcurrencyLimiter"]
    state["counter"] = 1
    limiter.update(live_trials={finished}, num_unfinished_live_trials=1)
    path.write_bytes(cloudpickle.dumps(state))


def test_resume_reconciles_a_searcher_state_older_than_the_trial_list(tmp_path):
    """The searcher state is older than the trial list it is restored beside: the resumed sweep
    follows the trial list (the interrupted trial runs on, no third trial starts, the finished
    one is not rerun) instead of waiting forever for the limiter to free the finished trial's
    slot, and Optuna is told every trial once."""
    exp = tmp_path / "resume"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = _cmd(resume_space(tmp_path), tmp_path, "none", 2)
    finished, in_flight, _ = _kill_mid_sweep(cmd, exp, env, tmp_path / "first.log", 1)
    assert in_flight is not None, (tmp_path / "first.log").read_text()[-3000:]
    [done] = finished
    _make_searcher_state_stale(exp, done)

    out = run_driver(cmd, env, tmp_path / "second.log", timeout=240)
    assert "saved at another moment than the trial list" in out
    df = pd.read_parquet(exp / "trials.parquet")
    assert set(df.trial_id) == {done, in_flight} and set(df.status) == {"TERMINATED"}
    assert _digest(_trial_dirs(exp)[done]) == finished[done]
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["resumed"] and summary["matches_optuna_best_trials"]
    import optuna

    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{exp / 'optuna.sqlite'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
