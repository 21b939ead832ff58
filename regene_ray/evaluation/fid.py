"""FID with torchmetrics, on Inception features when its weights are present, else neutral ones.

Features are extracted once per image set and fed to torchmetrics' `FrechetInceptionDistance`
through a pass-through feature module, so the three rows of the paper's Table 1 (Org vs Gen,
Org vs Recon, Recon vs Gen) over several sampling seeds cost one pass of the network per set.
The Frechet distance itself (means, covariances, matrix square root) is torchmetrics' code.

Which network produced the features is part of every number: an FID on neutral-classifier
features is *not* comparable to a published Inception FID, and the report says so.
"""

from __future__ import annotations

import logging
import os
import pickle
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# the file name torch-fidelity downloads the FID Inception weights to (TORCH_HOME/hub/checkpoints)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclass
class FeatureNet:
    """A feature network for FID: `fn(float images (B, C, H, W) in [0, 1]) -> (B, dim)`."""

    name: str  # written beside every FID number
    module: nn.Module
    dim: int
    note: str = ""  # why this one was chosen


class _Passthrough(nn.Module):
    """Hands precomputed (B, dim) features to torchmetrics unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NeutralFeatures(nn.Module):
    """The neutral classifier's penultimate features (global average pool), (B, 4 * width)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.num_features = int(model.num_features)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception v3 (pool3, 2048-d), loaded from a local weights file.

    Grey images are repeated to three channels; the network resizes to 299 itself.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights_path))
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net((x.clamp(0, 1) * 255).round().to(torch.uint8)).reshape(len(x), -1)


def find_inception_weights(explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """Locate local FID Inception weights. Returns (path or None, why).

    Looks at `explicit`, then $TORCH_HOME/hub/checkpoints and ~/.cache/torch/hub/checkpoints.
    An explicit path that does not exist is an error, not a silent fallback.
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"--inception-weights {p} does not exist; pass the path of {INCEPTION_FILE} or "
                "leave the flag out to use the neutral classifier's features")
        return p, f"explicit file {p}"
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
    for p in (home / "hub" / "checkpoints" / INCEPTION_FILE,):
        if p.is_file():
            return p, f"found {p}"
    return None, f"no {INCEPTION_FILE} under {home / 'hub' / 'checkpoints'}"


def choose_feature_net(neutral: nn.Module, inception_weights: str | Path | None = None,
                       *, allow_inception: bool = True) -> FeatureNet:
    """Inception when local weights (and torch-fidelity) are present, else neutral features.

    The choice and its reason are logged and returned, never made silently.
    """
    path, why = find_inception_weights(inception_weights) if allow_inception else (
        None, "Inception disabled (--fid-features neutral)")
    if path is not None:
        try:
            net = InceptionFeatures(path)
            log.info("FID features: Inception v3 pool3 (2048-d), %s", why)
            return FeatureNet("inception-v3-pool3", net, 2048, note=why)
        except (ImportError, ModuleNotFoundError) as e:
            if inception_weights is not None:
                raise ValueError(f"Inception weights given but torchmetrics cannot build the "
                                 f"network ({e}); pip install torch-fidelity") from e
            why = f"{why}, but torch-fidelity is not installed ({e})"
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
            problem = (f"{path} cannot be loaded as {INCEPTION_FILE}, the FID Inception v3 "
                       f"weights of torch-fidelity ({str(e).splitlines()[0][:200]})")
            if inception_weights is not None:
                raise ValueError(f"--inception-weights {problem}; pass the right file, or leave "
                                 "the flag out to use the neutral classifier's features") from e
            why = f"{problem}; delete or replace it"
    feats = NeutralFeatures(neutral)
    name = f"neutral-resnet{neutral.cfg.depth}-penultimate"
    log.warning("FID features: %s (%d-d) because %s; these FIDs are not comparable with "
                "published Inception FIDs", name, feats.num_features, why)
    return FeatureNet(name, feats, feats.num_features, note=why)


@contextmanager
def full_fp32():
    """TF32 off for matmuls and convolutions (on GPUs that have it), restored afterwards: FID
    features are compared across runs and machines, so they get full float32 precision."""
    cuda, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = cuda, cudnn


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, device: torch.device | str,
                     batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float64 features (N, dim) on the CPU (the network runs in
    float32 with TF32 off; means and covariances are then taken in float64)."""
    net.module.to(device).eval()
    with full_fp32():
        out = [net.module(xb.to(device).float().div_(255.0)).double().cpu()
               for xb in torch.split(images, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, net.dim, dtype=torch.float64)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics' Frechet distance between two feature sets (N1, d), (N2, d)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    metric = FrechetInceptionDistance(feature=_Passthrough(real.shape[1]), normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def mifid_from_features(real: torch.Tensor, fake: torch.Tensor, eps: float = 0.1) -> float:
    """torchmetrics' memorisation-informed FID (Bai et al. 2021, the Kaggle GAN contest's): FID
    divided by a memorisation distance, the mean over fakes of the cosine distance to their
    nearest real feature vector when that is below `eps` (else 1). `real` should be the
    training images a generator could have copied."""
    from torchmetrics.image.mifid import MemorizationInformedFrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"MiFID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    metric = MemorizationInformedFrechetInceptionDistance(
        feature=_Passthrough(real.shape[1]), normalize=True, cosine_distance_eps=eps)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def fid(real: torch.Tensor, fake: torch.Tensor, net: FeatureNet,
        device: torch.device | str = "cpu") -> float:
    """FID between two uint8 image sets (N, C, H, W) in `net`'s feature space."""
    return fid_from_features(extract_features(net, real, device),
                             extract_features(net, fake, device))


def fid_table(sets: dict[str, torch.Tensor], pairs: list[tuple[str, str]], seeds: int,
              sample_size: int, net: FeatureNet, device: torch.device | str,
              base_seed: int = 0, mifid_pairs: frozenset[tuple[str, str]] = frozenset()) -> dict:
    """FID rows as mean +- std over `seeds` independent samples of `sample_size` per set.

    Features of every image are extracted once; each seed draws a fresh subset (without
    replacement) from each set. When both sides of a pair are the same set (a noise floor such
    as Org vs Org), the two sides are disjoint halves of one draw.

    Args:
        sets: name -> uint8 images (N, C, H, W).
        pairs: (real, fake) names, e.g. ("org", "gen").
        seeds: how many sampling seeds.
        sample_size: images per side and seed (capped by the smallest set).
        mifid_pairs: pairs that also get MiFID on the same samples (its real side should be
            the training images).
    Returns:
        {"a_vs_b": {"mean", "std", "values", "sample_size", "features"}}, plus
        "mifid_mean", "mifid_std" for mifid_pairs.
    """
    feats = {k: extract_features(net, v, device) for k, v in sets.items()}
    out = {}
    for a, b in pairs:
        na, nb = len(feats[a]), len(feats[b])
        m = min(sample_size, na // 2 if a == b else na, nb)
        if m < 2:
            raise ValueError(f"FID {a} vs {b}: sets of {na} and {nb} images are too small")
        values, mifids = [], []
        for s in range(seeds):
            rng = np.random.default_rng([base_seed, s, zlib.crc32(f"{a}/{b}".encode())])
            if a == b:
                idx = rng.permutation(na)[: 2 * m]
                fa, fb = feats[a][idx[:m]], feats[a][idx[m:]]
            else:
                fa = feats[a][rng.permutation(na)[:m]]
                fb = feats[b][rng.permutation(nb)[:m]]
            values.append(fid_from_features(fa, fb))
            if (a, b) in mifid_pairs:
                mifids.append(mifid_from_features(fa, fb))
        out[f"{a}_vs_{b}"] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                              "values": values, "sample_size": int(m), "seeds": seeds,
                              "features": net.name}
        if mifids:
            out[f"{a}_vs_{b}"] |= {"mifid_mean": float(np.mean(mifids)),
                                   "mifid_std": float(np.std(mifids))}
    return out
