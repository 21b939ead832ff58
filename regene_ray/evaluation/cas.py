"""The train-on-generated protocol: Classification Accuracy Score (Ravuri & Vinyals 2019) and the
low-data use of generations, measured so that a reviewer can accept the figure.

One result is one network trained from scratch several times, once per model seed, on the same
data (generated, real, or both; the seed draws the initialisation, the batch order, the random
shifts and which real images join which generated batch):
- the learning rate follows a cosine over every step of the training (not per epoch), so a
  short training ends annealed;
- optionally, a second stage fine-tunes on the real images alone (pre-train on generated, then
  fine-tune on real) with its own cosine and its own random stream (stage_seed);
- after every epoch of either stage the model is scored on the validation split (real training
  images that the ReGene run held out of its training: never the test set), and the epoch that
  scores best is kept (the latest, on a tie: a small validation split saturates, and the
  later epoch has trained longer at a lower rate; 60 images of a 1% MNIST run all scored 1.0
  from the first epoch on);
- only then is the kept model tested on the test set, once.
The figure is the mean over seeds, with the sample standard deviation beside it.

Plain torch: the job (jobs/train_on_generated.py) supplies the batches, streamed through Ray Data
or drawn from memory.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch

from regene_ray.resnet import ResNet, ResNetTrainConfig, accuracy, fit_resnet

log = logging.getLogger(__name__)

Batches = Callable[[int, torch.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]]
Images = tuple[torch.Tensor, torch.Tensor]  # (uint8 images, labels)

SELECTION = ("the epoch with the best accuracy on the validation split (real training images "
             "the ReGene run held out), then tested once")


@dataclass
class Stage:
    """One training stage: its batches, batches per epoch, and optimiser settings."""

    name: str  # "train" or "fine-tune"
    batches: Batches
    steps: int  # batches per epoch (the per-step schedule's length)
    config: ResNetTrainConfig


@dataclass
class SeedResult:
    seed: int
    best_epoch: int  # counted over all stages
    best_stage: str
    val_accuracy: float  # of the kept model
    test_accuracy: float  # of the kept model, measured once
    history: list[dict] = field(default_factory=list)


class KeepBest:
    """An on_epoch callback that keeps (in memory) the weights of the epoch with the highest
    validation accuracy, the latest of equals; `restore` puts them back into the model."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.accuracy, self.epoch, self.stage, self.state = -1.0, -1, "", None
        self.seen = 0  # epochs of earlier stages, so epochs count across stages
        self.current = ""

    def __call__(self, epoch: int, stats: dict) -> None:
        if stats["val_accuracy"] >= self.accuracy:
            self.accuracy, self.epoch, self.stage = stats["val_accuracy"], self.seen + epoch, \
                self.current
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> None:
        self.model.load_state_dict(self.state)
        self.model.eval()


def train_and_select(model: ResNet, stages: list[Stage], val: Images, device: torch.device,
                     what: str = "train-on-generated") -> tuple[list[dict], KeepBest]:
    """Train `model` through `stages` in order, validating after every epoch, and leave the
    best-validating epoch's weights in it. Returns (history over all stages, the selection)."""
    best, history = KeepBest(model), []
    for stage in stages:
        best.current = stage.name
        part = fit_resnet(model, stage.batches, stage.config, device, what=f"{what} {stage.name}",
                          val=val, steps=stage.steps, per_step_lr=True, on_epoch=best)
        history += [{**h, "stage": stage.name, "epoch": best.seen + h["epoch"]} for h in part]
        best.seen += len(part)
    best.restore()
    return history, best


def run_seeds(seeds: list[int], build: Callable[[], ResNet], stages: list[Stage], val: Images,
              test: Images, device: torch.device, *,
              save: Callable[[int, ResNet, SeedResult], None] | None = None,
              what: str = "train-on-generated") -> list[SeedResult]:
    """The protocol once per model seed: build (under the seed), train and select on `val`,
    then test once on `test`; `save(seed, model, result)` after each seed."""
    results = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        seeded = [Stage(s.name, s.batches, s.steps, replace(s.config, seed=stage_seed(seed, k)))
                  for k, s in enumerate(stages)]
        history, best = train_and_select(model, seeded, val, device, what=f"{what} seed {seed}")
        if best.state is None:
            raise ValueError(f"{what}: no epoch was trained, so none can be kept; train for at "
                             "least one epoch")
        result = SeedResult(seed, best.epoch, best.stage, best.accuracy,
                            accuracy(model, *test, device), history)
        log.info("%s seed %d: kept epoch %d (%s), validation %.4f, test %.4f", what, seed,
                 result.best_epoch, result.best_stage, result.val_accuracy, result.test_accuracy)
        if save is not None:
            save(seed, model, result)
        results.append(result)
    return results


def stage_seed(seed: int, stage: int) -> int:
    """The training seed of stage `stage` (0, 1 ...) for model seed `seed`: the model seed for
    the first stage, others apart, so a fine-tuning does not replay the first epochs' draws."""
    return seed if stage == 0 else seed + 1_000_003 * stage


def summary(results: list[SeedResult]) -> dict:
    """Mean and sample standard deviation (n - 1; None for one seed) of the test and validation
    accuracies over seeds."""
    def spread(xs: list[float]) -> float | None:
        return statistics.stdev(xs) if len(xs) > 1 else None

    test = [r.test_accuracy for r in results]
    val = [r.val_accuracy for r in results]
    return {"test_accuracy": statistics.fmean(test), "test_accuracy_std": spread(test),
            "val_accuracy": statistics.fmean(val), "val_accuracy_std": spread(val),
            "seeds": len(results)}


