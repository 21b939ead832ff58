"""A user's files are sacred: each failure found by the data-safety review (issue 10), tried
with real processes and real files.

Deletion: --overwrite on a project folder, a typo before a delete, a crafted path outside
--out. Exactly-once: foreign chunks, a stale worker, two drivers, another device kind, crash
windows, power-loss leftovers, a failed no-op resume. Honest exits: 20 repeated bad inputs,
read-only folders, a run that never learned. Doors: credentials never recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from masstools import JOB, REPO, generate, read_out

from regene_ray import mass
from regene_ray.mass.sinks import read_metadata, write_parquet_atomic
from regene_ray.ownership import LEASE_FILE, MARKER_FILE, Lease, LeaseError
from regene_ray.storage import Storage, StorageError, redact

TRAIN = REPO / "jobs" / "train.py"
SEARCH = REPO / "jobs" / "search.py"
K = 10
SAME = ["--count", "120", "--n-parents", "2", "--batch-size", "32", "--png", "--seed", "5"]


def run_job(script: Path, *args, cwd: Path = REPO, timeout: int = 300):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (what "untouched" means here)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}



@pytest.fixture(scope="module")
def finished(ray_cluster, tiny_run, tmp_path_factory) -> Path:
    """A finished mass generation (seed 5) to copy and damage."""
    out = tmp_path_factory.mktemp("safety") / "finished"
    generate(tiny_run, out, *SAME)
    return out


def copy_of(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# deletion: training runs


def test_overwrite_never_deletes_a_project_folder(tiny_run, tmp_path):
    """`cd myproject && jobs/train.py --out . --overwrite ...` used to delete the project,
    .git included, because a config.yaml made it look like a run."""
    project = tmp_path / "myproject"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "config.yaml").write_text("mine: true\n")
    (project / "src.py").write_text("print('precious')\n")
    before = snapshot(project)
    typo = run_job(TRAIN, "--out", ".", "--overwrite", "--dataset", "mnist", "--data-root",
                   tmp_path / "typo", cwd=project)
    smoke = run_job(TRAIN, "--out", ".", "--overwrite", "--smoke-test", cwd=project)
    for p in (typo, smoke):
        assert p.returncode == 2, p.stderr[-2000:]
        assert "Traceback" not in p.stderr
    assert "not a regene-ray run" in smoke.stderr
    # even a marker that claims the project's files: the current directory and a folder
    # holding .git are never deleted from
    (project / MARKER_FILE).write_text(json.dumps({
        "format": "regene-ray output v1", "kind": "run", "artefacts": ["src.py", "config.yaml"],
        "identity": {}, "created": "x"}))
    here = run_job(TRAIN, "--out", ".", "--overwrite", "--smoke-test", cwd=project)
    there = run_job(TRAIN, "--out", project, "--overwrite", "--smoke-test", cwd=tmp_path)
    assert here.returncode == 2 and "the current directory" in here.stderr
    assert there.returncode == 2 and "holding .git" in there.stderr
    (project / MARKER_FILE).unlink()
    assert snapshot(project) == before


def test_overwrite_validates_the_data_before_deleting(tiny_run, tmp_path):
    run = copy_of(tiny_run, tmp_path)
    before = snapshot(run)
    p = run_job(TRAIN, "--out", run, "--overwrite", "--dataset", "mnist", "--data-root",
                tmp_path / "typo")
    assert p.returncode == 2 and "mnist files not found" in p.stderr
    assert "--download to jobs/train.py" in p.stderr  # a flag that exists:
    assert "--download" in run_job(TRAIN, "--help").stdout
    assert snapshot(run) == before
    # an architecture that does not fit the data is found before the delete, too
    p = run_job(TRAIN, "--out", run, "--overwrite", "--smoke-test", "--depth", "9")
    assert p.returncode == 2 and "too small for depth 9" in p.stderr
    assert snapshot(run) == before


def test_overwrite_removes_only_the_earlier_runs_artefacts(tiny_run, tmp_path):
    run = copy_of(tiny_run, tmp_path)
    (run / "notes.txt").write_text("my notes")
    (run / "mine").mkdir()
    (run / "mine" / "plot.png").write_bytes(b"png")
    old_weights = (run / "classifier" / "weights.pt").read_bytes()
    p = run_job(TRAIN, "--smoke-test", "--out", run, "--overwrite", "--latent-dim", "16",
                "--device", "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / "mine" / "plot.png").read_bytes() == b"png"
    assert (run / "classifier" / "weights.pt").read_bytes() != old_weights
    assert json.loads((run / MARKER_FILE).read_text())["kind"] == "run"


def test_a_run_near_chance_is_flagged_and_refused_by_mass_generation(mnist_root, tmp_path):
    """`jobs/train.py --smoke-test` on MNIST learns nothing (600 images, 3 epochs): the run says
    so, and mass generation calls it unusable instead of suggesting a flag."""
    run = tmp_path / "mnist-smoke"
    p = run_job(TRAIN, "--smoke-test", "--dataset", "mnist", "--data-root", mnist_root, "--out",
                run, "--device", "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["near_chance"] is True and m["test_accuracy"] < 0.2
    assert "near chance" in p.stderr
    g = run_job(JOB, "--run", run, "--count", "10", "--out", tmp_path / "gen")
    assert g.returncode == 2 and "is unusable" in g.stderr and "lower --n-parents" not in g.stderr
    assert not (tmp_path / "gen").exists()


# deletion: mass generation


def test_overwrite_loads_the_new_checkpoints_before_deleting(finished, tiny_run, tmp_path):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    broken = copy_of(tiny_run, tmp_path, "broken-run")
    weights = broken / "decoder" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match="corrupt"):
        generate(broken, out, "--count", "50", "--overwrite")
    assert snapshot(out) == before


def test_a_crafted_path_outside_out_is_never_deleted(finished, tiny_run, tmp_path):
    victim = tmp_path / "victim" / "a.txt"
    victim.parent.mkdir()
    victim.write_text("not yours")
    out = copy_of(finished, tmp_path, "out")
    (out / mass.SUMMARY_FILE).unlink()
    src = out / mass.DATA_DIR / mass.chunk_name(0, 0)
    table, meta = pq.read_table(src), read_metadata(src)
    image = table.column("image").combine_chunks()
    crafted = pa.StructArray.from_arrays(
        [image.field("bytes"), pa.array(["../victim/a.txt"] * len(table), pa.string())],
        names=["bytes", "path"])
    table = table.set_column(table.schema.get_field_index("image"), "image", crafted)
    meta["chunk"] |= {"chunk": 99}  # a surplus chunk of this job, as finalize deletes them
    write_parquet_atomic(table, out / mass.CHUNKS_DIR / mass.chunk_name(0, 99), meta)
    with pytest.raises(mass.ForeignChunkError, match="not the PNG this job writes"):
        generate(tiny_run, out, *SAME, "--resume")
    assert victim.read_text() == "not yours"
    with pytest.raises(StorageError, match="not a path inside"):
        Storage(out).delete("../victim/a.txt")
    with pytest.raises(StorageError, match="not a path inside"):
        Storage(out).delete(str(victim))
    assert victim.read_text() == "not yours"


def test_an_interrupted_mass_overwrite_can_be_finished(finished, ray_cluster, tiny_run,
                                                       tmp_path):
    """--overwrite deletes what marks the output complete and whose it is first: cut short
    after that, the folder no longer looks finished, and --overwrite finishes the job."""
    out = copy_of(finished, tmp_path, "out")
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["artefacts"][:2] == [mass.SUMMARY_FILE, mass.JOB_FILE]
    for name in marker["artefacts"][:2]:
        (out / name).unlink()  # an overwrite killed right here
    with pytest.raises(FileExistsError, match="interrupted --overwrite"):
        generate(tiny_run, out, *SAME, "--resume")
    s = generate(tiny_run, out, *SAME[:-1], "6", "--overwrite")
    assert s.requested == 120 and mass.count_rows(out) == 120


def test_a_marker_that_names_anything_but_its_own_files_is_ignored(finished, tiny_run, tmp_path):
    out = copy_of(finished, tmp_path, "out")
    (out / "mine.txt").write_text("keep")
    marker = json.loads((out / MARKER_FILE).read_text())
    for forged in (["."], [".."], ["data/../.."], ["/etc"]):
        (out / MARKER_FILE).write_text(json.dumps(marker | {"artefacts": forged}))
        with pytest.raises(FileExistsError, match="without a regene-ray ownership marker"):
            generate(tiny_run, out, "--count", "10", "--overwrite")
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(StorageError, match="not a path inside"):
        Storage(out).delete_dir(".")


def test_the_neutral_cache_never_lands_on_a_run(tiny_run, tmp_path):
    from regene_ray.evaluation.neutral import claim_cache

    run = copy_of(tiny_run, tmp_path)
    before = snapshot(run)
    with pytest.raises(FileExistsError, match="not a neutral-classifier cache"):
        claim_cache(run)
    with pytest.raises(FileExistsError, match="'run' output, not a neutral"):
        claim_cache(run)  # (the run's own marker says what it is)
    assert snapshot(run) == before
    claim_cache(tmp_path / "cache")  # new: claimed
    claim_cache(tmp_path / "cache")  # an earlier cache: reused


# exactly-once


@pytest.mark.parametrize("folder", [mass.CHUNKS_DIR, mass.DATA_DIR])
def test_a_chunk_of_another_job_stops_the_job(finished, ray_cluster, tiny_run, tmp_path, folder):
    other = tmp_path / "seed6"
    generate(tiny_run, other, *SAME[:-1], "6")
    out = copy_of(finished, tmp_path, "out")
    (out / mass.SUMMARY_FILE).unlink()
    name = mass.chunk_name(3, 0)
    (out / folder).mkdir(exist_ok=True)
    shutil.copy(other / mass.DATA_DIR / name, out / folder / name)
    with pytest.raises(mass.ForeignChunkError, match=f"{folder}/{name} was written by another "
                       "job.*seed 6"):
        generate(tiny_run, out, *SAME, "--resume")
    # moved away as the message says, the resume completes exactly
    (out / folder / name).unlink()
    generate(tiny_run, out, *SAME, "--resume")
    assert read_out(out).equals(read_out(finished))


def test_a_stale_worker_cannot_write_into_a_replaced_job(tiny_run, tmp_path):
    """An actor of an earlier job (seed 0) that outlives an --overwrite by a seed-7 job must not
    add its chunk to the new output."""
    out = Storage(tmp_path / "out")
    spec0 = mass.MassSpec(run=str(tiny_run), count=20, classes=(0, 1), chunk_size=16,
                          batch_size=16)
    spec7 = mass.MassSpec(run=str(tiny_run), count=20, classes=(0, 1), chunk_size=16,
                          batch_size=16, seed=7)
    id0 = mass.job_metadata(spec0, mass.run_hashes(tiny_run))
    id7 = mass.job_metadata(spec7, mass.run_hashes(tiny_run))
    stale = mass.WriteChunks(str(tiny_run), out, metadata=id0, chunk_size=16, batch_size=16,
                             torch_threads=None)
    mass.prepare_output(out, id0, resume=False, overwrite=False)
    stale.write_chunk(0, 0)  # fine while the folder is its job's
    mass.prepare_output(out, id7, resume=False, overwrite=True)
    with pytest.raises(RuntimeError, match="now names another job"):
        stale.write_chunk(1, 0)
    assert out.list(mass.CHUNKS_DIR) == []


def test_resume_on_another_device_kind_or_torch_is_refused(tiny_run, tmp_path):
    out = Storage(tmp_path / "out")
    spec = mass.MassSpec(run=str(tiny_run), count=20, classes=(0,), chunk_size=16)
    cpu = mass.job_metadata(spec, mass.run_hashes(tiny_run), device="cpu")
    mass.prepare_output(out, cpu, resume=False, overwrite=False)
    cuda = mass.job_metadata(spec, mass.run_hashes(tiny_run), device="cuda")
    with pytest.raises(FileExistsError, match=r"device kind \(cpu -> cuda\)"):
        mass.prepare_output(out, cuda, resume=True, overwrite=False)
    other_torch = json.loads(json.dumps(cpu))
    other_torch["runtime"]["torch"] = "0.0.1"
    other_torch["job_key"] = mass.job_key(other_torch)
    with pytest.raises(FileExistsError, match=r"torch version"):
        mass.prepare_output(out, other_torch, resume=True, overwrite=False)
    assert mass.prepare_output(out, cpu, resume=True, overwrite=False)  # same kind: resumes


def test_crash_windows_are_repaired_exactly(finished, ray_cluster, tiny_run, tmp_path):
    """PNGs written but their Parquet file lost; an orphan PNG inside the kept range (a retried
    chunk that accepted fewer); a chunk in both staging and data (an object-store move cut
    short); an empty Parquet file (a power loss); a temporary file of a cut-short write."""
    out = copy_of(finished, tmp_path, "out")
    (out / mass.SUMMARY_FILE).unlink()
    rows = read_out(finished)
    kept_ids = set(rows["id"].to_pylist())
    (out / mass.DATA_DIR / mass.chunk_name(3, 0)).unlink()  # its PNGs stay behind
    rejected = next(i for i in range(3, 10_000, K) if i not in kept_ids and i < 32 * K)
    orphan = out / "png" / "3" / f"{rejected // K // 1000:05d}" / f"{rejected}.png"
    orphan.write_bytes(b"orphan")
    shutil.copy(out / mass.DATA_DIR / mass.chunk_name(4, 0),
                out / mass.CHUNKS_DIR / mass.chunk_name(4, 0))
    (out / mass.DATA_DIR / mass.chunk_name(5, 0)).write_bytes(b"")
    tmp = out / mass.CHUNKS_DIR / f".{mass.chunk_name(6, 1)}.tmp4242"
    tmp.write_bytes(b"half")
    stranger = out / "png" / "3" / "notes.txt"
    stranger.write_text("not a PNG of this job")
    s = generate(tiny_run, out, *SAME, "--resume")
    assert s.resumed and read_out(out).equals(rows)
    assert not orphan.exists() and not tmp.exists() and stranger.exists()
    stranger.unlink()
    assert {p.relative_to(out).as_posix() for p in (out / "png").rglob("*.png")} == \
        {r["path"] for r in rows["image"].to_pylist()}
    assert not list((out / mass.CHUNKS_DIR).glob("*.parquet"))


def test_a_failed_or_no_op_resume_keeps_a_finished_dataset_complete(finished, ray_cluster,
                                                                      tiny_run, tmp_path):
    out = copy_of(finished, tmp_path, "out")
    summary = (out / mass.SUMMARY_FILE).read_bytes()
    holder = Lease(Storage(out), "test").acquire()  # a live driver holds the folder
    try:
        with pytest.raises(LeaseError, match="in use by another driver"):
            generate(tiny_run, out, *SAME, "--resume")
    finally:
        holder.release()
    assert (out / mass.SUMMARY_FILE).read_bytes() == summary
    s = generate(tiny_run, out, *SAME, "--resume")
    assert s.streams == 0 and (out / mass.SUMMARY_FILE).is_file()
    assert read_out(out).equals(read_out(finished))
    assert not (out / LEASE_FILE).exists()


def test_two_drivers_on_one_out(tiny_run, tmp_path):
    """The second driver is refused with a message naming the first; the first finishes
    exactly. The first is paused (SIGSTOP) while the second tries, so the check never races
    the first one's end; a paused driver still holds its lease (its process is alive and its
    heartbeat is younger than the stale limit)."""
    out = tmp_path / "out"
    flags = ["--run", tiny_run, "--count", "1000", "--batch-size", "32", "--workers", "1",
             "--out", out]
    first = subprocess.Popen([sys.executable, str(JOB), *map(str, flags)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / LEASE_FILE).exists() and first.poll() is None \
                and time.time() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert (out / LEASE_FILE).exists(), "the first driver never took its lease"
        assert not (out / mass.SUMMARY_FILE).exists()
        second = run_job(JOB, *flags, "--resume")
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by another driver ({socket.gethostname()} pid {first.pid}" in \
            second.stderr
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    t = read_out(out)
    assert t.num_rows == 1000 == len(np.unique(t["id"].to_numpy()))
    assert json.loads((out / mass.SUMMARY_FILE).read_text())["requested"] == 1000
    assert not (out / LEASE_FILE).exists()


def test_drivers_racing_for_a_lease_get_it_once(tmp_path):
    """Eight threads race for a free lease, then for a stale one: exactly one wins each time.
    A lease file still being written (empty) counts as held."""
    st = Storage(tmp_path / "out")
    st.makedirs()
    for setup in ("free", "stale"):
        if setup == "stale":
            st.write_json(LEASE_FILE, {"holder": "gone", "host": "elsewhere", "pid": 1,
                                       "token": "t", "heartbeat": time.time() - 3600})
        leases = [Lease(st, f"racer {i}") for i in range(8)]
        barrier = threading.Barrier(len(leases))
        won, lost = [], []

        def race(lease, barrier=barrier, won=won, lost=lost):
            barrier.wait()
            try:
                won.append(lease.acquire())
            except LeaseError:
                lost.append(lease)

        threads = [threading.Thread(target=race, args=(x,)) for x in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 7, setup
        assert st.read_json(LEASE_FILE)["token"] == won[0].record["token"]
        won[0].release()
    (tmp_path / "out" / LEASE_FILE).write_bytes(b"")
    with pytest.raises(LeaseError, match="unreadable"):
        Lease(st, "test").acquire()


def test_the_workers_runtime_enters_the_identity_and_another_is_refused(ray_cluster, tiny_run,
                                                                       tmp_path):
    """The identity carries the runtime a worker reports (the driver may run another torch, or
    no GPU); an output made under another runtime is refused before anything is touched, and
    a worker asked for a device it cannot run says so."""
    from regene_ray.cluster import probed_runtime, start_probe

    here = probed_runtime(start_probe("cpu", None), "cpu")
    assert here == mass.runtime_identity("cpu")
    with pytest.raises(ValueError, match="--device cuda, but the workers run"):
        probed_runtime(start_probe("cuda", None), "cuda")  # no GPU asked for: none visible
    spec = mass.MassSpec(run=str(tiny_run), count=10, classes=(0,), chunk_size=16)
    ours = mass.job_metadata(spec, mass.run_hashes(tiny_run), runtime=here)
    theirs = mass.job_metadata(spec, mass.run_hashes(tiny_run),
                               runtime=here | {"torch": "0.0.1"})
    out = Storage(tmp_path / "out")
    mass.prepare_output(out, theirs, resume=False, overwrite=False)
    before = snapshot(tmp_path / "out")
    with pytest.raises(FileExistsError, match=r"torch version \(0.0.1 -> "):
        mass.inspect_output(out, ours, resume=True, overwrite=False)
    assert snapshot(tmp_path / "out") == before


def test_a_dead_drivers_lease_is_taken_over(tmp_path):
    st = Storage(tmp_path / "out")
    st.makedirs()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    st.write_json(LEASE_FILE, {"holder": "x", "host": socket.gethostname(), "pid": int(dead),
                               "token": "t", "job": "j", "since": "s",
                               "heartbeat": time.time()})
    with Lease(st, "test") as lease:  # its process is gone: taken over at once
        assert st.read_json(LEASE_FILE)["token"] == lease.record["token"]
    st.write_json(LEASE_FILE, {"holder": "elsewhere", "host": "another-host", "pid": 1,
                               "token": "t", "heartbeat": time.time() - 3600})
    with Lease(st, "test"):  # another host, but no heartbeat for an hour
        pass
    st.write_json(LEASE_FILE, {"holder": "elsewhere pid 1", "host": "another-host", "pid": 1,
                               "token": "t", "since": "then", "heartbeat": time.time()})
    with pytest.raises(LeaseError, match=r"elsewhere pid 1.*since then"):
        Lease(st, "test").acquire()



def test_the_leases_own_heartbeat_never_makes_its_folder_foreign(tiny_run, tmp_path):
    """A driver resumed after a pause longer than a heartbeat (SIGSTOP, a stalled VM) refreshes
    its lease at once, through a temporary file beside it, while its main thread checks the
    folder under the lease (prepare_output): the lease's temporary is the lease's, not a foreign
    file, and a resume's clean-up of cut-short writes leaves the live heartbeat's alone."""
    out = Storage(tmp_path / "out")
    identity = mass.job_metadata(mass.MassSpec(str(tiny_run), 10, (0, 1), chunk_size=8),
                                 mass.run_hashes(tiny_run))
    beating = tmp_path / "out" / f".{LEASE_FILE}.tmp{os.getpid()}"  # storage's temporary name
    with Lease(out, "mass generation") as lease:
        beating.write_text("{}")  # the heartbeat, caught between its write and its rename
        assert mass.prepare_output(out, identity, resume=False, overwrite=False,
                                   lease=lease) is False
        assert mass.prepare_output(out, identity, resume=True, overwrite=False,
                                   lease=lease) is True
        assert beating.exists()
        beating.unlink()


# honest exits


def test_bad_inputs_exit_2_with_one_line_every_time(tiny_run, tmp_path):
    """Bad inputs found after the run is read, some after Ray started: exit 2 every time, one
    error line, no traceback, no abort (exit 134 used to hit 3 in 10; 12 runs would all pass
    such a flake 1.4% of the time)."""
    cases = [
        (["--count", "10", "--weights", "0.3,0.7", "--n-parents", "3"], "gives 2 ratios"),
        (["--count", "10", "--classes", "3,12"], "[12] not in 0..9"),
        (["--count", "10", "--gpus-per-worker", "1"], "the Ray cluster has 0"),
        (["--count", "10", "--n-parents", "400"], "fewer eligible parents"),
    ]
    runs = [(i, *cases[i % len(cases)]) for i in range(12)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    for start in range(0, len(runs), 4):  # more at a time is no faster: each start is CPU-bound
        procs = [(subprocess.Popen([sys.executable, str(JOB), "--run", str(tiny_run), "--out",
                                    str(tmp_path / f"o{i}"), *flags], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True), i, message)
                 for i, flags, message in runs[start:start + 4]]
        for p, i, message in procs:
            err = p.communicate(timeout=300)[1]
            assert p.returncode == 2, (i, p.returncode, err[-2000:])
            assert "Traceback" not in err and "terminate called" not in err
            assert not (tmp_path / f"o{i}").exists()  # nothing touched
            assert [ln for ln in err.splitlines() if ln.startswith("error: ")] == \
                [next(ln for ln in err.splitlines() if message in ln)]


@pytest.fixture
def read_only(tmp_path):
    """A folder on a read-only filesystem (a tmpfs remounted ro), filled by `fill(dir)`."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (root)")

    def fill(src: Path | None = None) -> Path:
        if src is not None:
            shutil.copytree(src, mount / src.name)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        return mount

    yield fill
    subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (about 250 small files fit); yields (folder, grow) where grow() makes it
    64 MiB, as a user freeing space would."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (root)")
    yield mount, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(mount)],
                                        check=True)
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_in_a_worker_ends_in_one_line_and_resume_finishes(tiny_run, small_disk,
                                                                      tmp_path):
    """ENOSPC raised inside a Ray actor (PNG files of a chunk) ends the job with one last line
    naming the cause and saying how to continue; once there is space, --resume completes the
    exact output."""
    disk, grow = small_disk
    flags = ["--run", tiny_run, "--count", "600", "--png", "--batch-size", "64", "--seed", "3"]
    p = run_job(JOB, *flags, "--out", disk / "gen")
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1, p.stderr[-3000:]
    assert last.startswith("error (in a Ray worker): No space left on device: ") and \
        str(disk / "gen") in last and last.endswith(
            "run the same command with --resume to continue: finished output is kept"), last
    grow()
    p = run_job(JOB, *flags, "--out", disk / "gen", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    t = read_out(disk / "gen")
    assert t.num_rows == 600 == len(set(t["id"].to_pylist()))
    assert len(list((disk / "gen" / "png").rglob("*.png"))) == 600


@pytest.mark.parametrize("moment", ["generating", "shutting down"])
def test_sigterm_leaves_no_process_behind(tiny_run, tmp_path, moment):
    """A scheduler stopping the job with SIGTERM (mid-job, or as the job finished and its
    private Ray shuts down) leaves no process of it behind: Ray's DashboardAgent and
    RuntimeEnvAgent used to survive a SIGTERM that cut the shutdown short."""
    from raytools import session_pids

    out = tmp_path / "gen"
    proc = subprocess.Popen([sys.executable, str(JOB), "--run", str(tiny_run), "--count", "400",
                             "--batch-size", "32", "--chunk-size", "32", "--out", str(out)],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ready = (lambda: any((out / mass.CHUNKS_DIR).glob("*.parquet"))) if moment == "generating" \
        else (lambda: (out / mass.SUMMARY_FILE).exists())
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode in ((143,) if moment == "generating" else (0, 143)), err[-2000:]
    if proc.returncode == 143:
        assert err.strip().splitlines()[-1] == (
            "stopped by SIGTERM; run the same command with --resume to continue: finished "
            "output is kept")
    deadline = time.time() + 10
    while session_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    left = session_pids(proc.pid)
    assert not left, subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(map(str, left))],
                                    capture_output=True, text=True).stdout


def test_a_truncated_bank_is_named_by_the_run_folder(tiny_run, tmp_path):
    run = copy_of(tiny_run, tmp_path, "run")
    bank = run / "latent_bank.parquet"
    bank.write_bytes(bank.read_bytes()[:5000])
    p = run_job(JOB, "--run", run, "--count", "10", "--out", tmp_path / "gen")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: latent bank {bank} is corrupt"), last
    assert "regene-run-" not in p.stderr and not (tmp_path / "gen").exists()


def test_read_only_outputs_fail_before_any_work(tiny_run, read_only, tmp_path):
    ro = read_only()
    procs = {
        "train": run_job(TRAIN, "--smoke-test", "--out", ro / "run"),
        "mass": run_job(JOB, "--run", tiny_run, "--count", "10", "--out", ro / "gen"),
        "search": run_job(SEARCH, "--space", REPO / "search_spaces" / "digits.yaml",
                          "--storage-path", ro / "search", "--name", "s", "--smoke-test"),
    }
    for name, p in procs.items():
        assert p.returncode == 2, (name, p.stderr[-2000:])
        assert "not writable" in p.stderr or "Read-only file system" in p.stderr, name
        assert "Traceback" not in p.stderr, name
    assert "Started a local Ray" not in procs["search"].stderr  # refused before Ray starts


def test_a_read_only_run_folder_is_enough(ray_cluster, tiny_run, read_only, tmp_path):
    run = read_only(tiny_run) / tiny_run.name
    s = generate(run, tmp_path / "gen", "--count", "40", "--batch-size", "32")
    assert s.requested == 40 and mass.count_rows(tmp_path / "gen") == 40


# doors


def test_credentials_never_reach_the_recorded_identity(tiny_run):
    uri = "s3://AKIDEXAMPLE:wJalrSECRET@bucket/runs/tiny?endpoint_override=h:9000&secret_key=zz"
    assert redact(uri) == "s3://***@bucket/runs/tiny?..."
    spec = mass.MassSpec(run=uri, count=10, classes=(0,), chunk_size=16)
    thresholds = json.loads((tiny_run / "thresholds.json").read_text())
    identity = mass.job_metadata(spec, mass.run_hashes(tiny_run), thresholds=thresholds)
    text = json.dumps(identity)
    assert "SECRET" not in text and "AKIDEXAMPLE" not in text and "zz" not in text
    assert identity["spec"]["run"] == "s3://***@bucket/runs/tiny?..."
    assert redact("s3://AK:wJal/r+SECRET@b/k") == "s3://***@b/k"  # a secret holding a /
    with pytest.raises(StorageError) as e:  # pyarrow's own message quotes the URI
        Storage("s3://b/k?access_key=AKIDX&secret_key=SECRET123&endpoint_override=a b")
    assert "SECRET123" not in str(e.value) and "AKIDX" not in str(e.value)
