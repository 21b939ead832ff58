"""Train a classifier on generated images, streamed from their Parquet files, and test it on the
real test set: the Classification Accuracy Score (Ravuri & Vinyals 2019) and its low-data use.

    # CAS: generated images only (as many per class as the real training split has)
    python jobs/train_on_generated.py --run runs/mnist --generated gen/mnist-54k --out cas/n2
    # the same network on the real training images alone (the reference)
    python jobs/train_on_generated.py --run runs/mnist --real-only --out cas/real
    # low data: 540 real images, half of every batch real, half generated
    python jobs/train_on_generated.py --run runs/mnist-1pct --generated gen/mnist-1pct \\
        --real-images 540 --real-fraction 0.5 --out cas/1pct-mixed

--generated is what jobs/mass_generate.py --out wrote (regene_ray.generated), local or s3:// /
gs://: a finished output (summary.json) of --run's checkpoints, unless --allow-partial /
--allow-other-run. Its OUT/data/*.parquet rows stream through Ray Data every epoch
(`read_parquet` -> PNG decoding -> `iter_torch_batches` with a seeded local shuffle buffer),
never all in memory: the peak grew 1.7x for 10x the rows (BENCHMARKS.md section 13,
benchmarks/stream_memory.py). The network
is the evaluation's neutral architecture (a CIFAR-style ResNet v1), trained from scratch with
the same recipe as the neutral judge; --run names the real data (its dataset, split and data
root), whose test split scores it. Output: OUT/metrics.json (test accuracy, what it trained on,
per-epoch history) and OUT/model/ (config.json + weights.pt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regene_ray.cli import run_main, setup_logging  # noqa: E402
from regene_ray.cluster import init_ray  # noqa: E402
from regene_ray.config import ConfigError, to_dict  # noqa: E402
from regene_ray.data import DataSplits, iterate_batches, load_data  # noqa: E402
from regene_ray.generated import GeneratedFolder  # noqa: E402
from regene_ray.ownership import claim_for_overwrite, inspect_owned, write_marker  # noqa: E402
from regene_ray.resnet import (  # noqa: E402
    ResNet,
    ResNetConfig,
    ResNetTrainConfig,
    accuracy,
    fit_resnet,
)
from regene_ray.run import RUN_CONFIG_FILE, RunConfig, load_run_config  # noqa: E402
from regene_ray.storage import Storage  # noqa: E402
from regene_ray.train import resolve_device  # noqa: E402

KIND = "train-on-generated"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"


def get_args_parser() -> argparse.ArgumentParser:
    d = ResNetTrainConfig()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the jobs/train.py run whose data "
                   "(dataset, split, data root) gives the real images and the test set")
    p.add_argument("--generated", nargs="+", default=[], help="output folders of "
                   "jobs/mass_generate.py (local, s3://, gs://): their data/*.parquet stream")
    p.add_argument("--allow-partial", action="store_true", help="train on a --generated folder "
                   "without summary.json (an unfinished mass generation) (default: refuse)")
    p.add_argument("--allow-other-run", action="store_true", help="train on --generated images "
                   "made from other checkpoints than --run, or of unknown origin (default: refuse)")
    p.add_argument("--out", type=Path, required=True, help="result folder (metrics.json, model/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    p.add_argument("--real-only", action="store_true", help="train on the real training images "
                   "only (the reference for CAS)")
    p.add_argument("--real-fraction", type=float, default=0.0, help="share of every batch drawn "
                   "from the real training images, mixed with generated ones (default: 0)")
    p.add_argument("--real-images", type=int, help="use only this many real training images "
                   "(a seeded subset; the low-data case) (default: all)")
    p.add_argument("--max-generated", type=int, help="stream at most this many generated rows")
    p.add_argument("--data-root", help="folder with the run's dataset files (default: the run "
                   "config's, else $REGENE_DATA_ROOT)")
    p.add_argument("--depth", type=int, default=8, help="ResNet depth 6n + 2 (default: 8)")
    p.add_argument("--width", type=int, default=16, help="first-stage channels (default: 16)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--seed", type=int, default=0, help="init, shuffling and subsets (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not (args.run / RUN_CONFIG_FILE).is_file():
        raise ConfigError(f"--run {args.run} is not a run folder (no {RUN_CONFIG_FILE}); train "
                          "one with jobs/train.py")
    if args.real_only == bool(args.generated):
        raise ConfigError("pass --generated FOLDER ... (generated images, optionally mixed with "
                          "real ones by --real-fraction), or --real-only, not both or neither")
    if not 0 <= args.real_fraction < 1:
        raise ConfigError(f"--real-fraction {args.real_fraction} must be in [0, 1)")
    if args.real_images is not None and args.real_images < 1:
        raise ConfigError(f"--real-images {args.real_images} must be >= 1")
    if args.real_images is not None and not (args.real_only or args.real_fraction):
        raise ConfigError("--real-images limits the real images, but none are used: add "
                          "--real-fraction or --real-only")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")


def real_images(args: argparse.Namespace) -> tuple[RunConfig, DataSplits, tuple]:
    """--run's config and data (missing data fails here, before --out is touched), and the
    real training images used: all, or a seeded subset of --real-images."""
    run_cfg = load_run_config(args.run / RUN_CONFIG_FILE)
    if args.data_root is not None:
        run_cfg.data.data_root = args.data_root
    data = load_data(run_cfg.data)
    real_x, real_y = data.train_x, data.train_y
    if args.real_images is not None:
        if args.real_images > len(real_x):
            raise ConfigError(f"--real-images {args.real_images} exceeds the run's "
                              f"{len(real_x)} training images")
        pick = torch.randperm(len(real_x), generator=torch.Generator().manual_seed(args.seed))
        real_x, real_y = real_x[pick[:args.real_images]], real_y[pick[:args.real_images]]
    return run_cfg, data, (real_x, real_y)


def batch_source(args: argparse.Namespace, folders: list[GeneratedFolder], real: tuple):
    """(epoch, generator) -> batches, and the generated rows each epoch streams: the real
    images alone (--real-only), or the generated folders streamed by Ray Data, mixed with
    real images at --real-fraction of every batch."""
    if args.real_only:
        def batches(epoch, gen):
            return iterate_batches(*real, args.batch_size, shuffle=True, generator=gen)

        return batches, 0
    import ray

    from regene_ray.evaluation.stream import generated_batches

    init_ray()  # $RAY_ADDRESS under `ray job submit`, else a private local Ray
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    return generated_batches(folders, batch_size=args.batch_size, seed=args.seed,
                             real=real if args.real_fraction else None,
                             real_fraction=args.real_fraction, max_rows=args.max_generated)


def main(args: argparse.Namespace) -> dict:
    setup_logging(args.verbose)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_cfg, data, real = real_images(args)
    model_cfg = ResNetConfig(depth=args.depth, width=args.width, in_channels=data.channels,
                             num_classes=data.num_classes)
    train_cfg = ResNetTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  seed=args.seed)
    folders = [GeneratedFolder(g) for g in args.generated]
    for folder in folders:  # a wrong or unfinished folder fails before --out is touched
        folder.check(args.run, allow_partial=args.allow_partial,
                     allow_other_run=args.allow_other_run)
    out = Storage(args.out)
    action = inspect_owned(out, KIND, overwrite=args.overwrite,
                           what="a jobs/train_on_generated.py result")
    if action == "existing":
        raise FileExistsError(f"--out {args.out} holds an earlier result; pass --overwrite to "
                              "replace it, or choose another --out")
    dev = resolve_device(args.device)
    batches, streamed = batch_source(args, folders, real)
    if action == "overwrite":
        claim_for_overwrite(out, KIND)
    out.makedirs()
    write_marker(out, KIND, [METRICS_FILE, MODEL_DIR], {})
    torch.manual_seed(args.seed)
    model = ResNet(model_cfg)
    history = fit_resnet(model, batches, train_cfg, dev, what="train-on-generated",
                         val=(data.holdout_x, data.holdout_y))
    metrics = {
        "kind": KIND,
        "test_accuracy": accuracy(model, data.test_x, data.test_y, dev),
        "trained_on": {"generated": [str(f) for f in folders], "generated_rows": streamed,
                       "real_only": args.real_only, "real_fraction": args.real_fraction,
                       "real_images": len(real[0]) if (args.real_only or args.real_fraction)
                       else 0},
        "network": f"ResNet-{args.depth} v1 (width {args.width})",
        "model": to_dict(model_cfg), "training": to_dict(train_cfg),
        "data": {k: v for k, v in to_dict(run_cfg.data).items() if k != "data_root"},
        "test_images": len(data.test_x), "device": str(dev), "history": history,
    }
    model.save(args.out / MODEL_DIR, extra={"training": to_dict(train_cfg)})
    out.write_json(METRICS_FILE, metrics)
    print(json.dumps({"test_accuracy": metrics["test_accuracy"], **metrics["trained_on"]}))
    return metrics


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
