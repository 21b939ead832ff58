"""The decoder f_dec(z) -> x: the classifier mirrored, one network for every class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from regene_ray.checkpoint import load_weights, read_config, save_model
from regene_ray.classifier import ClassifierConfig, conv_block
from regene_ray.config import ConfigError, from_dict, to_dict

UPSAMPLE_MODES = ("nearest", "bilinear")


@dataclass
class DecoderConfig:
    latent_dim: int = 128  # must equal the classifier's latent_dim
    out_channels: int = 1  # image channels; must equal the classifier's in_channels
    image_size: int = 28  # output side; must equal the classifier's image_size
    block_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # classifier's widths
    convs_per_block: int = 2  # conv repeats per mirrored block
    upsample: str = "nearest"  # Upsample + Conv (no checkerboard artefacts of ConvTranspose)
    negative_slope: float = 0.1  # LeakyReLU slope

    def __post_init__(self):
        if self.upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"upsample '{self.upsample}' must be one of {UPSAMPLE_MODES}")
        if not self.block_channels:
            raise ConfigError("block_channels must list one width per block")
        if self.image_size >> len(self.block_channels) < 1:
            raise ConfigError(
                f"image_size {self.image_size} is too small for {len(self.block_channels)} blocks"
            )

    @classmethod
    def mirror(cls, c: ClassifierConfig, **overrides) -> DecoderConfig:
        """The decoder that mirrors classifier config `c`."""
        kw = dict(latent_dim=c.latent_dim, out_channels=c.in_channels, image_size=c.image_size,
                  block_channels=c.block_channels, convs_per_block=c.convs_per_block,
                  negative_slope=c.negative_slope)
        kw.update(overrides)
        return cls(**kw)

    @property
    def sizes(self) -> list[int]:
        s = [self.image_size]
        for _ in self.block_channels:
            s.append(s[-1] // 2)
        return s


class Decoder(nn.Module):
    """Linear -> reshape -> [Upsample -> (Conv -> BN -> LeakyReLU) x n] per block -> Conv -> sigmoid."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        ch, sizes = cfg.block_channels, cfg.sizes
        self.start = (ch[-1], sizes[-1], sizes[-1])
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, ch[-1] * sizes[-1] ** 2, bias=False),
            nn.BatchNorm1d(ch[-1] * sizes[-1] ** 2),
            nn.LeakyReLU(cfg.negative_slope, inplace=True),
        )
        blocks = []
        for i in reversed(range(len(ch))):
            c_out = ch[i - 1] if i > 0 else ch[0]
            blocks.append(nn.Sequential(
                nn.Upsample(size=(sizes[i], sizes[i]), mode=cfg.upsample),
                *conv_block(ch[i], c_out, cfg.convs_per_block, cfg.negative_slope),
            ))
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Sequential(nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1),
                                      nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) -> images (B, C, H, W) in [0, 1]."""
        x = self.fc(z).view(-1, *self.start)  # (B, C_last, s, s)
        return self.to_image(self.blocks(x))

    def save(self, directory: str | Path) -> None:
        save_model(self, to_dict(self.cfg), directory)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Decoder:
        cfg = from_dict(DecoderConfig, read_config(directory), source=f"{directory}/config.json")
        return load_weights(cls(cfg), directory).to(map_location).eval()


def check_compatible(classifier_cfg: ClassifierConfig, decoder_cfg: DecoderConfig,
                     where: str = "") -> None:
    """Fail with the clashing values when a decoder cannot invert this classifier's codes."""
    clashes = [
        f"{name} {a} != decoder.{dname} {b}"
        for name, a, dname, b in (
            ("latent_dim", classifier_cfg.latent_dim, "latent_dim", decoder_cfg.latent_dim),
            ("in_channels", classifier_cfg.in_channels, "out_channels", decoder_cfg.out_channels),
            ("image_size", classifier_cfg.image_size, "image_size", decoder_cfg.image_size),
        )
        if a != b
    ]
    if clashes:
        at = f" in {where}" if where else ""
        raise ConfigError(
            f"classifier and decoder do not fit: {'; '.join(clashes)}{at}; retrain the decoder "
            "on this classifier or use a matching pair"
        )
