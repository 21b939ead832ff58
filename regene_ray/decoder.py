"""The decoder f_dec(z) -> x: the classifier mirrored, one network for every class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from regene_ray.checkpoint import load_weights, read_config, save_model
from regene_ray.classifier import ClassifierConfig, conv_block
from regene_ray.config import ConfigError, from_dict, to_dict

# nearest / bilinear: a fixed Upsample, then convs. transpose: a learned stride-2
# ConvTranspose2d (3x3) does the upsampling, then convs (the paper's Conv2DTranspose decoder).
UPSAMPLE_MODES = ("nearest", "bilinear", "transpose")


@dataclass
class DecoderArch:
    """The run's choices for the decoder; the classifier fixes the rest (see DecoderConfig.mirror)."""

    upsample: str = "nearest"  # how each block doubles the side: nearest | bilinear | transpose
    width: float = 1.0  # multiplier on the mirrored classifier widths (decoder capacity)
    convs_per_block: int = 0  # conv layers per block; 0 mirrors the classifier

    def __post_init__(self):
        if self.upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"decoder.upsample '{self.upsample}' must be one of {UPSAMPLE_MODES}")
        if not self.width > 0:
            raise ConfigError(f"decoder.width {self.width} must be > 0 (1.0 mirrors the classifier)")
        if self.convs_per_block < 0:
            raise ConfigError(f"decoder.convs_per_block {self.convs_per_block} must be >= 0 "
                              "(0 mirrors the classifier)")


@dataclass
class DecoderConfig:
    latent_dim: int = 128  # must equal the classifier's latent_dim
    out_channels: int = 1  # image channels; must equal the classifier's in_channels
    image_size: int = 28  # output side; must equal the classifier's image_size
    block_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # classifier's widths
    convs_per_block: int = 2  # conv repeats per mirrored block
    upsample: str = "nearest"  # see UPSAMPLE_MODES
    negative_slope: float = 0.1  # LeakyReLU slope

    def __post_init__(self):
        if self.upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"upsample '{self.upsample}' must be one of {UPSAMPLE_MODES}")
        if not self.block_channels:
            raise ConfigError("block_channels must list one width per block")
        if self.convs_per_block < 1:
            raise ConfigError(f"convs_per_block {self.convs_per_block} must be >= 1")
        if self.image_size >> len(self.block_channels) < 1:
            raise ConfigError(
                f"image_size {self.image_size} is too small for {len(self.block_channels)} blocks"
            )

    @classmethod
    def mirror(cls, c: ClassifierConfig, arch: DecoderArch | None = None) -> DecoderConfig:
        """The decoder that mirrors classifier config `c`, shaped by the run's `arch`."""
        arch = arch or DecoderArch()
        return cls(latent_dim=c.latent_dim, out_channels=c.in_channels, image_size=c.image_size,
                   block_channels=[max(1, round(w * arch.width)) for w in c.block_channels],
                   convs_per_block=arch.convs_per_block or c.convs_per_block,
                   upsample=arch.upsample, negative_slope=c.negative_slope)

    @property
    def sizes(self) -> list[int]:
        s = [self.image_size]
        for _ in self.block_channels:
            s.append(s[-1] // 2)
        return s


def upsample_block(c_in: int, c_out: int, size_in: int, size_out: int, cfg: DecoderConfig
                   ) -> nn.Sequential:
    """One mirrored block: side `size_in` -> `size_out` (2x or 2x + 1), then convs."""
    if cfg.upsample != "transpose":
        return nn.Sequential(nn.Upsample(size=(size_out, size_out), mode=cfg.upsample),
                             *conv_block(c_in, c_out, cfg.convs_per_block, cfg.negative_slope))
    # stride 2, kernel 3: out = 2 * in - 2 * pad + 1 + output_padding
    pad = 1 if size_out == 2 * size_in else 0
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=pad, output_padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(cfg.negative_slope, inplace=True),
        *conv_block(c_out, c_out, cfg.convs_per_block - 1, cfg.negative_slope),
    )


class Decoder(nn.Module):
    """Linear -> reshape -> [upsample -> (Conv -> BN -> LeakyReLU) x n] per block -> Conv -> sigmoid.

    The upsampling is a fixed Upsample (nearest/bilinear) or a learned stride-2 ConvTranspose2d
    that takes the place of the block's first conv (transpose).
    """

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
            blocks.append(upsample_block(ch[i], c_out, sizes[i + 1], sizes[i], cfg))
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
