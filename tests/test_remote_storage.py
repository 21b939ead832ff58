"""Remote storage: an S3-compatible server (moto's server mode) started here on 127.0.0.1.

The Storage layer on S3 (atomic writes, listing, moves, refusals), then the two jobs as a user
runs them: mass generation with PNGs and a search, both writing to s3://, read back with
pyarrow's own S3 filesystem and compared with the same job's local output.
"""

from __future__ import annotations

import json
import os
import signal
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
from test_search_resume import LAST, resume_space, run_driver, saved_trials

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


def test_missing_bucket_is_named(s3):
    endpoint, _ = s3
    Storage(uri(endpoint, "fine")).check_reachable()
    st = Storage(f"s3://no-such-bucket/x?endpoint_override={endpoint}&scheme=http")
    with pytest.raises(StorageError, match=r"the bucket no-such-bucket does not exist, or these "
                       r"credentials cannot see it; create it first"):
        st.check_reachable()


def test_existing_output_on_s3_is_refused(s3, tiny_run):
    endpoint, _ = s3
    st = Storage(uri(endpoint, "refuse"))
    st.write_bytes("other.txt", b"not ours")
    spec = mass.MassSpec(run=str(tiny_run.resolve()), count=10, classes=(0,), chunk_size=16)
    identity = mass.job_metadata(spec, mass.run_hashes(spec.run))
    with pytest.raises(FileExistsError, match="s3://regene/refuse is a non-empty folder without a "
                       "regene-ray ownership marker"):
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
    """The run folder itself is read from S3 too (uploaded as jobs/train.py wrote it)."""
    endpoint, env = s3
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    fs = s3fs(endpoint)
    pafs.copy_files(str(tiny_run), "regene/runs/tiny", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    common = ["jobs/mass_generate.py", "--count", "90", "--classes", "1,3,7", "--png",
              "--chunk-size", "32", "--batch-size", "16", "--workers", "2"]
    t0 = time.time()
    _job([*common, "--run", uri(endpoint, "runs/tiny"), "--out", uri(endpoint, "gen")], env)
    t_s3 = time.time() - t0
    _job([*common, "--run", str(tiny_run), "--out", str(tmp_path / "local")], env)
    remote = _read_s3_output(endpoint, "gen")
    local = pa.concat_tables([pq.read_table(f) for f in
                              sorted((tmp_path / "local" / "data").glob("*.parquet"))]
                             ).sort_by("id")
    assert remote.num_rows == 90 == len(set(remote.column("id").to_pylist()))
    assert remote.drop_columns(["image"]).equals(local.drop_columns(["image"]))
    assert remote.column("image").to_pylist() == local.column("image").to_pylist()
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
    job = Storage(uri(endpoint, "gen")).read_json("job.json")
    local_job = json.loads((tmp_path / "local" / "job.json").read_text())
    assert job["spec"]["run"].startswith("s3://regene/runs/tiny?")
    assert job["checkpoint_sha256"] == local_job["checkpoint_sha256"]  # the same checkpoints
    # the dataset card read the run on S3 (job.json's record of it has no endpoint to reach it)
    card = Storage(uri(endpoint, "gen")).read_text("README.md")
    assert "license: cc-by-4.0" in card and "Classifier test accuracy" in card
    assert Storage(uri(endpoint, "gen")).read_json("croissant.json")["name"] == \
        "regene-generations-digits"
    print(f"mass generation to S3 (moto): {t_s3:.1f} s")
    # train on generated, streamed by Ray Data straight from the bucket: the same rows in the
    # same order as from the local twin, so the same losses and test accuracy
    fast = ["jobs/train_on_generated.py", "--run", str(tiny_run), "--depth", "8", "--width", "4",
            "--epochs", "1", "--batch-size", "32", "--threads", "1", "--device", "cpu",
            "--seeds", "0"]
    _job([*fast, "--generated", uri(endpoint, "gen"), "--out", str(tmp_path / "tog-s3")], env)
    _job([*fast, "--generated", str(tmp_path / "local"), "--out", str(tmp_path / "tog-local")],
         env)
    from_s3, from_local = (json.loads((tmp_path / d / "metrics.json").read_text())
                           for d in ("tog-s3", "tog-local"))
    s3_history, local_history = (m["per_seed"][0]["history"] for m in (from_s3, from_local))
    assert from_s3["trained_on"]["generated_rows"] == 90 == s3_history[0]["images"]
    assert [h["train_loss"] for h in s3_history] == [h["train_loss"] for h in local_history]
    assert from_s3["test_accuracy"] == from_local["test_accuracy"]


def test_mass_generation_refuses_existing_s3_output(s3, tiny_run):
    endpoint, env = s3
    st = Storage(uri(endpoint, "taken"))
    st.write_bytes("data/readme.txt", b"someone else's")
    proc = subprocess.run([sys.executable, "jobs/mass_generate.py", "--run", str(tiny_run),
                           "--count", "10", "--out", uri(endpoint, "taken")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--out s3://regene/taken is a non-empty folder without a regene-ray ownership marker" in proc.stderr


def _s3_trial_states(fs: pafs.S3FileSystem, exp: str) -> dict[str, tuple[str, int]]:
    """trial id -> (status, last training_iteration) in Tune's latest experiment state on S3."""
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(exp, allow_not_found=True))
                   if Path(i.path).name.startswith("experiment_state-"))
    return saved_trials(_s3_read(fs, files[-1]) or b"") if files else {}


def _s3_trial_dirs(fs: pafs.S3FileSystem, exp: str) -> dict[str, str]:
    """trial id -> its folder on S3 (train_trial_<id>_...)."""
    infos = fs.get_file_info(pafs.FileSelector(exp, allow_not_found=True))
    return {Path(i.path).name.split("_")[2]: i.path for i in infos
            if Path(i.path).name.startswith("train_trial_")}


def _s3_read(fs: pafs.S3FileSystem, path: str) -> bytes | None:
    try:
        return fs.open_input_stream(path).read()
    except (FileNotFoundError, OSError):
        return None


def _s3_iterations(fs: pafs.S3FileSystem, trial_dir: str) -> int:
    """The trial's reports so far, from its newest checkpoint on S3 (checkpoint_00000k is the
    (k + 1)-th report; trials upload them as they report, the driver its files only later)."""
    names = [Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(trial_dir))]
    return max((int(n.split("_")[1]) + 1 for n in names if n.startswith("checkpoint_")),
               default=0)


def _kill_mid_sweep_on_s3(args, env, fs, exp: str, log_path: Path):
    """Run the first driver and SIGKILL it once a trial has finished (its result.json on S3)
    and the next one is part-way: Tune's saved state holds a result of it, and its newest
    checkpoint leaves three epochs or more to run. Returns the finished trials' result.json
    bytes and the interrupted trial's id."""
    with open(log_path, "w") as log:
        first = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and first.poll() is None:
                states, dirs = _s3_trial_states(fs, exp), _s3_trial_dirs(fs, exp)
                done = {t: _s3_read(fs, f"{dirs[t]}/result.json") or b"" for t, (s, _)
                        in states.items() if s == "TERMINATED" and t in dirs}
                running = [t for t, (s, saved) in states.items() if s == "RUNNING" and saved >= 1
                           and t in dirs and _s3_iterations(fs, dirs[t]) <= LAST - 3]
                # a finished trial's result.json on S3 whole (the driver uploads it later)
                if done and all(r.count(b"\n") == LAST for r in done.values()) and running:
                    return done, running[0]
                time.sleep(0.2)
        finally:
            try:
                os.killpg(first.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            first.wait(timeout=30)
    return {}, None


def test_search_to_s3_killed_and_resumed_on_another_machine(s3, tmp_path):
    """The first driver is SIGKILLed mid-sweep, one trial finished and the next one part-way; a
    second one with an empty cache folder (as on another machine) resumes from S3 alone: its
    searcher reopens the downloaded study, the finished trial is not run again and the
    interrupted one continues from its epoch checkpoint."""
    endpoint, env = s3
    env = {**{k: v for k, v in env.items() if k != "RAY_ADDRESS"},
           "REGENE_CACHE_DIR": str(tmp_path / "cache-a"), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    args = [sys.executable, "jobs/search.py", "--space", str(resume_space(tmp_path)),
            "--num-samples", "2", "--max-concurrent", "1", "--storage-path",
            uri(endpoint, "search"), "--name", "sw", "--num-cpus", "2", "--scheduler", "none"]
    fs, exp = s3fs(endpoint), "regene/search/sw"
    done, in_flight = _kill_mid_sweep_on_s3(args, env, fs, exp, tmp_path / "first.log")
    assert in_flight is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert fs.get_file_info(f"{exp}/trials.parquet").type == pafs.FileType.NotFound
    assert fs.get_file_info(f"{exp}/optuna.sqlite").type == pafs.FileType.File

    env["REGENE_CACHE_DIR"] = str(tmp_path / "cache-b")  # "another machine": nothing cached
    out = run_driver(args, env, tmp_path / "second.log", timeout=400)
    assert "sweep folder: s3://regene/search/sw" in out
    trials = pq.read_table(f"{exp}/trials.parquet", filesystem=fs).to_pandas()
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"}
    assert trials.val_mae.notna().all() and trials.chosen.sum() == 1
    assert set(trials.trial_id) == {*done, in_flight}
    dirs = _s3_trial_dirs(fs, exp)
    for t, before in done.items():  # the finished trial was not run again
        assert _s3_read(fs, f"{dirs[t]}/result.json") == before, t
    # the interrupted trial continued from a checkpoint (the driver that uploads its
    # result.json may have missed the reports before the kill): a report after the restore
    # counts fewer iterations since it than in all, and every epoch is Tune's iteration
    # count - 1, which a restart from epoch 0 under the restored count would break
    rows = [json.loads(x) for x in _s3_read(fs, f"{dirs[in_flight]}/result.json").splitlines()]
    assert rows[-1]["epoch"] == LAST - 1 and any(
        r["iterations_since_restore"] < r["training_iteration"] for r in rows)
    assert all(r["epoch"] == min(r["training_iteration"], LAST) - 1 for r in rows)
    summary = Storage(uri(endpoint, "search/sw")).read_json("summary.json")
    assert summary["resumed"] is True and summary["matches_optuna_best_trials"] is True
    # the study that went back to S3 holds every trial, told with both objectives
    study_file = tmp_path / "study.sqlite"
    study_file.write_bytes(fs.open_input_stream(f"{exp}/optuna.sqlite").read())
    import optuna

    study = optuna.load_study(study_name="sw", storage=f"sqlite:///{study_file}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(tuple(t.values) for t in complete) == \
        sorted(map(tuple, trials[["val_accuracy", "val_mae"]].to_numpy().tolist()))
    best = yaml.safe_load(fs.open_input_stream(f"{exp}/best_config.yaml").read())
    chosen = trials.loc[trials.chosen].iloc[0]
    assert best["classifier"]["latent_dim"] == int(chosen["classifier.latent_dim"])
    names = {Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(exp, recursive=True))}
    assert {"pareto.png", "search_space.yaml", "tuner.pkl", "classifier_train_state.pt",
            "decoder_train_state.pt"} <= names  # trial checkpoints: the run's resume files


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
    proc = subprocess.run([sys.executable, "jobs/search.py", "--space", "search_spaces/digits.yaml",
                           "--storage-path", str(tmp_path), "--name", "../up"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--name '../up': use letters, digits" in proc.stderr
    assert "Started a local Ray" not in proc.stderr
