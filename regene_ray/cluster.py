"""Ray for the job scripts: joining a cluster or starting a private one, and checking that a
local output folder is shared by every node. The jobs are the only callers; the library's
stages never start Ray.

* `init_ray(address, ...)` joins --address / $RAY_ADDRESS, or else starts a private local Ray
  ("local": with no address, ray.init would join whatever cluster `ray start` last left on this
  machine), without a dashboard (its processes took CPU from the actors on a small box,
  BENCHMARKS.md).
* `check_shared_folder` refuses a local output folder that some node of a multi-node cluster
  does not see: the driver writes a marker file into it and a zero-CPU task pinned to every alive
  node reads it back. Nodes that join later (autoscaling) are covered by the job's own workers,
  which check the folder before writing (regene_ray.mass.chunks.CommitChunks).
* `start_probe` / `probed_runtime`: one task with a network actor's resources reports the
  runtime the workers run (device kind, torch, GPU model, cuDNN: regene_ray.runtime), which is
  part of a mass generation job's identity; the driver may have no GPU, or another torch, than
  the workers. A CPU probe imports no torch.
* `data_context(**settings)`: Ray Data's current DataContext with some settings changed while a
  dataset is built (a dataset keeps its own copy), then restored.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from regene_ray.runtime import runtime_here, runtime_identity
from regene_ray.storage import MARKER_PREFIX, StorageError

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             object_store_memory: int | None = None) -> bool:
    """Join --address / $RAY_ADDRESS, or else start a private local Ray; nothing when Ray is
    already initialised in this process (tests share one cluster per module). Call it from the
    main thread: a Ray initialised from another thread stops answering the main thread's
    calls (Ray 2.60), so jobs overlap its start with their own checks by running those in a
    thread instead.

    Args:
        address: a cluster address (auto, host:port, ray://...); None: $RAY_ADDRESS, else a
            private local Ray.
        num_cpus, object_store_memory: of a private local Ray (default: Ray's).

    Returns:
        True when this call started a private Ray, whose workers therefore run this machine's
        Python and torch.
    """
    # no Ray call may start a Ray of its own (Ray's auto-init): a thread of Ray Data still
    # running as the job exits would start one after ray.shutdown (and leave it behind)
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address)
            return False
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                 object_store_memory=object_store_memory)
        return True
    finally:  # ray.init sets a SIGTERM handler of its own: keep the job's (regene_ray.cli)
        signal.signal(signal.SIGTERM, on_sigterm)


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _reads_marker(path: str, token: str) -> tuple[bool, str]:
    try:
        seen = Path(path).read_text() == token
    except OSError:
        seen = False
    return seen, socket.gethostname()


def check_shared_folder(folder: str | Path, flag: str, timeout_s: float = 120.0) -> int:
    """On a cluster of more than one node, check that every alive node sees local `folder`.

    Creates `folder` if needed (it is the job's output folder). Returns the number of nodes
    checked (1: nothing to check).

    Raises:
        StorageError: naming the nodes that do not see it, and what to use instead.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if len(nodes) < 2:
        return len(nodes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = folder / f"{MARKER_PREFIX}{token}"
    marker.write_text(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_reads_marker)
    try:
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker), token) for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        blind, silent = [], []
        for n, ref in zip(nodes, refs, strict=True):
            where = f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})"
            if ref not in ready:
                silent.append(where)
                continue
            try:
                seen, host = ray.get(ref)
            except ray.exceptions.RayError:  # the node left meanwhile (scaled down, died)
                if any(m["NodeID"] == n["NodeID"] for m in alive_nodes()):
                    silent.append(where)
                continue
            if not seen:
                blind.append(f"{n['NodeManagerAddress']} ({host}, node {n['NodeID'][:8]})")
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise StorageError(
            f"{flag} {folder} is a local folder that {len(blind)} of the {len(nodes)} nodes of "
            f"this Ray cluster do not see: {', '.join(blind)}. On a multi-node cluster write to "
            "storage every node reaches: s3://bucket/prefix, gs://bucket/prefix, or a shared "
            "filesystem (NFS, EFS, Filestore) mounted at the same path on every node")
    if silent:
        raise StorageError(
            f"could not check that {flag} {folder} is shared: node(s) {', '.join(silent)} did not "
            f"answer within {timeout_s:.0f} s. Check `ray status`, or pass s3://... / gs://... "
            "storage, which needs no check")
    log.info("%s %s is shared by all %d nodes", flag, folder, len(nodes))
    return len(nodes)


def start_probe(device: str, gpus_per_worker: float | None, *, private: bool = False):
    """One task with a network actor's resources, started now (it returns an object-store
    reference, so the job reads its run meanwhile): the runtime a worker runs (device kind,
    torch, GPU model, cuDNN), which fixes the output's bytes and so becomes part of the job's
    identity. The driver may have no GPU, or another torch, than the workers. None (no task)
    for CPU workers of a `private` Ray this process started: they run this machine's Python and
    torch, so their runtime is this process's."""
    if private and not gpus_per_worker:
        return None
    import ray

    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}  # never num_gpus=0
    return ray.remote(num_cpus=1, max_retries=0, **gpu)(runtime_here).remote(device)


def probed_runtime(probe, device: str, alive: Callable[[], None] | None = None) -> dict:
    """The runtime start_probe's task reported (this process's for None), or any object-store
    reference to such a report (an early stream's first network actor: RayStream.runtime_ref);
    `alive` is called while it waits, and raises when the report can no longer come.

    Raises:
        ValueError: when the workers cannot run the device kind asked for.
    """
    if probe is None:
        return runtime_identity(device)
    import ray

    while alive is not None and not ray.wait([probe], timeout=1.0)[0]:
        alive()
    here = ray.get(probe)
    if here["device"] != str(device).split(":")[0]:
        raise ValueError(f"--device {device}, but the workers run {here}; on a GPU cluster pass "
                         "--gpus-per-worker (Ray hides GPUs from actors that did not ask for "
                         "one), else use --device cpu")
    return here


@contextmanager
def data_context(**settings) -> Iterator[None]:
    """Ray Data's current DataContext with `settings`, restored after the block."""
    import ray

    ctx = ray.data.DataContext.get_current()
    before = {k: getattr(ctx, k) for k in settings}
    for k, v in settings.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(ctx, k, v)
