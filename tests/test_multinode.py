"""Multi-node runs on a real Ray cluster of three nodes (`ray.cluster_utils.Cluster`: a head and
two worker nodes, 1 CPU each), driven through the jobs' own entry points:

* a search whose trials land on more than one node (trials.parquet names each trial's node);
* a mass generation whose actors sit on more than one node (summary.json counts chunks per
  node), writing every row once to the shared output folder;
* a local output folder that one node does not see (a fourth node started in a private mount
  namespace with `unshare`, where the folder is an empty tmpfs) is refused by both jobs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from raytools import RAY, REPO, VENV_BIN, kill_session

from regene_ray import mass
from regene_ray.storage import StorageError

OBJECT_STORE = 100 * 1024**2


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job_multinode",
                                                  REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


search_job, mass_job = _load("search"), _load("mass_generate")


def _alive() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        assert len(_alive()) == 3
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_search_runs_trials_on_several_nodes(cluster, tmp_path):
    args = search_job.get_args_parser().parse_args([
        "--space", str(REPO / "search_spaces" / "digits.yaml"), "--smoke-test",
        "--num-samples", "4", "--max-concurrent", "2", "--storage-path", str(tmp_path / "sweeps"),
        "--name", "nodes", "--scheduler", "none"])
    summary = search_job.main(args)
    trials = pq.read_table(tmp_path / "sweeps" / "nodes" / "trials.parquet").to_pandas()
    assert summary["trials"] == 4 and set(trials.status) == {"TERMINATED"}
    nodes = {n["NodeID"] for n in _alive()}
    assert set(trials.node_id) <= nodes
    assert trials.node_id.nunique() > 1, trials[["trial_id", "node_id"]]


def test_mass_generation_spreads_over_nodes_and_writes_each_row_once(cluster, tiny_run,
                                                                      tmp_path):
    out = tmp_path / "gen"
    args = mass_job.get_args_parser().parse_args([
        "--run", str(tiny_run), "--out", str(out), "--count", "150", "--chunk-size", "24",
        "--batch-size", "12", "--workers", "2"])
    s = mass_job.main(args)
    per_node = s.extra["chunks_per_node"]
    assert len(per_node) > 1 and set(per_node) <= {n["NodeID"] for n in _alive()}
    table = pa.concat_tables([pq.read_table(f) for f in sorted((out / "data").glob("*.parquet"))])
    ids = table.column("id").to_pylist()
    assert len(ids) == 150 == len(set(ids)) == mass.count_rows(out)
    assert sum(s.accepted_per_class.values()) == 150
    assert not list((out / "_chunks").glob("*")) and not list(out.rglob(".*.tmp*"))
    assert not list(out.glob(".regene-shared-check-*"))  # the probe's marker is gone


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture
def blind_node(cluster, tmp_path):
    """A 4th node whose view of tmp_path/hidden is a private, empty tmpfs; yields that folder."""
    if not _unshare_works():
        pytest.skip("unprivileged user+mount namespaces (unshare -rm) are not available here")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    start = (f"mount -t tmpfs tmpfs {hidden} && exec {RAY} start --address={cluster.address} "
             f"--block --num-cpus 1 --object-store-memory {OBJECT_STORE} --disable-usage-stats")
    log = open(tmp_path / "blind-node.log", "w")
    node = subprocess.Popen(["unshare", "-rm", "sh", "-c", start], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while len(_alive()) < 4:
            if node.poll() is not None or time.time() > deadline:
                pytest.fail("the 4th node did not join: " +
                            (tmp_path / "blind-node.log").read_text()[-2000:])
            time.sleep(0.5)
        yield hidden
    finally:
        kill_session(node.pid)
        node.wait(timeout=30)
        log.close()
        deadline = time.time() + 60
        while len(_alive()) > 3 and time.time() < deadline:
            time.sleep(0.5)


def test_local_folder_one_node_cannot_see_is_refused(blind_node, tiny_run):
    out = blind_node / "gen"
    args = mass_job.get_args_parser().parse_args([
        "--run", str(tiny_run), "--out", str(out), "--count", "10"])
    with pytest.raises(StorageError, match=r"--out .*/hidden/gen is a local folder that 1 of "
                       r"the 4 nodes of this Ray cluster do not see: .*s3://bucket/prefix"):
        mass_job.main(args)
    assert not list(out.iterdir())  # no output, and the marker was removed
    args = search_job.get_args_parser().parse_args([
        "--space", str(REPO / "search_spaces" / "digits.yaml"), "--smoke-test",
        "--storage-path", str(blind_node / "sweeps"), "--name", "x"])
    with pytest.raises(StorageError, match="--storage-path .* do not see"):
        search_job.main(args)


def test_a_worker_that_cannot_see_the_output_says_so(tiny_run, tmp_path):
    """The same check inside the actor (nodes that join after the driver's probe)."""
    stage = mass.WriteChunks(tiny_run, tmp_path / "never-prepared", metadata={},
                             chunk_size=16, batch_size=16)
    import numpy as np

    with pytest.raises(RuntimeError, match=r"cannot see .*never-prepared/job.json, which the "
                       r"driver wrote: --out must be storage every node reaches"):
        stage({"label": np.array([0]), "chunk": np.array([0])})
    assert not (tmp_path / "never-prepared").exists()
