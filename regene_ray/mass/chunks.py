"""Mass generation, the batch transform: chunk descriptors in, accepted rows out (mix, latent
filter, decode, image filter, PNG), written as one Parquet file per chunk. A plain callable
class: tests call it on a dict of numpy arrays; only regene_ray.mass.ray_stage hands it to Ray.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from regene_ray.generator import ConvexGenerator, GenerationBatch, encode_png
from regene_ray.mass.job import CHUNKS_DIR, JOB_FILE, Runner, chunk_name, runtime_identity
from regene_ray.mass.plan import ChunkInfo, candidate_ids
from regene_ray.mass.run_files import unpack_run
from regene_ray.mass.sinks import SCHEMA, png_relpath, rows_table, write_parquet_atomic
from regene_ray.storage import Storage

JOB_CHECK_TRIES = 3  # reads of job.json before a worker concludes it cannot see the job


class GenerateChunks:
    """Batch transform: chunk descriptors -> accepted rows (mix, filter, decode, filter, PNG).

    A batch holds one row per chunk: {"label": (B,), "chunk": (B,)}. Each chunk is generated as
    one decoder batch, so its rows do not depend on which other chunks share the call.

    Args:
        run_dir: a jobs/train.py run folder, or its files from pack_run; the classifier,
            decoder and bank load once here.
        n_parents, weights, seed, chunk_size, batch_size: as in MassSpec.
        device: 'cpu' or 'cuda[:i]'.
        torch_threads: intra-op threads (1 per actor: many single-threaded actors parallelise
            the Python and PNG work too).
    """

    def __init__(self, run_dir: str | Path | dict[str, bytes], *, n_parents: Sequence[int] = (2,),
                 weights: str = "uniform", seed: int = 0, chunk_size: int = 1024,
                 batch_size: int = 0, device: str = "cpu", torch_threads: int | None = 1):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        if isinstance(run_dir, dict):  # packed: load from a temporary copy, then delete it
            tmp = unpack_run(run_dir)
            try:
                self.gen = ConvexGenerator.from_run(tmp, device=device)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            self.gen = ConvexGenerator.from_run(run_dir, device=device)
        # channels_last: oneDNN's NHWC convs ran 1.4x faster here (benchmarks/RESULTS-mass-
        # generate.md). It changes float noise, not results, and is the same on every worker.
        self.gen.classifier.to(memory_format=torch.channels_last)
        self.gen.decoder.to(memory_format=torch.channels_last)
        self.num_classes = self.gen.num_classes
        self.n_parents = [int(n) for n in n_parents]
        self.weights = weights
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self.batch_size = int(batch_size) or self.chunk_size

    def generate(self, label: int, chunk: int) -> tuple[pa.Table, ChunkInfo]:
        """One chunk -> (accepted rows in id order, its statistics)."""
        ids = candidate_ids(label, chunk, self.chunk_size, self.num_classes)  # (C,)
        parts = [self.gen(np.full(len(b), label), self.n_parents, self.weights, seed=self.seed,
                          ids=b)
                 for b in np.split(ids, np.arange(self.batch_size, len(ids), self.batch_size))]
        out = GenerationBatch(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                                 for f in fields(GenerationBatch)})
        acc = out.accepted_only()
        pngs = [encode_png(im) for im in acc.images]
        paths = [png_relpath(label, int(i) // self.num_classes, int(i)) for i in acc.ids]
        info = ChunkInfo(label, chunk, tried=len(ids), latent_passed=int(out.latent_pass.sum()),
                         accepted=len(acc))
        return rows_table(acc, pngs, paths), info

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tables = [self.generate(int(c), int(chunk))[0]
                  for c, chunk in zip(batch["label"], batch["chunk"], strict=True)]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        return {name: table.column(name).to_numpy(zero_copy_only=False)
                for name in table.column_names}


class WriteChunks(GenerateChunks):
    """GenerateChunks that writes each chunk to OUT/_chunks/ (and its PNGs) and returns stats.

    Before it writes a chunk, it checks that OUT/job.json still names this job: an actor left
    over from an earlier job (its driver killed, the folder since overwritten by another job)
    then fails instead of adding its rows to the new output. Chunk files carry the job key in
    their metadata, and `scan` keeps only this job's.

    Args:
        out_dir: the job's output folder (a local path, s3://..., gs://... or a Storage).
        metadata: the job's identity (job_metadata), stored in every file.
        png: also write each accepted image to OUT/png/<label>/<shard>/<id>.png.
        **kwargs: as GenerateChunks.
    """

    def __init__(self, run_dir: str | Path | dict[str, bytes], out_dir: str | Path | Storage, *,
                 metadata: dict, png: bool = False, **kwargs):
        super().__init__(run_dir, **kwargs)
        self.out = out_dir
        self.metadata = metadata
        self.png = png
        runtime = metadata.get("runtime", {})
        here = runtime_identity(self.gen.device.type)
        if runtime and runtime != here:
            raise RuntimeError(
                f"this worker (host {socket.gethostname()}) runs {here}, but the job was planned "
                f"for {runtime}; outputs of different devices or torch versions differ in their "
                "bytes, so one output folder takes one kind: give every node the same torch, or "
                "pick --device to match the workers")

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

    def write_chunk(self, label: int, chunk: int) -> ChunkInfo:
        """Generate one chunk and commit it: PNGs first (made durable), then its Parquet file
        (atomically, after checking the folder is still this job's)."""
        table, info = self.generate(label, chunk)
        self._check_job()
        if self.png:
            image = table.column("image").combine_chunks()
            self.out.write_many(list(zip(image.field("path").to_pylist(),
                                         image.field("bytes").to_pylist(), strict=True)))
        meta = {**self.metadata, "chunk": _info_dict(info)}
        write_parquet_atomic(table, f"{CHUNKS_DIR}/{chunk_name(label, chunk)}", meta, self.out)
        return info

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        infos = [self.write_chunk(int(c), int(chunk))
                 for c, chunk in zip(batch["label"], batch["chunk"], strict=True)]
        return {key: np.array([getattr(i, key) for i in infos], dtype=np.int64)
                for key in ("label", "chunk", "tried", "latent_passed", "accepted")}


def _info_dict(info: ChunkInfo) -> dict:
    d = asdict(info)
    d.pop("path")
    d.pop("node")
    return d


def serial_runner(stage: WriteChunks) -> Runner:
    """Run chunks one after another in this process (tests, the bare baseline)."""

    def run(todo: list[tuple[int, int]]) -> list[ChunkInfo]:
        infos = []
        for c, chunk in todo:
            r = stage({"label": np.array([c]), "chunk": np.array([chunk])})
            infos.append(ChunkInfo(int(r["label"][0]), int(r["chunk"][0]), int(r["tried"][0]),
                                   int(r["latent_passed"][0]), int(r["accepted"][0])))
        return infos

    return run
