"""How well do MO-ASHA's early MAE estimates order architectures, and what do they cost?

For N random architectures of a search space's kind (depth, convs per block, code width,
activation, L1), trains the classifier for the space's epochs, then measures in one run:
  - ridge: regene_ray.train.ridge_decoder_mae (what the scheduler uses),
  - short: regene_ray.train.estimate_decoder_mae (a 100-step fit of the real decoder),
  - full: the decoder trained as the search trial trains it (train_decoder, its epochs),
and prints each, their seconds, and Spearman's rank correlation of each estimate with the full
decoder's holdout MAE. One torch thread (as a 1-CPU trial). Time only on an idle machine.

    .venv/bin/python benchmarks/early_mae_estimate.py --dataset digits --archs 10
    REGENE_DATA_ROOT=../shared/data .venv/bin/python benchmarks/early_mae_estimate.py \\
        --dataset mnist --max-train 3000 --archs 8
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.data import DataConfig, load_data  # noqa: E402
from regene_ray.run import RunConfig, build_models  # noqa: E402
from regene_ray.train import (  # noqa: E402
    estimate_decoder_mae,
    ridge_decoder_mae,
    train_classifier,
    train_decoder,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--archs", type=int, default=10)
    p.add_argument("--classifier-epochs", type=int, default=3)
    p.add_argument("--decoder-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from scipy.stats import spearmanr

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    print(f"load before: {os.getloadavg()}")
    data = load_data(DataConfig(dataset=args.dataset, max_train=args.max_train,
                                holdout_fraction=0.15,
                                image_size=16 if args.dataset == "digits" else None))
    rng = random.Random(args.seed)
    rows = []
    print("| # | depth | convs | code | activation | L1 | ridge MAE (s) | short fit MAE (s) | "
          "full decoder MAE (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i in range(args.archs):
        cfg = RunConfig()
        c = cfg.classifier
        c.depth, c.convs_per_block = rng.randint(1, 3), rng.randint(1, 2)
        c.latent_dim = rng.choice([16, 32, 64, 128, 512])
        c.latent_activation, c.latent_l1 = rng.choice(["relu", "none"]), 10 ** rng.uniform(-5, -1)
        c.base_channels, c.max_channels = 16, 64
        cfg.classifier_training.epochs = args.classifier_epochs
        d = cfg.decoder_training
        d.epochs, d.lr, d.batch_size, d.loss.perceptual = args.decoder_epochs, 3e-3, 128, "none"
        clf, dec = build_models(cfg, data)
        train_classifier(clf, data, cfg.classifier_training, dev)
        ridge = ridge_decoder_mae(clf, data, dev)
        short = estimate_decoder_mae(clf, build_models(cfg, data)[1], data, d, dev)
        import time

        t0 = time.perf_counter()
        full = train_decoder(dec, clf, data, d, dev, None)[-1]["val_mae"]
        t_full = time.perf_counter() - t0
        rows.append((ridge["mae"], short["mae"], full))
        print(f"| {i} | {c.depth} | {c.convs_per_block} | {c.latent_dim} | "
              f"{c.latent_activation} | {c.latent_l1:.1e} | {ridge['mae']:.4f} "
              f"({ridge['seconds']:.2f}) | {short['mae']:.4f} ({short['seconds']:.1f}) | "
              f"{full:.4f} ({t_full:.1f}) |", flush=True)
    a = np.array(rows)
    print(f"\nSpearman with the full decoder's MAE over {len(a)} architectures: ridge "
          f"{spearmanr(a[:, 0], a[:, 2])[0]:.3f}, short fit {spearmanr(a[:, 1], a[:, 2])[0]:.3f}")


if __name__ == "__main__":
    main()
