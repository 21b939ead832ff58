"""Mass generation, the batch transforms: chunk descriptors in, accepted rows out (mix, latent
filter, decode, image filter, PNG), written as one Parquet file per chunk. Three stages (CPU
mixing, the networks, CPU commit) that run fused in one actor (WriteChunks) or as separate Ray
Data operators (regene_ray.mass.ray_stage). Plain callable classes: tests call them on dicts of
numpy arrays; only ray_stage hands them to Ray.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from regene_ray.generator import ConvexGenerator, GenerationBatch, LatentMixer, Mixes, encode_png
from regene_ray.mass.identity import runtime_identity
from regene_ray.mass.job import Runner
from regene_ray.mass.output import CHUNKS_DIR, JOB_FILE, chunk_name
from regene_ray.mass.plan import WAIT, ChunkInfo, ChunkPlanner, candidate_ids
from regene_ray.mass.sinks import SCHEMA, png_relpath, rows_table, write_parquet_atomic
from regene_ray.run_files import RunFiles
from regene_ray.storage import Storage

JOB_CHECK_TRIES = 3  # reads of job.json before a worker concludes it cannot see the job


# The three stages of a chunk, each a plain callable class on dicts of numpy arrays with one row
# per chunk (ray_stage runs them as one fused actor or as three Ray Data operators):
#   MixChunks    CPU      (label, chunk) -> ids, provenance and mixed codes z
#   ScoreChunks  device   + latent filter, decode, image filter -> decisions and uint8 images
#   CommitChunks CPU      + PNG encoding, PNG files, one Parquet file -> the chunk's statistics
# A row holds a whole chunk (arrays with a leading chunk axis), so a chunk is never split
# between calls and its decoder batches are the same whichever stage layout runs it.


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count is `n` inside the block (None: unchanged), and the
    process's previous count again after it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != before:
            torch.set_num_threads(before)


def run_files(run: str | Path | RunFiles) -> RunFiles:
    """A run folder's files, read once (or the RunFiles given, as Ray ships them to actors)."""
    return run if isinstance(run, RunFiles) else RunFiles.read(run)


def _stack(items: list, cls, extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dataclass rows (Mixes or GenerationBatch, one per chunk) -> {field: (k, ...)} + extra."""
    return {**extra, **{f.name: np.stack([getattr(i, f.name) for i in items])
                        for f in fields(cls)}}


def _rows(batch: dict[str, np.ndarray], cls) -> list:
    """The inverse of _stack: one dataclass per chunk."""
    return [cls(**{f.name: np.asarray(batch[f.name][i]) for f in fields(cls)})
            for i in range(len(batch["label"]))]


def _keys(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"label": np.asarray(batch["label"], np.int64),
            "chunk": np.asarray(batch["chunk"], np.int64)}


class MixChunks:
    """CPU stage: chunk descriptors {"label", "chunk"} -> one row of Mixes per chunk.

    Holds only the latent bank (no networks).

    Args:
        run: a jobs/train.py run folder, or its RunFiles, or a LatentMixer already loaded.
        n_parents, weights, seed, chunk_size: as in MassSpec.
    """

    def __init__(self, run: str | Path | RunFiles | LatentMixer, *,
                 n_parents: Sequence[int] = (2,), weights: str = "uniform", seed: int = 0,
                 chunk_size: int = 1024):
        if not isinstance(run, LatentMixer):
            files = run_files(run)
            run = LatentMixer(files.bank, files.num_classes)
        self.mixer = run
        self.num_classes = self.mixer.num_classes
        self.n_parents = [int(n) for n in n_parents]
        self.weights = weights
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)

    def mix_chunk(self, label: int, chunk: int) -> Mixes:
        ids = candidate_ids(label, chunk, self.chunk_size, self.num_classes)  # (C,)
        return self.mixer(np.full(len(ids), label), self.n_parents, self.weights, seed=self.seed,
                          ids=ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = _keys(batch)
        return _stack([self.mix_chunk(int(c), int(k))
                       for c, k in zip(keys["label"], keys["chunk"], strict=True)], Mixes, keys)


class ScoreChunks:
    """Network stage: rows of Mixes -> rows of GenerationBatch (both filter steps, decoding).

    Each chunk is scored in decoder batches of `batch_size` consecutive candidates from its
    start, so the float noise of the convs is a function of the ids alone.

    Args:
        run: a jobs/train.py run folder, or its RunFiles.
        batch_size: candidates per decoder batch (0: the whole chunk at once).
        device: 'cpu' or 'cuda[:i]'.
        precision: decoder precision, 'fp32', 'bf16' or 'fp16' (see ConvexGenerator).
        torch_threads: intra-op threads while it scores (1 per actor: many single-threaded
            actors parallelise the Python and PNG work too); None leaves torch's setting. The
            process's setting is restored after each call.
        runtime: the job's runtime identity; a worker whose device kind or torch differs
            refuses to start (its bytes would differ).
        novelty: per-class novelty thresholds (the job identity's novelty.thresholds) to run
            the novelty step; None for none.
    """

    def __init__(self, run: str | Path | RunFiles, *, batch_size: int = 0,
                 device: str = "cpu", precision: str = "fp32", torch_threads: int | None = 1,
                 runtime: dict | None = None, novelty: Sequence[float] | None = None):
        self.torch_threads = torch_threads
        self.gen = ConvexGenerator.from_files(run_files(run), device=device, precision=precision)
        # channels_last: oneDNN's NHWC convs ran 1.4x faster here (benchmarks/RESULTS-mass-
        # generate.md). It changes float noise, not results, and is the same on every worker.
        self.gen.classifier.to(memory_format=torch.channels_last)
        self.gen.decoder.to(memory_format=torch.channels_last)
        self.gen.set_novelty(novelty)
        self.batch_size = int(batch_size)
        here = runtime_identity(self.gen.device.type)
        if runtime and runtime != here:
            raise RuntimeError(
                f"this worker (host {socket.gethostname()}) runs {here}, but the job was planned "
                f"for {runtime}; outputs of different devices or torch versions differ in their "
                "bytes, so one output folder takes one kind: give every node the same torch, or "
                "pick --device to match the workers")

    def score_chunk(self, m: Mixes) -> GenerationBatch:
        size = self.batch_size or len(m)
        with threads(self.torch_threads):
            parts = [self.gen.score(m.rows(i, i + size)) for i in range(0, len(m), size)]
        return GenerationBatch(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                                  for f in fields(GenerationBatch)})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _stack([self.score_chunk(m) for m in _rows(batch, Mixes)], GenerationBatch,
                      _keys(batch))


def chunk_table(g: GenerationBatch, label: int, chunk: int,
                num_classes: int) -> tuple[pa.Table, ChunkInfo]:
    """A scored chunk -> (its accepted rows in id order, with PNG bytes; its statistics)."""
    acc = g.accepted_only()
    pngs = [encode_png(im) for im in acc.images]
    paths = [png_relpath(label, int(i) // num_classes, int(i)) for i in acc.ids]
    info = ChunkInfo(label, chunk, tried=len(g), latent_passed=int(g.latent_pass.sum()),
                     accepted=len(acc), novelty_rejected=int((~g.novel).sum()))
    return rows_table(acc, pngs, paths), info


class CommitChunks:
    """CPU stage: rows of GenerationBatch -> PNGs and one Parquet file per chunk; returns each
    chunk's statistics.

    Before it writes a chunk, it checks that OUT/job.json still names this job: an actor left
    over from an earlier job (its driver killed, the folder since overwritten by another job)
    then fails instead of adding its rows to the new output. Chunk files carry the job key in
    their metadata, and `scan` keeps only this job's.

    Args:
        out_dir: the job's output folder (a local path, s3://..., gs://... or a Storage).
        metadata: the job's identity (job_metadata), stored in every file.
        num_classes: the run's number of classes (fixes ids and PNG paths).
        png: also write each accepted image to OUT/png/<label>/<shard>/<id>.png.
    """

    def __init__(self, out_dir: str | Path | Storage, *, metadata: dict, num_classes: int,
                 png: bool = False):
        self.out = out_dir
        self.metadata = metadata
        self.num_classes = int(num_classes)
        self.png = png

    @property
    def out(self) -> Storage:
        return self._out

    @out.setter
    def out(self, value: str | Path | Storage) -> None:
        self._out = value if isinstance(value, Storage) else Storage(value)

    def _check_job(self) -> None:
        """Fail clearly on a node that does not see the job's folder (a local --out that is not
        shared), or when the folder now belongs to another job."""
        held = None
        for attempt in range(JOB_CHECK_TRIES):  # a passing storage error is not a verdict
            try:
                held = self.out.read_json(JOB_FILE)
                break
            except (OSError, ValueError):
                if attempt + 1 < JOB_CHECK_TRIES:
                    time.sleep(2.0**attempt)
        if held is None:
            problem = "cannot see"
        elif held.get("job_key") != self.metadata.get("job_key"):
            raise RuntimeError(
                f"{self.out.display(JOB_FILE)} now names another job (it was overwritten or "
                "replaced after this worker started); this worker stops without writing")
        else:
            return
        raise RuntimeError(
            f"this worker (host {socket.gethostname()}) {problem} {self.out.display(JOB_FILE)}, "
            "which the driver wrote: --out must be storage every node reaches (s3://..., "
            "gs://..., or a shared filesystem mounted at the same path on every node)")

    def commit(self, label: int, chunk: int, g: GenerationBatch) -> ChunkInfo:
        """Commit one scored chunk: PNGs first (made durable), then its Parquet file
        (atomically, after checking the folder is still this job's)."""
        table, info = chunk_table(g, label, chunk, self.num_classes)
        self._check_job()
        rel = f"{CHUNKS_DIR}/{chunk_name(label, chunk)}"
        try:
            if self.png:
                image = table.column("image").combine_chunks()
                self.out.write_many(list(zip(image.field("path").to_pylist(),
                                             image.field("bytes").to_pylist(), strict=True)))
            meta = {**self.metadata, "chunk": _info_dict(info)}
            write_parquet_atomic(table, rel, meta, self.out)
        except OSError as e:  # a full disk, a lost mount: say which output (pyarrow may not;
            # the path goes into the message, which Ray Data's retry wrapper leaves alone)
            where = e.filename if isinstance(e.filename, str) else self.out.display(rel)
            raise OSError(e.errno, f"{os.strerror(e.errno) if e.errno else e}: {where}") from e
        return info

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        infos = [self.commit(int(c), int(k), g)
                 for c, k, g in zip(batch["label"], batch["chunk"],
                                    _rows(batch, GenerationBatch), strict=True)]
        return _stats(infos)


def _stats(infos: list[ChunkInfo]) -> dict[str, np.ndarray]:
    return {key: np.array([getattr(i, key) for i in infos], dtype=np.int64)
            for key in STAT_KEYS}


STAT_KEYS = ("label", "chunk", "tried", "latent_passed", "accepted", "novelty_rejected")


class GenerateChunks:
    """The fused transform, in one process: chunk descriptors -> accepted rows (mix, filter,
    decode, filter, PNG). A batch holds one row per chunk: {"label": (B,), "chunk": (B,)}.

    Args:
        run: a jobs/train.py run folder, or its RunFiles; the classifier, decoder and bank
            load once here.
        n_parents, weights, seed, chunk_size, batch_size: as in MassSpec.
        device, precision, torch_threads, runtime, novelty: as in ScoreChunks.
    """

    def __init__(self, run: str | Path | RunFiles, *, n_parents: Sequence[int] = (2,),
                 weights: str = "uniform", seed: int = 0, chunk_size: int = 1024,
                 batch_size: int = 0, device: str = "cpu", precision: str = "fp32",
                 torch_threads: int | None = 1, runtime: dict | None = None,
                 novelty: Sequence[float] | None = None):
        self.scorer = ScoreChunks(run, batch_size=batch_size, device=device,
                                  precision=precision, torch_threads=torch_threads,
                                  runtime=runtime, novelty=novelty)
        self.gen = self.scorer.gen
        self.mixer = MixChunks(self.gen.mixer, n_parents=n_parents, weights=weights, seed=seed,
                               chunk_size=chunk_size)  # the generator's bank: loaded once
        self.num_classes = self.gen.num_classes

    def score(self, label: int, chunk: int) -> GenerationBatch:
        return self.scorer.score_chunk(self.mixer.mix_chunk(label, chunk))

    def generate(self, label: int, chunk: int) -> tuple[pa.Table, ChunkInfo]:
        """One chunk -> (accepted rows in id order, its statistics)."""
        return chunk_table(self.score(label, chunk), label, chunk, self.num_classes)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tables = [self.generate(int(c), int(chunk))[0]
                  for c, chunk in zip(batch["label"], batch["chunk"], strict=True)]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        return {name: table.column(name).to_numpy(zero_copy_only=False)
                for name in table.column_names}


class WriteChunks(GenerateChunks):
    """The fused stage of a job: GenerateChunks, then CommitChunks, in one actor.

    Args:
        out_dir, metadata, png: as in CommitChunks.
        **kwargs: as GenerateChunks (the worker's runtime is checked against the metadata's,
            and the novelty step runs with the metadata's thresholds).
    """

    def __init__(self, run: str | Path | RunFiles, out_dir: str | Path | Storage, *,
                 metadata: dict, png: bool = False, **kwargs):
        super().__init__(run, runtime=metadata.get("runtime"),
                         novelty=novelty_of(metadata), **kwargs)
        self.committer = CommitChunks(out_dir, metadata=metadata, num_classes=self.num_classes,
                                      png=png)

    @property
    def out(self) -> Storage:
        return self.committer.out

    @out.setter
    def out(self, value: str | Path | Storage) -> None:
        self.committer.out = value

    def write_chunk(self, label: int, chunk: int) -> ChunkInfo:
        """Generate one chunk and commit it (CommitChunks.commit)."""
        return self.committer.commit(label, chunk, self.score(label, chunk))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _stats([self.write_chunk(int(c), int(chunk))
                       for c, chunk in zip(batch["label"], batch["chunk"], strict=True)])


def novelty_of(identity: dict) -> list[float] | None:
    """The novelty step's per-class thresholds of a job identity (None: no novelty step)."""
    return (identity.get("novelty") or {}).get("thresholds")


def _info_dict(info: ChunkInfo) -> dict:
    d = asdict(info)
    for where in ("path", "node", "stage_gpus", "actors", "taken_at"):  # of this run
        d.pop(where)
    return d


def serial_runner(stage: WriteChunks) -> Runner:
    """Run chunks one after another in this process, as the planner hands them out (tests, the
    bare baseline)."""

    def run(planner: ChunkPlanner):
        while (key := planner.take()) is not None:
            if key == WAIT:  # nothing is in flight here, so the planner always has work
                raise RuntimeError("the planner waits for a chunk in flight, but none is")
            taken_at = time.time()
            info = stage.write_chunk(*key)
            info.taken_at = taken_at
            planner.record(info)
            yield info

    return run
