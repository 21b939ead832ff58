"""The two-step confidence filter, as pure functions.

Step 1 (latent): keep a mixed code z only if head(z) gives the intended class c a softmax
confidence >= tau_c. Step 2 (image): decode, re-classify the image, keep it only if the
classifier's confidence in c is >= tau_c (the image threshold). The filter knows nothing about
how the codes were mixed.
"""

from __future__ import annotations

import torch


def label_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each row's own label: (B, K), (B,) -> (B,)."""
    return logits.float().softmax(dim=1).gather(1, labels.view(-1, 1).long()).squeeze(1)


def passes(confidence: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Mask of rows whose confidence reaches their class threshold: conf >= tau[label]."""
    return confidence >= tau.to(confidence.device)[labels.long()]
