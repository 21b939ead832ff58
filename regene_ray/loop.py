"""The one training loop: one epoch of optimizer steps, and the epochs around it, resumable.

Every training in regene-ray runs through these two functions, as torchvision's references all
import one `train_one_epoch`: the classifier and the decoder (regene_ray.train), the shared
ResNet (regene_ray.resnet: the perceptual loss's judge and the evaluation's neutral classifier)
and the short decoder fit of `train.estimate_decoder_mae`.

- `train_one_epoch`: training mode, the epoch's learning rate, and per batch the caller's loss,
  a finite-loss check, the optimizer step, running statistics and a progress bar;
- `fit_epochs`: the epochs, an atomic checkpoint (model, optimizer, history) after each, resume
  after the last one saved, and a one-line log per epoch.

The learning rate is a stateless cosine of the epoch (or, for a caller that passes a per-batch
rate, of the step) and every epoch's randomness is seeded by `epoch_seed`, so a resumed training
follows the same path as an unbroken one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regene_ray.checkpoint import atomic_torch_save, safe_torch_load
from regene_ray.config import ConfigError

log = logging.getLogger(__name__)


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay to 5% of base over `epochs` (epochs, or steps for a per-step schedule);
    stateless so resume needs no scheduler state."""
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of one epoch's shuffling, dropout and augmentation: a function of (seed, epoch)
    only, so a resumed training draws what an unbroken one would. `stream` keeps the loops of
    one run apart (train.CLASSIFIER_STREAM, DECODER_STREAM ...)."""
    return seed * 100_003 + stream + epoch


@contextmanager
def scoped_seed(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG (the CPU's, and `device`'s when it is a GPU) seeded with `seed` inside
    the block and restored after it: dropout draws from it, and training leaves the caller's
    random state as it found it."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def check_finite(loss: torch.Tensor, what: str, epoch: int) -> None:
    """Stop training on a NaN or infinite loss, saying what to change."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{what} loss became {float(loss.detach())} in epoch {epoch}; lower the learning rate"
        )


def train_one_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterable,
                    step: Callable[[object], tuple[torch.Tensor, int, dict[str, float]]], *,
                    lr: float | Callable[[int], float], what: str, epoch: int,
                    steps: int | None = None) -> dict[str, float]:
    """One pass of optimizer steps: the epoch function every training loop reuses.

    Args:
        model: put in training mode first.
        opt: its optimizer; every group's learning rate is set to `lr`, or before each batch
            to `lr(i)` for the epoch's i-th batch (a per-step schedule).
        batches: what one epoch iterates over (image batches, index batches ...).
        step: batch -> (mean loss over the batch, its size, sums to average over the epoch,
            e.g. {"accuracy": number correct}).
        what, epoch: for the progress bar and the error on a non-finite loss.
        steps: batches in the epoch, for the progress bar (default: len(batches) if defined).
    Returns:
        {"train_loss", "train_<name>" for each of step's sums (divided by the images seen),
        "images", "images_per_s"}.
    """
    model.train()
    rate = lr if callable(lr) else (lambda i: lr)
    sums: dict[str, float] = {"loss": 0.0}
    n, t0 = 0, time.perf_counter()
    bar = tqdm(batches, total=steps, desc=f"{what} {epoch}", leave=False, disable=None)
    for i, batch in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = rate(i)
        loss, size, counts = step(batch)
        check_finite(loss, what, epoch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums["loss"] += float(loss.detach()) * size
        for k, v in counts.items():
            sums[k] = sums.get(k, 0.0) + v
        n += size
        bar.set_postfix({k: f"{v / n:.3f}" for k, v in sums.items()})
    if n == 0:
        raise ValueError(f"{what}: epoch {epoch} had no training images")
    return {f"train_{k}": v / n for k, v in sums.items()} | {
        "images": n, "images_per_s": n / (time.perf_counter() - t0)}


def fit_epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, epochs: int,
               epoch_fn: Callable[[int], dict], *, what: str,
               checkpoint: str | Path | None = None,
               on_epoch: Callable[[int, dict], None] | None = None,
               shown: tuple[str, ...] = ("train_loss",)) -> list[dict]:
    """The one resumable training loop: the classifier, the decoder and the shared ResNet (the
    judge and the neutral classifier) train through it, one `train_one_epoch` per epoch.

    Args:
        model, opt: what trains; both are restored from `checkpoint` when it exists.
        epochs: total epochs; a resumed loop continues after the last saved one.
        epoch_fn: one epoch -> its statistics (with "images_per_s").
        what: the name in logs and errors.
        checkpoint: the resume file, written atomically after every epoch (None: no resume).
        on_epoch: called with (epoch, stats) after each epoch (Tune reports through it).
        shown: statistics in the one-line log of each epoch.
    Returns:
        The per-epoch history, including epochs restored from the checkpoint.
    """
    history, start = _maybe_resume(checkpoint, model, opt, what)
    for epoch in range(start, epochs):
        stats = {"epoch": epoch, **epoch_fn(epoch)}
        history.append(stats)
        log.info("%s epoch %d: %s %.0f img/s", what, epoch,
                 " ".join(f"{k} {stats[k]:.4g}" for k in shown), stats["images_per_s"])
        if checkpoint is not None:
            _save_state(checkpoint, model, opt, epoch, history)
        if on_epoch is not None:
            on_epoch(epoch, stats)
    model.eval()
    return history


def _save_state(path: str | Path, model, opt, epoch: int, history: list[dict]) -> None:
    atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                       "epoch": epoch, "history": history}, path)


def _maybe_resume(path: str | Path | None, model, opt, what: str) -> tuple[list[dict], int]:
    if path is None or not Path(path).is_file():
        return [], 0
    state = safe_torch_load(path, map_location=next(model.parameters()).device)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise ConfigError(
            f"cannot resume {what} from {path}: it was saved for a different model ({e}); "
            "delete it or use another output folder"
        ) from e
    log.info("%s: resumed from %s after epoch %d", what, path, state["epoch"])
    return list(state["history"]), int(state["epoch"]) + 1
