"""Autoscaling on one machine: Ray's fake_multinode provider with cluster/local-fake.yaml.

The head (2 CPUs, no GPU) is started as ../shared/DESIGN.md describes: `AUTOSCALER_UPDATE_INTERVAL_S=1
RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=<copy of local-fake.yaml with
provider.gcs_address = <node ip>:<port>>` in its own process session, on free ports; teardown
ends that session only. `jobs/mass_generate.py --gpus-per-worker 1` is then run against it as a
user would. Without the flag the actors ask for no GPU and no node is launched; with it they
ask for a GPU, which only the fake `ray.worker.gpu` nodes (min 0, max 2) have, so the autoscaler
must launch them; after the job they idle and are released after the idle timeout. A separate driver records the node count every 0.5 s; the test asserts both
directions and the exact row count.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from raytools import RAY, REPO, head_command, kill_session

POLLER = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"t": time.time(), "nodes": len(nodes),
                      "gpu_nodes": sum(1 for n in nodes if n["Resources"].get("GPU")),
                      "ids": sorted(n["NodeID"] for n in nodes)}), flush=True)
    time.sleep(0.5)
"""


def _timeline(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # Ray's own log lines
    return rows


@pytest.fixture
def fake_cluster(tmp_path):
    """(gcs address, env for clients, timeline file, idle timeout s) of a fresh fake cluster."""
    if RAY is None:
        pytest.skip("the ray CLI is not installed")
    import ray

    ip = ray.util.get_node_ip_address()
    cmd, env, temp_dir, ports = head_command(
        "rra", "--autoscaling-config", str(tmp_path / "fake.yaml"), num_cpus=None)
    gcs = ports["gcs"]
    cfg = yaml.safe_load((REPO / "cluster" / "local-fake.yaml").read_text())
    cfg["provider"]["gcs_address"] = f"{ip}:{gcs}"
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump(cfg))
    head_env = {**env, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=head_env,
                            start_new_session=True, cwd=tmp_path)
    timeline = tmp_path / "nodes.jsonl"
    poll_out = open(timeline, "w")
    poller = None
    try:
        deadline = time.time() + 120
        while poller is None or not _timeline(timeline):
            if head.poll() is not None or time.time() > deadline:
                pytest.fail("the fake cluster's head did not come up:\n" +
                            (tmp_path / "head.log").read_text()[-3000:])
            if poller is None or poller.poll() is not None:
                time.sleep(2)
                poller = subprocess.Popen([sys.executable, "-c", POLLER, f"{ip}:{gcs}"], env=env,
                                          stdout=poll_out, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
            time.sleep(0.5)
        yield f"{ip}:{gcs}", env, timeline, cfg["idle_timeout_minutes"] * 60
    finally:
        if poller is not None:
            kill_session(poller.pid)
        kill_session(head.pid)
        head.wait(timeout=30)
        log.close()
        poll_out.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _generate(address: str, env: dict, run: Path, out: Path, *flags: str) -> None:
    proc = subprocess.run(
        [sys.executable, "jobs/mass_generate.py", "--run", str(run), "--count", "120",
         "--out", str(out), "--address", address, "--chunk-size", "24", "--batch-size", "12",
         *flags], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-5000:]


def test_gpu_workers_scale_up_for_the_job_and_down_when_idle(fake_cluster, tiny_run, tmp_path):
    address, env, timeline, idle_s = fake_cluster
    time.sleep(3)  # a few samples of the idle cluster
    assert {r["nodes"] for r in _timeline(timeline)} == {1}  # min_workers 0: the head only
    # CPU work asks for no GPU: it runs on the head and no GPU node is launched
    t_cpu = time.time()
    _generate(address, env, tiny_run, tmp_path / "cpu", "--workers", "1")
    time.sleep(3)  # the autoscaler updates every second: it would have reacted by now
    assert {r["nodes"] for r in _timeline(timeline) if r["t"] >= t_cpu} == {1}
    assert json.loads((tmp_path / "cpu" / "summary.json").read_text())["requested"] == 120
    # GPU work: --gpus-per-worker 1 (fake GPUs, so the actors compute on CPU)
    out = tmp_path / "gen"
    t_start = time.time()
    _generate(address, env, tiny_run, out, "--gpus-per-worker", "1", "--device", "cpu",
              "--workers", "2")
    t_end = time.time()
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the scale-down
        after = [r for r in _timeline(timeline) if r["t"] > t_end]
        if after and after[-1]["nodes"] == 1:
            break
        time.sleep(1)
    rows = _timeline(timeline)
    during = [r for r in rows if t_start <= r["t"] <= t_end]
    after = [r for r in rows if r["t"] > t_end]
    print("node count over time (s since the job started: nodes):",
          [(round(r["t"] - t_start, 1), r["nodes"]) for r in rows[::4]])
    # up: the GPU demand launched fake GPU worker nodes (max 2)
    assert max(r["nodes"] for r in during) > 1
    assert 1 <= max(r["gpu_nodes"] for r in during) <= 2
    # the job finished with exactly `count` rows, each once, all made on GPU worker nodes
    table = pa.concat_tables([pq.read_table(f) for f in sorted((out / "data").glob("*.parquet"))])
    assert table.num_rows == 120 == len(set(table.column("id").to_pylist()))
    summary = json.loads((out / "summary.json").read_text())
    head_id = rows[0]["ids"][0]
    workers_used = set(summary["extra"]["chunks_per_node"])
    assert workers_used and head_id not in workers_used
    assert workers_used <= set().union(*(r["ids"] for r in during))
    # down: after the idle timeout the worker nodes are released, the head stays
    assert after and after[-1]["nodes"] == 1 and after[-1]["ids"] == [head_id]
    down_at = next(r["t"] for r in after if r["nodes"] == 1)
    assert down_at - t_end <= idle_s + 60  # idle timeout + a few autoscaler rounds + draining
    print(f"scaled down {down_at - t_end:.1f} s after the job ended (idle timeout {idle_s:.0f} s)")
