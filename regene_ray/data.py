"""Datasets: a small registry that turns every supported source into the same in-memory splits.

Images are kept as uint8 tensors (N, C, H, W) at the training resolution, labels as int64.
Splits (train / holdout / test) are deterministic for a seed. The holdout split is carved from
the training set and is used for validation and for the filter thresholds tau_c.

Supported names: `digits` (scikit-learn's embedded 8x8 set, no download), `mnist`,
`fashion-mnist`, `cifar10`, `celeba[:Attribute]` (torchvision), `folder:<path>` (one sub-folder
of images per class).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regene_ray.config import ConfigError

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "REGENE_DATA_ROOT"
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "celeba[:Attr]", "folder:<path>")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class DataConfig:
    dataset: str = "digits"  # a registry name, see DATASETS
    data_root: str | None = None  # folder holding torchvision-layout files; None -> $REGENE_DATA_ROOT
    image_size: int | None = None  # square side the networks see; None -> the dataset's native size
    holdout_fraction: float = 0.1  # share of train kept out for validation and thresholds tau_c
    max_train: int | None = None  # cap on train+holdout images (a seeded subset), for quick runs
    max_test: int | None = None  # cap on test images (a seeded subset)
    seed: int = 0  # fixes the subset and the train/holdout split
    download: bool = False  # let torchvision download missing files (needs internet)

    def __post_init__(self):
        if not 0.0 < self.holdout_fraction < 0.5:
            raise ConfigError(
                f"holdout_fraction {self.holdout_fraction} must be in (0, 0.5); "
                "it is the share of training images kept for validation"
            )
        if self.image_size is not None and self.image_size < 4:
            raise ConfigError(f"image_size {self.image_size} is too small; use at least 4")
        if self.seed < 0:
            raise ConfigError(f"data seed {self.seed} must be >= 0 (jobs/train.py --data-seed)")
        for name in ("max_train", "max_test"):
            v = getattr(self, name)
            if v is not None and v < 10:
                raise ConfigError(f"{name} {v} is too small; use at least 10 or leave it unset")
        name = self.dataset
        if not (
            name in ("digits", "mnist", "fashion-mnist", "cifar10")
            or name == "celeba"
            or name.startswith("celeba:")
            or name.startswith("folder:")
        ):
            raise ConfigError(
                f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}"
            )


@dataclass
class DataSplits:
    """In-memory splits. Images are uint8 (N, C, H, W); labels int64 (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    holdout_x: torch.Tensor
    holdout_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


# helpers


def resolve_data_root(data_root: str | None) -> Path:
    """The data root: the explicit value, else $REGENE_DATA_ROOT, else ./data."""
    root = data_root or os.environ.get(DATA_ROOT_ENV) or "data"
    return Path(root).expanduser()


def pin_data_root_env() -> None:
    """Make $REGENE_DATA_ROOT absolute (against this process's working directory; unset, the
    ./data it defaults to), for processes that run elsewhere: Ray Tune starts each trial in its
    own folder, where a relative root names nothing."""
    root = os.environ.get(DATA_ROOT_ENV) or "data"
    if not Path(root).expanduser().is_absolute():
        os.environ[DATA_ROOT_ENV] = str(Path(root).expanduser().resolve())


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size) with antialiasing, in chunks."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = []
    for chunk in torch.split(x, 4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 numpy -> (N, C, H, W) uint8 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        return t.unsqueeze(1)
    return t.permute(0, 3, 1, 2).contiguous()


def _missing(name: str, folder: Path, files: list[str]) -> ConfigError:
    return ConfigError(
        f"{name} files not found under {folder} (expected {', '.join(files)}). Put the official "
        f"files there, point --data-root or ${DATA_ROOT_ENV} at the folder that holds them, or "
        "pass --download to jobs/train.py on a machine with internet access"
    )


# sources: each returns (train_x, train_y, test_x, test_y, class_names) at native resolution


def _load_digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(cfg.seed).permutation(len(x))
    n_test = len(x) // 5  # a fixed 20% test split
    test, train = perm[:n_test], perm[n_test:]
    names = [str(i) for i in range(10)]
    return _to_nchw(x[train]), torch.from_numpy(y[train]), _to_nchw(x[test]), torch.from_numpy(
        y[test]
    ), names


_TV_FILES = {
    "mnist": ("MNIST", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion-mnist": ("FashionMNIST", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
}


def _load_mnist_like(cfg: DataConfig):
    import torchvision.datasets as tvd

    root = resolve_data_root(cfg.data_root)
    folder, files = _TV_FILES[cfg.dataset]
    cls = tvd.MNIST if cfg.dataset == "mnist" else tvd.FashionMNIST
    try:
        train = cls(root=str(root), train=True, download=cfg.download)
        test = cls(root=str(root), train=False, download=cfg.download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, ... when files are absent
        raise _missing(cfg.dataset, root / folder / "raw", files) from e
    return train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), \
        test.targets.long(), list(train.classes)


def _load_cifar10(cfg: DataConfig):
    import torchvision.datasets as tvd

    root = resolve_data_root(cfg.data_root)
    try:
        train = tvd.CIFAR10(root=str(root), train=True, download=cfg.download)
        test = tvd.CIFAR10(root=str(root), train=False, download=cfg.download)
    except Exception as e:
        raise _missing("cifar10", root / "cifar-10-batches-py",
                       ["data_batch_1..5", "test_batch", "batches.meta"]) from e
    return _to_nchw(train.data), torch.tensor(train.targets), _to_nchw(test.data), \
        torch.tensor(test.targets), list(train.classes)


def _pil_stack(images, size: int, crop: int | None = None) -> torch.Tensor:
    """PIL images -> uint8 (N, C, size, size), optional centre crop first."""
    import torchvision.transforms.functional as TF

    out = []
    for img in images:
        if crop is not None:
            img = TF.center_crop(img, [crop, crop])
        img = TF.resize(img, [size, size], antialias=True)
        out.append(TF.pil_to_tensor(img))
    return torch.stack(out)


def _load_celeba(cfg: DataConfig):
    import torchvision.datasets as tvd

    attr = cfg.dataset.split(":", 1)[1] if ":" in cfg.dataset else "Male"
    root = resolve_data_root(cfg.data_root)
    size = cfg.image_size or 64
    try:
        train = tvd.CelebA(root=str(root), split="train", target_type="attr",
                           download=cfg.download)
        test = tvd.CelebA(root=str(root), split="test", target_type="attr", download=False)
    except Exception as e:
        raise _missing("celeba", root / "celeba",
                       ["img_align_celeba/", "list_attr_celeba.txt", "list_eval_partition.txt"]) from e
    if attr not in train.attr_names:
        raise ConfigError(f"celeba has no attribute '{attr}'; choose one of {train.attr_names[:40]}")
    j = train.attr_names.index(attr)

    def take(ds, limit):
        n = len(ds) if limit is None else min(len(ds), limit)
        idx = np.random.default_rng(cfg.seed).permutation(len(ds))[:n]
        x = _pil_stack((ds[int(i)][0] for i in idx), size, crop=140)
        y = torch.stack([ds.attr[int(i), j] for i in idx]).long()
        return x, y

    tx, ty = take(train, cfg.max_train)
    sx, sy = take(test, cfg.max_test)
    return tx, ty, sx, sy, [f"not {attr}", attr]


def _load_folder(cfg: DataConfig):
    from PIL import Image

    root = Path(cfg.dataset.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"folder dataset {root} does not exist; pass folder:<path> to a folder with one "
            "sub-folder of images per class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(k)
    if len(classes) < 2 or not files:
        raise ConfigError(
            f"folder dataset {root} needs at least 2 class sub-folders holding images "
            f"({', '.join(IMAGE_EXTENSIONS)}); found {len(classes)} classes, {len(files)} images"
        )
    size = cfg.image_size or 64
    with Image.open(files[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16", "I") else "RGB"

    def read(f):
        with Image.open(f) as im:
            return im.convert(mode)

    x = _pil_stack((read(f) for f in files), size)
    y = torch.tensor(labels, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(x)))
    n_test = max(1, len(x) // 5)
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test], classes


def _seeded_subset(x, y, limit, seed):
    if limit is None or limit >= len(x):
        return x, y
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(x))[:limit]))
    return x[idx], y[idx]


def load_data(cfg: DataConfig) -> DataSplits:
    """Load `cfg.dataset` into deterministic train / holdout / test splits.

    Args:
        cfg: which dataset, where its files are, the resolution and the split seed.
    Returns:
        DataSplits with uint8 images at `cfg.image_size` (native size when None; 16 for digits).
    Raises:
        ConfigError naming the folder and the expected files when the data is missing.
    """
    name = cfg.dataset
    if name == "digits":
        tx, ty, sx, sy, names = _load_digits(cfg)
        size = cfg.image_size or 16
    elif name in _TV_FILES:
        tx, ty, sx, sy, names = _load_mnist_like(cfg)
        size = cfg.image_size or 28
    elif name == "cifar10":
        tx, ty, sx, sy, names = _load_cifar10(cfg)
        size = cfg.image_size or 32
    elif name == "celeba" or name.startswith("celeba:"):
        tx, ty, sx, sy, names = _load_celeba(cfg)
        size = cfg.image_size or 64
    else:
        tx, ty, sx, sy, names = _load_folder(cfg)
        size = cfg.image_size or 64
    tx, ty = _seeded_subset(tx, ty, cfg.max_train, cfg.seed)
    sx, sy = _seeded_subset(sx, sy, cfg.max_test, cfg.seed + 1)
    tx, sx = _resize(tx, size), _resize(sx, size)

    perm = torch.from_numpy(np.random.default_rng(cfg.seed + 2).permutation(len(tx)))
    n_hold = max(len(names), int(round(cfg.holdout_fraction * len(tx))))
    hold, train = perm[:n_hold].sort().values, perm[n_hold:].sort().values
    splits = DataSplits(name, tx[train], ty[train], tx[hold], ty[hold], sx, sy, names)
    log.info(
        "data %s: train %d, holdout %d, test %d, %d classes, %dx%dx%d",
        name, len(train), len(hold), len(sx), splits.num_classes, splits.channels, size, size,
    )
    return splits


def to_float(x: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1] on `device`."""
    return x.to(device, non_blocking=True).float().div_(255.0)


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


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 with rounding (the pixels a generation is stored as)."""
    return (x.clamp(0, 1) * 255).round_().to(torch.uint8)


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    images: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images float [0,1] (B, C, H, W), labels (B,)) batches from in-memory uint8 data.

    `images` (with shuffle) makes the pass that long: successive shuffles of the data, cut at
    `images`, so a small set gives epochs of a chosen length (default: one pass, len(x))."""
    n = len(x)
    if images is not None and not shuffle:
        raise ValueError("iterate_batches: images= needs shuffle=True")
    passes = 1 if images is None else -(-images // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[:images] \
        if shuffle else torch.arange(n)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield to_float(x[idx], device), y[idx].to(device, non_blocking=True)
