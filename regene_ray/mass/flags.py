"""jobs/mass_generate.py's command line: its flags with their syntax checks (the parser's
types), and the combinations of flags the parser cannot see (check_flags). Flags that depend on
the run are checked where the run is read (jobs/mass_generate.py's build_spec)."""

from __future__ import annotations

import argparse

from regene_ray.cli import int_list, min_max, positive_int
from regene_ray.mass.plan import CPU_PIPELINE, parse_count


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


def get_args_parser(description: str = "") -> argparse.ArgumentParser:
    """The parser; `description` is the job's docstring."""
    p = argparse.ArgumentParser(description=description,
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
                   help="uniform, dirichlet:<alpha>, ratios such as 0.3,0.7, or affine:<reach> "
                        "(reach 0 to 10; not convex: weights in [-reach, 1 + (n-1) reach] that "
                        "extrapolate beyond the parents, kept only where the head's top class "
                        "is the label; fewer are accepted, so the job may plan a second "
                        "stream) (default: uniform)")
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
