"""The decoder f_dec(z) -> x: the classifier mirrored, one network for every class.

Linear -> reshape to the last stage's map, then per classifier stage (deep to shallow) an
upsampling to that stage's input side and the backbone's block:
- vgg: (Conv3x3 -> BatchNorm -> LeakyReLU) x n (with transpose, the ConvTranspose2d is the first);
- resnet: n torchvision BasicBlocks, the first changing the width through a 1x1 downsample branch;
- densenet: a torchvision _DenseBlock of n layers, then a BatchNorm -> ReLU -> Conv1x1 transition
  to the target width (the classifier's transition without its pool).
Then Conv3x3 -> sigmoid to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from regene_ray.checkpoint import load_model, save_model
from regene_ray.classifier import (
    DENSE_BN_SIZE,
    ClassifierConfig,
    check_backbone,
    check_image_fits,
    conv_block,
    dense_growth,
    residual_blocks,
    stage_sides,
)
from regene_ray.config import ConfigError, to_dict

# nearest / bilinear: a fixed Upsample, then convs. transpose: a learned stride-2
# ConvTranspose2d (3x3) does the upsampling, then convs (the paper's Conv2DTranspose decoder).
UPSAMPLE_MODES = ("nearest", "bilinear", "transpose")


@dataclass
class DecoderArch:
    """The run's choices for the decoder; the classifier fixes the rest (see DecoderConfig.mirror)."""

    upsample: str = "nearest"  # how each block doubles the side: nearest | bilinear | transpose
    width: float = 1.0  # multiplier on the mirrored classifier widths (decoder capacity)
    convs_per_block: int = 0  # layers (convs, BasicBlocks, dense layers) per block; 0 mirrors

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
    convs_per_block: int = 2  # layers per mirrored block (vgg convs, BasicBlocks, dense layers)
    upsample: str = "nearest"  # see UPSAMPLE_MODES
    negative_slope: float = 0.1  # LeakyReLU slope (fc, and vgg's blocks)
    backbone: str = "vgg"  # the classifier's: which blocks mirror its stages (and their sides)

    def __post_init__(self):
        check_backbone(self.backbone, key="decoder backbone")
        if self.upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"upsample '{self.upsample}' must be one of {UPSAMPLE_MODES}")
        if not self.block_channels:
            raise ConfigError("block_channels must list one width per block")
        if self.convs_per_block < 1:
            raise ConfigError(f"convs_per_block {self.convs_per_block} must be >= 1")
        check_image_fits(self.image_size, len(self.block_channels), self.backbone,
                         what="decoder depth")

    @classmethod
    def mirror(cls, c: ClassifierConfig, arch: DecoderArch | None = None) -> DecoderConfig:
        """The decoder that mirrors classifier config `c`, shaped by the run's `arch`."""
        arch = arch or DecoderArch()
        return cls(latent_dim=c.latent_dim, out_channels=c.in_channels, image_size=c.image_size,
                   block_channels=[max(1, round(w * arch.width)) for w in c.block_channels],
                   convs_per_block=arch.convs_per_block or c.convs_per_block,
                   upsample=arch.upsample, negative_slope=c.negative_slope,
                   backbone=c.backbone)

    @property
    def sizes(self) -> list[int]:
        """The classifier's: side at the input of each stage, then after the last."""
        return stage_sides(self.image_size, len(self.block_channels), self.backbone)


def transpose_padding(size_in: int, size_out: int) -> tuple[int, int]:
    """(padding, output_padding) of a stride-2 3x3 ConvTranspose2d from side `size_in` to
    `size_out`: out = 2 * in - 2 * pad + 1 + output_padding, so 2 * in + 1 (floor halving of an
    odd side), 2 * in, or 2 * in - 1 (ceil halving of an odd side, resnet)."""
    options = {2 * size_in + 1: (0, 0), 2 * size_in: (1, 1), 2 * size_in - 1: (1, 0)}
    if size_out not in options:
        raise ConfigError(f"a stride-2 ConvTranspose2d cannot take side {size_in} to {size_out}; "
                          "it makes 2 * side - 1, 2 * side or 2 * side + 1")
    return options[size_out]


def upsample_block(c_in: int, c_out: int, size_in: int, size_out: int, cfg: DecoderConfig
                   ) -> nn.Sequential:
    """One mirrored block: side `size_in` -> `size_out` (2x - 1, 2x or 2x + 1), then the
    backbone's layers from `c_in` to `c_out` channels."""
    if cfg.upsample != "transpose":
        up = [nn.Upsample(size=(size_out, size_out), mode=cfg.upsample)]
    else:
        pad, out_pad = transpose_padding(size_in, size_out)
        if cfg.backbone == "vgg":  # the transposed conv is the block's first conv
            return nn.Sequential(
                nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=pad, output_padding=out_pad,
                                   bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(cfg.negative_slope, inplace=True),
                *conv_block(c_out, c_out, cfg.convs_per_block - 1, cfg.negative_slope),
            )
        # resnet, densenet: a learned upsampling at c_in channels, then the whole block
        up = [nn.ConvTranspose2d(c_in, c_in, 3, stride=2, padding=pad, output_padding=out_pad,
                                 bias=False),
              nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)]
    n = cfg.convs_per_block
    if cfg.backbone == "vgg":
        return nn.Sequential(*up, *conv_block(c_in, c_out, n, cfg.negative_slope))
    if cfg.backbone == "resnet":
        return nn.Sequential(*up, *residual_blocks(c_in, c_out, n, stride=1))
    return nn.Sequential(*up, *dense_blocks(c_in, c_out, n))


def dense_blocks(c_in: int, c_out: int, n: int) -> list[nn.Module]:
    """A dense block of n layers at growth dense_growth(c_in) (the mirrored stage's width),
    then BatchNorm -> ReLU -> Conv1x1 to `c_out` channels (a transition that keeps the side)."""
    from torchvision.models.densenet import _DenseBlock

    k = dense_growth(c_in)
    width = c_in + n * k
    return [_DenseBlock(n, c_in, bn_size=DENSE_BN_SIZE, growth_rate=k, drop_rate=0.0),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, c_out, 1, bias=False)]


class Decoder(nn.Module):
    """Linear -> reshape -> [upsample -> backbone block] per stage -> Conv -> sigmoid.

    The upsampling is a fixed Upsample (nearest/bilinear) or a learned stride-2 ConvTranspose2d
    (transpose): for vgg it takes the place of the block's first conv, for resnet and densenet
    it is followed by BatchNorm -> ReLU and the whole block.
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
        return load_model(cls, DecoderConfig, directory, map_location)


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
