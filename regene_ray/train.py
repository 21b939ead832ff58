"""The classifier's and the decoder's training, their evaluation, and early estimates of how
well a classifier's codes decode.

Each training is an epoch function for the one loop (regene_ray.loop): `train_classifier` and
`train_decoder` save a checkpoint after every epoch (atomically) and, given the same checkpoint
path, continue after the last finished epoch. Shuffling and dropout are seeded per epoch from
(seed, epoch), so a resumed run follows the same path as an unbroken one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from regene_ray.classifier import Classifier, latent_sparsity
from regene_ray.config import ConfigError
from regene_ray.data import DataSplits, iterate_batches, random_shift, to_float
from regene_ray.decoder import Decoder, check_compatible
from regene_ray.loop import cosine_lr, epoch_seed, fit_epochs, scoped_seed, train_one_epoch
from regene_ray.losses import LossConfig, ReconstructionLoss, ssim_score

# the resume files of a run (and of a search trial's checkpoint): fit_epochs' one format
CLASSIFIER_STATE = "classifier_train_state.pt"
DECODER_STATE = "decoder_train_state.pt"
# epoch_seed's streams: the loops of one run draw from seeds far apart
CLASSIFIER_STREAM = 0
DECODER_STREAM = 7919
ESTIMATE_STREAM = 4242  # estimate_decoder_mae: its init, and + 1 its batches
SHIFT_STREAM = 104729  # the classifier's random shifts; + DECODER_STREAM the decoder's


@dataclass
class ClassifierTrainConfig:
    epochs: int = 8  # passes over the training split
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed per epoch
    weight_decay: float = 1e-4  # AdamW weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    shift: int = 0  # random translation of each training image by up to this many pixels

    def __post_init__(self):
        _check_common(self)
        if not 0 <= self.label_smoothing < 1:  # also refuses nan
            raise ConfigError(f"label_smoothing {self.label_smoothing} must be in [0, 1) "
                              "(0: none; 0.1 is usual)")


@dataclass
class DecoderTrainConfig:
    epochs: int = 15  # passes over the training codes
    batch_size: int = 128  # codes per step
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed per epoch
    weight_decay: float = 0.0  # AdamW weight decay
    loss: LossConfig = field(default_factory=LossConfig)  # MAE + SSIM + perceptual and schedule
    shift: int = 0  # random translation of each image (its code taken from the shifted image)

    def __post_init__(self):
        _check_common(self)


def _check_common(cfg) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs {cfg.epochs} and batch_size {cfg.batch_size} must be >= 1")
    if not cfg.lr > 0 or cfg.weight_decay < 0:
        raise ConfigError(f"lr {cfg.lr} must be > 0 and weight_decay {cfg.weight_decay} >= 0")
    if cfg.shift < 0:
        raise ConfigError(f"shift {cfg.shift} must be >= 0 pixels (0: no augmentation)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable cuda is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    return device


# classifier


@torch.no_grad()
def evaluate_classifier(model: Classifier, x: torch.Tensor, y: torch.Tensor,
                        device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """Accuracy, mean cross-entropy and latent sparsity on uint8 images `x`, labels `y`."""
    model.eval()
    correct, loss, zeros, n = 0, 0.0, 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size, device=device):
        z = model.encode(xb)  # (B, latent_dim)
        logits = model.classify_latent(z)
        correct += int((logits.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        zeros += latent_sparsity(z) * len(yb)
        n += len(yb)
    return {"accuracy": correct / n, "loss": loss / n, "latent_sparsity": zeros / n}


def classifier_epoch(model: Classifier, opt: torch.optim.Optimizer, data: DataSplits,
                     cfg: ClassifierTrainConfig, epoch: int, device: torch.device,
                     seed: int = 0) -> dict[str, float]:
    """One pass of cross-entropy (+ L1 on the code) over the training split, each image shifted
    by up to cfg.shift pixels."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, CLASSIFIER_STREAM))
    batches = iterate_batches(data.train_x, data.train_y, cfg.batch_size, shuffle=True,
                              generator=gen, device=device)
    shifts = torch.Generator().manual_seed(epoch_seed(seed, epoch, SHIFT_STREAM))
    l1 = model.cfg.latent_l1

    def step(batch: tuple[torch.Tensor, torch.Tensor]):
        xb, yb = batch
        z = model.encode(random_shift(xb, cfg.shift, shifts))  # (B, latent_dim)
        logits = model.classify_latent(z)
        loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        if l1 > 0:
            loss = loss + l1 * z.abs().mean()
        return loss, len(yb), {"accuracy": int((logits.argmax(1) == yb).sum())}

    with scoped_seed(epoch_seed(seed, epoch, CLASSIFIER_STREAM), device):  # dropout
        return train_one_epoch(model, opt, batches, step, lr=cosine_lr(cfg.lr, epoch, cfg.epochs),
                               what="classifier", epoch=epoch,
                               steps=math.ceil(len(data.train_x) / cfg.batch_size))


def train_classifier(model: Classifier, data: DataSplits, cfg: ClassifierTrainConfig,
                     device: torch.device, *, checkpoint: str | Path | None = None,
                     seed: int = 0, on_epoch: Callable[[int, dict], None] | None = None
                     ) -> list[dict]:
    """Train `model` for cfg.epochs, validating on holdout; resume from `checkpoint` if present.

    Returns:
        One metrics dict per epoch (resumed epochs included).
    """
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def epoch_fn(epoch: int) -> dict:
        stats = classifier_epoch(model, opt, data, cfg, epoch, device, seed)
        val = evaluate_classifier(model, data.holdout_x, data.holdout_y, device)
        return stats | {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
                        "latent_sparsity": val["latent_sparsity"]}

    return fit_epochs(model, opt, cfg.epochs, epoch_fn, what="classifier", checkpoint=checkpoint,
                      on_epoch=on_epoch, shown=("train_loss", "val_accuracy", "latent_sparsity"))


# decoder


@torch.no_grad()
def encode_all(classifier: Classifier, x: torch.Tensor, device: torch.device,
               batch_size: int = 512) -> torch.Tensor:
    """Codes (N, latent_dim) for uint8 images `x`, computed in eval mode, returned on CPU."""
    classifier.eval()
    return torch.cat([classifier.encode(to_float(xb, device)).cpu()
                      for xb in torch.split(x, batch_size)])


@torch.no_grad()
def evaluate_decoder(decoder: Decoder, classifier: Classifier, x: torch.Tensor,
                     device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """Reconstruction MAE and SSIM on [0, 1] pixels for uint8 images `x`."""
    decoder.eval()
    classifier.eval()
    mae, s, n = 0.0, 0.0, 0
    for xb in torch.split(x, batch_size):
        xb = to_float(xb, device)
        x_hat = decoder(classifier.encode(xb))
        mae += float((x_hat - xb).abs().mean(dim=(1, 2, 3)).sum())
        s += float(ssim_score(x_hat, xb, reduce=False).sum())
        n += len(xb)
    return {"mae": mae / n, "ssim": s / n}


def decoder_epoch(decoder: Decoder, loss_fn: ReconstructionLoss, opt: torch.optim.Optimizer,
                  codes: torch.Tensor | Classifier, images: torch.Tensor, cfg: DecoderTrainConfig,
                  epoch: int, device: torch.device, seed: int = 0) -> dict[str, float]:
    """One pass over (code, image) pairs; codes come from the frozen classifier: `codes` holds
    them precomputed, or (with cfg.shift) is the classifier that encodes each shifted image."""
    if cfg.shift and not isinstance(codes, Classifier):
        raise ValueError("decoder_epoch: shifted images need the classifier to encode them; "
                         "pass it as `codes` (train_decoder does)")
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, DECODER_STREAM))
    order = torch.randperm(len(images), generator=gen)
    shifts = torch.Generator().manual_seed(epoch_seed(seed, epoch, SHIFT_STREAM + DECODER_STREAM))

    def step(idx: torch.Tensor):
        x = to_float(images[idx], device)  # (B, C, H, W)
        if isinstance(codes, Classifier):
            x = random_shift(x, cfg.shift, shifts)
            with torch.no_grad():
                z = codes.encode(x)
        else:
            z = codes[idx].to(device, non_blocking=True)
        loss, parts = loss_fn(decoder(z), x, epoch, cfg.epochs)
        return loss, len(idx), {"mae": parts["mae"] * len(idx)}

    stats = train_one_epoch(decoder, opt, torch.split(order, cfg.batch_size), step,
                            lr=cosine_lr(cfg.lr, epoch, cfg.epochs), what="decoder", epoch=epoch)
    return stats | {f"w_{k}": v for k, v in loss_fn.weights(epoch, cfg.epochs).items()}


def train_decoder(decoder: Decoder, classifier: Classifier, data: DataSplits,
                  cfg: DecoderTrainConfig, device: torch.device, perceptual: torch.nn.Module | None,
                  *, checkpoint: str | Path | None = None, seed: int = 0,
                  on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train `decoder` to invert the frozen `classifier`'s codes; resume from `checkpoint`.

    Args:
        perceptual: the perceptual loss module (see losses.build_perceptual) or None.
    Returns:
        One metrics dict per epoch, with holdout MAE and SSIM.
    """
    check_compatible(classifier.cfg, decoder.cfg)
    classifier.to(device).eval().requires_grad_(False)
    decoder.to(device)
    # (N, latent_dim) once; shifted images are encoded as they are drawn
    codes = classifier if cfg.shift else encode_all(classifier, data.train_x, device)
    loss_fn = ReconstructionLoss(cfg.loss, perceptual).to(device)
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def epoch_fn(epoch: int) -> dict:
        stats = decoder_epoch(decoder, loss_fn, opt, codes, data.train_x, cfg, epoch, device, seed)
        val = evaluate_decoder(decoder, classifier, data.holdout_x, device)
        return stats | {"val_mae": val["mae"], "val_ssim": val["ssim"]}

    return fit_epochs(decoder, opt, cfg.epochs, epoch_fn, what="decoder", checkpoint=checkpoint,
                      on_epoch=on_epoch, shown=("train_loss", "val_mae", "val_ssim"))


@torch.no_grad()
def ridge_decoder_mae(classifier: Classifier, data: DataSplits, device: torch.device, *,
                      images: int = 1024, val_images: int = 512, ridge: float = 1e-3
                      ) -> dict[str, float]:
    """The cheapest early estimate of how well this classifier's codes decode: the MAE on the
    first `val_images` holdout images of a linear decoder (ridge regression from the
    standardised code, plus a bias, to the pixels, clipped to [0, 1]) fitted in closed form on
    the first `images` training images. Solved in the dual (an images x images system, float64
    on the CPU), so a 2048-wide code costs no more than a narrow one.

    It is what the multi-objective scheduler ranks trials on before their decoder exists
    (regene_ray.search.moasha). Measured against the decoder actually trained after it
    (benchmarks/early_mae_estimate.py, BENCHMARKS.md): it orders architectures about as well as
    a short fit of the real decoder (estimate_decoder_mae) at a tenth of its cost or less.
    `ridge` is relative to the mean diagonal of the kernel.

    Returns:
        {"mae": the linear decoder's holdout MAE, "seconds": its wall time}.
    """
    t0 = time.perf_counter()
    was_training = classifier.training
    z = encode_all(classifier, data.train_x[:images], device).double()
    zv = encode_all(classifier, data.holdout_x[:val_images], device).double()
    classifier.train(was_training)
    x = to_float(data.train_x[:images], "cpu").flatten(1).double()
    xv = to_float(data.holdout_x[:val_images], "cpu").flatten(1).double()
    mu, sd = z.mean(0), z.std(0) + 1e-8
    a = torch.cat([(z - mu) / sd, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    av = torch.cat([(zv - mu) / sd, torch.ones(len(zv), 1, dtype=z.dtype)], 1)
    k = a @ a.T
    alpha = torch.linalg.solve(k + ridge * k.trace() / len(k) * torch.eye(len(k), dtype=k.dtype),
                               x)
    pred = (av @ (a.T @ alpha)).clamp(0, 1)
    return {"mae": float((pred - xv).abs().mean()), "seconds": time.perf_counter() - t0}


def estimate_decoder_mae(classifier: Classifier, decoder: Decoder, data: DataSplits,
                         cfg: DecoderTrainConfig, device: torch.device, *, steps: int = 100,
                         batch_size: int = 64, images: int = 1024, val_images: int = 512,
                         seed: int = 0) -> dict[str, float]:
    """A cheap early estimate of how well this classifier's codes decode: a fresh `decoder`
    fitted for `steps` AdamW steps (`batch_size` codes each, cfg's learning rate) of plain L1
    (no SSIM or perceptual term) on the codes of the first `images` training images, then its
    MAE on the first `val_images` holdout images.

    The scheduler ranked trials on it before ridge_decoder_mae replaced it at a tenth of the
    cost; benchmarks/early_mae_estimate.py compares the two. Its absolute value is well above
    the full decoder's MAE; what it has to get right is the order of trials. It trains through
    the one loop (loop.train_one_epoch, as a single epoch of `steps` random batches). The
    classifier is left as it was (eval-mode encoding, no gradients) and torch's global RNG
    state is restored afterwards.

    Returns:
        {"mae": holdout MAE of the short fit, "seconds": its wall time}.
    """
    t0 = time.perf_counter()
    was_training = classifier.training
    with scoped_seed(epoch_seed(seed, 0, ESTIMATE_STREAM), device):
        decoder.to(device)
        codes = encode_all(classifier, data.train_x[:images], device)  # (images, latent_dim)
        x = data.train_x[:images]
        opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(epoch_seed(seed, 0, ESTIMATE_STREAM + 1))
        draws = (torch.randint(len(codes), (min(batch_size, len(codes)),), generator=gen)
                 for _ in range(steps))  # `steps` batches of random indices

        def step(idx: torch.Tensor):
            loss = F.l1_loss(decoder(codes[idx].to(device)), to_float(x[idx], device))
            return loss, len(idx), {}

        train_one_epoch(decoder, opt, draws, step, lr=cfg.lr, what="decoder estimate", epoch=0,
                        steps=steps)
        mae = evaluate_decoder(decoder, classifier, data.holdout_x[:val_images], device)["mae"]
    classifier.train(was_training)
    return {"mae": mae, "seconds": time.perf_counter() - t0}
