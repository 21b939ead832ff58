"""Mass generation: the batch transform without Ray, and the job on a real local Ray cluster.

Exact count, unique ids, convex weights, provenance, thresholds, independence of the worker
count, a worker dying mid-batch, a killed driver resumed, refusing another job's output, and
the messages of bad flags.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import faults
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import load_job
from masstools import JOB, generate, job, kill_after_chunks, read_out
from PIL import Image

from regene_ray import mass
from regene_ray.classifier import Classifier
from regene_ray.decoder import Decoder
from regene_ray.generator import to_uint8
from regene_ray.latent_bank import LatentBank

K = 10  # classes of the digits run
export_job = load_job("export")


def check_output(run: Path, out: Path, count: int, classes: list[int], n_parents: list[int]):
    t = read_out(out)
    assert t.num_rows == count == mass.count_rows(out)
    ids = t["id"].to_numpy()
    assert len(np.unique(ids)) == count
    labels = t["label"].to_numpy()
    assert (labels == ids % K).all()
    per_class = {c: int((labels == c).sum()) for c in classes}
    assert per_class == mass.quotas(count, classes)
    assert set(np.unique(labels)) <= set(classes)
    w = t["weights"].to_pylist()
    p = t["parent_ids"].to_pylist()
    n = t["n_parents"].to_numpy()
    assert all(len(wi) == len(pi) == ni for wi, pi, ni in zip(w, p, n, strict=True))
    assert set(n.tolist()) <= set(n_parents)
    np.testing.assert_allclose([sum(wi) for wi in w], 1.0, atol=1e-5)
    assert min(min(wi) for wi in w) >= 0
    # parents are distinct codes of the row's own class
    bank = LatentBank.load(run / "latent_bank.parquet")
    bank_label = dict(zip(bank.ids.tolist(), bank.labels.tolist(), strict=True))
    assert all(len(set(pi)) == len(pi) and {bank_label[x] for x in pi} == {lab}
               for pi, lab in zip(p, labels.tolist(), strict=True))
    thr = json.loads((run / "thresholds.json").read_text())
    assert (t["latent_confidence"].to_numpy() >= np.array(thr["latent"])[labels]).all()
    assert (t["image_confidence"].to_numpy() >= np.array(thr["image"])[labels]).all()
    summary = json.loads((out / mass.SUMMARY_FILE).read_text())
    assert summary["requested"] == count
    assert summary["accepted_per_class"] == {str(c): q for c, q in per_class.items()}
    assert summary["candidates_tried"] >= count and summary["images_per_s"] > 0
    assert set(summary["acceptance"]) == {"latent_step", "image_step_given_latent", "both_steps"}
    assert not list((out / mass.CHUNKS_DIR).glob("*.parquet"))  # staging emptied
    return t


# pure helpers


@pytest.mark.parametrize("text", ["1e6", "1000000", "1_000_000", " 1E6 ", "1.0e6"])
def test_parse_count_accepts(text):
    assert mass.parse_count(text) == 1_000_000


@pytest.mark.parametrize("text,msg", [
    ("0", "at least 1"), ("-5", "at least 1"), ("1.5", "fraction"), ("1e-3", "fraction"),
    ("nan", "not a number"), ("inf", "not a number"), ("abc", "not a number"), ("", "not a number"),
])
def test_parse_count_rejects(text, msg):
    with pytest.raises(ValueError, match=msg):
        mass.parse_count(text)


def test_quotas_balanced_remainder_spread():
    q = mass.quotas(103, [2, 5, 7, 9])
    assert q == {2: 26, 5: 26, 7: 26, 9: 25} and sum(q.values()) == 103


def test_quotas_in_proportion_to_class_weights():
    train = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # MNIST's 60k
    assert mass.quotas(60000, range(10), train) == dict(enumerate(train))  # exact at the sum
    q = mass.quotas(1000, range(10), train)
    assert sum(q.values()) == 1000
    assert all(abs(q[c] - 1000 * w / 60000) < 1 for c, w in enumerate(train))
    assert mass.quotas(7, [4, 8], [1, 1]) == {4: 4, 8: 3}  # ties: the earlier class
    assert mass.quotas(10, [0, 1, 2], [1, 2, 7]) == {0: 1, 1: 2, 2: 7}
    with pytest.raises(ValueError, match="one per class"):
        mass.quotas(10, [0, 1], [1])


def test_auto_chunk_size():
    assert mass.auto_chunk_size(1_000_000, 10, 256) == 16 * 256  # capped at 16 batches
    assert mass.auto_chunk_size(100_000, 10, 256) == 5 * 256  # >= 8 chunks per class
    assert mass.auto_chunk_size(1000, 10, 256) == 256  # at least one batch


def test_cutoffs():
    info = lambda c, k, a: mass.ChunkInfo(c, k, 10, 10, a)  # noqa: E731
    quota = {0: 15, 1: 5}
    done = {(0, 0): info(0, 0, 8), (1, 0): info(1, 0, 9)}
    assert mass.cutoffs(done, quota) is None
    done[(0, 2)] = info(0, 2, 9)  # a gap at k=1 blocks the cutoff
    assert mass.cutoffs(done, quota) is None
    done[(0, 1)] = info(0, 1, 8)
    assert mass.cutoffs(done, quota) == {0: (1, 7), 1: (0, 5)}


def test_planner_hands_out_chunks_until_the_quotas_are_reached():
    """The planner serves the class furthest from its quota, waits while the chunks in flight
    should suffice, and is complete once chunks 0..k* of every class hold the quota."""
    info = lambda c, k, a: mass.ChunkInfo(c, k, 10, 10, a)  # noqa: E731
    p = mass.ChunkPlanner({0: 15, 1: 5}, 10)  # no prior: 0.5 until a class is measured
    taken = [p.take() for _ in range(8)]
    assert taken == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (0, 4), mass.WAIT]
    p.record(info(0, 1, 8))  # chunk 1 lands before chunk 0: no cutoff yet
    assert p.rate(0) == 0.8 and p.take() == mass.WAIT
    p.record(info(0, 0, 7))
    p.record(info(1, 1, 3))  # class 1 measured at 0.3: one more chunk on its way
    assert p.classes[0].done and not p.complete() and p.take() == (1, 2)
    p.record(info(1, 0, 4))
    assert p.complete() and p.take() is None
    assert p.in_flight() == 4  # surplus chunks still running: the stream waits for them
    assert mass.cutoffs(p.done, p.quota) == {0: (1, 8), 1: (1, 1)}
    # the prior plans a big class: 112 chunks at 0.9 cover 100,000 with a 2-sigma margin
    big = mass.ChunkPlanner({0: 100_000}, 1000, prior=0.9)
    taken = [big.take() for _ in range(113)]
    assert taken[:112] == [(0, k) for k in range(112)] and taken[112] == mass.WAIT
    assert big.expected_chunks() == 112 and big.work_slots(2) == 2 * 112 + 2 * 2 + 2


def test_planner_resumes_retries_and_refuses_hopeless_classes():
    info = lambda c, k, a, t=10: mass.ChunkInfo(c, k, t, t, a)  # noqa: E731
    done = {(0, 1): info(0, 1, 9)}  # a resume found chunk 1 but not chunk 0
    p = mass.ChunkPlanner({0: 12}, 10, done=done, prior=0.9)
    assert p.take(slot=7) == (0, 0)  # the gap first
    assert p.take(slot=7) == (0, 0)  # a retried slot gets its chunk again
    assert p.take(slot=8) == mass.WAIT  # 9 landed + 9 expected: enough in flight
    p.record(info(0, 0, 9))
    p.record(info(0, 0, 9))  # a retried commit reports twice: counted once
    assert p.classes[0].accepted == 18 and p.complete()
    hopeless = mass.ChunkPlanner({0: 5}, 10, done={(0, k): info(0, k, 0) for k in range(8)})
    with pytest.raises(ValueError, match="none of 80 candidates passed both filter steps"):
        hopeless.check()


def test_the_planners_actor_waits_for_its_planner_and_gives_a_waiting_slot_up():
    """PlannerOnRay (the actor's class, called here without Ray): a take waits for the
    planner without limit, then for a chunk in flight at most wait_s, or TAKE_WAIT_CHUNKS times
    the median chunk so far, timed from its latest take (its slot is then a no-op: None);
    finish() turns every take and every wait for stage arguments into None."""
    import asyncio
    import dataclasses
    import statistics

    from regene_ray.mass.planner_actor import TAKE_WAIT_CHUNKS, PlannerOnRay

    def landed(label, chunk):
        return dataclasses.asdict(mass.ChunkInfo(label, chunk, tried=10, latent_passed=10,
                                                 accepted=1))

    async def scenario():
        board = PlannerOnRay()
        early = asyncio.create_task(board.take(0, wait_s=0.05))
        await asyncio.sleep(0.2)
        assert not early.done()  # no planner yet: it waits, however long
        await board.start(mass.ChunkPlanner({0: 5}, 10, prior=1.0))
        assert await early == (0, 0)
        assert await board.take(1, wait_s=0.05) is None  # WAIT for chunk (0, 0): gives up
        assert board.wait_limit(0.05) == 0.05  # no chunk has landed yet
        await asyncio.sleep(0.3)
        await board.record([landed(0, 0)])  # it took 0.3 s or more, take to record
        assert board.wait_limit(0.05) >= TAKE_WAIT_CHUNKS * 0.3
        assert await board.take(3) == (0, 1)  # 1 accepted of 5: more chunks to run
        first = board.taken_at[(0, 1)]
        await asyncio.sleep(0.01)
        assert await board.take(3) == (0, 1)  # the same slot again (a retry): the same chunk,
        assert len(board.taken_at) == 1 and board.taken_at[(0, 1)] > first  # timed afresh
        await board.record([landed(0, 1)])  # fast: the median of 0.3+ s and ~0 s is what counts
        assert board.wait_limit(0.05) == TAKE_WAIT_CHUNKS * statistics.median(board.chunk_s)
        waiting = asyncio.create_task(board.stage_args("fused"))
        await board.finish()
        assert await waiting is None and await board.take(2) is None

    asyncio.run(scenario())


# the batch transform, without Ray


def test_transform_without_ray(tiny_run):
    before = torch.get_num_threads()
    stage = mass.GenerateChunks(tiny_run, n_parents=(2, 3), seed=3, chunk_size=48)
    both = stage({"label": np.array([1, 6]), "chunk": np.array([0, 2])})
    one = stage({"label": np.array([6]), "chunk": np.array([2])})
    assert torch.get_num_threads() == before  # one thread while it scores, then as it was
    ids = both["id"]
    assert len(ids) > 48  # most of 2 x 48 candidates pass at these thresholds
    assert set(ids % K) == {1, 6}
    assert set(((ids // K) // 48)[ids % K == 6]) == {2}  # chunk 2 of class 6
    # a chunk's rows do not depend on the other chunks of the call
    six = ids % K == 6
    assert np.array_equal(ids[six], one["id"])
    assert [r["bytes"] for r in both["image"][six]] == [r["bytes"] for r in one["image"]]
    assert all(abs(sum(w) - 1) < 1e-5 for w in both["weights"])
    png = Image.open(io.BytesIO(both["image"][0]["bytes"]))
    assert png.size == (16, 16)


def test_decoder_batches_are_fixed_by_ids(tiny_run):
    """A chunk of 96 decoded in batches of 32 == chunks 0, 1, 2 of 32: same rows, same bytes."""
    big = mass.GenerateChunks(tiny_run, seed=1, chunk_size=96, batch_size=32)
    small = mass.GenerateChunks(tiny_run, seed=1, chunk_size=32)
    a = big.generate(4, 0)[0]
    b = pa.concat_tables([small.generate(4, k)[0] for k in range(3)])
    assert a.num_rows > 80 and a.select(["id", "image", "weights"]).equals(
        b.select(["id", "image", "weights"]))


# the job on Ray


@pytest.mark.parametrize("count,classes,n_parents,weights,chunk", [
    (137, None, "2", "uniform", "auto"),
    (250, "1,3,5", "2,3,5", "dirichlet:1", "80"),  # chunks of 2.5 decoder batches
    (41, "7", "3", "uniform", "auto"),
])
def test_exact_count(ray_cluster, tiny_run, tmp_path, count, classes, n_parents, weights, chunk):
    flags = ["--count", str(count), "--n-parents", n_parents, "--weights", weights,
             "--batch-size", "32", "--chunk-size", chunk, "--workers", "2"]
    if classes:
        flags += ["--classes", classes]
    s = generate(tiny_run, tmp_path / "out", *flags)
    cls = [int(c) for c in classes.split(",")] if classes else list(range(K))
    check_output(tiny_run, tmp_path / "out", count, cls, [int(n) for n in n_parents.split(",")])
    assert s.requested == count and s.streams == 1


def test_one_stream_and_one_actor_pool_whatever_the_prior(ray_cluster, tiny_run, tmp_path):
    """A prior far above the real acceptance (what the old code paid for with extra waves, each
    starting its actor pool again) still runs as one stream on one pool of 2 actors; the output
    is the bytes of the same job planned from the true prior."""
    flags = ["--count", "400", "--chunk-size", "16", "--batch-size", "16", "--workers", "2",
             "--seed", "4"]
    truthful = generate(tiny_run, tmp_path / "truthful", *flags)
    hopeful = tmp_path / "hopeful-run"
    shutil.copytree(tiny_run, hopeful)
    metrics = json.loads((hopeful / "metrics.json").read_text())
    for m in metrics["acceptance"].values():  # every candidate accepted, says the prior
        m["accepted"] = 1.0
        m.get("per_class", {})["accepted"] = [1.0] * K
    (hopeful / "metrics.json").write_text(json.dumps(metrics))
    s = generate(hopeful, tmp_path / "out", *flags)
    assert s.streams == 1 and s.extra["actors_per_stage"] == {"fused": 2}
    assert s.acceptance["both_steps"] < 0.95  # so more chunks ran than the prior planned
    assert s.candidates_tried > 400 / 0.95
    check_output(hopeful, tmp_path / "out", 400, list(range(K)), [2])
    assert read_out(tmp_path / "out").equals(read_out(tmp_path / "truthful"))
    assert truthful.streams == 1


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_stream_starts_while_the_run_is_read(ray_cluster, tiny_run, tmp_path):
    """With a CPU left to the driver (one actor on two CPUs), the job's actors are started
    before the run is read; they report the runtime job.json records, and take nothing before
    the checks: a job refused after its actors started leaves the output byte for byte as it
    was, and gives the cluster's CPUs back. Actors that take every CPU start after the read."""
    out = tmp_path / "out"
    s = generate(tiny_run, out, "--count", "40", "--batch-size", "32", "--workers", "1")
    ends = {k[:-len(" ends at")]: v for k, v in s.extra["startup_s"].items()
            if k.endswith(" ends at")}
    assert s.extra["stream_started_early"]
    assert ends["stream start"] <= ends["read run (rest)"]  # started before the read joined
    assert s.streams == 1 and s.extra["actors_per_stage"] == {"fused": 1}
    assert json.loads((out / mass.JOB_FILE).read_text())["runtime"] == \
        mass.runtime_identity("cpu")
    before = _files(out)
    with pytest.raises(FileExistsError, match=r"differs in: count"):
        generate(tiny_run, out, "--count", "50", "--batch-size", "32", "--workers", "1")
    assert _files(out) == before
    import ray

    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
    s = generate(tiny_run, tmp_path / "full", "--count", "40", "--batch-size", "32",
                 "--workers", "2")
    assert not s.extra["stream_started_early"]
    assert read_out(tmp_path / "full").equals(read_out(out))


def test_class_counts_of_the_training_split(ray_cluster, tiny_run, tmp_path):
    """--class-counts train without --count: the training split's class sizes, exactly."""
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    want = {c: int(n) for c, n in enumerate(np.bincount(bank.labels, minlength=K)) if c in (2, 7)}
    assert want[2] != want[7]  # the test means something only with unequal classes
    s = generate(tiny_run, tmp_path / "out", "--class-counts", "train", "--classes", "2,7",
                 "--batch-size", "64")
    labels = read_out(tmp_path / "out")["label"].to_numpy()
    assert {c: int((labels == c).sum()) for c in (2, 7)} == want == \
        {int(c): q for c, q in s.quotas.items()}
    # a different share of the same count is a different job: refused without --overwrite
    with pytest.raises(FileExistsError, match="class_weights"):
        generate(tiny_run, tmp_path / "out", "--count", str(sum(want.values())), "--classes",
                 "2,7", "--batch-size", "64", "--resume")


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_run, tmp_path_factory) -> Path:
    """300 images with 3-parent mixes and PNG files, on one worker."""
    out = tmp_path_factory.mktemp("mass") / "ref"
    generate(tiny_run, out, "--count", "300", "--n-parents", "3", "--batch-size", "40",
             "--workers", "1", "--png", "--seed", "5")
    return out


def test_png_files_and_readers(reference, tiny_run):
    t = check_output(tiny_run, reference, 300, list(range(K)), [3])
    paths = [r["path"] for r in t["image"].to_pylist()]
    on_disk = sorted(str(p.relative_to(reference)) for p in (reference / "png").rglob("*.png"))
    assert sorted(paths) == on_disk  # exactly the kept rows, surplus PNGs deleted
    first = t["image"][0].as_py()
    assert (reference / first["path"]).read_bytes() == first["bytes"]
    assert first["path"].startswith(f"png/{t['label'][0].as_py()}/00000/")
    # plain readers see plain columns; the metadata tells `datasets` the column is an Image
    import pandas as pd

    df = pd.read_parquet(reference / "data")
    assert len(df) == 300 and isinstance(df["image"].iloc[0]["bytes"], bytes)
    f = sorted((reference / "data").glob("*.parquet"))[0]
    meta = pq.read_schema(f).metadata
    assert json.loads(meta[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    prov = json.loads(meta[b"regene_ray"])
    assert prov["spec"]["seed"] == 5 and prov["spec"]["run"] == str(tiny_run.resolve())
    assert set(prov["checkpoint_sha256"]) >= {"classifier/weights.pt", "decoder/weights.pt"}
    assert len(prov["thresholds"]["image"]) == K


def test_provenance_reproduces(reference, tiny_run):
    """Mixing the stored parents with the stored weights and decoding gives the stored image.

    Decoding one row alone can differ from decoding it inside its chunk by float noise of the
    batched conv kernels, so the pixels are compared within 1 grey level; regenerating the
    chunk (the same batch) reproduces the PNG bytes exactly.
    """
    t = read_out(reference)
    rows = t.take(np.linspace(0, t.num_rows - 1, 12).astype(int)).to_pylist()
    bank = LatentBank.load(tiny_run / "latent_bank.parquet")
    row_of = {int(i): r for r, i in enumerate(bank.ids)}
    dec = Decoder.load(tiny_run / "decoder").eval()
    clf = Classifier.load(tiny_run / "classifier").eval()
    with torch.inference_mode():
        for r in rows:
            z_parents = torch.from_numpy(bank.latents[[row_of[p] for p in r["parent_ids"]]])
            z = (torch.tensor(r["weights"])[:, None] * z_parents).sum(0, keepdim=True)
            x = to_uint8(dec(z))[0, 0].numpy().astype(int)  # (H, W)
            stored = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))).astype(int)
            assert np.abs(x - stored).max() <= 1
            conf = clf(torch.from_numpy(stored)[None, None].float() / 255).softmax(1)
            assert abs(conf[0, r["label"]].item() - r["image_confidence"]) < 1e-4
    stage = mass.GenerateChunks(tiny_run, n_parents=(3,), seed=5, chunk_size=40)
    r = rows[3]
    again = stage({"label": np.array([r["label"]]), "chunk": np.array([r["id"] // K // 40])})
    pos = list(again["id"]).index(r["id"])
    assert again["image"][pos]["bytes"] == r["image"]["bytes"]


def test_worker_count_does_not_change_output(reference, ray_cluster, tiny_run, tmp_path):
    out = tmp_path / "two"
    generate(tiny_run, out, "--count", "300", "--n-parents", "3", "--batch-size", "40",
             "--workers", "1,2", "--png", "--seed", "5")
    assert read_out(out).equals(read_out(reference))
    names = lambda d: sorted(p.name for p in (d / "data").glob("*.parquet"))  # noqa: E731
    assert names(out) == names(reference)


@pytest.mark.parametrize("workers", ["2", "1"])  # "1": its stream started early
def test_dying_worker_is_retried(reference, ray_cluster, tiny_run, tmp_path, monkeypatch,
                                 workers):
    marker = tmp_path / "died"
    faults.use_dying_stage(monkeypatch, (4, 0), marker)  # exit mid-batch on chunk (4, 0)
    out = tmp_path / "retried"
    generate(tiny_run, out, "--count", "300", "--n-parents", "3", "--batch-size", "40",
             "--workers", workers, "--png", "--seed", "5")
    assert marker.read_text().startswith("worker ")  # the worker did die
    assert read_out(out).equals(read_out(reference))


def test_killed_driver_resumes_exactly(reference, ray_cluster, tiny_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(JOB), "--run", str(tiny_run), "--count", "300", "--n-parents",
           "3", "--batch-size", "40", "--workers", "2", "--png", "--seed", "5", "--out",
           str(out)]
    kill_after_chunks(cmd, out, 2, timeout_s=120)
    assert not (out / mass.SUMMARY_FILE).exists(), "the job finished before it was killed"
    for f in (out / "_chunks").glob("*.parquet"):  # whatever is visible is whole
        pq.read_table(f)
    with pytest.raises(FileExistsError, match="pass --resume"):
        generate(tiny_run, out, "--count", "300", "--n-parents", "3", "--batch-size", "40",
                 "--png", "--seed", "5")
    s = generate(tiny_run, out, "--count", "300", "--n-parents", "3", "--batch-size", "40",
                 "--workers", "2", "--png", "--seed", "5", "--resume")
    assert s.resumed
    assert read_out(out).equals(read_out(reference))
    assert sorted(p.name for p in (out / "png").rglob("*.png")) == \
        sorted(p.name for p in (reference / "png").rglob("*.png"))
    # its WebDataset shards (jobs/export.py) are those of the unbroken job, byte for byte
    unbroken = tmp_path / "unbroken"
    shutil.copytree(reference, unbroken,
                    ignore=shutil.ignore_patterns("shards", ".regene-ray.lease"))
    for folder in (out, unbroken):
        export_job.main(export_job.get_args_parser().parse_args(
            ["--generated", str(folder), "--webdataset", "--shard-size", "64"]))
    tars = [sorted((f / "shards").glob("*.tar")) for f in (out, unbroken)]
    assert len(tars[0]) == 5 and [t.read_bytes() for t in tars[0]] == \
        [t.read_bytes() for t in tars[1]]


def test_resume_deletes_pngs_no_row_points_to(reference, ray_cluster, tiny_run, tmp_path):
    """PNGs of a chunk past the cut whose Parquet file never landed (its worker or driver was
    killed in between) are removed when the job is resumed."""
    out = tmp_path / "orphans"
    shutil.copytree(reference, out)
    (out / mass.SUMMARY_FILE).unlink()  # as if the driver died before finishing
    t = read_out(out)
    stray = []
    for c in (0, 7):
        last = t.filter(pa.compute.equal(t["label"], c))["image"][-1].as_py()["path"]
        shard = Path(last).parent
        last_id = int(Path(last).stem)
        stray += [out / shard / f"{last_id + K}.png",  # same shard, just past the cut
                  out / shard.parent / "00007" / f"{last_id + 7000 * K}.png"]  # a later shard
    for p in stray:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"stray")
    s = generate(tiny_run, out, "--count", "300", "--n-parents", "3", "--batch-size", "40",
                 "--png", "--seed", "5", "--resume")
    assert s.streams == 0 and read_out(out).equals(t)
    assert not any(p.exists() for p in stray)
    rows = t["image"].to_pylist()
    assert {p.relative_to(out).as_posix() for p in (out / "png").rglob("*.png")} == \
        {r["path"] for r in rows}
    assert all((out / r["path"]).read_bytes() == r["bytes"] for r in rows)


def test_refuses_another_jobs_output(reference, ray_cluster, tiny_run, tmp_path):
    same = ["--count", "300", "--n-parents", "3", "--batch-size", "40", "--png"]
    with pytest.raises(FileExistsError, match=r"different job's output \(differs in: seed\)"):
        generate(tiny_run, reference, *same, "--seed", "6", "--resume")
    # resuming a finished job changes nothing
    before = read_out(reference)
    s = generate(tiny_run, reference, *same, "--seed", "5", "--resume")
    assert s.streams == 0 and read_out(reference).equals(before)
    # ... also with the same checkpoints at another path (a driver on another host)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run, moved)
    s = generate(moved, reference, *same, "--seed", "5", "--resume")
    assert s.streams == 0 and read_out(reference).equals(before)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a mass-generation output"):
        generate(tiny_run, tmp_path / "other", "--count", "10", "--overwrite")
    # --overwrite replaces a different job's output
    out = tmp_path / "over"
    generate(tiny_run, out, "--count", "20", "--batch-size", "32", "--classes", "0,1")
    generate(tiny_run, out, "--count", "30", "--batch-size", "32", "--classes", "2",
             "--overwrite")
    assert set(read_out(out)["label"].to_pylist()) == {2} and mass.count_rows(out) == 30


@pytest.mark.parametrize("flags,message", [
    (["--count", "-3"], "must be at least 1"),
    (["--count", "1e-2"], "is a fraction"),
    (["--count", "10", "--workers", "3,1"], "1 <= MIN <= MAX"),
    (["--count", "10", "--gpus-per-worker", "0"], "must be a positive number"),
    (["--count", "10", "--batch-size", "0"], "--batch-size 0 must be at least 1"),
    (["--count", "10", "--chunk-size", "x"], "give a whole number >= 1 or auto"),
    (["--count", "10", "--n-parents", "2,x"], "whole numbers separated by commas"),
])
def test_bad_flags_parser(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        job.get_args_parser().parse_args(["--run", "r", "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--count", "10", "--n-parents", "1"], "at least 2 parents"),
    (["--count", "10", "--n-parents", "400"], "fewer eligible parents"),
    (["--count", "10", "--resume", "--overwrite"], "exclude each other"),
    (["--count", "10", "--weights", "dirichlet:-1"], "positive alpha"),
    (["--count", "10", "--weights", "affine:-1"], "affine needs a reach >= 0"),
    (["--count", "10", "--device", "cuda"], "--device cuda needs --gpus-per-worker"),
])
def test_bad_flags_main(tiny_run, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        generate(tiny_run, tmp_path / "o", *flags)
    assert not (tmp_path / "o").exists()


def test_crash_inside_finalize_is_repaired(tiny_run, tmp_path, monkeypatch):
    """Without Ray: the serial runner, and a crash after the 2nd file move of finalize."""
    spec = mass.MassSpec(run=str(tiny_run.resolve()), count=90, classes=(0, 8), chunk_size=24,
                         batch_size=12, png=True)
    identity = mass.job_metadata(spec, mass.run_hashes(spec.run))
    stage = mass.WriteChunks(spec.run, tmp_path / "a", metadata=identity, png=True,
                             chunk_size=24, batch_size=12, torch_threads=None)
    clean = tmp_path / "clean"
    stage.out = clean
    mass.run_job(spec, clean, mass.serial_runner(stage), identity=identity)
    crashed = tmp_path / "crashed"
    stage.out = crashed
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):  # os.replace is shared by every module
        if Path(dst).parent == crashed / mass.DATA_DIR:
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated kill inside finalize")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(KeyboardInterrupt):
        mass.run_job(spec, crashed, mass.serial_runner(stage), identity=identity)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (crashed / mass.SUMMARY_FILE).exists()
    s = mass.run_job(spec, crashed, mass.serial_runner(stage), resume=True,
                     identity=identity)
    assert s.resumed and s.streams == 0
    assert read_out(crashed).equals(read_out(clean))
    pngs = lambda d: sorted(p.name for p in (d / "png").rglob("*.png"))  # noqa: E731
    assert pngs(crashed) == pngs(clean) and len(pngs(clean)) == 90


def test_hugging_face_reads_images_and_class_labels(reference, tmp_path, monkeypatch):
    """Hugging Face `datasets` (a dev dependency) as a user reads an output folder: images
    decode to PIL, labels are a ClassLabel with the run's class names."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    files = sorted(str(p) for p in (reference / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds.features["image"], datasets.Image) and len(ds) == 300
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == [str(c) for c in range(K)]
    row = ds[0]
    assert row["image"].size == (16, 16)
    stored = read_out(reference).sort_by("id")
    assert sorted(ds["label"]) == sorted(stored["label"].to_pylist())
    first = stored.filter(pa.compute.equal(stored["id"], row["id"]))
    assert row["label"] == first["label"][0].as_py()
    assert np.array_equal(np.asarray(row["image"]),
                          np.asarray(Image.open(io.BytesIO(first["image"][0]["bytes"].as_py()))))
