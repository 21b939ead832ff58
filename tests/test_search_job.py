"""End to end: a real local head (`ray start --head`, token auth on), `ray job submit` of
`jobs/search.py --smoke-test`, wait for SUCCEEDED, check the outputs, stop the head.

The head uses free ports (never Ray's defaults, another Ray may be running) and its own temp
dir, and runs in its own process session; teardown kills that session's processes only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from raytools import RAY, REPO, head_command, kill_session


@pytest.fixture(scope="module")
def ray_head():
    """A head on free ports; yields (dashboard url, env for clients)."""
    if RAY is None:
        pytest.skip("the ray CLI is not installed")
    cmd, env, temp_dir, ports = head_command("rrh")
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=REPO)
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.time() + 120
        while True:
            ok = subprocess.run([RAY, "job", "list", "--address", url], env=env,
                                capture_output=True, text=True, timeout=60).returncode == 0
            if ok:
                break
            if head.poll() is not None or time.time() > deadline:
                pytest.fail("ray head did not come up:\n" +
                            (Path(temp_dir) / "head.log").read_text()[-3000:])
            time.sleep(1)
        yield url, env
    finally:
        kill_session(head.pid)
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_search_submitted_as_ray_job(ray_head, tmp_path):
    url, env = ray_head
    job_id = f"search_{os.getpid()}_{int(time.time())}"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", url, "--working-dir", ".", "--submission-id",
         job_id, "--no-wait", "--", "python", "jobs/search.py", "--space",
         "search_spaces/digits.yaml", "--storage-path", str(tmp_path), "--name", "job",
         "--smoke-test", "--scheduler", "moasha"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline, status = time.time() + 300, ""
    while time.time() < deadline:  # `ray job status` ends with "Job '<id>' succeeded" when done
        proc = subprocess.run([RAY, "job", "status", "--address", url, job_id], env=env,
                              capture_output=True, text=True, timeout=60)
        status = (proc.stdout + proc.stderr).lower()
        if any(f"' {s}" in status for s in ("succeeded", "failed", "was stopped")):
            break
        time.sleep(2)
    logs = subprocess.run([RAY, "job", "logs", "--address", url, job_id], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert f"job '{job_id}' succeeded" in status, status + logs[-4000:]
    out = tmp_path / "job"
    for name in ("trials.parquet", "pareto.png", "best_config.yaml", "optuna.sqlite",
                 "moasha_rungs.yaml", "pareto.parquet", "hypervolume.png"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == 3 and set(df.status) <= {"TERMINATED", "STOPPED"}
    assert json.loads((out / "summary.json").read_text())["matches_optuna_best_trials"]
    rungs = yaml.safe_load((out / "moasha_rungs.yaml").read_text())["rungs"]
    assert set(rungs["1"]) == set(df.trial_id)  # MO-ASHA judged every trial at its first rung
    assert "Pareto front" in logs and "chosen: trial" in logs


def test_job_client_without_token_mode_is_refused(ray_head):
    """Documents the pitfall: without RAY_AUTH_MODE=token the client sends no token."""
    url, env = ray_head
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run([RAY, "job", "list", "--address", url], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "auth" in (proc.stdout + proc.stderr).lower()


def test_dashboard_refuses_requests_without_the_token(ray_head):
    """What the cluster configs rely on: with RAY_AUTH_MODE=token and a token file, the job
    server answers 401 without a token, 403 with a wrong one, 200 with the right one."""
    url, env = ray_head
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    def status(headers):
        req = urllib.request.Request(f"{url}/api/jobs/", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert status({}) == 401
    assert status({"Authorization": "Bearer " + "0" * 64}) == 403
    assert status({"Authorization": f"Bearer {token}"}) == 200
