"""Train a classifier on generated images, streamed from their Parquet files, and test it on the
real test set: the Classification Accuracy Score (Ravuri & Vinyals 2019) and its low-data use.

    # CAS: generated images only (as many per class as the real training split has)
    python jobs/train_on_generated.py --run runs/mnist --generated gen/mnist-54k --out cas/n2
    # the same network on the real training images alone (the reference)
    python jobs/train_on_generated.py --run runs/mnist --real-only --out cas/real
    # low data: 540 real images, three quarters of every batch real, a quarter generated (the
    # one option that gained at 1% and was level at 10% of MNIST: BENCHMARKS.md section 17)
    python jobs/train_on_generated.py --run runs/mnist-1pct --generated gen/mnist-1pct \\
        --real-images 540 --real-fraction 0.75 --max-generated 27000 --out cas/1pct-mixed

The protocol (regene_ray.evaluation.cas): the network trains once per --seeds seed, with a
cosine learning rate over all its steps; after every epoch it is scored on the run's holdout
split (real training images the ReGene run held out; never the test set), the best-scoring
epoch is kept, and only that model is tested, once, on the test set. The result is the mean and
sample standard deviation over the seeds. The seeds change the network's initialisation and
the order of the batches only: the real subset of --real-images is drawn by --subset-seed.

--generated is what jobs/mass_generate.py --out wrote (regene_ray.generated), local or s3:// /
gs://: a finished output (summary.json) of --run's checkpoints, unless --allow-partial /
--allow-other-run. Its OUT/data/*.parquet rows stream through Ray Data every epoch
(`read_parquet` -> PNG decoding -> `iter_torch_batches` with a seeded local shuffle buffer),
never all in memory: the peak grew 1.7x for 10x the rows (BENCHMARKS.md section 13,
benchmarks/stream_memory.py). The network is the evaluation's neutral architecture (a
CIFAR-style ResNet v1), trained from scratch; --run names the real data (its dataset, split and
data root), whose holdout selects and whose test split scores it. Output: OUT/metrics.json
(the mean and spread, per seed the kept epoch, its validation and test accuracy and the
per-epoch history) and OUT/models/seed-<s>/ (config.json + weights.pt).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regene_ray.cli import run_main, setup_logging  # noqa: E402
from regene_ray.cluster import init_ray  # noqa: E402
from regene_ray.config import ConfigError, to_dict  # noqa: E402
from regene_ray.data import DataSplits, iterate_batches, load_data  # noqa: E402
from regene_ray.evaluation import cas  # noqa: E402
from regene_ray.generated import GeneratedFolder  # noqa: E402
from regene_ray.ownership import claim_for_overwrite, inspect_owned, write_marker  # noqa: E402
from regene_ray.resnet import ResNet, ResNetConfig, ResNetTrainConfig  # noqa: E402
from regene_ray.run import RUN_CONFIG_FILE, RunConfig, load_run_config  # noqa: E402
from regene_ray.storage import Storage  # noqa: E402
from regene_ray.train import resolve_device  # noqa: E402

KIND = "train-on-generated"
METRICS_FILE = "metrics.json"
MODELS_DIR = "models"  # models/seed-<s>/: the kept model of each seed


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
    p.add_argument("--out", type=Path, required=True, help="result folder (metrics.json, models/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    p.add_argument("--real-only", action="store_true", help="train on the real training images "
                   "only (the reference for CAS)")
    p.add_argument("--real-fraction", type=float, default=0.0, help="share of every batch drawn "
                   "from the real training images, mixed with generated ones (default: 0)")
    p.add_argument("--generated-weight", type=float, default=1.0, help="with --real-fraction: "
                   "each generated image's loss counts this many times a real one's (the batch "
                   "loss is the weighted mean; default: 1, equal)")
    p.add_argument("--real-images", type=int, help="use only this many real training images "
                   "(a subset drawn by --subset-seed; the low-data case) (default: all)")
    p.add_argument("--real-epoch-images", type=int, help="images per epoch of a stage that "
                   "trains on real images alone (--real-only, fine-tuning): successive shuffles "
                   "of a small real set, so that it takes as many steps as a generated run "
                   "(default: one pass over the real images)")
    p.add_argument("--subset-seed", type=int, default=0, help="draws the --real-images subset, "
                   "the same for every --seeds seed (default: 0)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="after training, fine-tune "
                   "on the real images alone for this many epochs (pre-train on generated, "
                   "fine-tune on real); the best epoch of either stage is kept (default: 0)")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="peak learning rate of the "
                   "fine-tuning stage (default: 5e-4)")
    p.add_argument("--max-generated", type=int, help="stream at most this many generated rows")
    p.add_argument("--data-root", help="folder with the run's dataset files (default: the run "
                   "config's, else $REGENE_DATA_ROOT)")
    p.add_argument("--depth", type=int, default=8, help="ResNet depth 6n + 2 (default: 8)")
    p.add_argument("--width", type=int, default=16, help="first-stage channels (default: 16)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5: ResNet-8 "
                   "of width 16 then reaches 0.993 on the real MNIST training images)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds: one "
                   "training each (init and batch order); the result is their mean and spread "
                   "(default: 0 1 2)")
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
    if not args.generated_weight > 0 or (args.generated_weight != 1 and
                                         round(args.batch_size * args.real_fraction) < 1):
        raise ConfigError(f"--generated-weight {args.generated_weight} must be > 0, and weighs "
                          "generated images against real ones in the same batch: add "
                          "--real-fraction (at least one real image a batch), or leave it at 1")
    if args.real_images is not None and args.real_images < 1:
        raise ConfigError(f"--real-images {args.real_images} must be >= 1")
    if args.real_images is not None and not uses_real(args):
        raise ConfigError("--real-images limits the real images, but none are used: add "
                          "--real-fraction, --finetune-epochs or --real-only")
    if args.real_epoch_images is not None and args.real_epoch_images < 1:
        raise ConfigError(f"--real-epoch-images {args.real_epoch_images} must be >= 1")
    if args.finetune_epochs < 0 or not args.finetune_lr > 0:
        raise ConfigError(f"--finetune-epochs {args.finetune_epochs} must be >= 0 and "
                          f"--finetune-lr {args.finetune_lr} > 0")
    if args.finetune_epochs and args.real_only:
        raise ConfigError("--finetune-epochs fine-tunes on the real images after training on "
                          "generated ones: with --real-only, add to --epochs instead")
    if min(args.seeds) < 0 or args.subset_seed < 0 or len(set(args.seeds)) < len(args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))} must be distinct and >= 0, "
                          f"--subset-seed {args.subset_seed} >= 0")
    if min(args.epochs, args.batch_size) < 1 or not args.lr > 0:
        raise ConfigError(f"--epochs {args.epochs} and --batch-size {args.batch_size} must be "
                          f">= 1, --lr {args.lr} > 0")
    if args.max_generated is not None and args.max_generated < 1:
        raise ConfigError(f"--max-generated {args.max_generated} must be >= 1")
    if args.real_fraction and args.batch_size - round(args.batch_size * args.real_fraction) < 1:
        raise ConfigError(f"--real-fraction {args.real_fraction} of --batch-size "
                          f"{args.batch_size} leaves no generated image in a batch; lower it")
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
        gen = torch.Generator().manual_seed(args.subset_seed)
        pick = torch.randperm(len(real_x), generator=gen)
        real_x, real_y = real_x[pick[:args.real_images]], real_y[pick[:args.real_images]]
    per_batch = int(round(args.batch_size * args.real_fraction))
    if per_batch > len(real_x):
        raise ConfigError(f"--real-fraction {args.real_fraction} asks for {per_batch} real images "
                          f"a batch, more than the {len(real_x)} there are; lower it or "
                          "--batch-size")
    return run_cfg, data, (real_x, real_y)


def stages(args: argparse.Namespace, folders: list[GeneratedFolder], real: tuple
           ) -> tuple[list[cas.Stage], int]:
    """The training stages and the generated rows each epoch streams: the real images alone
    (--real-only), or the generated folders streamed by Ray Data, mixed with real images at
    --real-fraction of every batch, then --finetune-epochs on the real images alone."""
    cfg = ResNetTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)

    def real_batches(epoch, gen):
        return iterate_batches(*real, args.batch_size, shuffle=True, generator=gen,
                               images=args.real_epoch_images)

    real_steps = math.ceil((args.real_epoch_images or len(real[0])) / args.batch_size)
    if args.real_only:
        return [cas.Stage("train", real_batches, real_steps, cfg)], 0
    import ray

    from regene_ray.evaluation.stream import batches_per_epoch, generated_batches

    init_ray()  # $RAY_ADDRESS under `ray job submit`, else a private local Ray
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    batches, rows = generated_batches(folders, batch_size=args.batch_size,
                                      real=real if args.real_fraction else None,
                                      real_fraction=args.real_fraction,
                                      max_rows=args.max_generated,
                                      generated_weight=args.generated_weight)
    out = [cas.Stage("train", batches, batches_per_epoch(rows, args.batch_size,
                                                         args.real_fraction), cfg)]
    if args.finetune_epochs:
        out.append(cas.Stage("fine-tune", real_batches, real_steps,
                             replace(cfg, epochs=args.finetune_epochs, lr=args.finetune_lr)))
    return out, rows


def main(args: argparse.Namespace) -> dict:
    setup_logging(args.verbose)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_cfg, data, real = real_images(args)
    model_cfg = ResNetConfig(depth=args.depth, width=args.width, in_channels=data.channels,
                             num_classes=data.num_classes)
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
    plan, streamed = stages(args, folders, real)
    if action == "overwrite":
        claim_for_overwrite(out, KIND)
    out.makedirs()
    write_marker(out, KIND, [METRICS_FILE, MODELS_DIR], {})

    def save(seed: int, model: ResNet, result: cas.SeedResult) -> None:
        stages = [to_dict(replace(s.config, seed=cas.stage_seed(seed, k))) | {"stage": s.name}
                  for k, s in enumerate(plan)]
        model.save(args.out / MODELS_DIR / f"seed-{seed}",
                   extra={"training": stages, "seed": seed, "kept_epoch": result.best_epoch,
                          "kept_stage": result.best_stage})

    results = cas.run_seeds(args.seeds, lambda: ResNet(model_cfg), plan,
                            (data.holdout_x, data.holdout_y), (data.test_x, data.test_y), dev,
                            save=save)
    metrics = {
        "kind": KIND, **cas.summary(results),
        "trained_on": {"generated": [str(f) for f in folders], "generated_rows": streamed,
                       "real_only": args.real_only, "real_fraction": args.real_fraction,
                       "generated_weight": args.generated_weight,
                       "real_images": len(real[0]) if uses_real(args) else 0,
                       "finetune_epochs": args.finetune_epochs},
        "protocol": {"selection": cas.SELECTION, "validation_images": len(data.holdout_x),
                     "test_images": len(data.test_x), "lr_schedule": "cosine per step",
                     "seeds": args.seeds, "subset_seed": args.subset_seed,
                     "spread": "sample standard deviation over seeds"},
        "network": f"ResNet-{args.depth} v1 (width {args.width})",
        # the stages' settings (each seed's own training seeds: cas.stage_seed)
        "model": to_dict(model_cfg), "training": [to_dict(s.config) | {"stage": s.name}
                                                  for s in plan],
        "per_seed": [asdict(r) for r in results],
        "data": {k: v for k, v in to_dict(run_cfg.data).items() if k != "data_root"},
        "test_images": len(data.test_x), "device": str(dev),
    }
    out.write_json(METRICS_FILE, metrics)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "test_accuracy_std", "seeds")}
                     | metrics["trained_on"]))
    return metrics


def uses_real(args: argparse.Namespace) -> bool:
    return bool(args.real_only or args.real_fraction or args.finetune_epochs)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
