"""The stream of a mass-generation job on Ray Data: work slots through the stages of
regene_ray.mass.ray_stage, one stream per job, and the runner regene_ray.mass.job.run_job
drives.

A job's first stream can start before its inputs are known (`RayStream.prestart`), so that its
actors (a fresh process each, which imports torch) start while the driver reads and checks the
run, instead of after it; the job does so only where the actors leave the driver a CPU
(`RayStream.starting_early_pays`: on a box they fill, it measured slower, BENCHMARKS.md
section 12). Until then they do nothing but report the
runtime they run (which the job's identity needs, so no separate probe task competes with them
for the CPUs) and wait on the planner's actor: for their constructor arguments, which the
driver posts once every input is checked (`runner`), and for the planner, which run_job hands
over once it holds the output's lease. So an early stream touches nothing of the output before
the checks and the lease do, as a stream started later would not.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from regene_ray.cluster import data_context
from regene_ray.mass.plan import (
    ACTOR_WAIT_S,
    MIX_ACTORS,
    PIPELINES,
    ChunkInfo,
    ChunkPlanner,
    Pools,
    split_pools,
)
from regene_ray.mass.planner_actor import PlannerOnRay

if TYPE_CHECKING:  # torch: the stages (ray_stage) load where a stream is built, not before
    from regene_ray.mass.identity import MassSpec
    from regene_ray.mass.job import Runner
    from regene_ray.run_files import RunFiles
    from regene_ray.storage import Storage

log = logging.getLogger(__name__)

# Ray Data settings of a stream (set while its dataset is built, then restored):
DATA_CONTEXT = dict(
    # how long Ray Data waits for an actor pool's first actors (its default: forever): actors no
    # node can hold, and no autoscaler adds, then fail the job instead of hanging it
    wait_for_min_actors_s=ACTOR_WAIT_S,
    # a stage's own exception (a full disk, a foreign chunk) reaches the driver as itself, not
    # as "UDF failed to process a data block" with the cause lost on the way
    raise_original_map_exception=True,
)


CLOSE_WAIT_S = 10  # how long closing an unused early stream waits for it to end


def _info(r: dict) -> ChunkInfo:
    """A result row -> ChunkInfo, with where each stage ran."""
    from regene_ray.mass.ray_stage import PLACED

    where = {k[len(PLACED):-len("_gpus")]: float(v) for k, v in r.items()
             if k.startswith(PLACED) and k.endswith("_gpus")}
    actors = {k[len(PLACED):-len("_actor")]: str(v) for k, v in r.items()
              if k.startswith(PLACED) and k.endswith("_actor")}
    net = "fused" if "fused" in where else "score"
    return ChunkInfo(int(r["label"]), int(r["chunk"]), int(r["tried"]),
                     int(r["latent_passed"]), int(r["accepted"]),
                     node=str(r[f"{PLACED}{net}_node"]), stage_gpus=where,
                     novelty_rejected=int(r.get("novelty_rejected", 0)), actors=actors,
                     taken_at=float(r[f"{PLACED}taken_at"]))


class _Started:
    """A stream whose execution began in a background thread: the thread waits for its first
    row (for an early stream that needs the planner, so it blocks until run_job hands that
    over) and then hands the iterator to the driver's thread."""

    def __init__(self, board, ds):
        self.board, self.ds = board, ds
        self.iterator: Iterator[dict] | None = None
        self.first_row: dict | None = None
        self.error: BaseException | None = None
        self.kill_board_when_done = False
        self.ready = threading.Event()
        threading.Thread(target=self._start, name="stream-start", daemon=True).start()

    def _start(self) -> None:
        try:
            self.iterator = iter(self.ds.iter_rows())
            self.first_row = next(self.iterator, None)
        except BaseException as e:  # noqa: BLE001 - raised in the driver's thread (rows, check)
            self.error = e
        finally:
            self.ready.set()
            if self.kill_board_when_done:  # abandoned (RayStream.close): nobody else will
                import ray

                with contextlib.suppress(Exception):  # Ray may be shut down by now
                    ray.kill(self.board)

    def check(self) -> None:
        """Raise the stream's error if it failed before its first row (its actors could not
        start, for example)."""
        if self.ready.is_set() and self.error is not None:
            raise self.error

    def rows(self) -> Iterator[dict]:
        """Every row, once the first is in."""
        self.ready.wait()
        self.check()
        return itertools.chain([self.first_row] if self.first_row is not None else [],
                               self.iterator)

    def close(self) -> None:
        """Stop the stream's execution, unless its first row is still on its way (the thread
        is inside the iterator then; the process is exiting, a SIGTERM or Ctrl-C, and Ray's
        shutdown ends it)."""
        if self.ready.is_set() and self.iterator is not None:
            self.iterator.close()


class RayStream:
    """The Ray side of one job: its stage layout, actor pools and streams of work slots.

    `prestart(slots)` starts the first stream before the job is known (see the module
    docstring); `runner(spec, files, out, identity)` is the Runner run_job drives, which uses
    the early stream first, if there is one, and builds any later stream afresh.

    pipeline 'fused': map_batches on one actor pool of `stage` (default WriteChunksOnNode) that
    mixes, runs the networks and commits. pipeline 'split': three operators, MixOnRay (CPU) ->
    ScoreOnRay (the only one given GPUs) -> `commit_stage` (default CommitOnRay, CPU), sized by
    `pools` (default split_pools on the cluster's CPUs).
    """

    def __init__(self, *, workers: tuple[int, int], gpus_per_worker: float | None, device: str,
                 torch_threads: int, pipeline: str = "fused", pools: Pools | None = None,
                 stage: type | None = None, commit_stage: type | None = None):
        if pipeline not in PIPELINES:
            raise ValueError(f"--pipeline {pipeline!r}: use one of {', '.join(PIPELINES)}")
        self.pipeline, self.device, self.torch_threads = pipeline, device, torch_threads
        self.layout = dict(workers=workers, gpus_per_worker=gpus_per_worker,
                           pools=pools if pipeline == "fused" or pools else
                           split_pools_here(workers, gpus_per_worker),
                           stage=stage, commit_stage=commit_stage)
        self.early: _Started | None = None

    def _stream(self, board, slots: int, args_of: dict):
        import ray

        from regene_ray.mass.ray_stage import fused, split

        build = fused if self.pipeline == "fused" else split
        with data_context(**DATA_CONTEXT):  # a dataset keeps a copy of the context
            ds = ray.data.from_items([{"slot": i} for i in range(slots)],
                                     override_num_blocks=slots)
            return build(ds, args_of, planner=board, slots=slots, **self.layout)

    def _board(self, planner: ChunkPlanner | None = None):
        import ray

        return ray.remote(num_cpus=0, max_restarts=0)(PlannerOnRay).remote(planner)

    def cpus(self) -> float:
        """CPUs the stream's actors reserve at full size."""
        workers, pools = self.layout["workers"], self.layout["pools"]
        if self.pipeline == "fused":
            return float(workers[1])
        return pools.workers[1] + MIX_ACTORS * pools.mix_cpus + \
            pools.cpu_workers[1] * pools.commit_cpus

    def starting_early_pays(self) -> bool:
        """Whether to prestart: only when the actors leave a CPU of the cluster to the driver,
        which reads the run meanwhile. Where they take every CPU (the default on a CPU box),
        the read and their start-up share the cores, and starting them first made the first
        chunk later, not sooner (BENCHMARKS.md section 12)."""
        import ray

        return self.cpus() < ray.cluster_resources().get("CPU", 0)

    def prestart(self, slots: int) -> None:
        """Start a stream of `slots` work slots now, its actors waiting for their job."""
        from regene_ray.mass.ray_stage import early_args

        board = self._board()
        self.early = _Started(board, self._stream(board, slots,
                                                  early_args(self.pipeline, self.device)))

    def runtime_ref(self):
        """An object-store reference to the runtime the early stream's first network actor
        reports (cluster.probed_runtime reads it, with `alive` = self.check)."""
        return self.early.board.runtime.remote()

    def check(self) -> None:
        if self.early is not None:
            self.early.check()

    def close(self) -> None:
        """End an early stream that was never used (the job failed, or had nothing to do): its
        slots run as no-ops and it ends, its actors gone when this returns. Should it not end
        within CLOSE_WAIT_S (its actors still starting on a busy box), it is left to end by
        itself, its planner's actor stopped after it, and Ray Data's own log is silenced: the
        process is most likely exiting on an error, which must stay the last line."""
        early, self.early = self.early, None
        if early is None:
            return
        import ray

        early.kill_board_when_done = True
        ray.get(early.board.finish.remote())
        if early.ready.wait(timeout=CLOSE_WAIT_S):
            early.close()
        else:
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)

    def runner(self, spec: MassSpec, files: RunFiles, out: Storage, identity: dict) -> Runner:
        """The Runner of this job: `files` (or an object-store reference to them) travel as one
        object, so actors need not see --run."""
        import ray

        from regene_ray.mass.ray_stage import stage_args

        files_ref = files if isinstance(files, ray.ObjectRef) else ray.put(files)  # once a job
        args_of = stage_args(self.pipeline, spec=spec, files_ref=files_ref, out=out,
                             identity=identity, device=self.device,
                             torch_threads=self.torch_threads)
        if self.early is not None:
            ray.get(self.early.board.post.remote(args_of))

        def run(planner: ChunkPlanner) -> Iterator[ChunkInfo]:
            started, self.early = self.early, None
            if started is not None:
                board = started.board
                ray.get(board.start.remote(planner))
            else:
                board = self._board(planner)
                slots = planner.work_slots(self.layout["workers"][1])
                started = _Started(board, self._stream(board, slots, args_of))
            try:
                yield from _drain(started.rows(), board, planner)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("Ray Data per-operator statistics (which stage limits the job):"
                              "\n%s", started.ds.stats())
            finally:
                started.close()
                ray.kill(board)

        return run


def _drain(rows: Iterator[dict], board, planner: ChunkPlanner) -> Iterator[ChunkInfo]:
    """A stream's rows as ChunkInfo, until the job is complete and every chunk taken landed."""
    import ray

    for row in rows:
        yield _info(row)  # run_job records it in `planner` before the next row
        if planner.complete() and not ray.get(board.outstanding.remote(len(planner.done))):
            break  # every chunk taken has landed here: the slots left are no-ops


def split_pools_here(workers: tuple[int, int], gpus_per_worker: float | None,
                     cpu_workers: tuple[int, int] | None = None) -> Pools:
    """split_pools on the Ray cluster as it is now. With GPUs, network actors take their CPUs
    from nodes that have GPUs (on an autoscaling cluster none may be up yet: the GPU nodes then
    bring their own CPUs)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    if gpus_per_worker:
        gpu_node_cpus = sum(n["Resources"].get("CPU", 0) for n in nodes
                            if n["Resources"].get("GPU", 0) > 0)
        return split_pools(cpus, workers, cpu_workers,
                           network_cpus=min(workers[1], gpu_node_cpus))
    return split_pools(cpus, workers, cpu_workers)


def default_workers(gpus_per_worker: float | None, pipeline: str = "fused") -> tuple[int, int]:
    """Network-stage actors, all started at once (no ramp-up from 1): GPUs / gpus_per_worker on
    GPU; on CPU #CPUs fused actors of num_cpus=1 (the input is built on the driver, so no read
    task competes with them; on 2 cores 2 single-threaded actors beat 1), or half the CPUs in
    the split, whose commit actors take the rest."""
    import ray

    res = ray.cluster_resources()
    if gpus_per_worker:
        n = int(res.get("GPU", 0) / gpus_per_worker)
        if n < 1:
            raise ValueError(f"--gpus-per-worker {gpus_per_worker} but the Ray cluster has "
                             f"{res.get('GPU', 0)} GPUs now; on an autoscaling cluster pass "
                             "--workers MIN,MAX (GPU nodes are launched as the actors ask for "
                             "them), else leave the flag out for CPU workers")
        return n, n
    cpus = int(res.get("CPU", 1))
    n = max(1, cpus // 2 if pipeline == "split" else cpus)
    return n, n
