"""The judge network: a CIFAR-style ResNet v1 trained from scratch on the real data.

Two parts of ReGene need a network that had no part in making the images it looks at, and both
use this one (not the classifier's `resnet` backbone, which is torchvision's):
- the perceptual loss's `judge` backend (regene_ray.losses), a small one trained in the run and
  cached in RUN/judge/, so the decoder is not trained to please the classifier that filters;
- the evaluation's neutral classifier (regene_ray.evaluation.neutral), which measures how
  recognisable generations are, and whose penultimate features are FID's fallback space.

The architecture is He et al. 2016's CIFAR ResNet v1 (depth 6n + 2; ResNet-56 in the paper's
evaluation, ResNet-20 by default, ResNet-8 for the judge). It trains through the one loop
(regene_ray.loop) with AdamW, a per-epoch cosine learning rate and random shifts; a trained one
is saved in a folder (config.json + weights.pt + metrics.json) and reused when its config
matches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regene_ray.checkpoint import (
    MODEL_CONFIG_FILE,
    WEIGHTS_FILE,
    load_weights,
    read_config,
    save_model,
)
from regene_ray.config import ConfigError, from_dict, save_json, to_dict
from regene_ray.data import DataSplits, iterate_batches, random_shift, to_float
from regene_ray.loop import cosine_lr, epoch_seed, fit_epochs, scoped_seed, train_one_epoch

log = logging.getLogger(__name__)

# what load_or_train_resnet keeps in its folder, beside config.json and weights.pt
METRICS_FILE = "metrics.json"  # test accuracy, history, seconds of the saved model
STATE_FILE = "train_state.pt"  # fit_epochs' resume file while it trains
TRAIN_CONFIG_FILE = "train_config.json"  # the config that resume file belongs to
RESNET_FILES = [MODEL_CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, STATE_FILE, TRAIN_CONFIG_FILE]


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
                f"ResNet depth {self.depth} is not 6n + 2 with n >= 1; use 8, 14, 20, 32, 44 or 56"
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
class ResNetTrainConfig:
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed per epoch (converges in few epochs)
    weight_decay: float = 5e-4  # AdamW weight decay
    shift: int = 2  # random translation in pixels (augmentation; no flips, digits are not symmetric)
    seed: int = 0  # init and shuffling

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"ResNet epochs {self.epochs} and batch_size {self.batch_size} "
                              "must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.shift < 0:
            raise ConfigError(f"ResNet lr {self.lr} must be > 0, weight_decay "
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


class ResNet(nn.Module):
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
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> ResNet:
        """Rebuild from `directory/config.json` and load `weights.pt` (weights_only)."""
        raw = read_config(directory)
        if "model" not in raw:
            raise ConfigError(f"{directory}/config.json has no 'model' section; delete "
                              f"{directory} so the ResNet is retrained")
        cfg = from_dict(ResNetConfig, raw["model"], source=f"{directory}/config.json")
        return load_weights(cls(cfg), directory).to(map_location).eval()


# training


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


def fit_resnet(model: ResNet,
               batches: Callable[[int, torch.Generator], Iterable[tuple[torch.Tensor, ...]]],
               cfg: ResNetTrainConfig, device: torch.device, *,
               checkpoint: Path | None = None, what: str = "resnet",
               val: tuple[torch.Tensor, torch.Tensor] | None = None,
               steps: int | None = None, per_step_lr: bool = False,
               on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Cross-entropy training on any source of batches: AdamW with a cosine learning rate and
    random shifts, through the one loop; resumes from `checkpoint`.

    Args:
        batches: (epoch, that epoch's seeded generator) -> (images, labels) batches, or
            (images, labels, per-image loss weights): the batch's loss is then the weighted
            mean; images float in [0, 1] or uint8, on any device.
        val: held-out (uint8 images, labels) scored after each epoch, or None.
        steps: batches per epoch, for the progress bar (and the per-step schedule).
        per_step_lr: decay the learning rate by a cosine over all `steps * epochs` batches
            instead of once per epoch (a short training then ends annealed instead of at half
            the peak rate); needs `steps`.
        on_epoch: called with (epoch, stats) after each epoch (see loop.fit_epochs).
    Returns:
        Per-epoch history (train loss/accuracy, images, val accuracy, images/s).
    """
    if per_step_lr and not steps:
        raise ValueError("per_step_lr needs the number of batches per epoch (steps)")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def rate(epoch: int) -> float | Callable[[int], float]:
        if not per_step_lr:
            return cosine_lr(cfg.lr, epoch, cfg.epochs)
        total = steps * cfg.epochs  # a longer stream than `steps` stays at the last rate
        return lambda i: cosine_lr(cfg.lr, min(epoch * steps + i, total - 1), total)

    def epoch_fn(epoch: int) -> dict:
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))

        def step(batch: tuple[torch.Tensor, ...]):
            xb, yb, *weights = batch
            xb = to_float(xb, device) if xb.dtype == torch.uint8 else xb.to(device)
            yb = yb.to(device).long()
            logits = model(random_shift(xb, cfg.shift, gen))
            if weights:
                w = weights[0].to(device)
                loss = (F.cross_entropy(logits, yb, reduction="none") * w).sum() / w.sum()
            else:
                loss = F.cross_entropy(logits, yb)
            return loss, len(yb), {
                "accuracy": int((logits.argmax(1) == yb).sum())}

        stats = train_one_epoch(model, opt, batches(epoch, gen), step,
                                lr=rate(epoch), what=what, epoch=epoch, steps=steps)
        if val is not None:
            stats["val_accuracy"] = accuracy(model, val[0], val[1], device)
        return stats

    return fit_epochs(model, opt, cfg.epochs, epoch_fn, what=what, checkpoint=checkpoint,
                      on_epoch=on_epoch, shown=("train_loss", "train_accuracy", "val_accuracy") if val is not None
                      else ("train_loss", "train_accuracy"))


def train_resnet(model: ResNet, data: DataSplits, cfg: ResNetTrainConfig, device: torch.device,
                 checkpoint: Path | None = None, what: str = "resnet") -> list[dict]:
    """fit_resnet on `data`'s training split, validating on its holdout."""
    def batches(epoch: int, gen: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return iterate_batches(data.train_x, data.train_y, cfg.batch_size, shuffle=True,
                               generator=gen, device=device)

    return fit_resnet(model, batches, cfg, device, checkpoint=checkpoint, what=what,
                      val=(data.holdout_x, data.holdout_y),
                      steps=math.ceil(len(data.train_x) / cfg.batch_size))


# saved in a folder


def load_or_train_resnet(folder: str | Path, data: DataSplits, model_cfg: ResNetConfig,
                         train_cfg: ResNetTrainConfig, device: torch.device, *,
                         data_identity: dict | None = None, what: str = "resnet"
                         ) -> tuple[ResNet, dict]:
    """The ResNet saved in `folder` when it was trained with this config, else one trained now
    (resuming from folder/train_state.pt), tested on data's test split and saved there.

    A model saved in `folder` for another config is replaced (a warning says so): the caller
    makes sure the folder is one it may write (a run folder, the evaluation's claimed cache).

    Args:
        folder: where the model, its metrics and its resume file live (RESNET_FILES).
        data: the splits (train for training, holdout for validation, test for accuracy).
        model_cfg, train_cfg: what to build and how to train it (train_cfg.seed seeds the init).
        device: where to train.
        data_identity: the data config, stored so a model for other data is never reused.
        what: how logs and errors name the network.
    Returns:
        (model in eval mode, metrics: test_accuracy, history, train_seconds, parameters,
        train_images, test_images and `cached`: whether it was reused).
    """
    folder = Path(folder)
    want = {"model": to_dict(model_cfg), "training": to_dict(train_cfg),
            "data": data_identity or {}}
    if (folder / WEIGHTS_FILE).is_file() and (folder / METRICS_FILE).is_file():
        if read_config(folder) == want:
            model = ResNet.load(folder, map_location=device)
            metrics = _read_json(folder / METRICS_FILE) | {"cached": True}
            log.info("%s: reusing ResNet-%d from %s (test accuracy %.4f)", what, model_cfg.depth,
                     folder, metrics.get("test_accuracy", float("nan")))
            return model, metrics
        log.warning("%s: %s holds a model for another config; retraining it", what, folder)
        for name in RESNET_FILES:
            (folder / name).unlink(missing_ok=True)
    state = folder / STATE_FILE
    if state.is_file() and _read_json(folder / TRAIN_CONFIG_FILE) != want:
        state.unlink()  # an interrupted training of another config
    folder.mkdir(parents=True, exist_ok=True)
    save_json(want, folder / TRAIN_CONFIG_FILE)
    with scoped_seed(train_cfg.seed, torch.device("cpu")):
        model = ResNet(model_cfg)
    t0 = time.perf_counter()
    history = train_resnet(model, data, train_cfg, device, checkpoint=state, what=what)
    test_acc = accuracy(model, data.test_x, data.test_y, device)
    metrics = {"test_accuracy": test_acc, "history": history,
               "train_seconds": time.perf_counter() - t0,
               "parameters": sum(p.numel() for p in model.parameters()),
               "train_images": len(data.train_x), "test_images": len(data.test_x)}
    model.save(folder, extra={"training": want["training"], "data": want["data"]})
    save_json(metrics, folder / METRICS_FILE)
    state.unlink(missing_ok=True)
    log.info("%s: ResNet-%d trained in %.0fs, test accuracy %.4f", what, model_cfg.depth,
             metrics["train_seconds"], test_acc)
    return model.eval(), metrics | {"cached": False}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
