"""Evaluate a run's generations the way the paper does, into metrics.json and a report.html.

    python jobs/evaluate.py --run runs/digits --out reports/digits          # samples in-process
    python jobs/evaluate.py --run runs/mnist --generated gen/mnist --out reports/mnist \\
        --neutral-depth 56 --neutral-epochs 30 --device cuda
    python jobs/evaluate.py --smoke-test --out /tmp/eval-smoke   # trains a tiny run first

Measures: the neutral classifier's accuracy on generations (overall, per class, per n), FID
Org vs Gen / Org vs Recon / Recon vs Gen (mean +- std over --seeds; Inception features when its
weights are on disk, otherwise the neutral classifier's, named beside every number), novelty
(closest training images by MSE, SSIM and features; copy flags; near-duplicates) and pictures.
The neutral classifier is cached in OUT/neutral/ (or --neutral-cache) and reused when its config
matches; the run folder is only read. --generated is what jobs/mass_generate.py --out wrote
(regene_ray.generated: its rows are OUT/data/*.parquet), and must be a finished mass generation
of --run (summary.json, matching checkpoint hashes) unless --allow-partial / --allow-other-run.
Output: OUT/report.html (self-contained, opens from disk), OUT/metrics.json, OUT/figures/*.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regene_ray.cli import int_list, run_main, setup_logging, smoke_run  # noqa: E402
from regene_ray.config import ConfigError  # noqa: E402
from regene_ray.evaluation.evaluate import REPORT_FILE, EvalConfig, evaluate  # noqa: E402

SMOKE_RUN = "smoke-run"  # with --smoke-test and no --run: a tiny run trained inside --out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="run folder from jobs/train.py (required unless "
                   "--smoke-test)")
    p.add_argument("--generated", help="output folder of jobs/mass_generate.py (local, s3://, "
                   "gs://): its data/*.parquet rows are read (default: sample generations "
                   "in-process)")
    p.add_argument("--out", type=Path, required=True, help="report folder to write (required)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder that "
                   "is not an earlier report (default: off; nothing is deleted either way)")
    p.add_argument("--allow-partial", action="store_true", help="evaluate a --generated folder "
                   "without summary.json (an unfinished mass generation) (default: refuse)")
    p.add_argument("--allow-other-run", action="store_true", help="evaluate --generated images "
                   "made from other checkpoints than --run, or of unknown origin (default: refuse)")
    p.add_argument("--train-on-generated", nargs="+", type=Path, default=[],
                   help="jobs/train_on_generated.py result folders to tabulate in the report "
                   "(CAS, low data)")
    p.add_argument("--neutral-cache", type=Path, help="folder caching the neutral classifier; "
                   "share one between reports to train it once (default: OUT/neutral)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data-root", help="folder with the run's dataset files (default: the run "
                   "config's, else $REGENE_DATA_ROOT)")
    p.add_argument("--smoke-test", action="store_true", help="shrink everything to run in "
                   "seconds; without --run, train a tiny digits run inside --out first")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_measurement_flags(p)
    return p


def add_measurement_flags(p: argparse.ArgumentParser) -> None:
    """What to measure and how much: EvalConfig's flags, with its defaults."""
    d = EvalConfig()
    p.add_argument("--neutral-depth", type=int, default=d.neutral_depth,
                   help=f"neutral ResNet depth, 6n+2 (default: {d.neutral_depth}; paper: 56)")
    p.add_argument("--neutral-width", type=int, default=d.neutral_width,
                   help=f"neutral ResNet first-stage channels (default: {d.neutral_width})")
    p.add_argument("--neutral-epochs", type=int, default=d.neutral_epochs,
                   help=f"neutral training epochs (default: {d.neutral_epochs})")
    p.add_argument("--neutral-batch-size", type=int, default=d.neutral_batch_size,
                   help=f"neutral training batch size (default: {d.neutral_batch_size})")
    p.add_argument("--seeds", type=int, default=d.seeds,
                   help=f"sampling seeds for FID mean +- std (default: {d.seeds})")
    p.add_argument("--fid-samples", type=int, default=d.fid_samples,
                   help=f"images per side and seed in each FID (default: {d.fid_samples})")
    p.add_argument("--fid-features", default=d.fid_features, choices=["auto", "neutral",
                   "inception"], help="auto: Inception when its weights are on disk, else the "
                   f"neutral classifier (default: {d.fid_features})")
    p.add_argument("--prdc-samples", type=int, default=d.prdc_samples,
                   help="images per side in precision/recall/density/coverage (default: "
                   f"{d.prdc_samples}, capped by the sets)")
    p.add_argument("--prdc-k", type=int, default=d.prdc_k,
                   help=f"their k-th nearest neighbour (default: {d.prdc_k})")
    p.add_argument("--inception-weights", help="path of the FID Inception weights file "
                   "(default: $TORCH_HOME/hub/checkpoints, if present)")
    p.add_argument("--n-parents", type=int_list("--n-parents"), default=d.n_parents,
                   help="n of the in-process sample (default: 2,3,5)")
    p.add_argument("--dirichlet-alpha", type=float, default=d.dirichlet_alpha,
                   help="extra FID row of n = 2 mixes with Dirichlet(alpha) weights; 0 leaves "
                   f"it out (default: {d.dirichlet_alpha:g})")
    p.add_argument("--num-generated", type=int, default=d.num_generated,
                   help=f"in-process sample size (default: {d.num_generated})")
    p.add_argument("--max-generated", type=int, default=d.max_generated,
                   help=f"rows read from --generated (default: {d.max_generated})")
    p.add_argument("--novelty-samples", type=int, default=d.novelty_samples,
                   help=f"generations in the copy analysis (default: {d.novelty_samples})")
    p.add_argument("--autoencoder-epochs", type=int, default=d.autoencoder_epochs,
                   help="epochs of Fig. 3's contrasting autoencoder; 0 leaves it out "
                   f"(default: {d.autoencoder_epochs})")
    p.add_argument("--embedding", default=d.embedding, choices=["pca", "tsne"],
                   help=f"latent-space picture (default: {d.embedding})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"sampling seed (default: {d.seed})")


def build_config(args: argparse.Namespace) -> EvalConfig:
    cfg = EvalConfig(
        neutral_depth=args.neutral_depth, neutral_width=args.neutral_width,
        neutral_epochs=args.neutral_epochs, neutral_batch_size=args.neutral_batch_size,
        seeds=args.seeds, fid_samples=args.fid_samples,
        prdc_samples=args.prdc_samples, prdc_k=args.prdc_k, fid_features=args.fid_features, inception_weights=args.inception_weights,
        n_parents=args.n_parents, num_generated=args.num_generated,
        dirichlet_alpha=args.dirichlet_alpha,
        max_generated=args.max_generated, novelty_samples=args.novelty_samples,
        autoencoder_epochs=args.autoencoder_epochs, embedding=args.embedding,
        data_root=args.data_root, seed=args.seed)
    return cfg.smoke() if args.smoke_test else cfg


def main(args: argparse.Namespace) -> dict:
    setup_logging(args.verbose)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    cfg = build_config(args)
    run = args.run
    if run is None:
        if not args.smoke_test:
            raise ConfigError("--run is required: pass a run folder made by jobs/train.py")
        from regene_ray.evaluation.evaluate import prepare_report_dir

        prepare_report_dir(args.out, overwrite=args.overwrite)
        run = smoke_run(args.out / SMOKE_RUN, device=args.device, epochs=4,
                        grid_n_parents=(2, 3, 5))
    metrics = evaluate(run, args.out, cfg, generated=args.generated, device=args.device,
                       overwrite=args.overwrite or args.run is None,
                       neutral_cache=args.neutral_cache, allow_partial=args.allow_partial,
                       allow_other_run=args.allow_other_run,
                       train_results=args.train_on_generated)
    rows = metrics["fid"]["rows"]
    summary = {
        "neutral_test_accuracy": metrics["neutral"]["test_accuracy"],
        "generation_accuracy": metrics["generation_accuracy"]["overall"],
        "generation_accuracy_per_n": metrics["generation_accuracy"]["per_n"],
        "fid_features": metrics["fid"]["features"],
        **{f"fid_{k}": f"{r['mean']:.4g} +- {r['std']:.2g}" for k, r in rows.items()},
        "copy_fraction_pixel": metrics["novelty"]["pixel"]["copy_fraction"],
    }
    print(json.dumps(summary))
    print(f"report: {(args.out / REPORT_FILE).resolve()}")
    return metrics


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
