"""Evaluation of a run's generations, the way the paper measures them, into one report folder.

    run folder (+ a --generated folder, or an in-process sample)            (evaluation.inputs)
      -> neutral classifier (ResNet v1, trained from scratch, cached in OUT/neutral/ or
         --neutral-cache; the run folder is only read)                     (evaluation.stages)
      -> neutral accuracy of generations overall / per class / per n      (paper Fig. 4a)
      -> FID Org vs Gen, Org vs Recon, Recon vs Gen, mean +- std over seeds (paper Table 1)
      -> precision, recall, density, coverage of each generated set     (evaluation.fidelity)
      -> novelty: nearest training images, copy flags, near-duplicates     (paper Fig. 6)
      -> acceptance per class and step; original:reconstruction blends     (paper Fig. 7b)
      -> the autoencoder contrast                       (paper Fig. 3, evaluation.autoencoder)
      -> the pictures' data: interpolation strips (Fig. 5), parents overlays, latent
         embedding with convex paths (Fig. 3)                          (evaluation.figure_data)
      -> REPORT_DIR/metrics.json, REPORT_DIR/report.html (self-contained), REPORT_DIR/figures/
         (evaluation.report draws and writes what the stages computed)

Terms: Org = real training images; Recon = decoder(encoder(real training images));
Gen = accepted convex generations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from regene_ray.config import ConfigError, save_json, to_dict
from regene_ray.evaluation.autoencoder import AutoencoderResult, autoencoder_stage
from regene_ray.evaluation.fidelity import FidelityResult, fidelity_stage
from regene_ray.evaluation.figure_data import FigureData, figure_data_stage
from regene_ray.evaluation.inputs import Inputs, generations_stage, load_inputs
from regene_ray.evaluation.neutral import NEUTRAL_DIR
from regene_ray.evaluation.report import Figure, intro, render_html, report_figures, tables
from regene_ray.evaluation.stages import (
    BlendResult,
    FidResult,
    NeutralResult,
    NoveltyResult,
    Scores,
    acceptance_stage,
    blend_stage,
    fid_stage,
    neutral_stage,
    novelty_stage,
    score_stage,
)
from regene_ray.evaluation.streams import Streams
from regene_ray.generated import GeneratedFolder, GeneratedSet
from regene_ray.run import METRICS_FILE, RUN_CONFIG_FILE
from regene_ray.storage import atomic_write_bytes
from regene_ray.train import resolve_device

log = logging.getLogger(__name__)

REPORT_KIND = "regene-ray evaluation v1"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"


@dataclass
class EvalConfig:
    neutral_depth: int = 20  # ResNet depth 6n + 2 (56 in the paper; 20 trains on a CPU)
    neutral_width: int = 16  # first-stage channels of the ResNet (16 as in the paper)
    neutral_epochs: int = 10  # epochs of neutral training on the real training split
    neutral_batch_size: int = 128  # images per neutral training step
    seeds: int = 3  # sampling seeds for FID mean +- std
    fid_samples: int = 10000  # images per side and seed in each FID (capped by the set sizes)
    prdc_samples: int = 5000  # images per side in precision/recall/density/coverage (capped)
    prdc_k: int = 5  # their k-th nearest neighbour (Naeem et al. 2020 recommend 5)
    n_parents: list[int] = field(default_factory=lambda: [2, 3, 5])  # in-process sample's n
    num_generated: int = 30000  # in-process sample size (split over n_parents) without --generated
    dirichlet_alpha: float = 1.0  # extra FID row: n = 2 with Dirichlet(alpha) weights (0: none)
    max_generated: int = 20000  # rows read from --generated (a seeded subset beyond this)
    novelty_samples: int = 500  # generations (and as many test images) in the copy analysis
    match_samples: int = 8  # generations shown with their closest training images (SSIM search)
    copy_quantile: float = 0.01  # copy threshold = this quantile of test-to-train NN distances
    acceptance_per_class: int = 100  # candidates per class and n for the acceptance chart
    interpolation_classes: int = 4  # rows of the interpolation figure
    overlay_per_n: int = 6  # generation/parents pairs per n
    embedding: str = "pca"  # pca (convex paths stay straight) or tsne
    embedding_points: int = 2000  # latent codes drawn in the embedding
    blend_ratios: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # Fig. 7b
    autoencoder_epochs: int = 3  # Fig. 3's contrast: end-to-end autoencoder epochs (0: none)
    autoencoder_images: int = 10000  # its training images (a seeded subset of the train split)
    autoencoder_batch_size: int = 128  # its images per step
    fid_features: str = "auto"  # auto (Inception if its weights are local), neutral, inception
    inception_weights: str | None = None  # explicit FID Inception weights file
    data_root: str | None = None  # overrides the run config's data_root
    seed: int = 0  # all sampling in the evaluation

    def smoke(self) -> EvalConfig:
        """This evaluation shrunk to seconds (jobs/evaluate.py --smoke-test): a ResNet-8 judge
        for 3 epochs, 150 images per FID side, 300 generations."""
        return dataclasses.replace(
            self, neutral_depth=8, neutral_width=16, neutral_epochs=min(self.neutral_epochs, 3),
            neutral_batch_size=32, fid_samples=min(self.fid_samples, 150),
            prdc_samples=min(self.prdc_samples, 150),
            num_generated=min(self.num_generated, 300),
            max_generated=min(self.max_generated, 1000),
            novelty_samples=min(self.novelty_samples, 150), match_samples=4,
            acceptance_per_class=20, embedding_points=500,
            autoencoder_epochs=min(self.autoencoder_epochs, 2),
            autoencoder_images=min(self.autoencoder_images, 500),
            autoencoder_batch_size=32)  # 32 steps rather than 8: codes worth embedding

    def __post_init__(self):
        if self.dirichlet_alpha < 0:
            raise ConfigError(f"dirichlet_alpha {self.dirichlet_alpha} must be > 0, or 0 to "
                              "leave the Dirichlet row out")
        if self.seeds < 1 or self.fid_samples < 10:
            raise ConfigError(f"seeds {self.seeds} must be >= 1 and fid_samples "
                              f"{self.fid_samples} >= 10")
        if self.prdc_k < 1 or self.prdc_samples <= self.prdc_k:
            raise ConfigError(f"prdc_k {self.prdc_k} must be >= 1 and prdc_samples "
                              f"{self.prdc_samples} larger than it")
        if self.embedding not in ("pca", "tsne"):
            raise ConfigError(f"embedding '{self.embedding}' must be pca or tsne")
        if self.fid_features not in ("auto", "neutral", "inception"):
            raise ConfigError(f"fid_features '{self.fid_features}' must be auto, neutral or "
                              "inception")
        if not 0 < self.copy_quantile < 0.5:
            raise ConfigError(f"copy_quantile {self.copy_quantile} must be in (0, 0.5)")
        if not self.blend_ratios or any(not 0 <= r <= 1 for r in self.blend_ratios):
            raise ConfigError(f"blend_ratios {self.blend_ratios} must be values in [0, 1]")
        if self.autoencoder_epochs < 0 or self.autoencoder_images < 2:
            raise ConfigError(f"autoencoder_epochs {self.autoencoder_epochs} must be >= 0 (0 "
                              f"leaves the contrast out) and autoencoder_images "
                              f"{self.autoencoder_images} >= 2")
        if self.seed < 0:
            raise ConfigError(f"seed {self.seed} must be >= 0")
        if any(n < 2 for n in self.n_parents) or not self.n_parents:
            raise ConfigError(f"n_parents {self.n_parents}: every convex mix needs >= 2 parents")
        for name in ("num_generated", "max_generated", "novelty_samples", "match_samples",
                     "acceptance_per_class", "interpolation_classes", "overlay_per_n",
                     "embedding_points", "neutral_epochs", "neutral_batch_size",
                     "autoencoder_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)} must be >= 1")


# the report folder


def read_train_results(folders: list[str | Path]) -> list[dict]:
    """The metrics of jobs/train_on_generated.py result folders, checked, for the report."""
    rows = []
    for f in folders:
        path = Path(f) / "metrics.json"
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"--train-on-generated {f}: no readable metrics.json ({e}); "
                                    "pass a folder written by jobs/train_on_generated.py") from None
        if m.get("kind") != "train-on-generated":
            raise ValueError(f"--train-on-generated {f} is not a jobs/train_on_generated.py "
                             "result")
        # results of the one-seed protocol before 2026-12-05 kept "history" at the top level
        history = m["per_seed"][0]["history"] if "per_seed" in m else m["history"]
        rows.append({"folder": str(Path(f).resolve()), "name": Path(f).name,
                     "test_accuracy": m["test_accuracy"], "network": m["network"],
                     "test_accuracy_std": m.get("test_accuracy_std"),
                     "val_accuracy": m.get("val_accuracy"), "seeds": m.get("seeds", 1),
                     "finetune_epochs": 0, "generated_weight": 1.0, **m["trained_on"],
                     "epochs": len(history)})
    return rows


def prepare_report_dir(out: Path, *, overwrite: bool) -> None:
    """Create `out`, or reuse it if it is empty or an earlier report; never delete anything."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        try:
            earlier = json.loads((out / METRICS_FILE).read_text()).get("kind") == REPORT_KIND
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise FileExistsError(
                f"--out {out} is a non-empty folder that is not an earlier evaluation report; "
                "choose a new or empty folder, or pass --overwrite to write into it anyway")
    out.mkdir(parents=True, exist_ok=True)


# the stages, in order


@dataclass
class Results:
    """Every stage's result, in the order `measure` computes them."""

    inputs: Inputs
    neutral: NeutralResult
    generations: GeneratedSet
    scores: Scores
    fid: FidResult
    fidelity: FidelityResult
    novelty: NoveltyResult
    acceptance: dict  # n -> per-class acceptance of each filter step
    blends: BlendResult
    autoencoder: AutoencoderResult | None  # None with autoencoder_epochs 0
    pictures: FigureData
    streams: dict[str, int]  # stage -> the seed of its random stream
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


class Laps:
    """Seconds per stage: `laps("fid_s")` ends the stage running since the last call."""

    def __init__(self):
        self.start = self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.t0 = round(now - self.t0, 3), now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def measure(run_dir: Path, cfg: EvalConfig, generated: str | Path | None, dev: torch.device,
            neutral_folder: Path) -> Results:
    """Every stage of the evaluation, in order, each drawing from its own random stream."""
    streams, lap = Streams(cfg.seed), Laps()
    inp = load_inputs(run_dir, cfg.data_root, dev)  # the run, its data and generator
    lap("load_s")
    neutral = neutral_stage(inp, cfg, dev, neutral_folder)  # the neutral judge
    lap("neutral_s")
    gset = generations_stage(inp, cfg, generated, streams)
    lap("generations_s")
    scores = score_stage(neutral, gset, inp, dev)  # neutral accuracy (Fig. 4a)
    lap("neutral_scoring_s")
    fid = fid_stage(neutral, inp, gset, cfg, dev, streams)  # FID (Table 1)
    lap("fid_s")
    fidelity = fidelity_stage(fid.sets, {k: r["name"] for k, r in fid.rows.items()},
                              fid.features, cfg, dev, streams)  # realism and coverage apart
    lap("fidelity_s")
    nov = novelty_stage(neutral, inp, gset, cfg, dev, streams)  # novelty (Fig. 6)
    lap("novelty_s")
    ns = sorted({int(n) for n in gset.n_parents}) if gset.n_parents is not None else []
    acceptance = acceptance_stage(inp.gen, ns or cfg.n_parents, cfg.acceptance_per_class,
                                  streams, weights=gset.weights or "uniform")
    lap("acceptance_s")
    blends = blend_stage(neutral, inp, fid, cfg, dev, streams)  # blends (Fig. 7b)
    lap("blends_s")
    ae = autoencoder_stage(inp, cfg, dev, streams) if cfg.autoencoder_epochs else None
    lap("autoencoder_s")
    pictures = figure_data_stage(inp.gen, inp.data, gset, cfg, streams)
    lap("figure_data_s")
    return Results(inp, neutral, gset, scores, fid, fidelity, nov, acceptance, blends, ae,
                   pictures, streams.used, lap.seconds)


def metrics_of(r: Results, cfg: EvalConfig, dev: torch.device, trained: list[dict],
               figures: list[Figure], warnings: list[str]) -> dict:
    """metrics.json: what every stage measured, with the evaluation's config and machine."""
    inp, gset, ae = r.inputs, r.generations, r.autoencoder
    return {
        "kind": REPORT_KIND,
        "run": str(inp.run_dir.resolve()),
        "dataset": inp.data_cfg.dataset,
        "class_names": inp.data.class_names,
        "generated": {"source": gset.source, "evaluated": len(gset), "available": gset.total_rows},
        "device": str(dev),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "torch_threads": torch.get_num_threads(),
        "config": to_dict(cfg),
        "random_streams": r.streams,
        "neutral": {"architecture": f"ResNet-{cfg.neutral_depth} v1 (width {cfg.neutral_width})",
                    "folder": str(r.neutral.folder.resolve()), **r.neutral.metrics},
        "generation_accuracy": r.scores.generations,
        "reference_accuracy": r.scores.reference,
        "fid": {"features": r.fid.features.name, "features_note": r.fid.features.note,
                "rows": r.fid.rows},
        "fidelity": {"features": r.fidelity.features, "nearest_k": r.fidelity.nearest_k,
                     "rows": r.fidelity.rows},
        "novelty": r.novelty.summary | {"closest_matches": r.novelty.matches,
                                        "copy_quantile": cfg.copy_quantile},
        "acceptance": {"per_class": r.acceptance,
                       "run_metrics": inp.run_metrics.get("acceptance", {})},
        "blends": {"features": r.blends.features, "rows": r.blends.rows},
        "train_on_generated": trained,
        "autoencoder": None if ae is None else {
            "test_mae": ae.test_mae, "test_ssim": ae.test_ssim,
            "initial_test_mae": ae.initial_test_mae, "images": ae.images,
            "epochs": ae.epochs, "seconds": round(ae.seconds, 3),
            "run_test_mae": inp.run_metrics.get("recon_test_mae"),
            "run_test_ssim": inp.run_metrics.get("recon_test_ssim")},
        "warnings": warnings,
        "timings": r.timings,
        "figures": [f.key for f in figures],
    }


def write_report(out: Path, metrics: dict, figures: list[Figure], title: str) -> None:
    """figures/<key>.png, report.html and (last) metrics.json into `out`."""
    (out / FIGURES_DIR).mkdir(exist_ok=True)
    for f in figures:
        atomic_write_bytes(out / FIGURES_DIR / f"{f.key}.png", f.png)
    atomic_write_bytes(out / REPORT_FILE, render_html(
        title, intro(metrics), tables(metrics), figures, metrics["warnings"],
        footer=f"{REPORT_KIND}; timings (s) {metrics['timings']}"))
    save_json(metrics, out / METRICS_FILE)


# the whole evaluation


def evaluate(run_dir: str | Path, out: str | Path, cfg: EvalConfig | None = None, *,
             generated: str | Path | None = None, device: str = "auto",
             overwrite: bool = False, neutral_cache: str | Path | None = None,
             allow_partial: bool = False, allow_other_run: bool = False,
             train_results: list[str | Path] | None = None) -> dict:
    """Measure a run's generations and write metrics.json, report.html and figures/ to `out`.

    Args:
        run_dir: a jobs/train.py run folder (only read).
        out: the report folder.
        cfg: what to measure and how much.
        generated: a jobs/mass_generate.py output folder (local, s3://, gs://); None samples
            generations in-process.
        device: 'auto', 'cpu' or 'cuda[:i]'.
        overwrite: write into a non-empty folder that is not an earlier report.
        neutral_cache: folder caching the neutral classifier (default: OUT/neutral; share one
            between reports to train it once).
        allow_partial, allow_other_run: accept a --generated folder without summary.json, or
            made from other checkpoints (regene_ray.generated.GeneratedFolder.check).
        train_results: jobs/train_on_generated.py result folders to tabulate (CAS, low data).
    Returns:
        The metrics written to out/metrics.json.
    """
    cfg = cfg or EvalConfig()
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / RUN_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"--run {run_dir} is not a run folder (no {RUN_CONFIG_FILE}); train one with "
            f"jobs/train.py --out {run_dir}")
    if generated is not None:
        GeneratedFolder(generated).check(run_dir, allow_partial=allow_partial,
                                         allow_other_run=allow_other_run)
    trained = read_train_results(train_results or [])
    prepare_report_dir(out, overwrite=overwrite)
    dev = resolve_device(device)
    r = measure(run_dir, cfg, generated, dev,
                Path(neutral_cache) if neutral_cache is not None else out / NEUTRAL_DIR)
    t0 = time.perf_counter()
    figures, figure_warnings = report_figures(cfg, r)
    r.timings["figures_s"] = round(time.perf_counter() - t0, 3)
    r.timings["total_s"] = round(sum(r.timings.values()), 3)
    warnings = [w for w in (r.neutral.warning, r.fid.warning) if w] + figure_warnings
    for w in warnings:
        log.warning(w)
    metrics = metrics_of(r, cfg, dev, trained, figures, warnings)
    write_report(out, metrics, figures,
                 f"ReGene evaluation: {run_dir.name} ({r.inputs.data_cfg.dataset})")
    fid = r.fid.rows["org_vs_gen"]
    log.info("evaluation: neutral test acc %.4f, generations %.4f; FID org-gen %.3g +- %.2g (%s); "
             "copies %.3f (pixel); report %s in %.0fs", r.neutral.metrics["test_accuracy"],
             r.scores.generations["overall"], fid["mean"], fid["std"], r.fid.features.name,
             r.novelty.summary["pixel"]["copy_fraction"], out / REPORT_FILE,
             r.timings["total_s"])
    return metrics
