"""Mass generation on Ray Data: the only module of regene_ray.mass that imports Ray.

One stream of work serves a whole job: a dataset of work slots flows through `map_batches`, and
the first stage asks a ChunkPlanner, held by a Ray actor, which chunk each slot runs (or that
the job is complete, which makes the slot a no-op). The last stage reports each committed chunk
back to the planner, which plans the rest from the measured acceptance. So the actor pools start
once per job and its tail is about one chunk. The stages come in one of two layouts:

* fused: one actor pool of WriteChunksOnNode; each actor mixes, runs the networks, encodes PNGs
  and writes Parquet (regene_ray.mass.chunks.WriteChunks);
* split: MixOnRay (CPU) -> ScoreOnRay (the networks; the only operator given GPUs) ->
  CommitOnRay (CPU: PNG, Parquet), so GPU actors do nothing but decode and classify.

Both write the same bytes (a chunk is one row, scored in the same decoder batches), so a job
started with one layout can be resumed with the other. Result rows say where every stage ran
(summary.json's `stage_gpus`, `actors_per_stage`). jobs/mass_generate.py builds the runner here
and hands it to regene_ray.mass.job.run_job.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator

import numpy as np

from regene_ray.cluster import data_context
from regene_ray.mass.chunks import (
    STAT_KEYS,
    CommitChunks,
    MixChunks,
    ScoreChunks,
    WriteChunks,
    novelty_of,
)
from regene_ray.mass.identity import MassSpec
from regene_ray.mass.job import Runner
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
from regene_ray.run_files import RunFiles
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

PLACED = "placed_"  # columns that say where each stage of a chunk ran


def _placement() -> tuple[str, float, str]:
    """(node id, GPUs assigned, actor id) of the calling actor."""
    import ray

    ctx = ray.get_runtime_context()
    return (ctx.get_node_id(), float(ctx.get_assigned_resources().get("GPU", 0.0)),
            ctx.get_actor_id() or "")


class _OnRay:
    """Mixin for a stage on Ray.

    Constructor arguments that are object-store references are fetched (the run's files travel
    as one reference, put once per job: a 1024-wide bank of 54k codes is 220 MB, and the
    actors of a node map it instead of copying it). With `planner`, the stage takes its chunks
    from it (its input rows are work slots) or records them in it (its output rows are chunk
    statistics), as `TAKES` / `RECORDS` say. Result rows carry, besides the stage's own
    columns, the node, GPUs and actor of this stage and of every stage before it."""

    STAGE = ""
    TAKES = False  # the first stage: turns work slots into chunks
    RECORDS = False  # the last stage: reports committed chunks to the planner

    def __init__(self, *args, planner=None, **kwargs):
        import ray

        args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
        self.planner = planner
        super().__init__(*args, **kwargs)

    def _take(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Work slots -> the chunks the planner gives them ({"label", "chunk", "taken_at"});
        a slot given none (the job is complete) is dropped."""
        import ray

        keys, taken_at = [], []
        for slot in slots.tolist():
            key = ray.get(self.planner.take.remote(int(slot)))  # waits while the planner waits
            if key is not None:
                keys.append(key)
                taken_at.append(time.time())
        return {"label": np.array([k[0] for k in keys], np.int64),
                "chunk": np.array([k[1] for k in keys], np.int64),
                f"{PLACED}taken_at": np.array(taken_at, np.float64)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.TAKES:
            batch = self._take(batch["slot"])
            if not len(batch["label"]):
                return {}  # an empty block: no later stage is called for it
        out = super().__call__(batch)
        n = len(out["label"])
        out.update({k: v for k, v in batch.items() if k.startswith(PLACED)})
        node, gpus, actor = _placement()
        out[f"{PLACED}{self.STAGE}_node"] = np.array([node] * n)
        out[f"{PLACED}{self.STAGE}_gpus"] = np.full(n, gpus)
        out[f"{PLACED}{self.STAGE}_actor"] = np.array([actor] * n)
        if self.RECORDS:
            import ray

            ray.get(self.planner.record.remote(
                [{k: int(out[k][i]) for k in STAT_KEYS} for i in range(n)]))
        return out


class WriteChunksOnNode(_OnRay, WriteChunks):
    """The fused stage (mix, networks, commit in one actor)."""

    STAGE = "fused"
    TAKES = RECORDS = True


class MixOnRay(_OnRay, MixChunks):
    STAGE = "mix"
    TAKES = True


class ScoreOnRay(_OnRay, ScoreChunks):
    STAGE = "score"


class CommitOnRay(_OnRay, CommitChunks):
    STAGE = "commit"
    RECORDS = True


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


def _info(r: dict) -> ChunkInfo:
    """A result row -> ChunkInfo, with where each stage ran."""
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


def ray_runner(spec: MassSpec, files: RunFiles, out: Storage, identity: dict, *,
               workers: tuple[int, int], gpus_per_worker: float | None, device: str,
               torch_threads: int, pipeline: str = "fused", pools: Pools | None = None,
               stage: type[WriteChunks] | None = None,
               commit_stage: type[CommitChunks] | None = None) -> Runner:
    """A runner that streams work slots through Ray Data (see the module docstring).

    pipeline 'fused': map_batches on one actor pool of `stage` (default WriteChunksOnNode) that
    mixes, runs the networks and commits. pipeline 'split': three operators, MixOnRay (CPU) ->
    ScoreOnRay (the only one given GPUs) -> `commit_stage` (default CommitOnRay, CPU), sized by
    `pools` (default split_pools on the cluster's CPUs). `files` (or an object-store reference
    to them) travel as one object, so actors need not see --run.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"--pipeline {pipeline!r}: use one of {', '.join(PIPELINES)}")
    import ray

    files_ref = files if isinstance(files, ray.ObjectRef) else ray.put(files)  # once a job
    build = _fused if pipeline == "fused" else _split
    p = pools if pipeline == "fused" or pools else split_pools_here(workers, gpus_per_worker)
    kw = dict(spec=spec, files_ref=files_ref, out=out, identity=identity, workers=workers,
              gpus_per_worker=gpus_per_worker, device=device, torch_threads=torch_threads,
              pools=p, stage=stage, commit_stage=commit_stage)

    def run(planner: ChunkPlanner) -> Iterator[ChunkInfo]:
        actor = ray.remote(num_cpus=0, max_restarts=0)(PlannerOnRay).remote(planner)
        try:
            slots = planner.work_slots(workers[1])
            with data_context(**DATA_CONTEXT):  # a dataset keeps a copy of the context
                ds = ray.data.from_items([{"slot": i} for i in range(slots)],
                                         override_num_blocks=slots)
                ds = build(ds, planner=actor, slots=slots, **kw)
            for row in ds.iter_rows():
                yield _info(row)  # run_job records it in `planner` before the next row
                if planner.complete() and \
                        not ray.get(actor.outstanding.remote(len(planner.done))):
                    break  # every chunk taken has landed here: the slots left are no-ops
            if log.isEnabledFor(logging.DEBUG):
                log.debug("Ray Data per-operator statistics (which stage limits the job):\n%s",
                          ds.stats())
        finally:
            ray.kill(actor)

    return run


# Ray Data settings of a stream (set while its dataset is built, then restored):
DATA_CONTEXT = dict(
    # how long Ray Data waits for an actor pool's first actors (its default: forever): actors no
    # node can hold, and no autoscaler adds, then fail the job instead of hanging it
    wait_for_min_actors_s=ACTOR_WAIT_S,
    # a stage's own exception (a full disk, a foreign chunk) reaches the driver as itself, not
    # as "UDF failed to process a data block" with the cause lost on the way
    raise_original_map_exception=True,
)


# max_restarts / max_task_retries have no named parameter in Ray 2.60: they travel as
# ray_remote_args. Bounded (Ray Data's default is infinite), so a chunk that kills its worker
# every time fails the job instead of looping.
RETRY = dict(max_restarts=3,  # a dead actor is restarted ...
             max_task_retries=3)  # ... and its chunk retried (the file was never renamed in)


def _pool(lo: int, hi: int, slots: int):
    import ray

    return ray.data.ActorPoolStrategy(min_size=min(lo, slots), max_size=min(hi, slots))


def _mix_kw(spec: MassSpec) -> dict:
    return dict(n_parents=spec.n_parents, weights=spec.weights, seed=spec.seed,
                chunk_size=spec.chunk_size)


def _score_kw(spec: MassSpec, device: str, torch_threads: int) -> dict:
    return dict(batch_size=spec.batch_size, device=device, precision=spec.precision,
                torch_threads=torch_threads)


def _fused(ds, *, planner, slots: int, spec: MassSpec, files_ref, out: Storage, identity: dict,
           workers: tuple[int, int], gpus_per_worker: float | None, device: str,
           torch_threads: int, stage: type[WriteChunks] | None, **_):
    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    with warnings.catch_warnings():  # RETRY travels as the deprecated ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            stage or WriteChunksOnNode, fn_constructor_args=(files_ref, out),
            fn_constructor_kwargs=dict(metadata=identity, png=spec.png, planner=planner,
                                       **_mix_kw(spec), **_score_kw(spec, device, torch_threads)),
            compute=_pool(*workers, slots), batch_size=1, num_cpus=1, **RETRY, **gpu)


def _split(ds, *, planner, slots: int, spec: MassSpec, files_ref, out: Storage, identity: dict,
           gpus_per_worker: float | None, device: str, torch_threads: int, pools: Pools,
           commit_stage: type[CommitChunks] | None, **_):
    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    cpu_stage = _cpu_stage_placement(pools) if gpus_per_worker else {}
    score_kw = dict(_score_kw(spec, device, torch_threads), novelty=novelty_of(identity),
                    runtime=identity.get("runtime"))
    with warnings.catch_warnings():  # RETRY travels as the deprecated ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(MixOnRay, fn_constructor_args=(files_ref,),
                            fn_constructor_kwargs=dict(_mix_kw(spec), planner=planner),
                            compute=_pool(1, MIX_ACTORS, slots), batch_size=1, num_cpus=pools.mix_cpus,
                            **RETRY, **cpu_stage)
        ds = ds.map_batches(ScoreOnRay, fn_constructor_args=(files_ref,),
                            fn_constructor_kwargs=score_kw, compute=_pool(*pools.workers, slots),
                            batch_size=1, num_cpus=1, **RETRY, **gpu)
        return ds.map_batches(
            commit_stage or CommitOnRay, fn_constructor_args=(out,),
            fn_constructor_kwargs=dict(metadata=identity, png=spec.png, planner=planner,
                                       num_classes=len(identity["thresholds"]["latent"])),
            compute=_pool(*pools.cpu_workers, slots), batch_size=1, num_cpus=pools.commit_cpus,
            **RETRY, **cpu_stage)


def _cpu_stage_placement(pools: Pools) -> dict:
    """Where the CPU stages (mixer, commit) of a GPU job start. Ray Data's default for actors,
    SPREAD, puts them on GPU nodes, whose CPUs the network actors need: on nodes with one CPU
    per GPU a network actor then waits for a node the autoscaler may not add. So: on the
    driver's node when both pools fit there at full size (soft node affinity), else Ray's
    default policy, which fills nodes in turn rather than spreading."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here), 0)
    need = MIX_ACTORS * pools.mix_cpus + pools.cpu_workers[1] * pools.commit_cpus
    if 0 < need <= cpus:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=True)}
    return {"scheduling_strategy": "DEFAULT"}


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
