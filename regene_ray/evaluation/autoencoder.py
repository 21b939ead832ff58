"""Paper Fig. 3's contrast: the classifier's codes beside an autoencoder's (no Ray).

The autoencoder has the run's encoder architecture and code width and the mirrored decoder, and
is trained end to end on MAE + SSIM alone (no labels) through the project's one training loop
(regene_ray.loop). The codes of the same real test images, from both encoders, are embedded in
2-D by one method (figure_data.embed_2d) for the report to draw side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from regene_ray.classifier import Classifier, ClassifierConfig
from regene_ray.data import to_float
from regene_ray.decoder import Decoder, DecoderConfig
from regene_ray.evaluation.figure_data import METHOD_NAMES, embed_2d
from regene_ray.evaluation.inputs import Inputs
from regene_ray.evaluation.streams import Streams
from regene_ray.loop import epoch_seed, fit_epochs, scoped_seed, train_one_epoch
from regene_ray.losses import LossConfig, ReconstructionLoss
from regene_ray.run import RUN_CONFIG_FILE, load_run_config
from regene_ray.train import encode_all, evaluate_decoder

LR = 3e-3  # AdamW, constant: a short fit for a contrast, not a tuned model


class Autoencoder(nn.Module):
    """An encoder of the classifier's architecture (no head: no labels) and its mirrored
    decoder: images (B, C, H, W) in [0, 1] -> codes (B, latent_dim) -> images."""

    def __init__(self, classifier_cfg: ClassifierConfig, decoder_cfg: DecoderConfig):
        super().__init__()
        encoder = Classifier(classifier_cfg)
        self.blocks, self.to_latent = encoder.blocks, encoder.to_latent
        self.decoder = Decoder(decoder_cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.to_latent(x)  # (B, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


@dataclass
class AutoencoderResult:
    test_mae: float  # the autoencoder's reconstruction MAE on the test split
    test_ssim: float
    initial_test_mae: float  # the same before training (how far the training moved it)
    images: int  # training images it saw
    epochs: int
    seconds: float
    embedding: dict[str, np.ndarray]  # "classifier" / "autoencoder" -> (N, 2) embedded codes
    labels: np.ndarray  # (N,) the embedded test images' classes
    method: str  # the embedding's name ("PCA" or "t-SNE")


def train_autoencoder(model: Autoencoder, x: torch.Tensor, epochs: int, batch_size: int,
                      dev: torch.device, seed: int) -> list[dict]:
    """End-to-end training on uint8 images `x` with MAE + SSIM (no perceptual term), its
    weights decaying over the epochs as the decoder's do (losses.ReconstructionLoss)."""
    model.to(dev)
    loss_fn = ReconstructionLoss(LossConfig(perceptual="none"), None)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def step(idx: torch.Tensor, epoch: int) -> tuple[torch.Tensor, int, dict]:
        xb = to_float(x[idx], dev)
        loss, _ = loss_fn(model(xb), xb, epoch, epochs)
        return loss, len(idx), {}

    def epoch_fn(epoch: int) -> dict:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
            epoch_seed(seed, epoch)))
        return train_one_epoch(model, opt, torch.split(order, batch_size),
                               lambda idx: step(idx, epoch), lr=LR, what="autoencoder",
                               epoch=epoch)

    with scoped_seed(seed, dev):
        return fit_epochs(model, opt, epochs, epoch_fn, what="autoencoder")


def autoencoder_stage(inp: Inputs, cfg, dev: torch.device, streams: Streams
                      ) -> AutoencoderResult:
    """Train the contrast's autoencoder on a seeded subset of cfg.autoencoder_images training
    images for cfg.autoencoder_epochs (cfg.autoencoder_batch_size a step), score it on the
    test split, and embed the codes of cfg.embedding_points test images from it and from the
    run's classifier."""
    t0 = time.perf_counter()
    data, gen = inp.data, inp.gen
    rng, seed = streams.rng("autoencoder"), streams.seed("autoencoder")
    run_cfg = load_run_config(inp.run_dir / RUN_CONFIG_FILE)
    with scoped_seed(seed, dev):  # the initial weights
        model = Autoencoder(gen.classifier.cfg,
                            DecoderConfig.mirror(gen.classifier.cfg, run_cfg.decoder))
    n = min(cfg.autoencoder_images, len(data.train_x))
    x_train = data.train_x[torch.from_numpy(rng.permutation(len(data.train_x))[:n])]
    initial = evaluate_decoder(model.decoder, model, data.test_x, dev)
    train_autoencoder(model, x_train, cfg.autoencoder_epochs, cfg.autoencoder_batch_size, dev,
                      seed)
    test = evaluate_decoder(model.decoder, model, data.test_x, dev)
    pts = min(cfg.embedding_points, len(data.test_x))
    pick = torch.from_numpy(np.sort(rng.permutation(len(data.test_x))[:pts]))
    codes = {name: encode_all(net, data.test_x[pick], dev).numpy()
             for name, net in (("classifier", gen.classifier), ("autoencoder", model))}
    embedding = {name: embed_2d(z, cfg.embedding, seed)[0] for name, z in codes.items()}
    return AutoencoderResult(test["mae"], test["ssim"], initial["mae"], n, cfg.autoencoder_epochs,
                             time.perf_counter() - t0, embedding, data.test_y[pick].numpy(),
                             METHOD_NAMES[cfg.embedding])
