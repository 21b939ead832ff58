"""A diagnostic for issue 23's low-data case, not a feature: a copy of one run (the networks and
thresholds) whose latent bank holds another run's training images (the parents).

With the full MNIST run's networks and the 1% run's 540 training images, jobs/mass_generate.py
then mixes only the 540 codes, but through a classifier and a decoder that learnt from all
54,000 images. Training on that set against training on the 1% run's own set says whether what
limits the low-data gain is the parents or the networks that encode and decode them.

    python benchmarks/swap_parents.py --networks runs/mnist --parents runs/low/run-1pct \\
        --out runs/low-swap/run-1pct

--out must not exist; the networks' run folder is copied into it, its latent bank replaced, and
the parents' run config kept beside as parents_config.yaml. Left out: the train states, the
pictures, and novelty.json (its distances are calibrated against the networks run's own bank,
so mass_generate.py refuses --novelty-quantile on the copy). Nothing else is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.bank_build import build_bank  # noqa: E402
from regene_ray.classifier import Classifier  # noqa: E402
from regene_ray.data import load_data  # noqa: E402
from regene_ray.nearest import NOVELTY_FILE  # noqa: E402
from regene_ray.run import RUN_CONFIG_FILE, load_run_config  # noqa: E402
from regene_ray.run_files import BANK_FILE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", type=Path, required=True, help="run whose classifier, decoder "
                   "and thresholds are used")
    p.add_argument("--parents", type=Path, required=True, help="run whose training split "
                   "becomes the latent bank")
    p.add_argument("--out", type=Path, required=True, help="new run folder (must not exist)")
    args = p.parse_args(argv)
    for run in (args.networks, args.parents):
        if not (run / RUN_CONFIG_FILE).is_file():
            p.error(f"{run} is not a run folder (no {RUN_CONFIG_FILE})")
    if args.out.exists():
        p.error(f"--out {args.out} exists; pick a new folder")
    parents_cfg = load_run_config(args.parents / RUN_CONFIG_FILE)
    data = load_data(parents_cfg.data)
    clf = Classifier.load(args.networks / "classifier")
    bank = build_bank(clf, data.train_x, data.train_y, torch.device("cpu"))
    shutil.copytree(args.networks, args.out,
                    ignore=shutil.ignore_patterns("*_train_state.pt", "*.png", BANK_FILE,
                                                  NOVELTY_FILE))
    shutil.copy(args.parents / RUN_CONFIG_FILE, args.out / "parents_config.yaml")
    bank.save(args.out / BANK_FILE)
    print(f"{args.out}: {len(bank.labels)} parents from {args.parents}, networks of "
          f"{args.networks}; the classifier labels {bank.correct.mean():.4f} of them correctly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
