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
    int_list,
    min_max,
    positive_int,
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
from regene_ray.mass.plan import CPU_PIPELINE, auto_chunk_size, parse_count  # noqa: E402
from regene_ray.storage import Storage, StorageError  # noqa: E402

if TYPE_CHECKING:
    from regene_ray.mass import MassSpec, RunFiles, Summary

log = logging.getLogger("mass_generate")


# flag parsing


def _count(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _chunk_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return positive_int("--chunk-size")(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--chunk-size {text!r}: give a whole number >= 1 or "
                                         "auto") from None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(
            f"--gpus-per-worker {text!r} must be a positive number such as 1 or 0.25 "
            "(leave it out for CPU workers)")
    return v


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder from jobs/train.py: a local path, or s3://... / "
                   "gs://... where one was uploaded (required, except "
                   "with --smoke-test)")
    p.add_argument("--count", type=_count, default=None,
                   help="exact number of images, e.g. 1000, 1_000_000 or 1e6 (required, except "
                   "with --smoke-test or --class-counts train)")
    p.add_argument("--out", required=True,
                   help="output folder: a local path, s3://bucket/prefix or gs://bucket/prefix "
                   "(required)")
    _generation_flags(p)
    _execution_flags(p)
    p.add_argument("--address", default=None,
                   help="Ray cluster address, e.g. auto or ray://host:10001 (default: "
                   "$RAY_ADDRESS, else a new local Ray); --out must be on storage every node sees")
    p.add_argument("--resume", action="store_true",
                   help="complete an interrupted run of the same job in --out (default: off)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different job's output in --out (default: off)")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny run: at most 200 images, batch 64, one worker; without --run it "
                   "first trains a small digits run into OUT/run and generates into OUT/generated")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _generation_flags(p: argparse.ArgumentParser) -> None:
    """What to generate: these (and the run) fix the output's bytes."""
    p.add_argument("--n-parents", type=int_list("--n-parents"), default=(2,),
                   help="parents per mix, or a list drawn per candidate such as 2,3,5 (default: 2)")
    p.add_argument("--weights", default="uniform",
                   help="uniform, dirichlet:<alpha> or ratios such as 0.3,0.7 (default: uniform)")
    p.add_argument("--classes", type=int_list("--classes"), default=None,
                   help="class indices to generate, e.g. 0,1,2 (default: all)")
    p.add_argument("--class-counts", choices=["balanced", "train"], default="balanced",
                   help="how --count is shared among the classes: balanced (equal quotas), or "
                   "train: in proportion to the run's training split (its latent bank), so the "
                   "output has the real set's class counts; without --count, exactly them, "
                   "as a train-on-generated comparison needs (default: balanced)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--png", action="store_true",
                   help="also write OUT/png/<label>/<shard>/<id>.png (default: off)")
    p.add_argument("--novelty-quantile", type=float, default=0.0,
                   help="novelty step: reject a generation whose code is nearer a training "
                   "code of its class than this quantile of real held-out images are "
                   "(RUN/novelty.json), e.g. 0.01; kept rows carry nearest_train_id and "
                   "nearest_train_distance, and summary.json counts the rejections per class "
                   "(default: 0, no novelty step)")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32",
                   help="fp32 (TF32 off on GPUs), tf32 (TF32 on GPUs), or bf16 / fp16 for the "
                   "decoder only (the classifier's two filter passes stay fp32); part of the "
                   "job's identity (default: fp32)")


def _execution_flags(p: argparse.ArgumentParser) -> None:
    """How to run it on Ray: none of these changes the output (but --batch-size, which fixes
    each decoder batch's make-up)."""
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=256,
                   help="candidates per decoder batch (default: 256, the fastest on a 2-core CPU)"
                   "; part of the job's identity, since it fixes each batch's make-up")
    p.add_argument("--chunk-size", type=_chunk_size, default="auto",
                   help="candidates per chunk, the unit of work, resume and Parquet files; a "
                   "whole number or auto: at least 8 chunks per class, at most 16 batches "
                   "(default: auto)")
    p.add_argument("--workers", type=min_max("--workers"), default=None,
                   help="actor pool size N or MIN,MAX (default: <CPUs> on CPU, "
                   "<GPUs / gpus-per-worker> on GPU)")
    p.add_argument("--gpus-per-worker", type=_positive_float, default=None,
                   help="GPUs per actor, fractions allowed (default: none, CPU actors)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where actors run the networks; auto: cuda with --gpus-per-worker, else "
                   "cpu. cpu with --gpus-per-worker reserves GPUs without using them (fake GPU "
                   "nodes of cluster/local-fake.yaml) (default: auto)")
    p.add_argument("--pipeline", choices=["auto", "fused", "split"], default="auto",
                   help="split: CPU actors mix and write, network actors only decode and "
                   "classify; fused: one actor does all; auto: split with --gpus-per-worker, "
                   "else the layout measured faster on CPU (fused; BENCHMARKS.md) (default: auto)")
    p.add_argument("--cpu-workers", type=min_max("--cpu-workers"), default=None,
                   help="with the split pipeline: commit (PNG, Parquet) actors N or MIN,MAX "
                   "(default: the CPUs the network actors and the mixer leave)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads per actor (default: 1)")


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
    before anything is written; errors name the files under --run."""
    from regene_ray.generator import ConvexGenerator
    from regene_ray.run_files import RunFiles

    st = Storage(run)
    if not st.is_file("classifier/config.json"):
        raise FileNotFoundError(f"--run {st} is not a run folder (no classifier/config.json); "
                                "create one with jobs/train.py --out RUN_DIR")
    files = RunFiles.read(st)
    ConvexGenerator.from_files(files, device="cpu")  # loads as every actor will
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
    chunk = auto_chunk_size(count, len(classes), batch_size) \
        if args.chunk_size == "auto" or smoke else args.chunk_size
    return MassSpec(run=run.uri if not run.is_local else run.root, count=count,
                    classes=tuple(classes), n_parents=tuple(args.n_parents),
                    weights=args.weights, seed=args.seed, chunk_size=chunk,
                    batch_size=batch_size, png=args.png, precision=args.precision,
                    novelty_quantile=args.novelty_quantile, class_weights=class_weights)


def check_flags(args: argparse.Namespace) -> str:
    """Flag combinations the parser cannot see; returns the pipeline to run."""
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pick one")
    pipeline = args.pipeline if args.pipeline != "auto" else \
        ("split" if args.gpus_per_worker else CPU_PIPELINE)
    if args.cpu_workers and pipeline != "split":
        raise ValueError(f"--cpu-workers sizes the split pipeline's commit actors, but this job "
                         f"runs the {pipeline} one; drop it, or pass --pipeline split")
    if args.device == "cuda" and not args.gpus_per_worker:
        raise ValueError("--device cuda needs --gpus-per-worker (Ray hides GPUs from actors "
                         "that did not ask for one)")
    if args.run is None and not args.smoke_test or (
            args.count is None and not args.smoke_test and args.class_counts != "train"):
        raise ValueError("--run and --count are required (or pass --smoke-test; --count may be "
                         "left out with --class-counts train)")
    return pipeline


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
    files are read and checked in a thread while Ray starts (and the workers' runtime is
    probed, on a cluster joined, and Ray Data is imported)."""
    phases = Phases()
    phases.add("imports", phases.t0, time.time())
    setup_logging(args.verbose)
    pipeline = check_flags(args)
    device = args.device if args.device != "auto" else ("cuda" if args.gpus_per_worker else "cpu")
    out = Storage(args.out)
    out.check_reachable()  # credentials, region, bucket: before Ray starts
    with ThreadPoolExecutor(1, thread_name_prefix="read-run") as pool:
        reading = pool.submit(read_inputs, args, out)
        with phases("Ray start"):
            started = init_ray(args.address)
        probe = start_probe(device, args.gpus_per_worker, private=started)  # runs meanwhile
        with phases("read run (rest)"):
            import ray
            import ray.data  # noqa: F401  (about 0.5 s: loaded while the run is read)

            from regene_ray.mass import inspect_output, job_metadata

            files, spec, out = reading.result()

    workers, pools = actor_pools(args, pipeline)
    with phases("workers' runtime"):
        runtime = probed_runtime(probe, device)
    identity = job_metadata(spec, files.hashes, thresholds=files.thresholds, runtime=runtime)
    with phases("check output"):
        inspect_output(out, identity, resume=args.resume, overwrite=args.overwrite)
        out.check_writable("--out")
        if out.is_local:
            check_shared_folder(out.local_path(), "--out")
    with phases("ship run files"):
        files_ref = ray.put(files)  # once a job; the actors of a node map it
        del files  # the driver keeps no second copy of the bank
    if not sys.stderr.isatty():  # progress bars redrawn into a log file cost the driver CPU
        ray.data.DataContext.get_current().enable_progress_bars = False
    s = generate(args, spec, out, identity, files_ref, pipeline, device, workers, pools, phases)
    log_phases(phases, s)
    return s


def actor_pools(args: argparse.Namespace, pipeline: str) -> tuple[tuple[int, int], object]:
    """(network actors MIN..MAX, the split pipeline's Pools or None) on the cluster as it is;
    raises when it cannot hold them (no GPUs for --gpus-per-worker, no CPU left for the split)."""
    from regene_ray.mass.ray_stage import default_workers, split_pools_here

    workers = (1, 1) if args.smoke_test else \
        args.workers or default_workers(args.gpus_per_worker, pipeline)
    pools = split_pools_here(workers, args.gpus_per_worker, args.cpu_workers) \
        if pipeline == "split" else None
    return workers, pools


def generate(args: argparse.Namespace, spec: MassSpec, out: Storage, identity: dict,
             files_ref, pipeline: str, device: str, workers: tuple[int, int], pools,
             phases: Phases) -> Summary:
    """Run the job (run_job) on Ray Data."""
    from regene_ray.mass.job import run_job
    from regene_ray.mass.ray_stage import ray_runner

    log.info("generating %d images of classes %s into %s: %s pipeline, %d..%d network actors%s",
             spec.count, list(spec.classes), out, pipeline, *workers,
             f", {pools.cpu_workers[0]}..{pools.cpu_workers[1]} commit actors" if pools else "")
    runner = ray_runner(spec, files_ref, out, identity, workers=workers,
                        gpus_per_worker=args.gpus_per_worker, device=device,
                        torch_threads=args.torch_threads, pipeline=pipeline, pools=pools)
    details = {"command": command_of(get_args_parser(), args, "jobs/mass_generate.py"),
               "device": device, "pipeline": pipeline,
               "workers": list(workers),
               "gpus_per_worker": args.gpus_per_worker,
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
