"""Mass generation on Ray Data: the stages on Ray actors, and the actor pools that run them.

One stream of work serves a whole job (regene_ray.mass.ray_stream): a dataset of work slots
flows through `map_batches`, and the first stage asks a ChunkPlanner, held by a Ray actor
(regene_ray.mass.planner_actor), which chunk each slot runs (or that the job is complete, which
makes the slot a no-op). The last stage reports each committed chunk back to the planner, which
plans the rest from the measured acceptance. So the actor pools start once per job and its tail
is about one chunk. The stages come in one of two layouts:

* fused: one actor pool of WriteChunksOnNode; each actor mixes, runs the networks, encodes PNGs
  and writes Parquet (regene_ray.mass.chunks.WriteChunks);
* split: MixOnRay (CPU) -> ScoreOnRay (the networks; the only operator given GPUs) ->
  CommitOnRay (CPU: PNG, Parquet), so GPU actors do nothing but decode and classify.

Both write the same bytes (a chunk is one row, scored in the same decoder batches), so a job
started with one layout can be resumed with the other. Result rows say where every stage ran
(summary.json's `stage_gpus`, `actors_per_stage`). A stage can start before its job is known
(`early_device`): it then waits for its constructor arguments on the planner's actor.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

from regene_ray.mass.chunks import (
    STAT_KEYS,
    CommitChunks,
    MixChunks,
    ScoreChunks,
    WriteChunks,
    novelty_of,
)
from regene_ray.mass.identity import MassSpec
from regene_ray.mass.plan import MIX_ACTORS, Pools
from regene_ray.runtime import runtime_here
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
    columns, the node, GPUs and actor of this stage and of every stage before it.

    With `early_device` (a stream started before its job is known) the constructor only
    reports, for a stage that runs the networks, this worker's runtime on `early_device` to
    the planner's actor; the stage's own constructor runs at the first call, with the arguments
    the driver posted there (PlannerOnRay.post) once it had checked the run."""

    STAGE = ""
    TAKES = False  # the first stage: turns work slots into chunks
    RECORDS = False  # the last stage: reports committed chunks to the planner
    NETWORKS = False  # runs the classifier and decoder (and holds the GPU, if any)

    def __init__(self, *args, planner=None, early_device: str | None = None, **kwargs):
        self.planner = planner
        self.pending = early_device is not None
        if not self.pending:
            self._construct(args, kwargs)
        elif self.NETWORKS:  # not waited for: a stream ended early (PlannerOnRay.finish) may
            # have stopped its planner's actor already, and this actor must start all the same
            planner.report_runtime.remote(runtime_here(early_device))

    def _construct(self, args, kwargs) -> None:
        import ray

        args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
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
        if self.pending:  # an early stream's stage: its job's arguments, now they are known
            import ray

            posted = ray.get(self.planner.stage_args.remote(self.STAGE))
            if posted is None:  # the stream ended before its job was known: nothing to do
                return {}
            self._construct(*posted)
            self.pending = False
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
    TAKES = RECORDS = NETWORKS = True


class MixOnRay(_OnRay, MixChunks):
    STAGE = "mix"
    TAKES = True


class ScoreOnRay(_OnRay, ScoreChunks):
    STAGE = "score"
    NETWORKS = True


class CommitOnRay(_OnRay, CommitChunks):
    STAGE = "commit"
    RECORDS = True


def stage_args(pipeline: str, *, spec: MassSpec, files_ref, out: Storage, identity: dict,
               device: str, torch_threads: int) -> dict[str, tuple[tuple, dict]]:
    """{stage: (args, kwargs)} of each stage's constructor in `pipeline` (the planner apart)."""
    mix = dict(n_parents=spec.n_parents, weights=spec.weights, seed=spec.seed,
               chunk_size=spec.chunk_size)
    score = dict(batch_size=spec.batch_size, device=device, precision=spec.precision,
                 torch_threads=torch_threads)
    if pipeline == "fused":
        return {"fused": ((files_ref, out), dict(metadata=identity, png=spec.png, **mix, **score))}
    return {"mix": ((files_ref,), mix),
            "score": ((files_ref,), dict(score, novelty=novelty_of(identity),
                                         runtime=identity.get("runtime"))),
            "commit": ((out,), dict(metadata=identity, png=spec.png,
                                    num_classes=len(identity["thresholds"]["latent"])))}


def early_args(pipeline: str, device: str) -> dict[str, tuple[tuple, dict]]:
    """stage_args' stand-in for a stream started before its job is known (see _OnRay)."""
    return {stage: ((), {"early_device": device})
            for stage in (("fused",) if pipeline == "fused" else ("mix", "score", "commit"))}


# max_restarts / max_task_retries have no named parameter in Ray 2.60: they travel as
# ray_remote_args. Bounded (Ray Data's default is infinite), so a chunk that kills its worker
# every time fails the job instead of looping.
RETRY = dict(max_restarts=3,  # a dead actor is restarted ...
             max_task_retries=3)  # ... and its chunk retried (the file was never renamed in)


def _pool(lo: int, hi: int, slots: int):
    import ray

    return ray.data.ActorPoolStrategy(min_size=min(lo, slots), max_size=min(hi, slots))


def fused(ds, args_of: dict, *, planner, slots: int, workers: tuple[int, int],
          gpus_per_worker: float | None, stage: type[WriteChunks] | None = None, **_):
    """The fused layout on `ds` (work slots): one pool of `stage` (WriteChunksOnNode)."""
    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    args, kwargs = args_of["fused"]
    with warnings.catch_warnings():  # RETRY travels as the deprecated ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            stage or WriteChunksOnNode, fn_constructor_args=args,
            fn_constructor_kwargs=dict(kwargs, planner=planner),
            compute=_pool(*workers, slots), batch_size=1, num_cpus=1, **RETRY, **gpu)


def split(ds, args_of: dict, *, planner, slots: int, gpus_per_worker: float | None,
          pools: Pools, commit_stage: type[CommitChunks] | None = None, **_):
    """The split layout on `ds`: MixOnRay -> ScoreOnRay (the GPUs) -> `commit_stage`."""
    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    cpu_stage = _cpu_stage_placement(pools) if gpus_per_worker else {}
    with warnings.catch_warnings():  # RETRY travels as the deprecated ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        for cls, stage, pool, cpus, where in (
                (MixOnRay, "mix", (1, MIX_ACTORS), pools.mix_cpus, cpu_stage),
                (ScoreOnRay, "score", pools.workers, 1, gpu),
                (commit_stage or CommitOnRay, "commit", pools.cpu_workers, pools.commit_cpus,
                 cpu_stage)):
            args, kwargs = args_of[stage]
            ds = ds.map_batches(cls, fn_constructor_args=args,
                                fn_constructor_kwargs=dict(kwargs, planner=planner),
                                compute=_pool(*pool, slots), batch_size=1, num_cpus=cpus,
                                **RETRY, **where)
    return ds


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
