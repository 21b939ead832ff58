"""The neutral classifier: a ResNet v1 trained from scratch on the real data, used as a judge.

The paper measures how recognisable generations are with a classifier that had no part in making
them: a CIFAR-style ResNet v1 (He et al. 2016, depth 6n + 2; ResNet-56 in the paper, ResNet-20
by default here because it trains on a CPU). Its penultimate features (after global average
pooling) are also the fallback feature space for FID when Inception weights are absent.

The trained model is cached in `RUN_DIR/neutral/` (config.json + weights.pt + metrics.json) and
reused when the requested config matches; training checkpoints every epoch and resumes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from regene_ray.checkpoint import (
    MODEL_CONFIG_FILE,
    WEIGHTS_FILE,
    load_weights,
    read_config,
    save_model,
)
from regene_ray.config import ConfigError, from_dict, save_json, to_dict
from regene_ray.data import DataSplits, iterate_batches, to_float
from regene_ray.ownership import MARKER_FILE, OwnershipError, read_marker, write_marker
from regene_ray.storage import Storage
from regene_ray.train import cosine_lr, fit_epochs

log = logging.getLogger(__name__)

NEUTRAL_DIR = "neutral"
METRICS_FILE = "metrics.json"
STATE_FILE = "train_state.pt"


# config


@dataclass
class ResNetConfig:
    depth: int = 20  # 6n + 2 layers: 20 for CPU, 56 as in the paper
    width: int = 16  # channels of the first stage; the three stages use width, 2x, 4x
    in_channels: int = 1  # image channels (1 grey, 3 colour)
    num_classes: int = 10  # width of the final linear layer

    def __post_init__(self):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ConfigError(
                f"neutral depth {self.depth} is not 6n + 2 with n >= 1; use 8, 14, 20, 32, 44 or 56"
            )
        if self.width < 1 or self.in_channels < 1 or self.num_classes < 2:
            raise ConfigError(
                f"width {self.width}, in_channels {self.in_channels} must be >= 1 and num_classes "
                f"{self.num_classes} >= 2"
            )

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def num_features(self) -> int:
        """Width of the penultimate features (FID's feature space)."""
        return 4 * self.width


@dataclass
class NeutralTrainConfig:
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed per epoch (converges in few epochs)
    weight_decay: float = 5e-4  # AdamW weight decay
    shift: int = 2  # random translation in pixels (augmentation; no flips, digits are not symmetric)
    seed: int = 0  # init and shuffling

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"neutral epochs {self.epochs} and batch_size {self.batch_size} "
                              "must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.shift < 0:
            raise ConfigError(f"neutral lr {self.lr} must be > 0, weight_decay "
                              f"{self.weight_decay} and shift {self.shift} >= 0")


# model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (ResNet v1).

    The shortcut is option A of the paper's CIFAR models: identity, subsampled and zero-padded
    in channels when the shape changes, so it adds no parameters.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class NeutralClassifier(nn.Module):
    """CIFAR-style ResNet v1: 3 stages of n basic blocks, global average pool, linear head.

    Works for any input side >= 4 (the pool is global). Inputs are images in [0, 1].

    Args:
        cfg: depth, width and the data's channels and classes.
    """

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        stages, c_in = [], w
        for i, c in enumerate((w, 2 * w, 4 * w)):
            blocks = [BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1)
                      for j in range(cfg.blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(4 * w, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_features(self) -> int:
        return self.cfg.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: images (B, C, H, W) in [0, 1] -> (B, 4 * width)."""
        return self.stages(self.stem(x - 0.5)).mean(dim=(2, 3))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's and each stage's feature maps, shallow to deep (a perceptual loss's)."""
        feats = [self.stem(x - 0.5)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        save_model(self, {"model": to_dict(self.cfg), **(extra or {})}, directory)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu"
             ) -> NeutralClassifier:
        """Rebuild from `directory/config.json` and load `weights.pt` (weights_only)."""
        raw = read_config(directory)
        if "model" not in raw:
            raise ConfigError(f"{directory}/config.json has no 'model' section; delete "
                              f"{directory} so the neutral classifier is retrained")
        cfg = from_dict(ResNetConfig, raw["model"], source=f"{directory}/config.json")
        return load_weights(cls(cfg), directory).to(map_location).eval()


# training


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `shift` pixels (zero fill): (B, C, H, W) -> same shape."""
    if shift == 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (B,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * shift + 1, (B,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device)[None, :])  # (B, H)
    cols = (dx[:, None] + torch.arange(W, device=x.device)[None, :])  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device | str,
            batch_size: int = 512) -> torch.Tensor:
    """Predicted labels (N,) for uint8 images (N, C, H, W)."""
    model.eval()
    out = [model(to_float(xb, device)).argmax(1).cpu() for xb in torch.split(x, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str
             ) -> float:
    """Top-1 accuracy on uint8 images `x` with labels `y`."""
    return float((predict(model, x, device) == y).float().mean())


def train_neutral(model: NeutralClassifier, data: DataSplits, cfg: NeutralTrainConfig,
                  device: torch.device, checkpoint: Path | None = None,
                  what: str = "neutral") -> list[dict]:
    """Cross-entropy training from scratch on `data.train_x`; resumes from `checkpoint`.

    Returns:
        Per-epoch history (train loss/accuracy, holdout accuracy, images/s).
    """
    def batches(epoch: int, gen: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return iterate_batches(data.train_x, data.train_y, cfg.batch_size, shuffle=True,
                               generator=gen, device=device)

    return fit_classifier(model, batches, cfg, device, checkpoint=checkpoint, what=what,
                          val=(data.holdout_x, data.holdout_y),
                          steps=math.ceil(len(data.train_x) / cfg.batch_size))


def fit_classifier(model: NeutralClassifier,
                   batches: Callable[[int, torch.Generator],
                                     Iterable[tuple[torch.Tensor, torch.Tensor]]],
                   cfg: NeutralTrainConfig, device: torch.device, *,
                   checkpoint: Path | None = None, what: str = "neutral",
                   val: tuple[torch.Tensor, torch.Tensor] | None = None,
                   steps: int | None = None) -> list[dict]:
    """The neutral architecture's training loop on any source of batches: AdamW with a cosine
    learning rate per epoch, random shifts, cross-entropy; resumes from `checkpoint`.

    Args:
        batches: (epoch, that epoch's seeded generator) -> (images, labels) batches; images
            float in [0, 1] or uint8, on any device.
        val: held-out (uint8 images, labels) scored after each epoch, or None.
        steps: batches per epoch, for the progress bar only.
    Returns:
        Per-epoch history (train loss/accuracy, images, val accuracy, images/s).
    """
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def epoch_fn(epoch: int) -> dict:
        model.train()
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        total, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(batches(epoch, gen), total=steps, desc=f"{what} epoch {epoch}", leave=False,
                   disable=None)
        for xb, yb in bar:
            xb = to_float(xb, device) if xb.dtype == torch.uint8 else xb.to(device)
            yb = yb.to(device).long()
            logits = model(random_shift(xb, cfg.shift, gen))
            loss = F.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{what} loss became {float(loss)} in epoch {epoch}; "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            n += len(yb)
        if n == 0:
            raise ValueError(f"{what}: epoch {epoch} had no training images")
        stats = {"train_loss": total / n, "train_accuracy": correct / n, "images": n,
                 "images_per_s": n / (time.perf_counter() - t0)}
        if val is not None:
            stats["val_accuracy"] = accuracy(model, val[0], val[1], device)
        return stats

    return fit_epochs(model, opt, cfg.epochs, epoch_fn, what=what, checkpoint=checkpoint,
                      shown=("train_loss", "train_accuracy", "val_accuracy") if val is not None
                      else ("train_loss", "train_accuracy"))


def load_or_train_neutral(folder: str | Path, data: DataSplits, model_cfg: ResNetConfig,
                          train_cfg: NeutralTrainConfig, device: torch.device,
                          data_identity: dict | None = None, flag: str = "--neutral-cache",
                          what: str = "neutral") -> tuple[NeutralClassifier, dict]:
    """The neutral classifier for this data: cached in `folder` when its config matches.

    Args:
        folder: the cache folder (evaluation passes REPORT/neutral or --neutral-cache).
        data: the run's splits (train for training, holdout for validation, test for accuracy).
        model_cfg, train_cfg: what to build and how to train it.
        device: where to train.
        data_identity: the data config, stored so a cache for other data is never reused.
        flag: how errors name `folder` to the user; what: how the log names the network.
    Returns:
        (model in eval mode, metrics: test_accuracy, history, cached flag, seconds).
    """
    folder = Path(folder)
    claim_cache(folder, flag)
    want = {"model": to_dict(model_cfg), "training": to_dict(train_cfg),
            "data": data_identity or {}}
    if (folder / WEIGHTS_FILE).is_file() and (folder / METRICS_FILE).is_file():
        have = read_config(folder)
        if have == want:
            model = NeutralClassifier.load(folder, map_location=device)
            metrics = _read_json(folder / METRICS_FILE) | {"cached": True}
            log.info("%s: reusing ResNet-%d from %s (test accuracy %.4f)", what, model_cfg.depth,
                     folder, metrics.get("test_accuracy", float("nan")))
            return model, metrics
        log.warning("%s: %s holds a model for another config; retraining it", what, folder)
        for name in (WEIGHTS_FILE, MODEL_CONFIG_FILE, METRICS_FILE, STATE_FILE):
            (folder / name).unlink(missing_ok=True)
    state = folder / STATE_FILE
    if state.is_file():
        old = _read_json(folder / "train_config.json")
        if old != want:
            state.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    save_json(want, folder / "train_config.json")
    torch.manual_seed(train_cfg.seed)
    model = NeutralClassifier(model_cfg)
    t0 = time.perf_counter()
    history = train_neutral(model, data, train_cfg, device, checkpoint=state, what=what)
    test_acc = accuracy(model, data.test_x, data.test_y, device)
    metrics = {"test_accuracy": test_acc, "history": history,
               "train_seconds": time.perf_counter() - t0,
               "parameters": sum(p.numel() for p in model.parameters()),
               "train_images": len(data.train_x), "test_images": len(data.test_x)}
    model.save(folder, extra={"training": to_dict(train_cfg), "data": data_identity or {}})
    save_json(metrics, folder / METRICS_FILE)
    state.unlink(missing_ok=True)
    log.info("%s: ResNet-%d trained in %.0fs, test accuracy %.4f", what, model_cfg.depth,
             metrics["train_seconds"], test_acc)
    return model.eval(), metrics | {"cached": False}


def claim_cache(folder: Path, flag: str = "--neutral-cache") -> None:
    """Use `folder` as a neutral-model cache only if it is new, empty or already one (its
    ownership marker says so): a cache pointed at a run or any other folder would overwrite
    files there (metrics.json, weights.pt ...)."""
    st = Storage(folder)
    marker = read_marker(st)
    if marker is None and not st.is_empty():
        raise OwnershipError(
            f"{flag} {folder} is a non-empty folder that is not a neutral-classifier "
            f"cache (no {MARKER_FILE}); pass a new or empty folder, or an earlier cache")
    if marker is not None and marker.get("kind") != "neutral":
        raise OwnershipError(f"{flag} {folder} holds a regene-ray "
                             f"'{marker.get('kind')}' output, not a neutral-classifier cache; "
                             "pass a new or empty folder")
    if marker is None:
        st.makedirs()
        write_marker(st, "neutral", [METRICS_FILE, MODEL_CONFIG_FILE, WEIGHTS_FILE, STATE_FILE,
                                     "train_config.json"], {})


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# scoring


def score_generations(model: nn.Module, images: torch.Tensor, labels: np.ndarray,
                      n_parents: np.ndarray | None, num_classes: int,
                      device: torch.device | str) -> dict:
    """Fraction of images the neutral classifier assigns to their intended label (paper Fig. 4a).

    Args:
        model: the neutral classifier.
        images: uint8 (N, C, H, W).
        labels: (N,) intended classes.
        n_parents: (N,) parents per image, or None.
        num_classes: K, for the per-class breakdown.
    Returns:
        {"overall", "count", "per_class": {c: acc}, "per_n": {n: acc}, "per_n_class": {n: {c: acc}}};
        classes or n with no images are left out.
    """
    labels = np.asarray(labels, dtype=np.int64)
    hit = (predict(model, images, device).numpy() == labels)

    def by_class(mask: np.ndarray) -> dict:
        return {str(c): float(hit[mask & (labels == c)].mean())
                for c in range(num_classes) if (mask & (labels == c)).any()}

    everything = np.ones(len(labels), dtype=bool)
    out = {"overall": float(hit.mean()) if len(hit) else float("nan"), "count": int(len(hit)),
           "per_class": by_class(everything), "per_n": {}, "per_n_class": {}}
    if n_parents is not None:
        n_parents = np.asarray(n_parents, dtype=np.int64)
        for k in np.unique(n_parents):
            m = n_parents == k
            out["per_n"][str(int(k))] = float(hit[m].mean())
            out["per_n_class"][str(int(k))] = by_class(m)
    return out
