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
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.cli import run_main, setup_logging  # noqa: E402
from regene_ray.latent_bank import BANK_FILE, THRESHOLDS_FILE, LatentBank  # noqa: E402
from regene_ray.mass import (  # noqa: E402
    MassSpec,
    Summary,
    auto_chunk_size,
    check_run_files,
    hashes_of,
    inspect_output,
    job_metadata,
    pack_run,
    parse_count,
    run_job,
)
from regene_ray.mass.ray_stage import CPU_PIPELINE  # noqa: E402
from regene_ray.shared_folder import check_shared_folder  # noqa: E402
from regene_ray.storage import Storage, StorageError  # noqa: E402

log = logging.getLogger("mass_generate")


# flag parsing


def _count(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_list(flag: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r}: give whole numbers separated by commas, e.g. 2 or 2,3,5"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} is empty")
        return values

    return parse


def _workers(flag: str):
    def parse(text: str) -> tuple[int, int]:
        try:
            parts = [int(v) for v in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r}: give N or MIN,MAX with 1 <= MIN <= MAX, e.g. 1,4")
        return parts[0], parts[1]

    return parse


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be at least 1")
        return value

    return parse


def _chunk_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int("--chunk-size")(text)
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
    p.add_argument("--n-parents", type=_int_list("--n-parents"), default=(2,),
                   help="parents per mix, or a list drawn per candidate such as 2,3,5 (default: 2)")
    p.add_argument("--weights", default="uniform",
                   help="uniform, dirichlet:<alpha> or ratios such as 0.3,0.7 (default: uniform)")
    p.add_argument("--classes", type=_int_list("--classes"), default=None,
                   help="class indices to generate, e.g. 0,1,2 (default: all)")
    p.add_argument("--class-counts", choices=["balanced", "train"], default="balanced",
                   help="how --count is shared among the classes: balanced (equal quotas), or "
                   "train: in proportion to the run's training split (its latent bank), so the "
                   "output has the real set's class counts; without --count, exactly them, "
                   "as a train-on-generated comparison needs (default: balanced)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--png", action="store_true",
                   help="also write OUT/png/<label>/<shard>/<id>.png (default: off)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=256,
                   help="candidates per decoder batch (default: 256, the fastest on a 2-core CPU)"
                   "; part of the job's identity, since it fixes each batch's make-up")
    p.add_argument("--chunk-size", type=_chunk_size, default="auto",
                   help="candidates per chunk, the unit of work, resume and Parquet files; a "
                   "whole number or auto: at least 8 chunks per class, at most 16 batches "
                   "(default: auto)")
    p.add_argument("--workers", type=_workers("--workers"), default=None,
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
    p.add_argument("--cpu-workers", type=_workers("--cpu-workers"), default=None,
                   help="with the split pipeline: commit (PNG, Parquet) actors N or MIN,MAX "
                   "(default: the CPUs the network actors and the mixer leave)")
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
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads per actor (default: 1)")
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


# the job


def smoke_run(out: Storage) -> Path:
    """Train a small digits run into OUT/run (tens of seconds), unless it is already there."""
    from regene_ray.run import smoke_run_config, train_run

    if not out.is_local:
        raise StorageError(f"--smoke-test without --run trains into --out, which must then be "
                           f"a local folder (not {out}); pass --run RUN_DIR as well")
    run = out.local_path("run")
    if not (run / "thresholds.json").is_file():
        train_run(smoke_run_config(), run, device="cpu")
    return run


def read_run(run: str) -> tuple[Storage, dict[str, bytes]]:
    """The run folder (local or remote) and the files the actors need, read once here and
    loaded once on the driver, so a corrupt or mismatched checkpoint, or a run whose classifier
    never learned, stops the job before anything is written."""
    st = Storage(run)
    if not st.is_file("classifier/config.json"):
        raise FileNotFoundError(f"--run {st} is not a run folder (no classifier/config.json); "
                                "create one with jobs/train.py --out RUN_DIR")
    files = pack_run(run)
    check_run_files(files, str(st))
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
    return st, files


def build_spec(args: argparse.Namespace, run: Storage, files: dict[str, bytes], *,
               smoke: bool = False) -> MassSpec:
    """The job's spec from the flags and the run; --smoke-test's limits are applied here.

    Flags are checked in three layers, each once: their syntax by the parser's types, what
    depends on the run (class range, parents in the bank) here, and the spec's own invariants
    (n >= 2, weights that fit n ...) by MassSpec itself, for Python callers too."""
    batch_size = min(args.batch_size, 64) if smoke else args.batch_size
    num_classes = int(json.loads(files["classifier/config.json"])["num_classes"])
    classes = args.classes if args.classes is not None else tuple(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes {list(classes)}: {bad} not in 0..{num_classes - 1} for run "
                         f"{run}")
    bank = LatentBank.load(files[BANK_FILE])
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


def main(args: argparse.Namespace) -> Summary:
    """Validate every input, then take the output folder's lease, then generate."""
    setup_logging(args.verbose)
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
    out = Storage(args.out)
    out.check_reachable()  # credentials, region, bucket: before Ray starts
    run_arg = args.run
    if args.smoke_test and run_arg is None:
        run_arg = smoke_run(out)
        out = out.child("generated")
    if run_arg is None or (args.count is None and not args.smoke_test
                           and args.class_counts != "train"):
        raise ValueError("--run and --count are required (or pass --smoke-test; --count may be "
                         "left out with --class-counts train)")
    run, files = read_run(str(run_arg))
    spec = build_spec(args, run, files, smoke=args.smoke_test)
    device = args.device if args.device != "auto" else ("cuda" if args.gpus_per_worker else "cpu")
    identity = job_metadata(spec, hashes_of(files), device=device,
                            thresholds=json.loads(files[THRESHOLDS_FILE]))
    inspect_output(out, identity, resume=args.resume, overwrite=args.overwrite)
    out.check_writable("--out")

    import ray

    from regene_ray.mass.ray_stage import (
        check_workers,
        default_workers,
        ray_runner,
        split_pools_here,
    )

    if not ray.is_initialized():
        # "local" starts a private Ray: with no address, ray.init would join whatever cluster
        # `ray start` last left on this machine. Under `ray job submit`, RAY_ADDRESS is set.
        address = args.address or os.environ.get("RAY_ADDRESS")
        # a private Ray lives as long as this job: no dashboard (as jobs/search.py), whose
        # processes took CPU from the actors on a small box (BENCHMARKS.md, section 8)
        ray.init(**({"address": address} if address else
                    {"address": "local", "include_dashboard": False}))
    if not sys.stderr.isatty():  # progress bars redrawn into a log file cost the driver CPU
        ray.data.DataContext.get_current().enable_progress_bars = False
    if out.is_local:
        check_shared_folder(out.local_path(), "--out")
    workers = (1, 1) if args.smoke_test else \
        args.workers or default_workers(args.gpus_per_worker, pipeline)
    pools = split_pools_here(workers, args.gpus_per_worker, args.cpu_workers) \
        if pipeline == "split" else None
    check_workers(identity, gpus_per_worker=args.gpus_per_worker, device=device)
    log.info("generating %d images of classes %s into %s: %s pipeline, %d..%d network actors%s",
             spec.count, list(spec.classes), out, pipeline, *workers,
             f", {pools.cpu_workers[0]}..{pools.cpu_workers[1]} commit actors" if pools else "")
    runner = ray_runner(spec, files, out, identity, workers=workers,
                        gpus_per_worker=args.gpus_per_worker, device=device,
                        torch_threads=args.torch_threads, pipeline=pipeline, pools=pools)
    s = run_job(spec, out, runner, resume=args.resume, overwrite=args.overwrite,
                identity=identity, details={"device": device, "pipeline": pipeline,
                                            "workers": list(workers),
                                            "gpus_per_worker": args.gpus_per_worker,
                                            **({"cpu_workers": list(pools.cpu_workers)}
                                               if pools else {})})
    log.info("%d images in %.1f s (%.0f img/s), %d candidates tried, acceptance %.3f (latent "
             "%.3f, image %.3f), %d waves -> %s", s.requested, s.wall_s, s.images_per_s,
             s.candidates_tried, s.acceptance["both_steps"], s.acceptance["latent_step"],
             s.acceptance["image_step_given_latent"], s.waves, out.display("data"))
    return s


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
