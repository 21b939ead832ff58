"""Mass generation on Ray Data: the only module of regene_ray.mass that imports Ray.

Chunk descriptors stream through `map_batches`, one chunk per row, in one of two layouts:

* fused: one actor pool of WriteChunksOnNode; each actor mixes, runs the networks, encodes PNGs
  and writes Parquet (regene_ray.mass.chunks.WriteChunks);
* split: MixOnRay (CPU) -> ScoreOnRay (the networks; the only operator given GPUs) ->
  CommitOnRay (CPU: PNG, Parquet), so GPU actors do nothing but decode and classify.

Both write the same bytes (a chunk is one row, scored in the same decoder batches), so a job
started with one layout can be resumed with the other. Result rows say where every stage ran
(summary.json's `stage_gpus`). jobs/mass_generate.py builds the runner here and hands it to
regene_ray.mass.job.run_job.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from regene_ray.mass.chunks import CommitChunks, MixChunks, ScoreChunks, WriteChunks, novelty_of
from regene_ray.mass.job import MassSpec, Runner
from regene_ray.mass.plan import ChunkInfo
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

MIX_CPUS = 0.5  # CPUs reserved by the mixing actor of the split pipeline (light work)


# How long Ray Data waits for an actor pool's first actors (its default: forever). Actors that
# no node can hold, and no autoscaler adds, then fail the job instead of hanging it.
ACTOR_WAIT_S = 600


PLACED = "placed_"  # columns that say where each stage of a chunk ran


def _placement() -> tuple[str, float]:
    """(node id, GPUs assigned) of the calling actor."""
    import ray

    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), float(ctx.get_assigned_resources().get("GPU", 0.0))


class _Placed:
    """Mixin for a stage on Ray: its result rows carry, besides the stage's own columns, the
    node and GPUs of the actor of this stage and of every stage before it."""

    STAGE = ""

    def __init__(self, *args, **kwargs):
        # the run's files travel as one object-store reference (ray.put once per job), not
        # inside every actor's constructor closure: a 1024-wide bank of 54k codes is 220 MB
        import ray

        args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
        super().__init__(*args, **kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        n = len(out["label"])
        out.update({k: v for k, v in batch.items() if k.startswith(PLACED)})
        node, gpus = _placement()
        out[f"{PLACED}{self.STAGE}_node"] = np.array([node] * n)
        out[f"{PLACED}{self.STAGE}_gpus"] = np.full(n, gpus)
        return out


class WriteChunksOnNode(_Placed, WriteChunks):
    """The fused stage (mix, networks, commit in one actor)."""

    STAGE = "fused"


class MixOnRay(_Placed, MixChunks):
    STAGE = "mix"


class ScoreOnRay(_Placed, ScoreChunks):
    STAGE = "score"


class CommitOnRay(_Placed, CommitChunks):
    STAGE = "commit"


PIPELINES = ("fused", "split")


# The layout --pipeline auto picks without GPUs: the faster of the two on the 2-core CPU box
# (BENCHMARKS.md, section 8). With GPUs it is always the split.
CPU_PIPELINE = "fused"


@dataclass(frozen=True)
class Pools:
    """Actor pools of a job: the network stage's (fused, or score in the split) and, in the
    split, the CPU commit stage's; mixing is one or two light actors."""

    workers: tuple[int, int]  # network-stage actors, MIN..MAX
    cpu_workers: tuple[int, int] = (1, 1)  # commit actors (split only)
    commit_cpus: float = 1.0  # CPUs reserved per commit actor
    mix_cpus: float = MIX_CPUS


def split_pools(cpus: float, workers: tuple[int, int], cpu_workers: tuple[int, int] | None = None,
                *, network_cpus: float | None = None) -> Pools:
    """Size the split pipeline on `cpus` CPUs: each network actor reserves one CPU (it feeds its
    GPU), `network_cpus` of them out of `cpus` (default: all, workers[1]), the mixer MIX_CPUS,
    and commit actors (PNG, Parquet) take what is left, one CPU each, or one actor on the
    fraction left on a small box.

    Raises:
        ValueError: when nothing is left for the commit stage.
    """
    taken = workers[1] if network_cpus is None else network_cpus
    left = cpus - taken - MIX_CPUS
    if cpu_workers is not None:
        if 0 < left < cpu_workers[1]:  # share what is left (a small box)
            return Pools(workers, cpu_workers, commit_cpus=left / cpu_workers[1])
        if left <= 0:
            log.warning("no CPU is free for the %d..%d commit actors now: they wait up to "
                        "%d s for nodes an autoscaler launches for them", *cpu_workers,
                        ACTOR_WAIT_S)
        return Pools(workers, cpu_workers, commit_cpus=1.0)
    if left <= 0:
        raise ValueError(
            f"the split pipeline needs CPUs besides the {taken:g} its network actors take (one "
            f"per actor) and the mixer's {MIX_CPUS:g}, but the cluster has {cpus:g} now; lower "
            "--workers, pass --cpu-workers MIN,MAX on an autoscaling cluster (CPU nodes are "
            "launched for them), or use --pipeline fused")
    if left >= 1:
        return Pools(workers, (1, int(left)), commit_cpus=1.0)
    return Pools(workers, (1, 1), commit_cpus=left)


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


def _infos(rows: list[dict]) -> list[ChunkInfo]:
    """Result rows -> ChunkInfo, with where each stage ran."""
    infos = []
    for r in rows:
        where = {k[len(PLACED):-len("_gpus")]: float(v) for k, v in r.items()
                 if k.startswith(PLACED) and k.endswith("_gpus")}
        net = "fused" if "fused" in where else "score"
        infos.append(ChunkInfo(int(r["label"]), int(r["chunk"]), int(r["tried"]),
                               int(r["latent_passed"]), int(r["accepted"]),
                               node=str(r[f"{PLACED}{net}_node"]), stage_gpus=where,
                               novelty_rejected=int(r.get("novelty_rejected", 0))))
    return infos


def ray_runner(spec: MassSpec, run_files: dict[str, bytes], out: Storage, identity: dict, *,
               workers: tuple[int, int], gpus_per_worker: float | None, device: str,
               torch_threads: int, pipeline: str = "fused", pools: Pools | None = None,
               stage: type[WriteChunks] | None = None,
               commit_stage: type[CommitChunks] | None = None) -> Runner:
    """Run chunks through Ray Data, one chunk per row and per call.

    pipeline 'fused': map_batches on one actor pool of `stage` (default WriteChunksOnNode) that
    mixes, runs the networks and commits. pipeline 'split': three operators, MixOnRay (CPU) ->
    ScoreOnRay (the only one given GPUs) -> `commit_stage` (default CommitOnRay, CPU), sized by
    `pools` (default split_pools on the cluster's CPUs). The run's files travel as bytes
    (constructor arguments), so actors need not see --run.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"--pipeline {pipeline!r}: use one of {', '.join(PIPELINES)}")
    import ray

    # max_restarts / max_task_retries have no named parameter in Ray 2.60: they travel as
    # ray_remote_args, which warns as deprecated. Bounded (Ray Data's default is infinite),
    # so a chunk that kills its worker every time fails the job instead of looping.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    retry = dict(max_restarts=3,  # a dead actor is restarted ...
                 max_task_retries=3)  # ... and its chunk retried (the file was never renamed in)
    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    mix_kw = dict(n_parents=spec.n_parents, weights=spec.weights, seed=spec.seed,
                  chunk_size=spec.chunk_size)
    score_kw = dict(batch_size=spec.batch_size, device=device, precision=spec.precision,
                    torch_threads=torch_threads)
    split_score_kw = dict(score_kw, novelty=novelty_of(identity))  # fused: from the metadata
    num_classes = len(identity["thresholds"]["latent"])
    files_ref = ray.put(run_files)  # once; every actor of every wave reads it from the store

    def pool(lo: int, hi: int, n: int, **kw) -> ray.data.ActorPoolStrategy:
        return ray.data.ActorPoolStrategy(min_size=min(lo, n), max_size=min(hi, n), **kw)

    def run(todo: list[tuple[int, int]]) -> list[ChunkInfo]:
        items = [{"label": c, "chunk": chunk} for c, chunk in sorted(todo, key=lambda t: (t[1], t[0]))]
        n = len(items)
        ds = ray.data.from_items(items, override_num_blocks=n)
        if pipeline == "fused":
            ds = ds.map_batches(
                stage or WriteChunksOnNode, fn_constructor_args=(files_ref, out),
                fn_constructor_kwargs=dict(metadata=identity, png=spec.png, **mix_kw, **score_kw),
                compute=pool(*workers, n), batch_size=1, num_cpus=1, **retry, **gpu)
        else:
            p = pools or split_pools_here(workers, gpus_per_worker)
            ds = ds.map_batches(MixOnRay, fn_constructor_args=(files_ref,),
                                fn_constructor_kwargs=mix_kw, compute=pool(1, 2, n),
                                batch_size=1, num_cpus=p.mix_cpus, **retry)
            ds = ds.map_batches(ScoreOnRay, fn_constructor_args=(files_ref,),
                                fn_constructor_kwargs=dict(runtime=identity.get("runtime"),
                                                           **split_score_kw),
                                compute=pool(*p.workers, n), batch_size=1, num_cpus=1,
                                **retry, **gpu)
            ds = ds.map_batches(commit_stage or CommitOnRay, fn_constructor_args=(out,),
                                fn_constructor_kwargs=dict(metadata=identity, png=spec.png,
                                                           num_classes=num_classes),
                                compute=pool(*p.cpu_workers, n), batch_size=1,
                                num_cpus=p.commit_cpus, **retry)
        ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_WAIT_S
        rows = ds.take_all()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Ray Data per-operator statistics (which stage limits the job):\n%s",
                      ds.stats())
        return _infos(rows)

    return run


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


def _runtime_here(device: str) -> dict:
    import torch

    from regene_ray.mass.job import runtime_identity

    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return {"device": "cuda requested, but this torch sees no GPU", "torch": torch.__version__}
    return runtime_identity(kind)


def check_workers(identity: dict, *, gpus_per_worker: float | None, device: str) -> None:
    """Run one task with an actor's resources before the job touches its output: the node it
    lands on must run the device kind and torch version of the job's identity (they fix the
    output's bytes), so a mismatch stops the job before --overwrite deletes anything.

    Raises:
        ValueError: naming what the workers run and what the job expects.
    """
    import ray

    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    probe = ray.remote(num_cpus=1, max_retries=0, **gpu)(_runtime_here)
    here = ray.get(probe.remote(device))
    if here != identity["runtime"]:
        raise ValueError(
            f"the workers run {here}, but this job expects {identity['runtime']} (from --device "
            "and the driver's torch); give every node the same torch build, or pick --device to "
            "match the workers")
