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


def _trial_states(exp: Path) -> dict[str, str]:
    """trial id -> status from Tune's latest experiment state file."""
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        data = json.loads(Path(files[-1]).read_text())
    except (OSError, ValueError):  # being rewritten
        return {}
    return {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in data["trial_data"]}


def _trial_dirs(exp: Path) -> dict[str, Path]:
    return {p.name.split("_")[2]: p for p in exp.glob("train_trial_*") if p.is_dir()}


def _digest(p: Path) -> str:
    return hashlib.sha256((p / "result.json").read_bytes()).hexdigest()


def _cmd(root: Path, scheduler: str, n: int) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "search.py"), "--space",
            str(REPO / "search_spaces" / "digits.yaml"), "--storage-path", str(root), "--name",
            "resume", "--smoke-test", "--num-samples", str(n), "--max-concurrent", "1",
            "--num-cpus", "2", "--scheduler", scheduler]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's own process group (the driver and the Ray it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# (scheduler, trials, finished before the kill): FIFO needs one finished trial and one
# interrupted; MO-ASHA four, so that a trial also starts after the resume and is judged on disk
CASES = [("none", 2, 1), ("moasha", 4, 2)]


def _kill_mid_sweep(cmd: list[str], exp: Path, env: dict, log: Path, n_done: int
                    ) -> tuple[dict[str, str], str | None, list[str]]:
    """Start the driver and SIGKILL it once `n_done` trials finished and another one running
    has an epoch checkpoint. Returns the finished trials' result.json digests, the interrupted
    trial and its result.json lines at the kill."""
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and first.poll() is None:
                states = _trial_states(exp)
                done = [t for t, s in states.items() if s in ("TERMINATED", "STOPPED")]
                dirs = _trial_dirs(exp)
                ckpt = [t for t, s in states.items() if s == "RUNNING" and t in dirs
                        and any(dirs[t].glob("checkpoint_*"))
                        and (dirs[t] / "result.json").is_file()]
                if len(done) >= n_done and ckpt:
                    text = (dirs[ckpt[0]] / "result.json").read_text()
                    lines = text.splitlines()[:text.count("\n")]  # whole lines only
                    return {t: _digest(dirs[t]) for t in done}, ckpt[0], lines
                time.sleep(0.1)
        finally:
            _kill_group(first)
    return {}, None, []


@pytest.mark.parametrize("scheduler, n, n_done", CASES, ids=[c[0] for c in CASES])
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path, scheduler, n, n_done):
    exp = tmp_path / "resume"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    finished, in_flight, lines = _kill_mid_sweep(_cmd(tmp_path, scheduler, n), exp, env,
                                                 tmp_path / "first.log", n_done)
    assert in_flight is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert not (exp / "trials.parquet").exists()  # the first driver did not finish
    rungs = exp / "moasha_rungs.yaml"
    before = yaml.safe_load(rungs.read_text())["decisions"] if scheduler == "moasha" else []

    second = subprocess.run(_cmd(tmp_path, scheduler, n), capture_output=True, text=True,
                            timeout=300, env=env, start_new_session=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["resumed"] and summary["matches_optuna_best_trials"]

    df = pd.read_parquet(exp / "trials.parquet")
    finished_status = {"none": {"TERMINATED"}, "moasha": {"TERMINATED", "STOPPED"}}[scheduler]
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
    # the interrupted trial continued in its own folder: the reports made before the kill are
    # still there, and its epoch counter never went back to 0 (a report whose checkpoint was
    # not saved yet may be made again, so epochs can repeat)
    rows = (dirs[in_flight] / "result.json").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in rows]
    assert rows[:len(lines)] == lines and len(rows) > len(lines)
    assert epochs[0] == 0 and all(b >= a for a, b in zip(epochs, epochs[1:], strict=False))
    stopped = df.status[df.trial_id == in_flight].item() == "STOPPED"
    assert stopped or epochs[-1] == 3  # 2 classifier + 2 decoder epochs (the smoke test)
