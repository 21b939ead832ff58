"""What an evaluation measures: the run (its data, generator and metrics) and the generations,
read from a --generated folder (regene_ray.generated) or sampled in-process. No Ray."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from regene_ray.data import DataConfig, DataSplits, load_data
from regene_ray.evaluation.streams import Streams
from regene_ray.generated import GeneratedFolder, GeneratedSet
from regene_ray.generator import ConvexGenerator, GenerationBatch, to_uint8
from regene_ray.run import METRICS_FILE, RUN_CONFIG_FILE, load_run_config

log = logging.getLogger(__name__)

N_SPAN = 1_000_000_000  # candidate ids of one n in an in-process sample: [n * N_SPAN, ...)


@dataclass
class Inputs:
    """What every stage reads: the run's data, its generator and its training metrics."""

    run_dir: Path
    data_cfg: DataConfig
    data: DataSplits
    gen: ConvexGenerator
    run_metrics: dict


def load_inputs(run_dir: Path, data_root: str | None, dev: torch.device) -> Inputs:
    """The run folder's data (its config's, or `data_root`), generator and metrics.json."""
    run_cfg = load_run_config(run_dir / RUN_CONFIG_FILE)
    data_cfg = run_cfg.data
    if data_root is not None:
        data_cfg.data_root = data_root
    data = load_data(data_cfg)
    gen = ConvexGenerator.from_run(run_dir, device=dev)
    if len(gen.bank) != len(data.train_x):
        raise ValueError(f"latent bank of {run_dir} has {len(gen.bank)} codes but the run's data "
                         f"gives {len(data.train_x)} training images; pass the --data-root the "
                         "run was trained with")
    run_metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (
        run_dir / METRICS_FILE).is_file() else {}
    return Inputs(run_dir, data_cfg, data, gen, run_metrics)


@torch.no_grad()
def reconstruct(gen: ConvexGenerator, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """decoder(encoder(x)) for uint8 images (N, C, H, W), as uint8 (what a generation is)."""
    out = []
    for xb in torch.split(x, batch_size):
        z = gen.classifier.encode(xb.to(gen.device).float() / 255.0)  # (B, latent_dim)
        out.append(to_uint8(gen.decoder(z)).cpu())
    return torch.cat(out)


def generate_sample(gen: ConvexGenerator, count: int, n_parents: list[int], seed: int,
                    weights: str = "uniform") -> GeneratedSet:
    """About `count` accepted generations, split evenly over `n_parents`, classes balanced.

    Candidates are keyed by (seed, id), the ids of each n in their own range (N_SPAN), so a
    stage passes its own seed (evaluation.streams) and shares no candidate with another.
    """
    per_n = max(1, count // len(n_parents))
    parts = [_accepted(gen, per_n, k, seed, weights) for k in n_parents]
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("the run's generator accepted no generations; check thresholds.json")
    labels = np.concatenate([p.labels for p in parts])
    log.info("in-process sample: %d accepted generations for n = %s", len(labels), n_parents)
    return GeneratedSet(
        images=torch.from_numpy(np.concatenate([p.images for p in parts])), labels=labels,
        n_parents=np.concatenate([p.n_parents for p in parts]),
        parent_ids=[row[:k] for p in parts for row, k in zip(p.parent_ids, p.n_parents,
                                                             strict=True)],
        source="in-process", total_rows=len(labels), weights=weights)


def _accepted(gen: ConvexGenerator, want: int, k: int, seed: int, weights: str
              ) -> GenerationBatch | None:
    """Up to `want` accepted n = k generations (a GenerationBatch), in candidate-id order."""
    classes = np.asarray(gen.eligible_classes(k), dtype=np.int64)
    if len(classes) == 0:
        log.warning("in-process sample: no class has %d eligible parents; n = %d left out", k, k)
        return None
    batches, have, start, rate = [], 0, 0, 0.5
    for _ in range(8):  # grow the batch from the measured acceptance until `want` are kept
        if have >= want:
            break
        B = int(math.ceil((want - have) / max(rate, 0.02) * 1.2)) + len(classes)
        b = gen(classes[np.arange(start, start + B) % len(classes)], n_parents=k,
                weights=weights, seed=seed, ids=np.arange(start, start + B) + k * N_SPAN)
        rate = max(float(b.accepted.mean()), 0.02)
        b = b.accepted_only().select(slice(0, want - have))
        batches.append(b)
        have += len(b)
        start += B
    if have < want:
        log.warning("in-process sample: only %d of %d accepted generations for n = %d",
                    have, want, k)
    return _concat(batches)


def _concat(batches: list[GenerationBatch]) -> GenerationBatch:
    """GenerationBatches of one n, joined row-wise."""
    return GenerationBatch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches])
                              for f in fields(GenerationBatch)})


def generations_stage(inp: Inputs, cfg, generated: str | Path | None,
                      streams: Streams) -> GeneratedSet:
    """The generations to judge: read from --generated (a seeded subset beyond
    cfg.max_generated rows), or sampled in-process (cfg.num_generated over cfg.n_parents)."""
    if generated is None:
        return generate_sample(inp.gen, cfg.num_generated, cfg.n_parents,
                               streams.seed("sample"))
    gset = GeneratedFolder(generated).read(max_images=cfg.max_generated,
                                           seed=streams.seed("subset"))
    dcfg = inp.gen.decoder.cfg
    shape = (dcfg.out_channels, dcfg.image_size, dcfg.image_size)
    if tuple(gset.images.shape[1:]) != shape:
        raise ValueError(f"--generated images are {tuple(gset.images.shape[1:])} but run "
                         f"{inp.run_dir} makes {shape}; pass the run the images came from")
    if gset.labels.min() < 0 or gset.labels.max() >= inp.data.num_classes:
        raise ValueError(f"--generated labels span {gset.labels.min()}..{gset.labels.max()} "
                         f"but run {inp.run_dir} has {inp.data.num_classes} classes")
    return gset
