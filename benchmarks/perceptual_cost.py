"""What each perceptual backend costs per decoder training step, in one run.

    python benchmarks/perceptual_cost.py [--latent-dim 1024] [--batch 128] [--steps 10]

The decoder of configs/mnist.yaml (28x28, depth 3 x 2 convs from 16 channels, transposed
upsampling) trained on random codes and images: images/s of a full step (forward, MAE + SSIM +
perceptual, backward, AdamW) for perceptual none, classifier (the classifier's own blocks) and
judge (ResNet-8 at widths 8 and 16), and the judge's own training speed. Ratios to `none`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.classifier import ArchConfig, Classifier, ClassifierConfig  # noqa: E402
from regene_ray.decoder import Decoder, DecoderArch, DecoderConfig  # noqa: E402
from regene_ray.evaluation.neutral import NeutralClassifier, ResNetConfig  # noqa: E402
from regene_ray.losses import LossConfig, ReconstructionLoss, build_perceptual  # noqa: E402


def stepper(loss_of, opt):
    """One optimiser step of the loss `loss_of()`, as a function."""

    def step():
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def rate(step, batch: int, steps: int) -> float:
    for _ in range(3):  # warm-up
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent-dim", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cc = ClassifierConfig.from_arch(ArchConfig(depth=3, base_channels=16, latent_dim=args.latent_dim,
                                               latent_activation="none"),
                                    in_channels=1, image_size=28, num_classes=10)
    clf = Classifier(cc).eval().requires_grad_(False)
    x = torch.rand(args.batch, 1, 28, 28)
    z = clf.encode(x)
    results = {}
    sides = [("none", None), ("classifier", None), ("judge", 8), ("judge", 16)]
    for backend, width in sides:
        judge = NeutralClassifier(ResNetConfig(depth=8, width=width or 8)).eval().requires_grad_(False)
        dec = Decoder(DecoderConfig.mirror(cc, DecoderArch(upsample="transpose")))
        cfg = LossConfig(perceptual=backend)
        loss_fn = ReconstructionLoss(cfg, build_perceptual(cfg, clf, judge)[0])
        step = stepper(lambda d=dec, f=loss_fn: f(d(z), x, 0, 10)[0],
                       torch.optim.AdamW(dec.parameters()))
        name = backend if width is None else f"judge (ResNet-8, width {width})"
        results[name] = rate(step, args.batch, args.steps)
    base = results["none"]
    print(f"decoder training step, batch {args.batch}, {args.threads} threads:")
    for name, r in results.items():
        print(f"  {name:28s} {r:7.0f} img/s   {r / base:.2f}x of none")
    for width in (8, 16):
        judge = NeutralClassifier(ResNetConfig(depth=8, width=width)).train()
        y = torch.randint(0, 10, (args.batch,))
        jstep = stepper(lambda j=judge, t=y: torch.nn.functional.cross_entropy(j(x), t),
                        torch.optim.AdamW(judge.parameters()))
        print(f"  judge training (ResNet-8, width {width}): {rate(jstep, args.batch, args.steps):.0f} img/s")


if __name__ == "__main__":
    main()
