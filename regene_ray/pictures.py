"""Image grids: originals vs reconstructions, and filtered generations per class and n."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from regene_ray.classifier import Classifier
from regene_ray.data import DataSplits, to_float
from regene_ray.decoder import Decoder
from regene_ray.generator import ConvexGenerator
from regene_ray.storage import atomic_write


def _upscale(x: torch.Tensor, min_side: int = 48) -> torch.Tensor:
    f = max(1, -(-min_side // x.shape[-1]))
    return x.repeat_interleave(f, -1).repeat_interleave(f, -2) if f > 1 else x


def _save(grid: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(arr if arr.shape[2] == 3 else arr[..., 0])
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


@torch.no_grad()
def save_reconstruction_grid(clf: Classifier, dec: Decoder, data: DataSplits, path: Path,
                             device: torch.device, per_class: int = 2) -> None:
    """Rows of test originals above their reconstructions, `per_class` images of each class."""
    idx = torch.cat([torch.nonzero(data.test_y == c).flatten()[:per_class]
                     for c in range(data.num_classes)])
    x = to_float(data.test_x[idx], device)
    x_hat = dec(clf.encode(x))
    rows = []
    for start in range(0, len(x), 10):
        rows += [x[start:start + 10], x_hat[start:start + 10]]
    nrow = min(10, len(x))
    tiles = torch.cat([_pad_row(r, nrow) for r in rows]).cpu()
    _save(make_grid(_upscale(tiles), nrow=nrow, padding=2, pad_value=0.5), path)


def _pad_row(r: torch.Tensor, n: int) -> torch.Tensor:
    if len(r) == n:
        return r
    return torch.cat([r, r.new_full((n - len(r), *r.shape[1:]), 0.5)])


def save_generation_grid(gen: ConvexGenerator, class_names: Sequence[str],
                         n_parents: Sequence[int], path: Path, *, seed: int = 0,
                         per_cell: int = 4, tries: int = 64) -> None:
    """A figure: one row per class, `per_cell` accepted generations for each n in `n_parents`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = len(class_names)
    cols = len(n_parents) * per_cell
    fig, axes = plt.subplots(K, cols, figsize=(cols * 0.8, K * 0.8 + 0.4), squeeze=False)
    for j, k in enumerate(n_parents):
        labels = np.repeat(np.asarray(gen.eligible_classes(k), dtype=np.int64), tries)
        b = gen(labels, n_parents=k, seed=seed + 17 * k).accepted_only()
        for c in range(K):
            imgs = b.images[b.labels == c][:per_cell]
            for i in range(per_cell):
                ax = axes[c, j * per_cell + i]
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if i < len(imgs):
                    im = imgs[i]
                    ax.imshow(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0),
                              cmap="gray", vmin=0, vmax=255)
                if c == 0 and i == 0:
                    ax.set_title(f"n = {k}", fontsize=9, loc="left")
                if j == 0 and i == 0:
                    ax.set_ylabel(str(class_names[c])[:10], fontsize=8, rotation=0, labelpad=18)
    fig.suptitle("accepted convex generations (both filter steps)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
