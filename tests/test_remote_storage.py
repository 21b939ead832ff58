"""Remote storage: an S3-compatible server (moto's server mode) started here on 127.0.0.1.

The Storage layer on S3 (atomic writes, listing, moves, refusals), then the two jobs as a user
runs them: mass generation with PNGs and a search, both writing to s3://, read back with
pyarrow's own S3 filesystem and compared with the same job's local output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from raytools import REPO, free_ports, kill_session, wait_for_port

from regene_ray import mass
from regene_ray.storage import Storage, StorageError, resolve

pytest.importorskip("moto")
CREDS = {"AWS_ACCESS_KEY_ID": "regene-test", "AWS_SECRET_ACCESS_KEY": "regene-test",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint 'host:port', env for clients): a moto S3 server with bucket 'regene'."""
    (port,) = free_ports(1)
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    old = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    try:
        if not wait_for_port("127.0.0.1", port, 60, server):
            pytest.fail("moto server did not start: " + Path(log.name).read_text()[-2000:])
        endpoint = f"127.0.0.1:{port}"
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir("regene")
        yield endpoint, {**os.environ, **CREDS}
    finally:
        kill_session(server.pid)
        server.wait(timeout=30)
        log.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def uri(endpoint: str, key: str) -> str:
    return f"s3://regene/{key}?endpoint_override={endpoint}&scheme=http"


def s3fs(endpoint: str) -> pafs.S3FileSystem:
    """An independent reader: pyarrow's S3 filesystem, not regene_ray.storage."""
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")


# the storage layer


def test_storage_on_s3(s3):
    endpoint, _ = s3
    st = Storage(uri(endpoint, "unit"))
    assert str(st) == "s3://regene/unit" and st.is_empty() and not st.exists()
    st.write_json("a/job.json", {"x": 1})
    st.write_bytes("b.bin", b"\x00\x01")
    assert st.list(recursive=True) == ["a/job.json", "b.bin"] and st.list() == ["b.bin"]
    assert st.read_json("a/job.json") == {"x": 1} and st.is_file("b.bin")
    st.move("b.bin", "c/b.bin")
    assert not st.is_file("b.bin") and s3fs(endpoint).open_input_stream(
        "regene/unit/c/b.bin").read() == b"\x00\x01"
    st.delete("nothing-here")  # missing: no error
    st.delete_dir("a")
    assert st.list(recursive=True) == ["c/b.bin"]
    child = st.child("c")
    assert child.list() == ["b.bin"] and "endpoint_override" in child.uri
    import pickle

    assert pickle.loads(pickle.dumps(child)).read_bytes("b.bin") == b"\x00\x01"


def test_storage_resolves_and_refuses(tmp_path):
    fs, path = resolve(tmp_path / "x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    assert resolve(f"file://{tmp_path}")[1] == str(tmp_path)
    fs, path = resolve("gs://some-bucket/gen")  # resolved only: no GCS is reachable here
    assert type(fs).__name__ == "GcsFileSystem" and path == "some-bucket/gen"
    with pytest.raises(StorageError, match="unsupported scheme hdfx://"):
        Storage("hdfx://host/x")
    with pytest.raises(StorageError, match=r"a folder inside the bucket, e.g. s3://bkt/gen"):
        Storage("s3://bkt")
    with pytest.raises(StorageError, match="cannot open this storage URI"):
        Storage("s3://bkt/x?no_such_option=1")


def test_existing_output_on_s3_is_refused(s3, tiny_run):
    endpoint, _ = s3
    st = Storage(uri(endpoint, "refuse"))
    st.write_bytes("other.txt", b"not ours")
    spec = mass.MassSpec(run=str(tiny_run.resolve()), count=10, classes=(0,), chunk_size=16)
    identity = mass.job_metadata(spec, mass.run_hashes(spec.run))
    with pytest.raises(FileExistsError, match="s3://regene/refuse is a non-empty folder without "
                       "job.json"):
        mass.prepare_output(st, identity, resume=False, overwrite=False)
    assert st.read_bytes("other.txt") == b"not ours"  # nothing touched


# the jobs, as a user runs them


def _job(args: list[str], env: dict, timeout: int = 420) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _read_s3_output(endpoint: str, key: str) -> pa.Table:
    fs = s3fs(endpoint)
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(f"regene/{key}/data"))
             if i.path.endswith(".parquet")]
    return pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files]).sort_by("id")


def test_mass_generation_to_s3_matches_local(s3, tiny_run, tmp_path):
    endpoint, env = s3
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    common = ["jobs/mass_generate.py", "--run", str(tiny_run), "--count", "90", "--classes",
              "1,3,7", "--png", "--chunk-size", "32", "--batch-size", "16", "--workers", "2"]
    t0 = time.time()
    _job([*common, "--out", uri(endpoint, "gen")], env)
    t_s3 = time.time() - t0
    _job([*common, "--out", str(tmp_path / "local")], env)
    remote = _read_s3_output(endpoint, "gen")
    local = pa.concat_tables([pq.read_table(f) for f in
                              sorted((tmp_path / "local" / "data").glob("*.parquet"))]
                             ).sort_by("id")
    assert remote.num_rows == 90 == len(set(remote.column("id").to_pylist()))
    assert remote.drop_columns(["image"]).equals(local.drop_columns(["image"]))
    assert remote.column("image").to_pylist() == local.column("image").to_pylist()
    fs = s3fs(endpoint)
    for row in remote.column("image").to_pylist()[::7]:  # PNG files hold the Parquet bytes
        with fs.open_input_stream(f"regene/gen/{row['path']}") as f:
            assert f.read() == row["bytes"]
    pngs = [i for i in fs.get_file_info(pafs.FileSelector("regene/gen/png", recursive=True))
            if i.type == pafs.FileType.File]
    assert len(pngs) == 90  # surplus chunks' PNGs deleted
    assert fs.get_file_info("regene/gen/_chunks").type == pafs.FileType.NotFound or not \
        fs.get_file_info(pafs.FileSelector("regene/gen/_chunks", recursive=True))
    summary = Storage(uri(endpoint, "gen")).read_json("summary.json")
    assert summary["requested"] == 90 and summary["extra"]["out"] == "s3://regene/gen"
    print(f"mass generation to S3 (moto): {t_s3:.1f} s")


def test_mass_generation_refuses_existing_s3_output(s3, tiny_run):
    endpoint, env = s3
    st = Storage(uri(endpoint, "taken"))
    st.write_bytes("data/readme.txt", b"someone else's")
    proc = subprocess.run([sys.executable, "jobs/mass_generate.py", "--run", str(tiny_run),
                           "--count", "10", "--out", uri(endpoint, "taken")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--out s3://regene/taken is a non-empty folder without job.json" in proc.stderr


def test_search_to_s3_and_resume_elsewhere(s3, tmp_path):
    endpoint, env = s3
    env = {**{k: v for k, v in env.items() if k != "RAY_ADDRESS"},
           "REGENE_CACHE_DIR": str(tmp_path / "cache-a")}
    args = ["jobs/search.py", "--space", "search_spaces/digits.yaml", "--smoke-test",
            "--num-samples", "2", "--storage-path", uri(endpoint, "search"), "--name", "sw",
            "--num-cpus", "2"]
    proc = _job(args, env)
    assert "sweep folder: s3://regene/search/sw" in proc.stdout
    fs = s3fs(endpoint)
    trials = pq.read_table("regene/search/sw/trials.parquet", filesystem=fs).to_pandas()
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"}
    assert trials.val_mae.notna().all() and trials.chosen.sum() == 1
    best = yaml.safe_load(fs.open_input_stream("regene/search/sw/best_config.yaml").read())
    assert best["classifier"]["latent_dim"] == int(trials.loc[trials.chosen].iloc[0][
        "classifier.latent_dim"])
    names = {Path(i.path).name for i in fs.get_file_info(
        pafs.FileSelector("regene/search/sw", recursive=True))}
    assert {"optuna.sqlite", "pareto.png", "summary.json", "search_space.yaml",
            "tuner.pkl"} <= names
    assert any(n.startswith("experiment_state") for n in names)
    assert any(n == "trial_state.pt" for n in names)  # trial checkpoints went to S3 too
    # a driver on "another machine" (an empty cache) resumes from S3 alone
    env["REGENE_CACHE_DIR"] = str(tmp_path / "cache-b")
    _job(args, env)
    summary = Storage(uri(endpoint, "search/sw")).read_json("summary.json")
    assert summary["resumed"] is True and summary["trials"] == 2
    assert summary["matches_optuna_best_trials"] is True
    again = pq.read_table("regene/search/sw/trials.parquet", filesystem=fs).to_pandas()
    assert again.drop(columns=["time_total_s"]).equals(trials.drop(columns=["time_total_s"]))


def test_bad_storage_uris_stop_the_jobs_before_ray_starts(tiny_run, tmp_path):
    for job, flag, extra in [
        ("jobs/search.py", "--storage-path", ["--space", "search_spaces/digits.yaml", "--name",
                                              "x", "--smoke-test"]),
        ("jobs/mass_generate.py", "--out", ["--run", str(tiny_run), "--count", "10"]),
    ]:
        for bad, message in [("s3://only-a-bucket", "give a folder inside the bucket, e.g. "
                              "s3://only-a-bucket/gen"),
                             ("hdfx://host/x", "unsupported scheme hdfx://; use a local path, "
                              "s3:// or gs://")]:
            proc = subprocess.run([sys.executable, job, flag, bad, *extra], cwd=REPO,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert message in proc.stderr and "Started a local Ray" not in proc.stderr
