"""Mass generation, the driver loop: take the output folder's lease, prepare it, stream chunks
through a runner (serial here, Ray Data in ray_stream) as a ChunkPlanner hands them out until
every class reaches its quota, then finalise, write the dataset card and croissant.json
(regene_ray.publish) and, last, summary.json. No Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from regene_ray.mass.finish import finalize
from regene_ray.mass.identity import MassSpec, job_metadata
from regene_ray.mass.output import (
    CHUNKS_DIR,
    SUMMARY_FILE,
    chunk_name,
    inspect_output,
    prepare_output,
    scan,
)
from regene_ray.mass.plan import ChunkInfo, ChunkPlanner, cutoffs, prior_rates
from regene_ray.ownership import Lease
from regene_ray.publish.export import write_metadata
from regene_ray.run_files import run_hashes
from regene_ray.storage import Storage

log = logging.getLogger(__name__)


# A runner runs the chunks a planner hands out (planner.take) and yields each finished chunk's
# statistics as it lands; it ends when the planner says the job is complete, or when the work
# slots it started with are spent (run_job then starts another stream).
Runner = Callable[[ChunkPlanner], Iterator[ChunkInfo]]


@dataclass
class Summary:
    requested: int
    classes: list[int]
    quotas: dict[str, int]
    accepted_per_class: dict[str, int]
    candidates_tried: int  # candidates in the chunks up to each class's cutoff
    candidates_generated_this_run: int  # all candidates decoded by this invocation
    acceptance: dict[str, float]  # per filter step, over candidates_tried
    streams: int  # streams of work (Ray datasets, each with its actor pools) this run started
    resumed: bool
    wall_s: float
    images_per_s: float
    parquet_files: int
    extra: dict = field(default_factory=dict)
    # near-copies the novelty step rejected, per class, in the chunks kept (empty: no such step)
    novelty_rejected_per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class Progress:
    """What this run generated, and where (for the summary)."""

    generated: int = 0  # candidates decoded by this run
    chunks_per_node: dict[str, int] = field(default_factory=dict)
    stage_gpus: dict[str, set] = field(default_factory=dict)
    actors: dict[str, set] = field(default_factory=dict)  # stage -> actor ids that ran chunks
    stream_started_at: float | None = None  # wall clock: the first stream started ...
    first_taken_at: float | None = None  # ... its first chunk taken by a worker ...
    last_at: float | None = None  # ... and the last one landing here

    def add(self, info: ChunkInfo) -> None:
        self.generated += info.tried
        if info.taken_at:
            self.first_taken_at = min(self.first_taken_at or info.taken_at, info.taken_at)
        self.last_at = time.time()
        if info.node:
            self.chunks_per_node[info.node] = self.chunks_per_node.get(info.node, 0) + 1
        for stage, gpus in info.stage_gpus.items():
            self.stage_gpus.setdefault(stage, set()).add(gpus)
        for stage, actor in info.actors.items():
            self.actors.setdefault(stage, set()).add(actor)

    def record(self) -> dict:
        return {**({"chunks_per_node": self.chunks_per_node} if self.chunks_per_node else {}),
                **({"stage_gpus": {k: sorted(v) for k, v in sorted(self.stage_gpus.items())}}
                   if self.stage_gpus else {}),
                **({"actors_per_stage": {k: len(v) for k, v in sorted(self.actors.items())}}
                   if self.actors else {})}


def run_job(spec: MassSpec, out: str | Path | Storage, runner: Runner, *, resume: bool = False,
            overwrite: bool = False, identity: dict | None = None,
            details: dict | None = None) -> Summary:
    """Generate until the output holds exactly spec.count rows, then finalise and summarise.

    Args:
        spec: what to generate.
        out: the output folder: a local path, s3://..., gs://... (see regene_ray.storage).
        runner: runs the chunks a ChunkPlanner hands out (serially, or on Ray Data actor pools)
            and yields their statistics; it must write each chunk with CommitChunks.
        resume, overwrite: what to do when OUT already holds output (see prepare_output).
        identity: job_metadata(spec, hashes), when the caller already computed it.
        details: how the job ran (device, workers, start-up phases ...), for the summary's
            `extra`.
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
    done = {key: info for key, info in scan(out, identity["job_key"]).items() if key[0] in quota}
    if resumed:
        log.info("resuming: %d chunks already done in %s", len(done), out)
    streams, progress = _generate(spec, out, runner, lease, done)
    lease.check()
    t_final = time.perf_counter()
    cut = cutoffs(done, quota)
    n_files = finalize(out, done, cut, spec.png, len(identity["thresholds"]["latent"]))
    wall = time.perf_counter() - t0
    summary = summarize(spec, done, cut, progress, streams=streams, resumed=resumed, wall=wall,
                        n_files=n_files)
    summary.extra |= {"out": str(out), **(details or {}), **progress.record(),
                      "finalize_s": round(time.perf_counter() - t_final, 3),
                      "finished": datetime.now(timezone.utc).date().isoformat()}
    if progress.first_taken_at:
        summary.extra |= {"first_chunk_taken_at": progress.first_taken_at,
                          "pool_start_s": round(progress.first_taken_at
                                                - progress.stream_started_at, 3),
                          "generating_s": round(progress.last_at - progress.first_taken_at, 3)}
    write_metadata(out, asdict(summary), run=spec.run)  # card and croissant.json, then summary
    out.write_json(SUMMARY_FILE, asdict(summary))
    return summary


def _generate(spec: MassSpec, out: Storage, runner: Runner, lease: Lease,
              done: dict[tuple[int, int], ChunkInfo]) -> tuple[int, Progress]:
    """Streams of work until every class's quota is reached; `done` is filled in place."""
    quota = spec.quotas()
    prior = prior_rates(spec.run, spec.n_parents)
    streams, progress = 0, Progress()
    while cutoffs(done, quota) is None:
        planner = ChunkPlanner(quota, spec.chunk_size, done, prior)
        planner.check()
        lease.check()
        if streams == 0:
            out.delete(SUMMARY_FILE)  # the output changes now: incomplete until rewritten
            progress.stream_started_at = time.time()
        streams += 1
        log.info("stream %d: about %d chunks of %d candidates to go%s", streams,
                 planner.expected_chunks(), spec.chunk_size,
                 "" if streams == 1 else " (acceptance fell short of the plan)")
        with closing(runner(planner)) as results:
            for info in results:
                info.path = f"{CHUNKS_DIR}/{chunk_name(info.label, info.chunk)}"
                done[(info.label, info.chunk)] = info
                planner.record(info)
                progress.add(info)
                planner.check()
                lease.check()
    return streams, progress


def summarize(spec: MassSpec, done: dict[tuple[int, int], ChunkInfo],
              cut: dict[int, tuple[int, int]], progress: Progress, *, streams: int,
              resumed: bool, wall: float, n_files: int) -> Summary:
    """The finished job's counts and acceptance, over the chunks kept (0..k* per class)."""
    quota = spec.quotas()
    kept = {key: info for key, info in done.items() if key[1] <= cut[key[0]][0]}
    tried = sum(i.tried for i in kept.values())
    lat = sum(i.latent_passed for i in kept.values())
    acc = sum(i.accepted for i in kept.values())
    nov = sum(i.novelty_rejected for i in kept.values())
    return Summary(
        requested=spec.count, classes=list(spec.classes),
        quotas={str(c): q for c, q in quota.items()},
        accepted_per_class={str(c): keep + sum(i.accepted for (cc, chunk), i in kept.items()
                                               if cc == c and chunk < last_chunk)
                            for c, (last_chunk, keep) in cut.items()},
        candidates_tried=tried, candidates_generated_this_run=progress.generated,
        acceptance={"latent_step": lat / tried,
                    "image_step_given_latent": (acc + nov) / max(lat, 1),
                    **({"novelty_step_given_image": acc / max(acc + nov, 1)}
                       if spec.novelty_quantile else {}),
                    "both_steps": acc / tried},
        streams=streams, resumed=resumed, wall_s=round(wall, 3),
        images_per_s=round(spec.count / wall, 1) if not resumed else
        round(progress.generated * (acc / tried) / wall, 1),
        parquet_files=n_files,
        novelty_rejected_per_class={
            str(c): sum(i.novelty_rejected for (cc, _), i in kept.items() if cc == c)
            for c in spec.classes} if spec.novelty_quantile else {},
        extra={"chunk_size": spec.chunk_size, "batch_size": spec.batch_size},
    )
