"""Mass generation on Ray Data: exactly --count filtered, labelled images with provenance.

    python jobs/mass_generate.py --run runs/digits --count 1e6 --out gen/digits
    python jobs/mass_generate.py --run runs/mnist --count 100_000 --n-parents 2,3,5 \\
        --weights dirichlet:1 --png --out gen/mnist
    python jobs/mass_generate.py --smoke-test --out /tmp/mass-smoke   # trains a tiny run first
    # on a Ray cluster: output on object storage, one GPU per actor, 1 to 8 actors
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/mass_generate.py --run runs/mnist --count 1e6 --out s3://bucket/gen/mnist \\
        --gpus-per-worker 1 --workers 1,8

Chunks of candidate ids (one chunk = a few decoder batches = one Parquet file) stream through
Ray Data: split (CPU mixing -> network actors, the only ones given GPUs -> CPU actors that encode
PNGs and write Parquet; the default with --gpus-per-worker) or fused (one actor pool does all;
the default on CPU). Both write the same bytes; see regene_ray/mass/ for how the output stays
exact, deterministic and resumable. Output: OUT/data/*.parquet, OUT/summary.json,
with --png OUT/png/<label>/<shard>/<id>.png. A killed job completes with --resume.

--out may be a local folder, s3://bucket/prefix or gs://bucket/prefix (pyarrow filesystems; for an
S3-compatible server add ?endpoint_override=host:port&scheme=http or set AWS_ENDPOINT_URL). On a
multi-node cluster a local --out must be shared by every node, or the job refuses it. The run's
model files are shipped to the actors through Ray's object store, so --run only has to exist
where the driver runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Light imports only (no torch, no Ray): main() loads torch with the run in a thread while Ray
# starts in the main thread (regene_ray.cluster.init_ray must run there).
from regene_ray.cli import (  # noqa: E402
    Phases,
    command_of,
    run_main,
    setup_logging,
    smoke_run,
)
from regene_ray.cluster import (  # noqa: E402
    check_shared_folder,
    init_ray,
    probed_runtime,
    start_probe,
)
from regene_ray.mass.flags import check_flags  # noqa: E402
from regene_ray.mass.flags import get_args_parser as _parser  # noqa: E402
from regene_ray.mass.plan import auto_chunk_size  # noqa: E402
from regene_ray.storage import Storage, StorageError  # noqa: E402

if TYPE_CHECKING:
    from regene_ray.mass import MassSpec, RunFiles, Summary
    from regene_ray.mass.ray_stream import RayStream

log = logging.getLogger("mass_generate")


def get_args_parser() -> argparse.ArgumentParser:
    return _parser(__doc__)


# the job


def smoke_input(out: Storage) -> Path:
    """--smoke-test without --run: a small digits run trained into OUT/run (tens of seconds)."""
    if not out.is_local:
        raise StorageError(f"--smoke-test without --run trains into --out, which must then be "
                           f"a local folder (not {out}); pass --run RUN_DIR as well")
    return smoke_run(out.local_path("run"))


def read_run(run: str) -> RunFiles:
    """The run folder's files (local or remote), read once and loaded once on the driver, so a
    corrupt or mismatched checkpoint, or a run whose classifier never learned, stops the job
    before anything is written; errors name the files under --run. Torch loads in a second
    thread while the files are read, hashed and decoded (which needs no torch)."""
    from regene_ray.run_files import RunFiles

    st = Storage(run)
    if not st.is_file("classifier/config.json"):
        raise FileNotFoundError(f"--run {st} is not a run folder (no classifier/config.json); "
                                "create one with jobs/train.py --out RUN_DIR")
    with ThreadPoolExecutor(1, thread_name_prefix="import-torch") as pool:
        generator = pool.submit(importlib.import_module, "regene_ray.generator")
        files = RunFiles.read(st)
        generator.result().ConvexGenerator.from_files(files, device="cpu")  # as every actor will
    try:
        metrics = st.read_json("metrics.json")
    except (OSError, ValueError):
        metrics = {}
    if metrics.get("near_chance"):
        raise ValueError(
            f"--run {st} is unusable: its classifier's test accuracy "
            f"{metrics.get('test_accuracy', float('nan')):.3f} is near chance, so its codes do "
            "not generate its classes. Retrain it with more epochs or data (a --smoke-test run "
            "is only a plumbing check)")
    return files


def build_spec(args: argparse.Namespace, run: Storage, files: RunFiles, *,
               smoke: bool = False) -> MassSpec:
    """The job's spec from the flags and the run; --smoke-test's limits are applied here.

    Flags are checked in three layers, each once: their syntax by the parser's types, what
    depends on the run (class range, parents in the bank) here, and the spec's own invariants
    (n >= 2, weights that fit n ...) by MassSpec itself, for Python callers too."""
    from regene_ray.mass.identity import MassSpec

    batch_size = min(args.batch_size, 64) if smoke else args.batch_size
    num_classes = files.num_classes
    classes = args.classes if args.classes is not None else tuple(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes {list(classes)}: {bad} not in 0..{num_classes - 1} for run "
                         f"{run}")
    bank = files.bank
    class_weights = ()
    if args.class_counts == "train":  # the training split's class sizes, from the latent bank
        train_counts = np.bincount(bank.labels, minlength=num_classes)
        class_weights = tuple(int(train_counts[c]) for c in classes)
        empty = [c for c, w in zip(classes, class_weights, strict=True) if w == 0]
        if empty:
            raise ValueError(f"--class-counts train: class(es) {empty} have no training images "
                             f"in run {run}; leave them out with --classes")
    count = args.count if args.count is not None else sum(class_weights) or None
    count = min(count or 200, 200) if smoke else count
    sizes = {c: len(p) for c, p in enumerate(bank.pools(num_classes))}
    short = [c for c in classes if sizes[c] < max(args.n_parents)]
    if short:
        raise ValueError(f"--n-parents {max(args.n_parents)}: class(es) {short} have fewer "
                         "eligible parents in the latent bank; lower --n-parents")
    chunk = _chunk(args, count, len(classes), batch_size, smoke)
    return MassSpec(run=run.uri if not run.is_local else run.root, count=count,
                    classes=tuple(classes), n_parents=tuple(args.n_parents),
                    weights=args.weights, seed=args.seed, chunk_size=chunk,
                    batch_size=batch_size, png=args.png, precision=args.precision,
                    novelty_quantile=args.novelty_quantile, class_weights=class_weights)


def _chunk(args: argparse.Namespace, count: int, num_classes: int, batch_size: int,
           smoke: bool = False) -> int:
    return auto_chunk_size(count, num_classes, batch_size) \
        if args.chunk_size == "auto" or smoke else args.chunk_size


def early_slots(args: argparse.Namespace, workers: int) -> int | None:
    """Work slots for a stream started before the run is read (RayStream.prestart), from the
    flags and two small files of the run (classifier/config.json, metrics.json): the planner's
    count for a fresh job, which a resumed one never exceeds (a stream whose slots run out is
    followed by another). None where the flags leave the job's size to the bank (--class-counts
    train without --count, --smoke-test) or the files cannot be read (the read says why)."""
    from regene_ray.mass.plan import ChunkPlanner, prior_rates, quotas

    if args.smoke_test or args.count is None:
        return None
    try:
        num_classes = int(Storage(args.run).read_json("classifier/config.json")["num_classes"])
    except (OSError, StorageError, ValueError, KeyError, TypeError):
        return None
    classes = args.classes if args.classes is not None else tuple(range(num_classes))
    planner = ChunkPlanner(quotas(args.count, classes),
                           _chunk(args, args.count, len(classes), args.batch_size), {},
                           prior_rates(args.run, args.n_parents))
    return planner.work_slots(workers)


def read_inputs(args: argparse.Namespace, out: Storage) -> tuple[RunFiles, MassSpec, Storage]:
    """The run's files and the job's spec (and, for --smoke-test without --run, a small run
    trained first into OUT/run); every input is checked here, nothing is written to --out."""
    run_arg = args.run
    if args.smoke_test and run_arg is None:
        run_arg = smoke_input(out)
        out = out.child("generated")
    files = read_run(str(run_arg))
    return files, build_spec(args, Storage(run_arg), files, smoke=args.smoke_test), out


def main(args: argparse.Namespace) -> Summary:
    """Validate every input, then take the output folder's lease, then generate. The run's
    files are read and checked in a thread while Ray starts and then the job's actors, which
    wait for the checked run (regene_ray.mass.ray_stream)."""
    phases = Phases()
    phases.add("imports", phases.t0, time.time())
    setup_logging(args.verbose)
    pipeline = check_flags(args)
    device = args.device if args.device != "auto" else ("cuda" if args.gpus_per_worker else "cpu")
    out = Storage(args.out)
    out.check_reachable()  # credentials, region, bucket: before Ray starts
    stream = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="read-run") as pool:
            reading = pool.submit(read_inputs, args, out)
            with phases("Ray start"):
                started = init_ray(args.address)
            with phases("stream start"):
                stream = start_stream(args, pipeline, device)
            probe = None if started and not args.gpus_per_worker else \
                stream.runtime_ref() if stream.early else \
                start_probe(device, args.gpus_per_worker)  # each runs meanwhile
            with phases("read run (rest)"):
                quiet_progress_bars()  # imports Ray Data (about 0.5 s) while the run is read
                files, spec, out = reading.result()
        with phases("workers' runtime"):
            runtime = probed_runtime(probe, device, alive=stream.check)
        return checked_job(args, spec, out, files, runtime, pipeline, device, stream, phases)
    finally:
        if stream is not None:
            stream.close()


def checked_job(args: argparse.Namespace, spec: MassSpec, out: Storage, files: RunFiles,
                runtime: dict, pipeline: str, device: str, stream: RayStream,
                phases: Phases) -> Summary:
    """The job, once its inputs are read: the output checked, the run files shipped, then
    run_job."""
    import ray

    from regene_ray.mass import inspect_output, job_metadata

    identity = job_metadata(spec, files.hashes, thresholds=files.thresholds, runtime=runtime)
    with phases("check output"):
        inspect_output(out, identity, resume=args.resume, overwrite=args.overwrite)
        out.check_writable("--out")
        if out.is_local:
            check_shared_folder(out.local_path(), "--out")
    with phases("ship run files"):
        files_ref = ray.put(files)  # once a job; the actors of a node map it
        del files  # the driver keeps no second copy of the bank
    s = generate(args, spec, out, identity, files_ref, pipeline, device, stream, phases)
    log_phases(phases, s)
    return s


def start_stream(args: argparse.Namespace, pipeline: str, device: str) -> RayStream:
    """The job's RayStream on the cluster as it is, its first stream started now when that pays
    (RayStream.starting_early_pays) and the flags fix the job's size (early_slots); raises
    when the cluster cannot hold the actors (no GPUs for --gpus-per-worker, no CPU left for the
    split). Without a stream started, no torch and no Ray Data is loaded here."""
    from regene_ray.mass.ray_stream import RayStream, default_workers, split_pools_here

    workers = (1, 1) if args.smoke_test else \
        args.workers or default_workers(args.gpus_per_worker, pipeline)
    pools = split_pools_here(workers, args.gpus_per_worker, args.cpu_workers) \
        if pipeline == "split" else None
    stream = RayStream(workers=workers, gpus_per_worker=args.gpus_per_worker, device=device,
                       torch_threads=args.torch_threads, pipeline=pipeline, pools=pools)
    slots = early_slots(args, workers[1]) if stream.starting_early_pays() else None
    if slots:
        quiet_progress_bars()
        stream.prestart(slots)
    return stream


def quiet_progress_bars() -> None:
    """No Ray Data progress bars when stderr is not a terminal: redrawn into a log file, they
    cost the driver CPU. Imports Ray Data."""
    import ray.data

    if not sys.stderr.isatty():
        ray.data.DataContext.get_current().enable_progress_bars = False


def generate(args: argparse.Namespace, spec: MassSpec, out: Storage, identity: dict,
             files_ref, pipeline: str, device: str, stream: RayStream,
             phases: Phases) -> Summary:
    """Run the job (run_job) on Ray Data."""
    from regene_ray.mass.job import run_job

    workers, pools = stream.layout["workers"], stream.layout["pools"]
    log.info("generating %d images of classes %s into %s: %s pipeline, %d..%d network actors%s",
             spec.count, list(spec.classes), out, pipeline, *workers,
             f", {pools.cpu_workers[0]}..{pools.cpu_workers[1]} commit actors" if pools else "")
    runner = stream.runner(spec, files_ref, out, identity)
    details = {"command": command_of(get_args_parser(), args, "jobs/mass_generate.py"),
               "device": device, "pipeline": pipeline,
               "workers": list(workers),
               "gpus_per_worker": args.gpus_per_worker,
               "stream_started_early": stream.early is not None,
               **({"cpu_workers": list(pools.cpu_workers)} if pools else {}),
               "startup_s": phases.record()}
    s = run_job(spec, out, runner, resume=args.resume, overwrite=args.overwrite,
                identity=identity, details=details)
    log.info("%d images in %.1f s (%.0f img/s), %d candidates tried, acceptance %.3f (latent "
             "%.3f, image %.3f), %d stream(s) -> %s", s.requested, s.wall_s, s.images_per_s,
             s.candidates_tried, s.acceptance["both_steps"], s.acceptance["latent_step"],
             s.acceptance["image_step_given_latent"], s.streams, out.display("data"))
    return s


def log_phases(phases: Phases, s: Summary) -> None:
    """One line: where the time from process start went (the start-up breakdown)."""
    parts = [f"{name} {end - start:.1f}" for name, (start, end) in phases.spans.items()]
    first = s.extra.get("first_chunk_taken_at")
    if first:
        parts += [f"actor pools {s.extra['pool_start_s']:.1f}",
                  f"first chunk taken at {first - phases.t0:.1f}",
                  f"generating {s.extra['generating_s']:.1f}"]
    log.info("timeline, s (%.1f since process start): %s; finalising %.1f",
             phases.since_start(), ", ".join(parts), s.extra.get("finalize_s", 0.0))


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()),
             again="run the same command with --resume to continue")
