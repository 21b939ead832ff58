"""Train a ReGene run: classifier, decoder, latent bank, thresholds, metrics and grids.

    python jobs/train.py --config configs/digits.yaml --out runs/digits
    python jobs/train.py --dataset mnist --data-root ../shared/data --depth 3 --out runs/mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.cli import run_main, setup_logging  # noqa: E402
from regene_ray.config import ConfigError  # noqa: E402
from regene_ray.run import RunConfig, load_run_config, train_run  # noqa: E402

# flag -> (section, key) in RunConfig
FLAG_TARGETS = {
    "dataset": ("data", "dataset"),
    "data_root": ("data", "data_root"),
    "download": ("data", "download"),
    "image_size": ("data", "image_size"),
    "max_train": ("data", "max_train"),
    "max_test": ("data", "max_test"),
    "backbone": ("classifier", "backbone"),
    "depth": ("classifier", "depth"),
    "convs_per_block": ("classifier", "convs_per_block"),
    "base_channels": ("classifier", "base_channels"),
    "latent_dim": ("classifier", "latent_dim"),
    "latent_activation": ("classifier", "latent_activation"),
    "latent_l1": ("classifier", "latent_l1"),
    "classifier_epochs": ("classifier_training", "epochs"),
    "label_smoothing": ("classifier_training", "label_smoothing"),
    "decoder_epochs": ("decoder_training", "epochs"),
    "batch_size": (None, "batch_size"),
    "shift": (None, "shift"),
    "decoder_shift": ("decoder_training", "shift"),  # after "shift": overrides it
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="run config YAML (e.g. a search's best_config.yaml); "
                   "flags below override it (default: built-in defaults)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write (required)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run with a different config in --out (default: off; "
                   "the same config resumes)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    p.add_argument("--seed", type=int, help="model seed: initialisation, shuffling and sampling; "
                   "the data split stays the config's, so runs that differ only in --seed share "
                   "one split and one neutral judge (default: 0)")
    p.add_argument("--data-seed", type=int, help="seed of the train/holdout split and of the "
                   "--max-train/--max-test subsets (default: 0)")
    p.add_argument("--dataset", help="digits, mnist, fashion-mnist, cifar10, celeba[:Attr] or "
                   "folder:<path> (default: digits)")
    p.add_argument("--data-root", help="folder with the dataset files (default: $REGENE_DATA_ROOT)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download missing dataset files into --data-root (needs "
                   "internet; default: off)")
    p.add_argument("--image-size", type=int, help="square side fed to the networks "
                   "(default: the dataset's native size, 16 for digits)")
    p.add_argument("--max-train", type=int, help="cap train+holdout images (default: all)")
    p.add_argument("--max-test", type=int, help="cap test images (default: all)")
    p.add_argument("--backbone", help="classifier backbone: vgg, resnet or densenet, each with "
                   "its mirrored decoder (default: vgg)")
    p.add_argument("--depth", type=int, help="conv blocks in the classifier (default: 3)")
    p.add_argument("--convs-per-block", type=int, help="convs per block (default: 2)")
    p.add_argument("--base-channels", type=int, help="first block width (default: 32)")
    p.add_argument("--latent-dim", type=int, help="code width (default: 128)")
    p.add_argument("--latent-activation", help="relu, leaky_relu or none (default: relu)")
    p.add_argument("--latent-l1", type=float, help="L1 weight on the code (default: 0)")
    p.add_argument("--classifier-epochs", type=int, help="classifier epochs (default: 8)")
    p.add_argument("--label-smoothing", type=float, help="the classifier's cross-entropy label "
                   "smoothing, 0 to 1 (default: 0)")
    p.add_argument("--decoder-epochs", type=int, help="decoder epochs (default: 15)")
    p.add_argument("--batch-size", type=int, help="batch size of both stages (default: 128)")
    p.add_argument("--shift", type=int, help="augment both stages: shift each training image by "
                   "up to this many pixels, a new draw every epoch; helps most with few "
                   "training images (default: 0, none)")
    p.add_argument("--decoder-shift", type=int, help="augment the decoder stage alone (overrides "
                   "--shift there): each image shifted by up to this many pixels and encoded "
                   "by the unaugmented classifier, so the decoder learns to draw more codes "
                   "than the training images' own (default: --shift's, else 0)")
    p.add_argument("--perceptual", help="auto, lpips, judge, classifier or none (default: auto: "
                   "lpips when its weights are on disk, else none)")
    p.add_argument("--upsample", help="decoder upsampling: nearest, bilinear or transpose "
                   "(default: nearest)")
    p.add_argument("--smoke-test", action="store_true",
                   help="shrink everything (data, epochs, widths) to run in seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def build_config(args: argparse.Namespace) -> RunConfig:
    cfg = load_run_config(args.config) if args.config else RunConfig()
    d = dataclasses.asdict(cfg)
    for flag, (section, key) in FLAG_TARGETS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        sections = [section] if section else ["classifier_training", "decoder_training"]
        for s in sections:
            d[s][key] = value
    if args.seed is not None:
        d["seed"] = args.seed
    if args.data_seed is not None:
        d["data"]["seed"] = args.data_seed
    if args.perceptual is not None:
        d["decoder_training"]["loss"]["perceptual"] = args.perceptual
    if args.upsample is not None:
        d["decoder"]["upsample"] = args.upsample
    from regene_ray.config import from_dict

    cfg = from_dict(RunConfig, d, source=str(args.config or "flags"))
    return cfg.smoke() if args.smoke_test else cfg


def main(args: argparse.Namespace) -> dict:
    setup_logging(args.verbose)
    if args.config is not None and not args.config.is_file():
        raise ConfigError(f"--config {args.config} does not exist; pass a run config YAML")
    cfg = build_config(args)
    metrics = train_run(cfg, args.out, device=args.device, overwrite=args.overwrite)
    summary = {k: metrics[k] for k in ("test_accuracy", "recon_test_mae", "recon_test_ssim",
                                       "perceptual_backend")}
    print(json.dumps(summary))
    print(f"run folder: {args.out.resolve()}  (metrics.json, reconstructions.png, "
          f"generations.png, latent_bank.parquet, thresholds.json)")
    return metrics


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()),
             again="run the same command again (training resumes after its last finished epoch)")
