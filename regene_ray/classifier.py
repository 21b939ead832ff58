"""The classifier: encoder f_enc(x) -> z plus a linear head f_dis(z) -> logits.

The encoder is `depth` stages of one backbone, each halving the side, then flatten -> Linear ->
latent activation (the code z):
- vgg (the paper's): (Conv3x3 -> BatchNorm -> LeakyReLU) x convs_per_block, then MaxPool2d(2);
- resnet: torchvision BasicBlocks, the first of each stage with stride 2 and a 1x1 downsample
  branch, after a full-resolution Conv3x3 -> BatchNorm -> ReLU stem;
- densenet: torchvision _DenseBlock + _Transition (1x1 conv to the stage width, AvgPool2d(2)),
  after a full-resolution Conv3x3 stem.

The head is a single nn.Linear whatever the backbone, so the set of codes it assigns to a class
is convex (an intersection of half-spaces). That is what makes convex mixing class-preserving
(Lemma 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from regene_ray.checkpoint import load_model, save_model
from regene_ray.config import ConfigError, to_dict

LATENT_ACTIVATIONS = ("relu", "leaky_relu", "none")
# vgg: conv blocks + max-pool (the paper's); resnet: torchvision BasicBlocks, stride-2 stages;
# densenet: torchvision dense blocks + average-pool transitions
BACKBONES = ("vgg", "resnet", "densenet")
DENSE_BN_SIZE = 4  # torchvision's default: a dense layer's 1x1 bottleneck is 4 x growth wide
# what halves the side in each backbone (quoted when an image is too small)
_HALVING = {"vgg": "max-pools", "resnet": "stride-2 stages",
            "densenet": "average-pool transitions"}


def check_backbone(backbone: str, key: str = "backbone") -> None:
    if backbone not in BACKBONES:
        raise ConfigError(
            f"{key} '{backbone}' must be one of {BACKBONES}: vgg (conv blocks + max-pool, the "
            "paper's), resnet (torchvision BasicBlocks) or densenet (torchvision dense blocks)"
        )


def halve(side: int, backbone: str) -> int:
    """The side after one stage: a stride-2 3x3 conv with padding 1 (resnet) gives ceil(s / 2),
    a 2x2 pool (vgg's max, densenet's average) floor(s / 2): 28 -> 14 -> 7 -> 4 or -> 3."""
    return (side + 1) // 2 if backbone == "resnet" else side // 2


def stage_sides(image_size: int, stages: int, backbone: str) -> list[int]:
    """The side at the input of each stage, then after the last: stages + 1 values."""
    s = [image_size]
    for _ in range(stages):
        s.append(halve(s[-1], backbone))
    return s


def check_image_fits(image_size: int, stages: int, backbone: str, what: str = "depth") -> None:
    """Every stage must get a side of at least 2 to halve; fail naming the deepest that fits."""
    if stage_sides(image_size, stages, backbone)[-2] >= 2:
        return
    fits = sum(s >= 2 for s in stage_sides(image_size, stages, backbone)[:-1])
    need = 2**stages if backbone != "resnet" else 2 ** (stages - 1) + 1
    raise ConfigError(
        f"image_size {image_size} is too small for {what} {stages}: {stages} {_HALVING[backbone]} "
        f"({backbone}) need at least {need} pixels; lower {what} to {max(1, fits)} or raise "
        "image_size"
    )


def dense_growth(width: int) -> int:
    """The DenseNet growth rate of a stage `width` channels wide: half of it (at least 4). Then a
    dense layer's 3x3 conv (2 x width -> width / 2, after the 4x bottleneck) costs what a VGG
    conv of that width does, and two layers add one width before the transition compresses."""
    return max(4, width // 2)


@dataclass
class ArchConfig:
    """The searched architecture; the data fixes the rest (see ClassifierConfig)."""

    backbone: str = "vgg"  # stage type: vgg (the paper's), resnet or densenet (see BACKBONES)
    depth: int = 3  # stages, each halving the side; deeper: better accuracy, sparser codes
    convs_per_block: int = 2  # per stage: vgg convs, resnet BasicBlocks or densenet dense layers
    base_channels: int = 32  # channels of the first stage; doubled every stage
    max_channels: int = 256  # cap on the doubling, keeps deep models small
    latent_dim: int = 128  # width of the code z that the decoder must invert
    latent_activation: str = "relu"  # relu makes exact zeros in z (sparse); none keeps z dense
    latent_l1: float = 0.0  # L1 weight on z in the loss: the sparsity control of the search
    dropout: float = 0.0  # dropout on z before the head (training only)
    negative_slope: float = 0.1  # LeakyReLU slope of vgg's blocks (torchvision's use ReLU)
    channels: list[int] = field(default_factory=list)  # explicit per-stage widths; [] -> doubling

    def __post_init__(self):
        check_backbone(self.backbone)
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
    image_size: int = 28  # square input side; each stage halves it (see `sizes`)
    num_classes: int = 10  # width of the linear head

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2 or self.in_channels < 1:
            raise ConfigError(
                f"num_classes {self.num_classes} must be >= 2 and in_channels "
                f"{self.in_channels} >= 1"
            )
        check_image_fits(self.image_size, self.depth, self.backbone)

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
        """Spatial side at the input of each stage, then after the last: depth + 1 values
        (pools floor, 28 -> 14 -> 7 -> 3; resnet's stride-2 convs ceil, 28 -> 14 -> 7 -> 4)."""
        return stage_sides(self.image_size, self.depth, self.backbone)


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


def vgg_stages(cfg: ClassifierConfig) -> list[nn.Module]:
    """Per stage: (Conv3x3 -> BatchNorm -> LeakyReLU) x convs_per_block, then MaxPool2d(2)."""
    stages, c_in = [], cfg.in_channels
    for c in cfg.block_channels:
        stages.append(nn.Sequential(*conv_block(c_in, c, cfg.convs_per_block, cfg.negative_slope),
                                    nn.MaxPool2d(2)))  # side -> floor(s / 2)
        c_in = c
    return stages


def residual_blocks(c_in: int, c_out: int, n: int, stride: int) -> list[nn.Module]:
    """n torchvision BasicBlocks; the first changes the width and applies `stride`, through a
    Conv1x1 -> BatchNorm downsample branch when either changes the shape."""
    from torchvision.models.resnet import BasicBlock

    down = None
    if stride != 1 or c_in != c_out:
        down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                             nn.BatchNorm2d(c_out))
    return [BasicBlock(c_in, c_out, stride=stride, downsample=down),
            *(BasicBlock(c_out, c_out) for _ in range(n - 1))]


def resnet_stages(cfg: ClassifierConfig) -> list[nn.Module]:
    """Stem (full resolution) inside the first stage, so `blocks` holds the whole encoder."""
    ch = cfg.block_channels
    stem = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1, bias=False), nn.BatchNorm2d(ch[0]),
            nn.ReLU(inplace=True)]
    stages, c_in = [], ch[0]
    for i, c in enumerate(ch):
        layers = residual_blocks(c_in, c, cfg.convs_per_block, stride=2)  # side -> ceil(s / 2)
        stages.append(nn.Sequential(*(stem if i == 0 else []), *layers))
        c_in = c
    return stages


def densenet_stages(cfg: ClassifierConfig) -> list[nn.Module]:
    """Stem conv (DenseNet-BC's: 2 x growth = the first width), then per stage a dense block
    (growth dense_growth(width)) and a transition to the stage width that halves the side."""
    from torchvision.models.densenet import _DenseBlock, _Transition

    ch = cfg.block_channels
    stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1, bias=False)
    stages, c_in = [], ch[0]
    for i, c in enumerate(ch):
        k = dense_growth(c)
        dense = _DenseBlock(cfg.convs_per_block, c_in, bn_size=DENSE_BN_SIZE, growth_rate=k,
                            drop_rate=0.0)
        transition = _Transition(c_in + cfg.convs_per_block * k, c)  # side -> floor(s / 2)
        stages.append(nn.Sequential(*([stem] if i == 0 else []), dense, transition))
        c_in = c
    return stages


def latent_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "none": nn.Identity()}[name]


class Classifier(nn.Module):
    """Encoder (`depth` stages of cfg.backbone, flatten, Linear, latent activation) and a linear
    head.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        build = {"vgg": vgg_stages, "resnet": resnet_stages, "densenet": densenet_stages}
        # one module per stage, the whole encoder before the code: features() returns their outputs
        self.blocks = nn.ModuleList(build[cfg.backbone](cfg))
        flat = cfg.block_channels[-1] * cfg.sizes[-1] ** 2  # the last stage's map, flattened
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(flat, cfg.latent_dim),
                                       latent_activation(cfg.latent_activation))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.latent_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output, shallow to deep (for the perceptual loss)."""
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
        return load_model(cls, ClassifierConfig, directory, map_location)


def latent_sparsity(z: torch.Tensor, eps: float = 1e-6) -> float:
    """Fraction of code entries that are (numerically) zero."""
    return float((z.abs() <= eps).float().mean())
