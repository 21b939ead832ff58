"""Mass generation on Ray Data: the only module of regene_ray.mass that imports Ray.

Chunk descriptors stream through `map_batches` on an actor pool of WriteChunksOnNode (the plain
batch transform of regene_ray.mass.chunks, plus the Ray node that ran it). jobs/mass_generate.py
builds the runner here and hands it to regene_ray.mass.job.run_job.
"""

from __future__ import annotations

import warnings

import numpy as np

from regene_ray.mass.chunks import WriteChunks
from regene_ray.mass.job import MassSpec, Runner
from regene_ray.mass.plan import ChunkInfo
from regene_ray.storage import Storage


class WriteChunksOnNode(WriteChunks):
    """WriteChunks whose result rows also carry the Ray node id of the actor that wrote them."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        out = super().__call__(batch)
        out["node"] = np.array([ray.get_runtime_context().get_node_id()] * len(out["label"]))
        return out


def ray_runner(spec: MassSpec, run_files: dict[str, bytes], out: Storage, identity: dict, *,
               workers: tuple[int, int], gpus_per_worker: float | None, device: str,
               torch_threads: int, stage: type[WriteChunks] | None = None) -> Runner:
    """Run chunks through map_batches on an actor pool of `stage` (default WriteChunksOnNode),
    one chunk per block. The run's files travel as bytes (constructor arguments), so actors need
    not see --run."""
    stage = stage or WriteChunksOnNode
    import ray

    def run(todo: list[tuple[int, int]]) -> list[ChunkInfo]:
        items = [{"label": c, "chunk": chunk} for c, chunk in sorted(todo, key=lambda t: (t[1], t[0]))]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
        # max_restarts / max_task_retries have no named parameter in Ray 2.60: they travel as
        # ray_remote_args, which warns as deprecated. Bounded (Ray Data's default is infinite),
        # so a chunk that kills its worker every time fails the job instead of looping.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            stage,
            fn_constructor_args=(run_files, out),
            fn_constructor_kwargs=dict(
                metadata=identity, png=spec.png, n_parents=spec.n_parents,
                weights=spec.weights, seed=spec.seed, chunk_size=spec.chunk_size,
                batch_size=spec.batch_size,
                device=device, torch_threads=torch_threads),
            compute=ray.data.ActorPoolStrategy(min_size=min(workers[0], len(items)),
                                               max_size=min(workers[1], len(items))),
            batch_size=1,  # one chunk per call (the actor splits it into decoder batches)
            num_cpus=1,
            max_restarts=3,  # a dead actor is restarted ...
            max_task_retries=3,  # ... and its chunk retried (the file was never renamed in)
            **gpu,
        )
        return [ChunkInfo(int(r["label"]), int(r["chunk"]), int(r["tried"]),
                          int(r["latent_passed"]), int(r["accepted"]), node=str(r["node"]))
                for r in ds.take_all()]

    return run


def default_workers(gpus_per_worker: float | None) -> tuple[int, int]:
    """#CPUs actors of num_cpus=1, all started at once (no ramp-up from 1). The input is built on
    the driver (from_items), so no read task competes with the actors for CPUs; on 2 cores 2
    single-threaded actors beat 1."""
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
    n = max(1, int(res.get("CPU", 1)))
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
