"""A run's latent bank and per-class thresholds tau_c, built from its trained networks (the
files themselves: regene_ray.latent_bank)."""

from __future__ import annotations

import numpy as np
import torch

from regene_ray.classifier import Classifier
from regene_ray.data import to_float, to_uint8
from regene_ray.decoder import Decoder
from regene_ray.filtering import label_confidence
from regene_ray.latent_bank import LatentBank


@torch.no_grad()
def build_bank(classifier: Classifier, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               batch_size: int = 512) -> LatentBank:
    """Encode uint8 images `x` with labels `y` into a LatentBank (ids = row positions)."""
    classifier.eval()
    zs, confs, preds = [], [], []
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
        z = classifier.encode(to_float(xb, device))  # (B, latent_dim)
        logits = classifier.classify_latent(z)
        zs.append(z.float().cpu())
        confs.append(label_confidence(logits, yb.to(device)).cpu())
        preds.append(logits.argmax(1).cpu())
    labels = y.numpy().astype(np.int64)
    return LatentBank(
        ids=np.arange(len(x), dtype=np.int64),
        labels=labels,
        latents=torch.cat(zs).numpy(),
        confidence=torch.cat(confs).numpy().astype(np.float32),
        correct=torch.cat(preds).numpy() == labels,
    )


# How the image step's tau is set. "originals" is the paper's: tau_c is the classifier's mean
# confidence in class c on held-out images of class c, for both steps. "reconstructions" (this
# project's earlier default) judges decoded held-out codes instead, rounded to stored pixels like
# generations: less recognisable than originals, so a more lenient threshold.
THRESHOLD_RULES = ("originals", "reconstructions")


@torch.no_grad()
def compute_thresholds(classifier: Classifier, decoder: Decoder, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int, device: torch.device, batch_size: int = 512, *,
                       image_rule: str = "originals") -> dict:
    """tau_c for both filter steps, from held-out uint8 images `x` with labels `y`.

    latent: the mean of head(enc(x))[c] (softmax) over held-out images of class c, which is the
        classifier's confidence on the originals, clf(x)[c].
    image: with image_rule 'originals' (the paper's), the same values; with 'reconstructions',
        the mean of clf(round(dec(enc(x))))[c]: reconstructions rounded to uint8 pixels and
        classified exactly as a stored generation is.
    """
    if image_rule not in THRESHOLD_RULES:
        raise ValueError(f"image_threshold {image_rule!r} must be one of {THRESHOLD_RULES}")
    classifier.eval()
    decoder.eval()
    lat, img = [], []
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
        yb = yb.to(device)
        z = classifier.encode(to_float(xb, device))
        lat.append(label_confidence(classifier.classify_latent(z), yb).cpu())
        if image_rule == "reconstructions":
            stored = to_uint8(decoder(z)).float() / 255.0
            img.append(label_confidence(classifier(stored), yb).cpu())
    labels = y.numpy()
    lat_c = torch.cat(lat).double().numpy()
    img_c = torch.cat(img).double().numpy() if img else lat_c
    missing = [c for c in range(num_classes) if not (labels == c).any()]
    if missing:
        raise ValueError(
            f"holdout split has no images of class(es) {missing}; raise holdout_fraction or "
            "max_train so every class is held out"
        )
    return {
        "latent": [float(lat_c[labels == c].mean()) for c in range(num_classes)],
        "image": [float(img_c[labels == c].mean()) for c in range(num_classes)],
        "holdout_count": [int((labels == c).sum()) for c in range(num_classes)],
        "image_rule": image_rule,
        "rule": "tau_c = mean classifier confidence in class c on held-out images of class c "
                + ("(originals, both steps)" if image_rule == "originals" else
                   "(latent: originals; image: their reconstructions as uint8 pixels)"),
    }
