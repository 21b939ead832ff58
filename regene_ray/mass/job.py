"""Mass generation, the output folder's lifecycle: the job's identity, creating, resuming or
overwriting OUT, scanning finished chunks, finalising to exactly `count` rows, and the driver
loop that runs waves of chunks through a runner (serial, or Ray Data in ray_stage). No Ray.

Layout: OUT/.regene-ray.json (ownership marker), OUT/.regene-ray.lease (the running driver),
OUT/job.json (the job's identity), OUT/_chunks/, OUT/data/c<label>-k<chunk>.parquet,
OUT/png/<label>/<shard>/<id>.png (with --png), OUT/summary.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from regene_ray.convex import parse_weights
from regene_ray.generator import PRECISIONS
from regene_ray.latent_bank import THRESHOLDS_FILE
from regene_ray.mass.plan import ChunkInfo, class_rates, cutoffs, plan_wave, prior_rate, quotas
from regene_ray.mass.run_files import run_hashes
from regene_ray.mass.sinks import PNG_SHARD, png_relpath, read_metadata, write_parquet_atomic
from regene_ray.nearest import NOVELTY_FILE, novelty_thresholds
from regene_ray.ownership import (
    Lease,
    claim_for_overwrite,
    inspect_owned,
    refuse_if_held,
    write_marker,
)
from regene_ray.storage import Storage, redact

log = logging.getLogger(__name__)

JOB_FILE = "job.json"


SUMMARY_FILE = "summary.json"


CHUNKS_DIR = "_chunks"  # staging: complete chunks, before trimming to the exact count


DATA_DIR = "data"  # the final Parquet files


PNG_DIR = "png"


_CHUNK_RE = re.compile(r"^c(\d+)-k(\d+)\.parquet$")


_PNG_RE = re.compile(r"^(\d{5})/(\d+)\.png$")  # png/<label>/ + <shard>/<id>.png (sinks.png_relpath)


# Bumped whenever the bytes of an output can change (keyed random streams, PNG encoding, batch
# make-up, memory format ...): a resume never mixes files of two formats. v2: job key, runtime.
# v3: mixing on CPU whatever the device (CUDA bytes changed; CPU bytes did not), precision.
# v4: nearest_train_id / nearest_train_distance columns (the novelty step); label int64 with
# ClassLabel metadata (DESIGN.md's int16 is read by Hugging Face as a plain Value, not a class).
FORMAT = "regene-ray mass generation v4"


# what a mass generation writes directly inside OUT (--overwrite deletes these, and only these)
# (in the order --overwrite deletes them: what marks the output complete and whose it is first)
MASS_ARTEFACTS = [SUMMARY_FILE, JOB_FILE, DATA_DIR, CHUNKS_DIR, PNG_DIR]


def chunk_name(label: int, chunk: int) -> str:
    return f"c{label:03d}-k{chunk:07d}.parquet"


@dataclass(frozen=True)
class MassSpec:
    """What to generate; two jobs with equal specs (and run hashes) write identical outputs."""

    run: str  # run folder (absolute)
    count: int  # exact number of images to keep
    classes: tuple[int, ...]  # classes to generate, balanced
    n_parents: tuple[int, ...] = (2,)  # parents per mix, drawn per candidate when several
    weights: str = "uniform"  # uniform | dirichlet:<alpha> | ratios
    seed: int = 0  # all randomness is a function of (seed, candidate id)
    chunk_size: int = 1024  # candidates per chunk: the unit of work, resume and Parquet files
    png: bool = False  # also write OUT/png/<label>/<shard>/<id>.png
    batch_size: int = 0  # candidates per decoder batch inside a chunk (0: the whole chunk)
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (the decoder's; see ConvexGenerator)
    novelty_quantile: float = 0.0  # novelty step: reject codes nearer a training code than this
    # quantile of real held-out images are (RUN/novelty.json); 0 runs no novelty step
    class_weights: tuple[int, ...] = ()  # per-class quota weights, one per class (such as the
    # training split's class sizes, --class-counts train); () balances the classes

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: use one of "
                             f"{', '.join(PRECISIONS)}")
        if not 0 <= self.novelty_quantile < 1:
            raise ValueError(f"--novelty-quantile {self.novelty_quantile} must be in (0, 1), "
                             "e.g. 0.01 (or 0 for no novelty step)")
        if self.batch_size < 0:
            raise ValueError(f"--batch-size {self.batch_size} must be at least 1 (0, in the "
                             "Python API only, means one batch per chunk)")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size {self.chunk_size} must be at least 1")
        if not self.classes:
            raise ValueError("--classes is empty; give class indices such as 0,1,2")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"--classes {list(self.classes)} repeats a class")
        if any(n < 2 for n in self.n_parents):
            raise ValueError(f"--n-parents {list(self.n_parents)}: a convex mix needs at least 2 "
                             "parents")
        if self.class_weights and (len(self.class_weights) != len(self.classes)
                                   or min(self.class_weights) < 1):
            raise ValueError(f"class weights {list(self.class_weights)} must be one whole number "
                             f">= 1 for each of the {len(self.classes)} classes")
        scheme = parse_weights(self.weights)
        if scheme.kind == "ratios" and any(n != len(scheme.ratios) for n in self.n_parents):
            raise ValueError(f"--weights {self.weights} gives {len(scheme.ratios)} ratios but "
                             f"--n-parents is {','.join(map(str, self.n_parents))}; give one "
                             "ratio per parent, or use uniform or dirichlet:<alpha>")

    def quotas(self) -> dict[int, int]:
        return quotas(self.count, self.classes, self.class_weights)


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
    # near-copies the novelty step rejected, per class, in the chunks kept (empty: no such step)
    novelty_rejected_per_class: dict[str, int] = field(default_factory=dict)


def runtime_identity(device_kind: str) -> dict:
    """What besides the spec and checkpoints changes output bytes: the device kind (CPU and CUDA
    convs round differently) and the torch version."""
    return {"device": device_kind, "torch": torch.__version__}


def job_metadata(spec: MassSpec, hashes: dict[str, str], *, device: str = "cpu",
                 thresholds: dict | None = None) -> dict:
    """The job's identity, stored in job.json and in every Parquet file.

    Args:
        spec: what to generate; its run path is recorded without credentials.
        hashes: sha256 of the run files (hashes_of / run_hashes).
        device: the device kind the workers run on ('cpu' or 'cuda').
        thresholds: the run's thresholds.json (read from spec.run when not given).
    """
    if thresholds is None:
        thresholds = Storage(spec.run).read_json(THRESHOLDS_FILE)
    spec_record = asdict(spec) | {"run": redact(spec.run)}
    if not spec.class_weights:  # balanced: recorded as before class weights existed, so the
        del spec_record["class_weights"]  # outputs of earlier versions keep their job key
    identity = {"spec": spec_record, "checkpoint_sha256": hashes,
                "thresholds": {k: thresholds[k] for k in ("latent", "image")},
                "class_names": run_class_names(spec.run, len(thresholds["latent"])),
                "novelty": novelty_identity(spec),
                "runtime": runtime_identity(str(device).split(":")[0]),
                "format": FORMAT}
    identity = json.loads(json.dumps(identity))  # as job.json holds it (tuples become lists)
    identity["job_key"] = job_key(identity)
    return identity


def novelty_identity(spec: MassSpec) -> dict | None:
    """The novelty step's space, quantile and per-class thresholds (from RUN/novelty.json), or
    None when the spec runs no novelty step."""
    if not spec.novelty_quantile:
        return None
    st = Storage(spec.run)
    if not st.is_file(NOVELTY_FILE):
        raise FileNotFoundError(
            f"--novelty-quantile needs {st.display(NOVELTY_FILE)} (held-out nearest-train "
            "distances), which jobs/train.py writes; run jobs/train.py again on this run (it "
            "resumes without retraining and adds the file), or drop --novelty-quantile")
    stats = st.read_json(NOVELTY_FILE)
    return {"space": stats.get("space"), "quantile": spec.novelty_quantile,
            "thresholds": novelty_thresholds(stats, spec.novelty_quantile)}


def run_class_names(run: str, num_classes: int) -> list[str]:
    """The run's class names (metrics.json, written by jobs/train.py), or "0", "1", ... for a
    run that predates them; they become the `label` column's Hugging Face ClassLabel names."""
    try:
        names = Storage(run).read_json("metrics.json").get("class_names")
    except (OSError, ValueError, AttributeError):
        names = None
    if not isinstance(names, list) or len(names) != num_classes:
        return [str(c) for c in range(num_classes)]
    return [str(n) for n in names]


def job_key(identity: dict) -> str:
    """A digest of everything that fixes the output's bytes. The run folder's path is left out
    (the same checkpoints, by hash, may sit elsewhere on another driver host)."""
    ident = json.loads(json.dumps(identity))
    ident.pop("job_key", None)
    ident.get("spec", {}).pop("run", None)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def same_job(a: dict, b: dict) -> bool:
    """Whether two job identities describe the same output."""
    return job_key(a) == job_key(b)


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two identities, in flag names, for the refusal message."""
    differ = sorted(k for k in set(old.get("spec", {})) | set(new["spec"])
                    if k != "run" and old.get("spec", {}).get(k) != new["spec"].get(k))
    if old.get("checkpoint_sha256") != new.get("checkpoint_sha256"):
        differ.append("run checkpoints")
    if old.get("thresholds") != new.get("thresholds"):
        differ.append("thresholds")
    old_rt, new_rt = old.get("runtime", {}), new.get("runtime", {})
    if old_rt.get("device") != new_rt.get("device"):
        differ.append(f"device kind ({old_rt.get('device')} -> {new_rt.get('device')})")
    if old_rt.get("torch") != new_rt.get("torch"):
        differ.append(f"torch version ({old_rt.get('torch')} -> {new_rt.get('torch')})")
    if old.get("format") != new.get("format"):
        differ.append(f"output format ({old.get('format')} -> {new.get('format')})")
    return differ


def inspect_output(out: Storage, identity: dict, *, resume: bool, overwrite: bool,
                   lease: Lease | None = None) -> str:
    """What OUT allows for this job, without touching it: 'new', 'resume' or 'overwrite'.
    Without `lease` (this driver's, once taken), a live driver's lease on OUT is refused first.

    Raises:
        FileExistsError (OwnershipError): a file; a folder no mass-generation job made; a
            different job's output without --overwrite; this job's output without --resume.
    """
    if out.is_file():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    if lease is None:
        refuse_if_held(out)  # another live driver: say so, whatever state the folder is in
    action = inspect_owned(out, "mass", overwrite=overwrite, what="a mass-generation output")
    if action != "existing":
        return action
    if not out.is_file(JOB_FILE):
        raise FileExistsError(
            f"--out {out} holds what is left of an interrupted --overwrite (no {JOB_FILE}); run "
            "with --overwrite again to finish replacing it")
    old = out.read_json(JOB_FILE)
    if not same_job(old, identity):
        raise FileExistsError(
            f"--out {out} holds a different job's output (differs in: "
            f"{', '.join(_differences(old, identity)) or 'format'}); pass --overwrite to replace "
            "it, or choose another --out")
    if not resume:
        raise FileExistsError(
            f"--out {out} already holds this job's output; pass --resume to complete it, or "
            "--overwrite to start again")
    return "resume"


def prepare_output(out: Storage, identity: dict, *, resume: bool, overwrite: bool,
                   lease: Lease | None = None) -> bool:
    """Create OUT or check it holds this job (inspect_output), then act: --overwrite deletes the
    earlier job's artefacts, as its marker lists them. Call it only once every input was
    validated and the lease is held. Returns True when an earlier attempt is resumed."""
    action = inspect_output(out, identity, resume=resume, overwrite=overwrite, lease=lease)
    if action == "resume":
        n = delete_temporaries(out)  # leftovers of local writes cut short by a crash
        if n:
            log.info("deleted %d temporary files of writes cut short", n)
        return True
    if action == "overwrite":
        claim_for_overwrite(out, "mass")
    out.makedirs()
    write_marker(out, "mass", MASS_ARTEFACTS, {"job_key": identity["job_key"]})
    out.write_json(JOB_FILE, identity)
    return False


_TMP_RE = re.compile(r"^\..+\.tmp\d+$")  # regene_ray.storage's temporary names


def delete_temporaries(out: Storage) -> int:
    """Delete the `.NAME.tmp<pid>` files this job's own writes leave when cut short, in the
    folders the job owns (never anything else)."""
    if not out.is_local:
        return 0  # object stores publish whole objects only: nothing half-written to clean
    rels = [n for n in out.list() if _TMP_RE.match(n)]
    for folder in (CHUNKS_DIR, DATA_DIR, PNG_DIR):
        rels += [f"{folder}/{n}" for n in out.list(folder, recursive=True)
                 if _TMP_RE.match(posixpath.basename(n))]
    for rel in rels:
        out.delete(rel)
    return len(rels)


class ForeignChunkError(FileExistsError):
    """A chunk file in OUT that another job wrote."""


def scan(out: Storage, key: str) -> dict[tuple[int, int], ChunkInfo]:
    """Finished chunks of the job `key` in OUT/data and OUT/_chunks (data wins when a chunk is
    in both, as an object-store move cut short leaves it).

    A chunk file that cannot be read (a write cut short by a power loss on a filesystem that
    lost the data) is deleted, so the chunk is generated again. A readable chunk of another job
    stops the job with a message naming the file: rows of two jobs never mix.
    """
    found: dict[tuple[int, int], ChunkInfo] = {}
    for folder in (CHUNKS_DIR, DATA_DIR):
        for name in out.list(folder):
            m = _CHUNK_RE.match(name)
            if not m:
                continue
            rel = f"{folder}/{name}"
            try:
                meta = read_metadata(rel, out)
            except pa.ArrowInvalid as e:  # not Parquet: a write lost to a power loss
                log.warning("%s is not a readable Parquet file (%s); deleting it, its chunk is "
                            "generated again", out.display(rel), e)
                out.delete(rel)
                continue
            except ValueError as e:  # Parquet, but not written by regene-ray
                raise ForeignChunkError(f"{e}; then run again with --resume") from None
            # any other error (OSError: storage unreachable, throttled) stops the job as is
            if meta.get("job_key") != key:
                raise ForeignChunkError(
                    f"{out.display(rel)} was written by another job (job key "
                    f"{str(meta.get('job_key'))[:12]}, seed {meta.get('spec', {}).get('seed')}), "
                    "not this one: is another driver writing into --out, or were files copied "
                    "in? Move the file out of --out, then run again with --resume")
            c = meta["chunk"]
            if (c["label"], c["chunk"]) != (int(m[1]), int(m[2])):
                raise ForeignChunkError(f"{out.display(rel)} holds chunk ({c['label']}, "
                                        f"{c['chunk']}) under another chunk's name; move it out "
                                        "of --out, then run again with --resume")
            found[(int(m[1]), int(m[2]))] = ChunkInfo(
                c["label"], c["chunk"], c["tried"], c["latent_passed"], c["accepted"], rel,
                novelty_rejected=c.get("novelty_rejected", 0))
    return found


def _png_paths(table: pa.Table, num_classes: int) -> list[str]:
    """The PNG paths of `table`'s rows, each checked to be exactly the path this job gives its
    id (sinks.png_relpath): a path read from a file is never trusted for a delete."""
    ids = table.column("id").to_pylist()
    paths = table.column("image").combine_chunks().field("path").to_pylist()
    for i, p in zip(ids, paths, strict=True):
        if p != png_relpath(i % num_classes, i // num_classes, i):
            raise ForeignChunkError(f"row {i} points at {p!r}, not the PNG this job writes for "
                                    "it; the chunk file was not written by regene-ray")
    return paths


def _delete_pngs(out: Storage, table: pa.Table, num_classes: int) -> None:
    out.delete_many(_png_paths(table, num_classes))


def finalize(out: Storage, done: dict[tuple[int, int], ChunkInfo],
             cut: dict[int, tuple[int, int]], png: bool, num_classes: int) -> int:
    """Make OUT/data hold exactly the kept rows; returns the number of Parquet files there.

    Idempotent: a crash anywhere in here is repaired by running it again (a chunk found in both
    OUT/_chunks and OUT/data, as an object-store move cut short leaves it, counts as moved).
    """
    out.makedirs(DATA_DIR)
    for (c, chunk), info in sorted(done.items()):
        last_chunk, keep = cut[c]
        final = f"{DATA_DIR}/{chunk_name(c, chunk)}"
        src = info.path
        if chunk < last_chunk or (chunk == last_chunk and keep == info.accepted):
            if src != final:
                out.move(src, final)
        elif chunk == last_chunk:
            table = pq.read_table(out.path(src), filesystem=out.fs)
            if table.num_rows != keep:  # not trimmed yet
                if png:
                    _delete_pngs(out, table.slice(keep), num_classes)
                meta = read_metadata(src, out)
                meta["chunk"]["kept"] = keep
                write_parquet_atomic(table.slice(0, keep), final, meta, out)
            if src != final:
                out.delete(src)
        else:  # surplus: past the quota
            if png:
                _delete_pngs(out, pq.read_table(out.path(src), columns=["id", "image"],
                                                filesystem=out.fs), num_classes)
            out.delete(src)
        # a copy left in staging by a crash between the write above and the delete
        out.delete(f"{CHUNKS_DIR}/{chunk_name(c, chunk)}")
    if png:
        for c in cut:
            delete_orphan_pngs(out, c, num_classes)
    return sum(1 for n in out.list(DATA_DIR) if _CHUNK_RE.match(n))


def delete_orphan_pngs(out: Storage, label: int, num_classes: int) -> int:
    """Delete class `label`'s PNG files that no kept row points to; returns how many.

    Left by chunks whose PNGs were written but whose Parquet file never landed (a worker or the
    driver killed in between) or was later trimmed or regenerated with fewer rows. Only files
    named as this job names its PNGs (<shard>/<id>.png with an id of this class, in its shard)
    are candidates; anything else under png/ is left alone and reported.
    """
    kept = set()
    for name in out.list(DATA_DIR):
        m = _CHUNK_RE.match(name)
        if m and int(m[1]) == label:
            ids = pq.read_table(out.path(f"{DATA_DIR}/{name}"), columns=["id"],
                                filesystem=out.fs).column("id").to_pylist()
            kept.update(ids)
    base = f"{PNG_DIR}/{label}"
    orphans, strangers = [], 0
    for rel in out.list(base, recursive=True):
        m = _PNG_RE.match(rel)
        if m is None or int(m[2]) % num_classes != label or \
                int(m[1]) != int(m[2]) // num_classes // PNG_SHARD:
            strangers += 1
            continue
        if int(m[2]) not in kept:
            orphans.append(f"{base}/{rel}")
    if strangers:
        log.warning("%d files under %s were not written by this job; left in place", strangers,
                    out.display(base))
    if orphans:
        log.info("deleting %d PNG files of class %d that no row points to (chunks cut short or "
                 "trimmed)", len(orphans), label)
        out.delete_many(orphans)
    return len(orphans)


Runner = Callable[[list[tuple[int, int]]], list[ChunkInfo]]


def run_job(spec: MassSpec, out: str | Path | Storage, runner: Runner, *, resume: bool = False,
            overwrite: bool = False, identity: dict | None = None,
            details: dict | None = None) -> Summary:
    """Generate until the output holds exactly spec.count rows, then finalise and summarise.

    Args:
        spec: what to generate.
        out: the output folder: a local path, s3://..., gs://... (see regene_ray.storage).
        runner: runs a list of chunks (serially, or on a Ray Data actor pool) and returns their
            statistics; it must write each chunk with WriteChunks.
        resume, overwrite: what to do when OUT already holds output (see prepare_output).
        identity: job_metadata(spec, hashes), when the caller already computed it.
        details: how the job ran (device, workers ...), added to the summary's `extra`.
    """
    out = out if isinstance(out, Storage) else Storage(out)
    identity = identity or job_metadata(spec, run_hashes(spec.run))
    inspect_output(out, identity, resume=resume, overwrite=overwrite)  # refuse before the lease
    with Lease(out, "mass generation") as lease:
        return _run_locked(spec, out, runner, lease, identity, resume=resume,
                           overwrite=overwrite, details=details)


def _run_locked(spec: MassSpec, out: Storage, runner: Runner, lease: Lease, identity: dict, *,
                resume: bool, overwrite: bool, details: dict | None) -> Summary:
    t0 = time.perf_counter()
    resumed = prepare_output(out, identity, resume=resume, overwrite=overwrite, lease=lease)
    quota = spec.quotas()
    num_classes = len(identity["thresholds"]["latent"])  # one threshold per class of the run
    done = {key: info for key, info in scan(out, identity["job_key"]).items() if key[0] in quota}
    if resumed:
        log.info("resuming: %d chunks already done in %s", len(done), out)
    prior = prior_rate(spec.run, spec.n_parents)
    waves, generated, per_node, stage_gpus = 0, 0, {}, {}
    while True:
        rates = class_rates(done, spec.classes, prior, min_tried=spec.chunk_size)
        todo = plan_wave(done, quota, spec.chunk_size, rates)
        if not todo:
            break
        lease.check()
        if waves == 0:
            out.delete(SUMMARY_FILE)  # the output changes now: incomplete until rewritten
        waves += 1
        known = [r[0] for r in rates.values() if r is not None]
        log.info("wave %d: %d chunks of %d candidates (%s)", waves, len(todo), spec.chunk_size,
                 f"acceptance {np.mean(known):.3f}" if known else "pilot")
        for info in runner(todo):
            info.path = f"{CHUNKS_DIR}/{chunk_name(info.label, info.chunk)}"
            done[(info.label, info.chunk)] = info
            generated += info.tried
            if info.node:
                per_node[info.node] = per_node.get(info.node, 0) + 1
            for stage, gpus in info.stage_gpus.items():
                stage_gpus.setdefault(stage, set()).add(gpus)
        missing = [key for key in todo if key not in done]
        if missing:
            raise RuntimeError(f"the runner returned no result for chunks {missing[:5]}")
    lease.check()
    cut = cutoffs(done, quota)
    n_files = finalize(out, done, cut, spec.png, num_classes)
    kept = {key: info for key, info in done.items() if key[1] <= cut[key[0]][0]}
    tried = sum(i.tried for i in kept.values())
    lat = sum(i.latent_passed for i in kept.values())
    acc = sum(i.accepted for i in kept.values())
    nov = sum(i.novelty_rejected for i in kept.values())
    wall = time.perf_counter() - t0
    summary = Summary(
        requested=spec.count, classes=list(spec.classes),
        quotas={str(c): q for c, q in quota.items()},
        accepted_per_class={str(c): keep + sum(i.accepted for (cc, chunk), i in kept.items()
                                               if cc == c and chunk < last_chunk)
                            for c, (last_chunk, keep) in cut.items()},
        candidates_tried=tried, candidates_generated_this_run=generated,
        acceptance={"latent_step": lat / tried,
                    "image_step_given_latent": (acc + nov) / max(lat, 1),
                    **({"novelty_step_given_image": acc / max(acc + nov, 1)}
                       if spec.novelty_quantile else {}),
                    "both_steps": acc / tried},
        waves=waves, resumed=resumed, wall_s=round(wall, 3),
        images_per_s=round(spec.count / wall, 1) if not resumed else
        round(generated * (acc / tried) / wall, 1),
        parquet_files=n_files,
        novelty_rejected_per_class={
            str(c): sum(i.novelty_rejected for (cc, _), i in kept.items() if cc == c)
            for c in spec.classes} if spec.novelty_quantile else {},
        extra={"chunk_size": spec.chunk_size, "batch_size": spec.batch_size, "out": str(out),
               **(details or {}), **({"chunks_per_node": per_node} if per_node else {}),
               **({"stage_gpus": {k: sorted(v) for k, v in sorted(stage_gpus.items())}}
                  if stage_gpus else {})},
    )
    out.write_json(SUMMARY_FILE, asdict(summary))
    return summary


def count_rows(out: str | Path | Storage) -> int:
    """Rows in OUT/data (reads only the footers)."""
    out = out if isinstance(out, Storage) else Storage(out)
    return sum(pq.read_metadata(out.path(f"{DATA_DIR}/{n}"), filesystem=out.fs).num_rows
               for n in out.list(DATA_DIR) if _CHUNK_RE.match(n))
