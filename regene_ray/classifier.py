"""The VGG-style classifier: encoder f_enc(x) -> z plus a linear head f_dis(z) -> logits.

The head is a single nn.Linear, so the set of codes it assigns to a class is convex (an
intersection of half-spaces). That is what makes convex mixing class-preserving (Lemma 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from regene_ray.checkpoint import load_weights, read_config, save_model
from regene_ray.config import ConfigError, from_dict, to_dict

LATENT_ACTIVATIONS = ("relu", "leaky_relu", "none")


@dataclass
class ArchConfig:
    """The searched architecture; the data fixes the rest (see ClassifierConfig)."""

    depth: int = 3  # conv blocks; deeper classifies better but gives sparser, harder-to-decode codes
    convs_per_block: int = 2  # (Conv3x3 -> BatchNorm -> LeakyReLU) repeats per block, as in VGG
    base_channels: int = 32  # channels of the first block; doubled every block
    max_channels: int = 256  # cap on the doubling, keeps deep models small
    latent_dim: int = 128  # width of the code z that the decoder must invert
    latent_activation: str = "relu"  # relu makes exact zeros in z (sparse); none keeps z dense
    latent_l1: float = 0.0  # L1 weight on z in the loss: the sparsity control of the search
    dropout: float = 0.0  # dropout on z before the head (training only)
    negative_slope: float = 0.1  # LeakyReLU slope in the conv blocks
    channels: list[int] = field(default_factory=list)  # explicit per-block widths; [] -> doubling

    def __post_init__(self):
        if self.depth < 1:
            raise ConfigError(f"depth {self.depth} must be at least 1")
        if self.convs_per_block < 1:
            raise ConfigError(f"convs_per_block {self.convs_per_block} must be at least 1")
        if self.latent_dim < 1 or self.base_channels < 1:
            raise ConfigError(
                f"latent_dim {self.latent_dim} and base_channels {self.base_channels} must be >= 1"
            )
        if self.latent_activation not in LATENT_ACTIVATIONS:
            raise ConfigError(
                f"latent_activation '{self.latent_activation}' must be one of {LATENT_ACTIVATIONS}"
            )
        if self.latent_l1 < 0 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"latent_l1 {self.latent_l1} must be >= 0 and dropout {self.dropout} in [0, 1)"
            )
        if self.channels and len(self.channels) != self.depth:
            raise ConfigError(
                f"channels {self.channels} has {len(self.channels)} entries but depth is "
                f"{self.depth}; give one width per block or leave channels empty"
            )


@dataclass
class ClassifierConfig(ArchConfig):
    in_channels: int = 1  # image channels (1 grey, 3 colour)
    image_size: int = 28  # square input side; each block halves it with a 2x2 max-pool
    num_classes: int = 10  # width of the linear head

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2 or self.in_channels < 1:
            raise ConfigError(
                f"num_classes {self.num_classes} must be >= 2 and in_channels "
                f"{self.in_channels} >= 1"
            )
        if self.image_size >> self.depth < 1:
            raise ConfigError(
                f"image_size {self.image_size} is too small for depth {self.depth}: {self.depth} "
                f"max-pools need at least {2**self.depth} pixels; lower depth to "
                f"{max(1, self.image_size.bit_length() - 1)} or raise image_size"
            )

    @classmethod
    def from_arch(cls, arch: ArchConfig, *, in_channels: int, image_size: int,
                  num_classes: int) -> ClassifierConfig:
        return cls(**to_dict(arch), in_channels=in_channels, image_size=image_size,
                   num_classes=num_classes)

    @property
    def block_channels(self) -> list[int]:
        if self.channels:
            return list(self.channels)
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth)]

    @property
    def sizes(self) -> list[int]:
        """Spatial side at the input of each block, then after the last pool: depth + 1 values."""
        s = [self.image_size]
        for _ in range(self.depth):
            s.append(s[-1] // 2)
        return s


def conv_block(c_in: int, c_out: int, n: int, slope: float) -> list[nn.Module]:
    """(Conv3x3 -> BatchNorm -> LeakyReLU) x n."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(slope, inplace=True),
        ]
    return layers


def latent_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "none": nn.Identity()}[name]


class Classifier(nn.Module):
    """VGG-style encoder and linear head.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        blocks, c_in = [], cfg.in_channels
        for c in cfg.block_channels:
            blocks.append(
                nn.Sequential(*conv_block(c_in, c, cfg.convs_per_block, cfg.negative_slope),
                              nn.MaxPool2d(2))
            )
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        flat = c_in * cfg.sizes[-1] ** 2
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.latent_dim),
                                       latent_activation(cfg.latent_activation))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.latent_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output, shallow to deep (for the perceptual loss)."""
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f_enc: images (B, C, H, W) in [0, 1] -> codes (B, latent_dim)."""
        for block in self.blocks:
            x = block(x)
        return self.to_latent(x)

    def classify_latent(self, z: torch.Tensor) -> torch.Tensor:
        """f_dis: codes (B, latent_dim) -> logits (B, num_classes). Linear, so Lemma 1 holds."""
        return self.head(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_latent(self.encode(x))

    def save(self, directory: str | Path) -> None:
        save_model(self, to_dict(self.cfg), directory)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
        """Rebuild from `directory/config.json` and load `weights.pt` (weights_only)."""
        cfg = from_dict(ClassifierConfig, read_config(directory), source=f"{directory}/config.json")
        return load_weights(cls(cfg), directory).to(map_location).eval()


def latent_sparsity(z: torch.Tensor, eps: float = 1e-6) -> float:
    """Fraction of code entries that are (numerically) zero."""
    return float((z.abs() <= eps).float().mean())
