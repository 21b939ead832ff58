"""Mass generation: exactly `count` filtered images, deterministic, resumable. No Ray in here.

Design
------
* **Candidates are keyed.** A candidate of class c with per-class index j has the id
  `j * K + c` (K = the model's number of classes), so its label is `id % K` and its parents,
  weights and n_parents are a pure function of (seed, id) (see regene_ray.convex).
* **Chunks are the unit of work and of output.** Chunk (c, k) holds the candidates of class c with
  j in [k*C, (k+1)*C), C = `chunk_size` (the job's --batch-size). A chunk is always generated as
  one batch by one call, so the decoder never sees a batch whose make-up depends on scheduling or
  on the number of workers (float results of a conv can depend on the batch around a sample; here
  the batch is fixed by the chunk). Its accepted rows go to one Parquet file, written atomically,
  whose metadata records how many candidates were tried and passed each filter step.
* **Resume** = skip chunks whose file exists. A killed worker or driver loses at most the chunks
  in flight; their files were never renamed into place.
* **Exact count.** Class c's quota q_c is count / len(classes), the remainder spread over the
  first classes. The output holds, per class, the first q_c accepted candidates in id order. Waves
  of chunks are scheduled from the measured acceptance rate (a prior from the run's metrics.json
  before any chunk of the class is done), with a small statistical margin, and topped up until
  chunks 0..k* of every class are done and hold >= q_c accepted rows. Which extra chunks ran never
  changes which rows are kept, so the output does not depend on waves, workers or crashes.
* **Visible output.** Chunks are written to `OUT/_chunks/`; `finalize` moves chunks 0..k*-1 into
  `OUT/data/` (a rename), writes chunk k* trimmed to its first rows (atomically), and deletes the
  surplus chunks and their PNGs. `OUT/data/` therefore only ever holds rows of the final answer,
  and `OUT/summary.json`, written last, marks the output complete.

Layout: OUT/job.json (the job's identity), OUT/_chunks/, OUT/data/c<label>-k<chunk>.parquet,
OUT/png/<label>/<shard>/<id>.png (with --png), OUT/summary.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from regene_ray.checkpoint import file_sha256
from regene_ray.config import save_json
from regene_ray.convex import parse_weights
from regene_ray.generator import ConvexGenerator, encode_png
from regene_ray.latent_bank import BANK_FILE, THRESHOLDS_FILE
from regene_ray.sinks import (
    SCHEMA,
    png_relpath,
    read_metadata,
    rows_table,
    write_file_atomic,
    write_parquet_atomic,
)

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
CHUNKS_DIR = "_chunks"  # staging: complete chunks, before trimming to the exact count
DATA_DIR = "data"  # the final Parquet files
PNG_DIR = "png"
MAX_COUNT = 2**40  # ids are j * K + c in int64; this keeps them far from overflow
_CHUNK_RE = re.compile(r"^c(\d+)-k(\d+)\.parquet$")


# helpers


def parse_count(text: str) -> int:
    """'1e6', '1000000' or '1_000_000' -> 1000000; zero, negatives, fractions and NaN raise."""
    s = str(text).strip()
    try:
        value = Decimal(s.replace("_", "")) if re.fullmatch(r"[0-9_.eE+-]+|nan|inf", s.lower()) \
            else Decimal("nan")
    except InvalidOperation:
        value = Decimal("nan")
    if not value.is_finite():
        raise ValueError(f"--count {text!r} is not a number; give a positive whole number such as "
                         "1000, 1_000_000 or 1e6")
    if value != value.to_integral_value():
        raise ValueError(f"--count {text!r} is a fraction; give a whole number of images")
    if value <= 0:
        raise ValueError(f"--count {text!r} must be at least 1")
    if value > MAX_COUNT:
        raise ValueError(f"--count {text!r} is larger than the supported {MAX_COUNT:.3g}")
    return int(value)


def quotas(count: int, classes: Sequence[int]) -> dict[int, int]:
    """Balanced per-class quotas: count // n each, the remainder to the first classes."""
    n = len(classes)
    return {int(c): count // n + (1 if i < count % n else 0) for i, c in enumerate(classes)}


def candidate_ids(label: int, chunk: int, chunk_size: int, num_classes: int) -> np.ndarray:
    """Ids of chunk (label, chunk): j * K + label for j in [chunk*C, (chunk+1)*C). (C,) int64."""
    j = np.arange(chunk * chunk_size, (chunk + 1) * chunk_size, dtype=np.int64)
    return j * num_classes + label


def chunk_name(label: int, chunk: int) -> str:
    return f"c{label:03d}-k{chunk:07d}.parquet"


def run_hashes(run_dir: str | Path) -> dict[str, str]:
    """sha256 of every file a generation depends on (weights, configs, bank, thresholds)."""
    run_dir = Path(run_dir)
    names = ["classifier/config.json", "classifier/weights.pt", "decoder/config.json",
             "decoder/weights.pt", BANK_FILE, THRESHOLDS_FILE]
    return {n: file_sha256(run_dir / n) for n in names if (run_dir / n).is_file()}


# the job's identity


@dataclass(frozen=True)
class MassSpec:
    """What to generate; two jobs with equal specs (and run hashes) write identical outputs."""

    run: str  # run folder (absolute)
    count: int  # exact number of images to keep
    classes: tuple[int, ...]  # classes to generate, balanced
    n_parents: tuple[int, ...] = (2,)  # parents per mix, drawn per candidate when several
    weights: str = "uniform"  # uniform | dirichlet:<alpha> | ratios
    seed: int = 0  # all randomness is a function of (seed, candidate id)
    chunk_size: int = 1024  # candidates per chunk = per decoder batch = per Parquet file (max rows)
    png: bool = False  # also write OUT/png/<label>/<shard>/<id>.png

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"--batch-size {self.chunk_size} must be at least 1")
        if not self.classes:
            raise ValueError("--classes is empty; give class indices such as 0,1,2")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"--classes {list(self.classes)} repeats a class")
        if any(n < 2 for n in self.n_parents):
            raise ValueError(f"--n-parents {list(self.n_parents)}: a convex mix needs at least 2 "
                             "parents")
        parse_weights(self.weights)

    def quotas(self) -> dict[int, int]:
        return quotas(self.count, self.classes)


@dataclass
class ChunkInfo:
    """Statistics of one finished chunk (from its Parquet metadata or from a worker)."""

    label: int
    chunk: int
    tried: int
    latent_passed: int
    accepted: int  # accepted rows of the full chunk (before any trimming)
    path: Path | None = None


@dataclass
class Summary:
    requested: int
    classes: list[int]
    quotas: dict[str, int]
    accepted_per_class: dict[str, int]
    candidates_tried: int  # candidates in the chunks up to each class's cutoff
    candidates_generated_this_run: int  # all candidates decoded by this invocation
    acceptance: dict[str, float]  # per filter step, over candidates_tried
    waves: int
    resumed: bool
    wall_s: float
    images_per_s: float
    parquet_files: int
    extra: dict = field(default_factory=dict)


# the batch transform


class GenerateChunks:
    """Batch transform: chunk descriptors -> accepted rows (mix, filter, decode, filter, PNG).

    A batch holds one row per chunk: {"label": (B,), "chunk": (B,)}. Each chunk is generated as
    one decoder batch, so its rows do not depend on which other chunks share the call.

    Args:
        run_dir: a jobs/train.py run folder; the classifier, decoder and bank load once here.
        n_parents, weights, seed, chunk_size: as in MassSpec.
        device: 'cpu' or 'cuda[:i]'.
        torch_threads: intra-op threads (1 per actor: many single-threaded actors parallelise
            the Python and PNG work too).
    """

    def __init__(self, run_dir: str | Path, *, n_parents: Sequence[int] = (2,),
                 weights: str = "uniform", seed: int = 0, chunk_size: int = 1024,
                 device: str = "cpu", torch_threads: int | None = 1):
        if torch_threads:
            torch.set_num_threads(torch_threads)
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

    def generate(self, label: int, chunk: int) -> tuple[pa.Table, ChunkInfo]:
        """One chunk -> (accepted rows in id order, its statistics)."""
        ids = candidate_ids(label, chunk, self.chunk_size, self.num_classes)  # (C,)
        out = self.gen(np.full(len(ids), label), self.n_parents, self.weights, seed=self.seed,
                       ids=ids)
        acc = out.accepted_only()
        pngs = [encode_png(im) for im in acc.images]
        paths = [png_relpath(label, int(i) // self.num_classes, int(i)) for i in acc.ids]
        info = ChunkInfo(label, chunk, tried=len(ids), latent_passed=int(out.latent_pass.sum()),
                         accepted=len(acc))
        return rows_table(acc, pngs, paths), info

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tables = [self.generate(int(c), int(k))[0]
                  for c, k in zip(batch["label"], batch["chunk"], strict=True)]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        return {name: table.column(name).to_numpy(zero_copy_only=False)
                for name in table.column_names}


class WriteChunks(GenerateChunks):
    """GenerateChunks that writes each chunk to OUT/_chunks/ (and its PNGs) and returns stats.

    Args:
        out_dir: the job's output folder.
        metadata: job-level provenance stored in every file (run, seed, thresholds, hashes).
        png: also write each accepted image to OUT/png/<label>/<shard>/<id>.png.
        fail_once: (label, chunk, marker_path): exit the process abruptly the first time that
            chunk is seen (the marker file records it), to test that Ray retries a dead worker.
        **kwargs: as GenerateChunks.
    """

    def __init__(self, run_dir: str | Path, out_dir: str | Path, *, metadata: dict,
                 png: bool = False, fail_once: tuple[int, int, str] | None = None, **kwargs):
        super().__init__(run_dir, **kwargs)
        self.out = Path(out_dir)
        self.metadata = metadata
        self.png = png
        self.fail_once = fail_once

    def _maybe_fail(self, label: int, chunk: int) -> None:
        if self.fail_once is None or (label, chunk) != tuple(self.fail_once[:2]):
            return
        marker = Path(self.fail_once[2])
        if not marker.exists():
            marker.write_text(f"worker {os.getpid()} died on chunk {label},{chunk}\n")
            os._exit(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        infos = []
        for c, k in zip(batch["label"], batch["chunk"], strict=True):
            c, k = int(c), int(k)
            table, info = self.generate(c, k)
            self._maybe_fail(c, k)
            if self.png:
                image = table.column("image").combine_chunks()
                for path, data in zip(image.field("path").to_pylist(),
                                      image.field("bytes").to_pylist(), strict=True):
                    write_file_atomic(data, self.out / path)
            meta = {**self.metadata, "chunk": _info_dict(info)}
            write_parquet_atomic(table, self.out / CHUNKS_DIR / chunk_name(c, k), meta)
            infos.append(info)
        return {key: np.array([getattr(i, key) for i in infos], dtype=np.int64)
                for key in ("label", "chunk", "tried", "latent_passed", "accepted")}


def _info_dict(info: ChunkInfo) -> dict:
    d = asdict(info)
    d.pop("path")
    return d


# the output folder


def job_metadata(spec: MassSpec, hashes: dict[str, str]) -> dict:
    """Provenance stored in job.json and in every Parquet file."""
    thresholds = json.loads((Path(spec.run) / THRESHOLDS_FILE).read_text())
    return {"spec": asdict(spec), "checkpoint_sha256": hashes,
            "thresholds": {k: thresholds[k] for k in ("latent", "image")},
            "format": "regene-ray mass generation v1"}


def prepare_output(out: Path, identity: dict, *, resume: bool, overwrite: bool) -> bool:
    """Create OUT or check it holds this job. Returns True when an earlier attempt is resumed."""
    job = out / JOB_FILE
    identity = json.loads(json.dumps(identity))  # as job.json holds it (tuples become lists)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    resumed = False
    if out.is_dir() and any(out.iterdir()):
        if not job.is_file():
            raise FileExistsError(
                f"--out {out} is a non-empty folder without {JOB_FILE}, not a mass-generation "
                "output; choose a new or empty folder")
        old = json.loads(job.read_text())
        if overwrite:
            log.warning("--overwrite: removing the earlier output in %s", out)
            for name in (SUMMARY_FILE, JOB_FILE):
                (out / name).unlink(missing_ok=True)
            for name in (CHUNKS_DIR, DATA_DIR, PNG_DIR):
                shutil.rmtree(out / name, ignore_errors=True)
        elif old != identity:
            differ = sorted(k for k in set(old.get("spec", {})) | set(identity["spec"])
                            if old.get("spec", {}).get(k) != identity["spec"].get(k))
            if old.get("checkpoint_sha256") != identity["checkpoint_sha256"]:
                differ.append("run checkpoints")
            raise FileExistsError(
                f"--out {out} holds a different job's output (differs in: "
                f"{', '.join(differ) or 'format'}); pass --overwrite to replace it, or choose "
                "another --out")
        elif not resume:
            raise FileExistsError(
                f"--out {out} already holds this job's output; pass --resume to complete it, or "
                "--overwrite to start again")
        else:
            resumed = True
            (out / SUMMARY_FILE).unlink(missing_ok=True)  # incomplete until finalize rewrites it
            for tmp in out.rglob(".*.tmp*"):  # leftovers of writes cut short by a crash
                tmp.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        save_json(identity, job)
    return resumed


def scan(out: Path) -> dict[tuple[int, int], ChunkInfo]:
    """Finished chunks in OUT/data and OUT/_chunks (data wins when a chunk is in both)."""
    found: dict[tuple[int, int], ChunkInfo] = {}
    for folder in (CHUNKS_DIR, DATA_DIR):
        for path in sorted((out / folder).glob("c*-k*.parquet")):
            m = _CHUNK_RE.match(path.name)
            if not m:
                continue
            c = read_metadata(path)["chunk"]
            found[(int(m[1]), int(m[2]))] = ChunkInfo(
                c["label"], c["chunk"], c["tried"], c["latent_passed"], c["accepted"], path)
    return found


# planning


def prior_rate(run_dir: str | Path, n_parents: Sequence[int]) -> float | None:
    """Acceptance measured by jobs/train.py (metrics.json), averaged over the n_parents options."""
    try:
        acc = json.loads((Path(run_dir) / "metrics.json").read_text())["acceptance"]
        return float(np.mean([acc[str(n)]["accepted"] for n in n_parents]))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def class_rates(done: dict[tuple[int, int], ChunkInfo], classes: Sequence[int],
                prior: float | None, min_tried: int) -> dict[int, float | None]:
    """Acceptance per class: measured once min_tried candidates ran, else the prior (lowered
    by 10%, since the prior pools all classes and a shortfall costs a whole extra wave)."""
    rates = {}
    for c in classes:
        tried = sum(i.tried for (cc, _), i in done.items() if cc == c)
        acc = sum(i.accepted for (cc, _), i in done.items() if cc == c)
        if tried >= min_tried:
            if acc == 0 and tried >= 8 * min_tried:
                raise ValueError(
                    f"class {c}: none of {tried} candidates passed both filter steps; its "
                    "thresholds are out of reach for this run (check thresholds.json, retrain, or "
                    "leave the class out with --classes)")
            rates[c] = max(acc, 0.5) / tried
        else:
            rates[c] = None if prior is None else 0.9 * prior
    return rates


def plan_wave(done: dict[tuple[int, int], ChunkInfo], quota: dict[int, int], chunk_size: int,
              rates: dict[int, float | None]) -> list[tuple[int, int]]:
    """Chunks to run next, or [] when every class's chunks 0..k* are done and reach its quota.

    A class with no rate yet gets one pilot chunk. Otherwise chunks are added in order until the
    expected accepted rows reach q_c plus a 2-sigma margin.
    """
    todo = []
    for c, q in quota.items():
        rate = rates.get(c)
        got, k, missing = 0.0, 0, False
        slack = 2.0 * math.sqrt(q / rate) + 1.0 if rate else 0.0
        while True:
            info = done.get((c, k))
            if info is None:
                missing = True
                todo.append((c, k))
                if rate is None:
                    break  # pilot chunk: measure before planning more
                got += rate * chunk_size
            else:
                got += info.accepted
            k += 1
            if got >= q + (slack if missing else 0.0):
                break
    return todo


def cutoffs(done: dict[tuple[int, int], ChunkInfo], quota: dict[int, int]
            ) -> dict[int, tuple[int, int]] | None:
    """{class: (k*, rows to keep from chunk k*)} when the output can be finalised, else None."""
    cut = {}
    for c, q in quota.items():
        got, k = 0, 0
        while got < q:
            info = done.get((c, k))
            if info is None:
                return None
            if got + info.accepted >= q:
                cut[c] = (k, q - got)
            got += info.accepted
            k += 1
    return cut


# finalising


def _delete_pngs(out: Path, table: pa.Table) -> None:
    for rel in table.column("image").combine_chunks().field("path").to_pylist():
        (out / rel).unlink(missing_ok=True)


def finalize(out: Path, done: dict[tuple[int, int], ChunkInfo], cut: dict[int, tuple[int, int]],
             png: bool) -> int:
    """Make OUT/data hold exactly the kept rows; returns the number of Parquet files there.

    Idempotent: a crash anywhere in here is repaired by running it again.
    """
    data = out / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for (c, k), info in sorted(done.items()):
        k_star, keep = cut[c]
        final = data / chunk_name(c, k)
        src = info.path
        if k < k_star or (k == k_star and keep == info.accepted):
            if src != final:
                os.replace(src, final)
        elif k == k_star:
            table = pq.read_table(src)
            if table.num_rows != keep:  # not trimmed yet
                if png:
                    _delete_pngs(out, table.slice(keep))
                meta = read_metadata(src)
                meta["chunk"]["kept"] = keep
                write_parquet_atomic(table.slice(0, keep), final, meta)
            if src != final:
                src.unlink(missing_ok=True)
        else:  # surplus: past the quota
            if png:
                _delete_pngs(out, pq.read_table(src, columns=["image"]))
            src.unlink(missing_ok=True)
        # a copy left in staging by a crash between the write above and the unlink
        (out / CHUNKS_DIR / chunk_name(c, k)).unlink(missing_ok=True)
    return len(list(data.glob("c*-k*.parquet")))


# the driver loop

Runner = Callable[[list[tuple[int, int]]], list[ChunkInfo]]


def run_job(spec: MassSpec, out: str | Path, runner: Runner, *, resume: bool = False,
            overwrite: bool = False, identity: dict | None = None) -> Summary:
    """Generate until the output holds exactly spec.count rows, then finalise and summarise.

    Args:
        spec: what to generate.
        out: the output folder.
        runner: runs a list of chunks (serially, or on a Ray Data actor pool) and returns their
            statistics; it must write each chunk with WriteChunks.
        resume, overwrite: what to do when OUT already holds output (see prepare_output).
        identity: job_metadata(spec, hashes), when the caller already computed it.
    """
    t0 = time.perf_counter()
    out = Path(out)
    identity = identity or job_metadata(spec, run_hashes(spec.run))
    resumed = prepare_output(out, identity, resume=resume, overwrite=overwrite)
    quota = spec.quotas()
    done = {key: info for key, info in scan(out).items() if key[0] in quota}
    if resumed:
        log.info("resuming: %d chunks already done in %s", len(done), out)
    prior = prior_rate(spec.run, spec.n_parents)
    waves, generated = 0, 0
    while True:
        rates = class_rates(done, spec.classes, prior, min_tried=spec.chunk_size)
        todo = plan_wave(done, quota, spec.chunk_size, rates)
        if not todo:
            break
        waves += 1
        known = [r for r in rates.values() if r is not None]
        log.info("wave %d: %d chunks of %d candidates (%s)", waves, len(todo), spec.chunk_size,
                 f"acceptance {np.mean(known):.3f}" if known else "pilot")
        for info in runner(todo):
            info.path = out / CHUNKS_DIR / chunk_name(info.label, info.chunk)
            done[(info.label, info.chunk)] = info
            generated += info.tried
        missing = [key for key in todo if key not in done]
        if missing:
            raise RuntimeError(f"the runner returned no result for chunks {missing[:5]}")
    cut = cutoffs(done, quota)
    n_files = finalize(out, done, cut, spec.png)
    kept = {key: info for key, info in done.items() if key[1] <= cut[key[0]][0]}
    tried = sum(i.tried for i in kept.values())
    lat = sum(i.latent_passed for i in kept.values())
    acc = sum(i.accepted for i in kept.values())
    wall = time.perf_counter() - t0
    summary = Summary(
        requested=spec.count, classes=list(spec.classes),
        quotas={str(c): q for c, q in quota.items()},
        accepted_per_class={str(c): q for c, q in quota.items()},
        candidates_tried=tried, candidates_generated_this_run=generated,
        acceptance={"latent_step": lat / tried, "image_step_given_latent": acc / max(lat, 1),
                    "both_steps": acc / tried},
        waves=waves, resumed=resumed, wall_s=round(wall, 3),
        images_per_s=round(spec.count / wall, 1) if not resumed else
        round(generated * (acc / tried) / wall, 1),
        parquet_files=n_files,
        extra={"chunk_size": spec.chunk_size, "out": str(out)},
    )
    save_json(asdict(summary), out / SUMMARY_FILE)
    return summary


def serial_runner(stage: WriteChunks) -> Runner:
    """Run chunks one after another in this process (tests, the bare baseline)."""

    def run(todo: list[tuple[int, int]]) -> list[ChunkInfo]:
        infos = []
        for c, k in todo:
            r = stage({"label": np.array([c]), "chunk": np.array([k])})
            infos.append(ChunkInfo(int(r["label"][0]), int(r["chunk"][0]), int(r["tried"][0]),
                                   int(r["latent_passed"][0]), int(r["accepted"][0])))
        return infos

    return run


def count_rows(out: str | Path) -> int:
    """Rows in OUT/data (reads only the footers)."""
    return sum(pq.ParquetFile(p).metadata.num_rows
               for p in (Path(out) / DATA_DIR).glob("c*-k*.parquet"))
