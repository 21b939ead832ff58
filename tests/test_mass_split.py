"""The split mass-generation pipeline (CPU mixing -> network actors -> CPU commit) on a real
local Ray head that advertises 2 fake GPUs (`ray.init(num_gpus=2)`; the networks run on CPU,
`--device cpu`): the same bytes as the fused stage for any layout and worker count, GPUs given to
the network stage only, a commit actor dying mid-chunk, and a killed split job resumed fused.
"""

from __future__ import annotations

import json
import sys

import faults
import numpy as np
import pytest
import torch
from masstools import JOB, generate, kill_after_chunks, read_out

from regene_ray import mass
from regene_ray.mass.plan import Pools, split_pools

FLAGS = ["--count", "300", "--n-parents", "2,3", "--batch-size", "40", "--png", "--seed", "7"]
FAKE_GPU = ["--gpus-per-worker", "0.5", "--device", "cpu"]


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=2, object_store_memory=200 * 1024**2,
             include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def fused(fake_gpu_cluster, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "fused"
    s = generate(tiny_run, out, *FLAGS, "--pipeline", "fused", "--workers", "1")
    assert s.extra["pipeline"] == "fused" and s.extra["stage_gpus"] == {"fused": [0.0]}
    return out


def pngs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "png").rglob("*.png")}


def test_split_on_gpu_actors_writes_the_fused_bytes(fused, tiny_run, tmp_path):
    out = tmp_path / "split"
    s = generate(tiny_run, out, *FLAGS, *FAKE_GPU, "--workers", "2")
    assert s.extra["pipeline"] == "split"  # auto: split whenever GPUs are requested
    # placement: only the network stage holds GPUs, half a GPU per actor as asked
    assert s.extra["stage_gpus"] == {"commit": [0.0], "mix": [0.0], "score": [0.5]}
    assert s.extra["cpu_workers"] == [1, 1]  # 4 CPUs - 2 network actors - 0.5 mixer
    t = read_out(out)
    assert t.num_rows == 300 and len(np.unique(t["id"].to_numpy())) == 300
    assert t.equals(read_out(fused))
    assert pngs(out) == pngs(fused) and len(pngs(out)) == 300
    names = lambda d: sorted(p.name for p in (d / "data").glob("*.parquet"))  # noqa: E731
    assert names(out) == names(fused)


def test_split_on_cpu_with_one_network_actor_writes_the_same_bytes(fused, tiny_run, tmp_path):
    out = tmp_path / "cpu"
    s = generate(tiny_run, out, *FLAGS, "--pipeline", "split", "--workers", "1",
                 "--cpu-workers", "1,2")
    assert s.extra["stage_gpus"] == {"commit": [0.0], "mix": [0.0], "score": [0.0]}
    assert read_out(out).equals(read_out(fused))


def test_split_started_while_the_run_is_read_writes_the_same_bytes(fused, tiny_run, tmp_path):
    """Pools that leave a CPU free (1 + 2 x 0.5 + 1 of 4) start before the run is read: the
    network actor reports the workers' runtime (no probe task), each stage gets its arguments
    from the planner's actor, and the bytes are the fused job's."""
    out = tmp_path / "early"
    s = generate(tiny_run, out, *FLAGS, *FAKE_GPU, "--workers", "1", "--cpu-workers", "1")
    assert s.extra["stream_started_early"] and s.streams == 1
    assert s.extra["stage_gpus"] == {"commit": [0.0], "mix": [0.0], "score": [0.5]}
    assert json.loads((out / "job.json").read_text())["runtime"]["device"] == "cpu"
    assert read_out(out).equals(read_out(fused))
    assert pngs(out) == pngs(fused)


def test_a_commit_actor_dying_mid_chunk_is_retried(fused, tiny_run, tmp_path, monkeypatch):
    marker = tmp_path / "died"
    faults.use_dying_stage(monkeypatch, (3, 0), marker, where="commit")
    out = tmp_path / "retried"
    generate(tiny_run, out, *FLAGS, *FAKE_GPU, "--workers", "2")
    assert marker.read_text().startswith("worker ")  # it died after its PNGs, before Parquet
    assert read_out(out).equals(read_out(fused))
    assert pngs(out) == pngs(fused)


def test_a_killed_split_job_resumes_with_the_fused_stage(fused, tiny_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(JOB), "--run", str(tiny_run), *FLAGS, "--pipeline", "split",
           "--workers", "1", "--chunk-size", "40", "--out", str(out)]
    kill_after_chunks(cmd, out, 2)
    assert not (out / mass.SUMMARY_FILE).exists(), "the job finished before it was killed"
    s = generate(tiny_run, out, *FLAGS, "--pipeline", "fused", "--workers", "2",
                 "--chunk-size", "40", "--resume")
    assert s.resumed
    ref = tmp_path / "ref"
    generate(tiny_run, ref, *FLAGS, "--pipeline", "fused", "--workers", "1", "--chunk-size", "40")
    assert read_out(out).equals(read_out(ref))
    assert pngs(out) == pngs(ref)


def test_split_pools_share_the_cpus():
    assert split_pools(16, (4, 4)) == Pools((4, 4), (1, 11), commit_cpus=1.0)
    assert split_pools(2, (1, 1)) == Pools((1, 1), (1, 1), commit_cpus=0.5)
    assert split_pools(4, (1, 2), (2, 3)) == Pools((1, 2), (2, 3), commit_cpus=0.5)
    assert split_pools(8, (1, 2), (2, 3)) == Pools((1, 2), (2, 3), commit_cpus=1.0)
    # an autoscaling cluster before its GPU nodes are up: they bring the network actors' CPUs
    assert split_pools(2, (2, 2), network_cpus=0) == Pools((2, 2), (1, 1), commit_cpus=1.0)
    with pytest.raises(ValueError, match="lower --workers.*--pipeline fused"):
        split_pools(2, (2, 2))


@pytest.mark.parametrize("flags, message", [
    (["--pipeline", "fused", "--cpu-workers", "2"], "--cpu-workers sizes the split pipeline"),
    (["--cpu-workers", "2"], "but this job runs the fused one"),  # auto without GPUs: fused
    (["--pipeline", "split", "--cpu-workers", "0"], "--cpu-workers '0': give N or MIN,MAX"),
    (["--pipeline", "threads"], "invalid choice: 'threads'"),
    (["--precision", "int8"], "invalid choice: 'int8'"),
])
def test_bad_pipeline_flags(tiny_run, tmp_path, capsys, flags, message):
    with pytest.raises((SystemExit, ValueError)) as e:
        generate(tiny_run, tmp_path / "o", "--count", "10", *flags)
    text = str(e.value) if e.type is ValueError else capsys.readouterr().err
    assert message in text
    assert not (tmp_path / "o").exists()


def test_half_precision_decoder_is_its_own_job(tiny_run):
    spec = mass.MassSpec(run=str(tiny_run.resolve()), count=10, classes=(0, 1))
    hashes = mass.run_hashes(spec.run)
    fp32 = mass.job_metadata(spec, hashes)
    bf16 = mass.job_metadata(mass.MassSpec(**{**spec.__dict__, "precision": "bf16"}), hashes)
    assert fp32["job_key"] != bf16["job_key"]
    with pytest.raises(ValueError, match="--precision 'int8'"):
        mass.MassSpec(run=spec.run, count=10, classes=(0,), precision="int8")
    threads = torch.get_num_threads()
    try:
        kw = dict(n_parents=(2,), seed=1, chunk_size=64, batch_size=32)
        a = mass.GenerateChunks(tiny_run, **kw).score(2, 0)
        b = mass.GenerateChunks(tiny_run, precision="bf16", **kw).score(2, 0)
        b2 = mass.GenerateChunks(tiny_run, precision="bf16", **kw).score(2, 0)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(b.images, b2.images)  # deterministic
    # the filter's first step sees the same codes in fp32 either way
    assert np.array_equal(a.latent_confidence, b.latent_confidence)
    decoded = a.latent_pass
    diff = np.abs(a.images[decoded].astype(int) - b.images[decoded].astype(int))
    assert 0 < diff.max() and diff.mean() < 4  # bf16 moves pixels by a few levels at most
