"""Evaluation of a run's generations, the way the paper measures them, into one report folder.

    run folder (+ generated Parquet, or an in-process sample)
      -> neutral classifier (ResNet v1, trained from scratch, cached in OUT/neutral/ or
         --neutral-cache; the run folder is only read)
      -> neutral accuracy of generations overall / per class / per n      (paper Fig. 4a)
      -> FID Org vs Gen, Org vs Recon, Recon vs Gen, mean +- std over seeds (paper Table 1)
      -> novelty: nearest training images, copy flags, near-duplicates     (paper Fig. 6)
      -> pictures: interpolation strips (Fig. 5), parents overlays, closest matches,
         latent embedding with convex paths (Fig. 3), acceptance per class and step
      -> REPORT_DIR/metrics.json, REPORT_DIR/report.html (self-contained), REPORT_DIR/figures/

Terms: Org = real training images; Recon = decoder(encoder(real training images));
Gen = accepted convex generations.
"""

from __future__ import annotations

import io
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from regene_ray.config import ConfigError, save_json, to_dict
from regene_ray.data import DataSplits, load_data
from regene_ray.evaluation import figures as figs
from regene_ray.evaluation.fid import (
    FeatureNet,
    NeutralFeatures,
    choose_feature_net,
    extract_features,
    fid_table,
)
from regene_ray.evaluation.neutral import (
    NEUTRAL_DIR,
    NeutralTrainConfig,
    ResNetConfig,
    load_or_train_neutral,
    score_generations,
)
from regene_ray.evaluation.novelty import nearest_ssim, novelty
from regene_ray.evaluation.report import Figure, Table, render_html
from regene_ray.generator import ConvexGenerator, measure_acceptance, to_uint8
from regene_ray.run import METRICS_FILE, RUN_CONFIG_FILE, load_run_config
from regene_ray.storage import atomic_write_bytes
from regene_ray.train import resolve_device

log = logging.getLogger(__name__)

REPORT_KIND = "regene-ray evaluation v1"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
FID_ROWS = {  # key -> (paper's row name, real side, generated side)
    "org_vs_gen": ("Org vs Gen", "org", "gen"),
    "org_vs_recon": ("Org vs Recon", "org", "recon"),
    "recon_vs_gen": ("Recon vs Gen", "recon", "gen"),
    "org_vs_org": ("Org vs Org (sampling floor)", "org", "org"),
}
INTERPOLATION_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class EvalConfig:
    neutral_depth: int = 20  # ResNet depth 6n + 2 (56 in the paper; 20 trains on a CPU)
    neutral_width: int = 16  # first-stage channels of the ResNet (16 as in the paper)
    neutral_epochs: int = 10  # epochs of neutral training on the real training split
    neutral_batch_size: int = 128  # images per neutral training step
    seeds: int = 3  # sampling seeds for FID mean +- std
    fid_samples: int = 2000  # images per side and seed in each FID (capped by the set sizes)
    n_parents: list[int] = field(default_factory=lambda: [2, 3, 5])  # in-process sample's n
    num_generated: int = 3000  # in-process sample size (split over n_parents) without --generated
    max_generated: int = 20000  # rows read from --generated (a seeded subset beyond this)
    novelty_samples: int = 500  # generations (and as many test images) in the copy analysis
    match_samples: int = 8  # generations shown with their closest training images (SSIM search)
    copy_quantile: float = 0.01  # copy threshold = this quantile of test-to-train NN distances
    acceptance_per_class: int = 100  # candidates per class and n for the acceptance chart
    interpolation_classes: int = 4  # rows of the interpolation figure
    overlay_per_n: int = 6  # generation/parents pairs per n
    embedding: str = "pca"  # pca (convex paths stay straight) or tsne
    embedding_points: int = 2000  # latent codes drawn in the embedding
    fid_features: str = "auto"  # auto (Inception if its weights are local), neutral, inception
    inception_weights: str | None = None  # explicit FID Inception weights file
    data_root: str | None = None  # overrides the run config's data_root
    seed: int = 0  # all sampling in the evaluation

    def __post_init__(self):
        if self.seeds < 1 or self.fid_samples < 10:
            raise ConfigError(f"seeds {self.seeds} must be >= 1 and fid_samples "
                              f"{self.fid_samples} >= 10")
        if self.embedding not in ("pca", "tsne"):
            raise ConfigError(f"embedding '{self.embedding}' must be pca or tsne")
        if self.fid_features not in ("auto", "neutral", "inception"):
            raise ConfigError(f"fid_features '{self.fid_features}' must be auto, neutral or "
                              "inception")
        if not 0 < self.copy_quantile < 0.5:
            raise ConfigError(f"copy_quantile {self.copy_quantile} must be in (0, 0.5)")
        if any(n < 2 for n in self.n_parents) or not self.n_parents:
            raise ConfigError(f"n_parents {self.n_parents}: every convex mix needs >= 2 parents")
        for name in ("num_generated", "max_generated", "novelty_samples", "match_samples",
                     "acceptance_per_class", "interpolation_classes", "overlay_per_n",
                     "embedding_points", "neutral_epochs", "neutral_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)} must be >= 1")


# generated images


@dataclass
class GeneratedSet:
    """Generations to evaluate, row-aligned."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64 intended class
    n_parents: np.ndarray | None  # (N,) int64, None when unknown
    parent_ids: list[np.ndarray] | None  # latent-bank ids per row, None when unknown
    source: str  # "parquet:<folder>" or "in-process"
    total_rows: int  # rows available before subsampling

    def __len__(self) -> int:
        return len(self.labels)


def _parquet_files(folder: Path) -> list[Path]:
    """Every *.parquet under `folder`, skipping names starting with '.' or '_' at any level."""
    return sorted(
        p for p in folder.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts))


def decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> uint8 (C, H, W)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im)
    except Exception as e:  # PIL raises many types for bad bytes
        raise ValueError(f"{where}: image bytes are not a readable PNG ({type(e).__name__}); "
                         "regenerate the folder with jobs/mass_generate.py") from e
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_generated(folder: str | Path, *, max_images: int = 20000, seed: int = 0
                   ) -> GeneratedSet:
    """Read mass generation's Parquet output (all *.parquet under `folder`, recursively).

    Columns used: label and image {bytes, path} (required); n_parents and parent_ids (optional).
    Beyond `max_images` rows, a seeded random subset is read (only its images are decoded).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--generated {folder} does not exist; pass the --out folder of "
                                "jobs/mass_generate.py, or leave --generated out to sample "
                                "generations in-process")
    files = _parquet_files(folder)
    if not files:
        raise ValueError(f"--generated {folder} holds no Parquet files; pass the --out folder of "
                         "a finished jobs/mass_generate.py run")
    metas, counts = [], []
    for f in files:
        try:
            names = pq.read_schema(f).names
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"--generated: {f} is not a readable Parquet file ({e})") from e
        missing = {"label", "image"} - set(names)
        if missing:
            raise ValueError(f"--generated: {f} lacks column(s) {sorted(missing)}; expected mass "
                             "generation's schema (id, label, parent_ids, weights, ..., image)")
        cols = [c for c in ("label", "n_parents", "parent_ids") if c in names]
        t = pq.read_table(f, columns=cols)
        metas.append(t)
        counts.append(t.num_rows)
    total = int(sum(counts))
    if total == 0:
        raise ValueError(f"--generated {folder}: the Parquet files hold no rows")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(total)[:max_images]) if total > max_images else np.arange(total)
    starts = np.concatenate([[0], np.cumsum(counts)])
    images, labels, n_par, parents = [], [], [], []
    has_n = all("n_parents" in t.column_names or "parent_ids" in t.column_names for t in metas)
    has_parents = all("parent_ids" in t.column_names for t in metas)
    for f, t, lo, hi in zip(files, metas, starts[:-1], starts[1:], strict=True):
        local = keep[(keep >= lo) & (keep < hi)] - lo
        if len(local) == 0:
            continue
        idx = pa.array(local)
        img = pq.read_table(f, columns=["image"]).column("image").take(idx).combine_chunks()
        raw = img.field("bytes").to_pylist() if pa.types.is_struct(img.type) else img.to_pylist()
        images += [decode_png(b, f"{f} row {int(r)}") for b, r in zip(raw, local, strict=True)]
        labels.append(t.column("label").take(idx).to_numpy().astype(np.int64))
        if has_parents:
            parents += [np.asarray(p, np.int64) for p in t.column("parent_ids").take(idx).to_pylist()]
        if "n_parents" in t.column_names:
            n_par.append(t.column("n_parents").take(idx).to_numpy().astype(np.int64))
        elif has_n:
            n_par.append(np.array([len(p) for p in t.column("parent_ids").take(idx).to_pylist()]))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"--generated {folder}: images have mixed shapes {sorted(shapes)}")
    log.info("read %d of %d generated rows from %d Parquet file(s) under %s", len(images), total,
             len(files), folder)
    return GeneratedSet(
        images=torch.from_numpy(np.stack(images)), labels=np.concatenate(labels),
        n_parents=np.concatenate(n_par) if has_n else None,
        parent_ids=parents if has_parents else None, source=f"parquet:{folder}",
        total_rows=total)


def generate_sample(gen: ConvexGenerator, count: int, n_parents: list[int], seed: int
                    ) -> GeneratedSet:
    """About `count` accepted generations, split evenly over `n_parents`, classes balanced."""
    per_n = max(1, count // len(n_parents))
    imgs, labels, ns, parents = [], [], [], []
    for k in n_parents:
        classes = np.asarray(gen.eligible_classes(k), dtype=np.int64)
        if len(classes) == 0:
            log.warning("in-process sample: no class has %d eligible parents; n = %d left out", k, k)
            continue
        have, start, rate = 0, 0, 0.5
        for _ in range(8):
            if have >= per_n:
                break
            B = int(math.ceil((per_n - have) / max(rate, 0.02) * 1.2)) + len(classes)
            ids = np.arange(start, start + B, dtype=np.int64) + k * 1_000_000_000
            b = gen(classes[np.arange(start, start + B) % len(classes)], n_parents=k,
                    seed=seed, ids=ids)
            rate = max(float(b.accepted.mean()), 0.02)
            b = b.accepted_only()
            take = min(len(b), per_n - have)
            imgs.append(b.images[:take])
            labels.append(b.labels[:take])
            ns.append(b.n_parents[:take])
            parents += [row[:k] for row in b.parent_ids[:take]]
            have += take
            start += B
        if have < per_n:
            log.warning("in-process sample: only %d of %d accepted generations for n = %d",
                        have, per_n, k)
    if not imgs:
        raise ValueError("the run's generator accepted no generations; check thresholds.json")
    labels_all = np.concatenate(labels)
    log.info("in-process sample: %d accepted generations for n = %s", len(labels_all), n_parents)
    return GeneratedSet(images=torch.from_numpy(np.concatenate(imgs)), labels=labels_all,
                        n_parents=np.concatenate(ns), parent_ids=parents, source="in-process",
                        total_rows=len(labels_all))


# measurements


@torch.no_grad()
def reconstruct(gen: ConvexGenerator, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """decoder(encoder(x)) for uint8 images (N, C, H, W), as uint8 (what a generation is)."""
    out = []
    for xb in torch.split(x, batch_size):
        z = gen.classifier.encode(xb.to(gen.device).float() / 255.0)  # (B, latent_dim)
        out.append(to_uint8(gen.decoder(z)).cpu())
    return torch.cat(out)


def acceptance_per_class(gen: ConvexGenerator, n_parents: list[int], per_class: int,
                         seed: int) -> dict:
    """Fraction of candidates kept by step 1 and by both steps, per class, for each n
    (generator.measure_acceptance, the same measurement jobs/train.py records)."""
    return {str(n): measure_acceptance(gen, n, per_class, seed=seed)["per_class"]
            | {"candidates_per_class": per_class} for n in n_parents}


def interpolation_rows(gen: ConvexGenerator, data: DataSplits, n_rows: int, seed: int
                       ) -> list[dict]:
    """Two same-class parents per row and their decoded mixes at INTERPOLATION_RATIOS."""
    classes = gen.eligible_classes(2)
    if not classes:
        return []
    pick = [classes[i] for i in np.linspace(0, len(classes) - 1, min(n_rows, len(classes)))
            .round().astype(int)]
    labels = np.asarray(sorted(set(pick)), dtype=np.int64)
    ids = np.arange(len(labels), dtype=np.int64) + 3_000_000_000
    mixes, accepted, parents = [], [], None
    for r in INTERPOLATION_RATIOS:
        b = gen(labels, n_parents=2, weights=f"{1 - r:.6f},{r:.6f}", seed=seed, ids=ids,
                filter=False)
        mixes.append(b.images)
        accepted.append(b.accepted)
        parents = b.parent_ids[:, :2]
    rows = []
    for i, c in enumerate(labels):
        a, bb = (int(p) for p in parents[i])
        rows.append({"name": data.class_names[c], "left": data.train_x[a].numpy(),
                     "right": data.train_x[bb].numpy(),
                     "mixes": np.stack([m[i] for m in mixes]),
                     "accepted": [bool(a_[i]) for a_ in accepted]})
    return rows


def overlay_groups(generated: GeneratedSet, train_x: torch.Tensor, per_n: int) -> list[dict]:
    """Per n: the first `per_n` generations and the pixel mean of their parents' real images."""
    if generated.parent_ids is None:
        return []
    ns = generated.n_parents if generated.n_parents is not None else np.array(
        [len(p) for p in generated.parent_ids])
    groups = []
    for k in sorted(set(ns.tolist())):
        rows = np.flatnonzero(ns == k)[:per_n]
        gens, overlays = [], []
        for r in rows:
            p = generated.parent_ids[r]
            if len(p) == 0 or p.max() >= len(train_x) or p.min() < 0:
                continue
            gens.append(generated.images[r].numpy())
            overlays.append(train_x[torch.from_numpy(p)].float().mean(0).round().to(torch.uint8)
                            .numpy())
        if gens:
            groups.append({"n": int(k), "gens": gens, "overlays": overlays})
    return groups


def latent_embedding(gen: ConvexGenerator, class_names: list[str], points: int, method: str,
                     seed: int) -> bytes:
    """Embed bank codes in 2-D with a few convex paths (pairs) and one triangle (n = 3)."""
    rng = np.random.default_rng(seed)
    bank = gen.bank
    rows = rng.permutation(len(bank))[:points]
    z, labels = bank.latents[rows], bank.labels[rows]
    paths = []  # each (P, D); vertices are rows 0 and P-1, or every 11th row of the triangle
    t = np.linspace(0, 1, 11)[:, None]
    for c in gen.eligible_classes(3)[:3]:
        pool = gen.pools[c]
        a, b = bank.latents[rng.choice(pool, 2, replace=False)]
        paths.append((1 - t) * a + t * b)  # (11, D) a two-parent path
    if paths:
        c = gen.eligible_classes(3)[-1]
        a, b, d = bank.latents[rng.choice(gen.pools[c], 3, replace=False)]
        paths.append(np.concatenate([(1 - t) * a + t * b, (1 - t) * b + t * d,
                                     (1 - t) * d + t * a]))  # a triangle: n = 3 hull
    allz = np.concatenate([z] + paths) if paths else z
    if method == "tsne":
        from sklearn.manifold import TSNE

        emb = TSNE(2, init="pca", random_state=seed,
                   perplexity=float(min(30, max(5, len(allz) // 4)))).fit_transform(allz)
        name = "t-SNE"
    else:
        from sklearn.decomposition import PCA

        emb = PCA(2, random_state=seed).fit(z).transform(allz)
        name = "PCA"
    pts, off, out_paths = emb[: len(z)], len(z), []
    for p in paths:
        out_paths.append(emb[off: off + len(p)])
        off += len(p)
    vertices = [np.array([0, len(p) - 1]) for p in out_paths]
    if len(out_paths) > 1:
        vertices[-1] = np.array([0, 11, 22])
    return figs.latent_embedding(pts, labels, class_names, out_paths, name, vertices)


def closest_training_matches(gens: torch.Tensor, positions: np.ndarray, train_x: torch.Tensor,
                             nov: dict, flagged: set) -> list[dict]:
    """Nearest training image of each chosen generation by MSE and features (from `nov`) and
    by SSIM (an exhaustive search here).

    Args:
        gens: uint8 (G, C, H, W), the generations `nov` was computed on.
        positions: rows of `gens` to describe.
        train_x: uint8 training images.
        nov: novelty() output (still holding gen_nearest / gen_distances).
        flagged: rows of `gens` flagged as likely copies.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return []
    ssim_s, ssim_i = nearest_ssim(gens[torch.from_numpy(positions)], train_x)
    out = []
    for j, i in enumerate(positions.tolist()):
        out.append({
            "position": i,
            "mse": {"train_index": int(nov["pixel"]["gen_nearest"][i]),
                    "distance": float(nov["pixel"]["gen_distances"][i])},
            "ssim": {"train_index": int(ssim_i[j]), "ssim": float(ssim_s[j])},
            "feature": {"train_index": int(nov["feature"]["gen_nearest"][i]),
                        "distance": float(nov["feature"]["gen_distances"][i])},
            "flagged": i in flagged,
        })
    return out


# report folder


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


_write = atomic_write_bytes  # every report file: the project's one atomic write


# the whole evaluation


def check_generated(generated: str | Path, run_dir: Path, *, allow_partial: bool = False,
                    allow_other_run: bool = False) -> None:
    """Refuse a --generated folder that is not a finished mass generation of this run: without
    summary.json it is partial (a job still running, or killed), and generations made from other
    checkpoints say nothing about this run. The flags accept them knowingly."""
    from regene_ray.mass import DATA_DIR, JOB_FILE, SUMMARY_FILE, count_rows, run_hashes

    folder = Path(generated)
    if not folder.is_dir() or not _parquet_files(folder):
        read_generated(folder)  # raises the reader's error before anything is written
    if not allow_partial:
        try:
            requested = json.loads((folder / SUMMARY_FILE).read_text())["requested"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(
                f"--generated {folder} has no {SUMMARY_FILE}: it is not a finished "
                "jobs/mass_generate.py output (complete it with --resume), or pass "
                "--allow-partial to evaluate whatever rows it holds") from None
        rows = count_rows(folder)
        if rows != requested:
            raise ValueError(
                f"--generated {folder} holds {rows} rows where its {SUMMARY_FILE} promises "
                f"{requested}: files were removed or added since it finished. Complete it with "
                "jobs/mass_generate.py --resume, or pass --allow-partial")
    try:
        made_by = json.loads((folder / JOB_FILE).read_text())["checkpoint_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        made_by = None
    if made_by is None:  # a bare folder of Parquet files: the footers may still say
        from regene_ray.mass.sinks import read_metadata

        files = sorted((folder / DATA_DIR).glob("*.parquet")) or _parquet_files(folder)
        try:
            made_by = read_metadata(files[0]).get("checkpoint_sha256")
        except (OSError, ValueError, pa.ArrowException):
            made_by = None
    if made_by != run_hashes(run_dir) and not allow_other_run:
        why = "were made from other checkpoints than" if made_by else \
            "carry no record of the checkpoints that made them, so may not come from"
        raise ValueError(
            f"--generated {folder}: its generations {why} --run {run_dir}; pass the run that "
            "made them, or --allow-other-run to evaluate them against this run anyway")


def evaluate(run_dir: str | Path, out: str | Path, cfg: EvalConfig | None = None, *,
             generated: str | Path | None = None, device: str = "auto",
             overwrite: bool = False, neutral_cache: str | Path | None = None,
             allow_partial: bool = False, allow_other_run: bool = False) -> dict:
    """Measure a run's generations and write metrics.json, report.html and figures/ to `out`.

    Args:
        run_dir: a jobs/train.py run folder (its neutral/ sub-folder caches the neutral model).
        out: the report folder.
        cfg: what to measure and how much.
        generated: jobs/mass_generate.py output; None samples generations in-process.
        device: 'auto', 'cpu' or 'cuda[:i]'.
        overwrite: write into a non-empty folder that is not an earlier report.
        neutral_cache: folder caching the neutral classifier (default: OUT/neutral; share one
            between reports to train it once). The run folder is only read.
        allow_partial, allow_other_run: accept a --generated folder without summary.json, or
            made from other checkpoints (see check_generated).
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
        check_generated(generated, run_dir, allow_partial=allow_partial,
                        allow_other_run=allow_other_run)
    prepare_report_dir(out, overwrite=overwrite)
    neutral_dir = Path(neutral_cache) if neutral_cache is not None else out / NEUTRAL_DIR
    dev = resolve_device(device)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t0 = time.perf_counter()
    run_cfg = load_run_config(run_dir / RUN_CONFIG_FILE)
    data_cfg = run_cfg.data
    if cfg.data_root is not None:
        data_cfg.data_root = cfg.data_root
    data = load_data(data_cfg)
    gen = ConvexGenerator.from_run(run_dir, device=dev)
    if len(gen.bank) != len(data.train_x):
        raise ValueError(f"latent bank of {run_dir} has {len(gen.bank)} codes but the run's data "
                         f"gives {len(data.train_x)} training images; pass the --data-root the "
                         "run was trained with")
    run_metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (
        run_dir / METRICS_FILE).is_file() else {}
    t0 = lap("load_s", t0)

    # 1. neutral classifier
    ncfg = ResNetConfig(depth=cfg.neutral_depth, width=cfg.neutral_width,
                        in_channels=data.channels, num_classes=data.num_classes)
    tcfg = NeutralTrainConfig(epochs=cfg.neutral_epochs, batch_size=cfg.neutral_batch_size,
                              seed=cfg.seed)
    identity = {k: v for k, v in to_dict(data_cfg).items() if k != "data_root"}
    neutral, neutral_metrics = load_or_train_neutral(neutral_dir, data, ncfg, tcfg, dev,
                                                     identity)
    run_acc = run_metrics.get("test_accuracy")
    if neutral_metrics["test_accuracy"] < 0.9 or (
            run_acc is not None and neutral_metrics["test_accuracy"] < run_acc - 0.05):
        msg = (f"the neutral classifier reaches only {neutral_metrics['test_accuracy']:.3f} test "
               f"accuracy (the run's classifier: {run_acc}); its scores and FID features are "
               "unreliable; train it longer with --neutral-epochs or a smaller "
               "--neutral-batch-size")
        log.warning(msg)
        warnings.append(msg)
    t0 = lap("neutral_s", t0)

    # 2. the generations
    if generated is not None:
        gset = read_generated(generated, max_images=cfg.max_generated, seed=cfg.seed)
        shape = (gen.decoder.cfg.out_channels, gen.decoder.cfg.image_size,
                 gen.decoder.cfg.image_size)
        if tuple(gset.images.shape[1:]) != shape:
            raise ValueError(f"--generated images are {tuple(gset.images.shape[1:])} but run "
                             f"{run_dir} makes {shape}; pass the run the images came from")
        if gset.labels.min() < 0 or gset.labels.max() >= data.num_classes:
            raise ValueError(f"--generated labels span {gset.labels.min()}..{gset.labels.max()} "
                             f"but run {run_dir} has {data.num_classes} classes")
    else:
        gset = generate_sample(gen, cfg.num_generated, cfg.n_parents, cfg.seed)
    t0 = lap("generations_s", t0)

    # 3. neutral accuracy (Fig. 4a), with real and reconstructed test images as references
    score = score_generations(neutral, gset.images, gset.labels, gset.n_parents,
                              data.num_classes, dev)
    recon_test = reconstruct(gen, data.test_x)
    reference = {
        "real_test": score_generations(neutral, data.test_x, data.test_y.numpy(), None,
                                       data.num_classes, dev)["overall"],
        "reconstructed_test": score_generations(neutral, recon_test, data.test_y.numpy(), None,
                                                data.num_classes, dev)["overall"],
    }
    t0 = lap("neutral_scoring_s", t0)

    # 4. FID (Table 1)
    allow = cfg.fid_features != "neutral"
    if cfg.fid_features == "inception" and cfg.inception_weights is None:
        from regene_ray.evaluation.fid import find_inception_weights

        path, why = find_inception_weights(None)
        if path is None:
            raise FileNotFoundError(f"--fid-features inception: {why}; pass --inception-weights")
    feat_net = choose_feature_net(neutral, cfg.inception_weights, allow_inception=allow)
    if cfg.fid_features == "inception" and not feat_net.name.startswith("inception"):
        raise ValueError(f"--fid-features inception asked for, but {feat_net.note}")
    rng = np.random.default_rng(cfg.seed)
    pool = min(len(data.train_x), 3 * cfg.fid_samples)
    org = data.train_x[torch.from_numpy(np.sort(rng.permutation(len(data.train_x))[:pool]))]
    recon = reconstruct(gen, data.train_x[torch.from_numpy(
        np.sort(rng.permutation(len(data.train_x))[:pool]))])
    fid_rows = fid_table({"org": org, "recon": recon, "gen": gset.images},
                         [v[1:] for v in FID_ROWS.values()], cfg.seeds, cfg.fid_samples,
                         feat_net, dev, base_seed=cfg.seed)
    if not feat_net.name.startswith("inception"):
        warnings.append(f"FID uses {feat_net.name} features ({feat_net.note}); these numbers are "
                        "not comparable with the paper's Inception FIDs, only with each other.")
    t0 = lap("fid_s", t0)

    # 5. novelty (Fig. 6)
    nov_rows = np.sort(rng.permutation(len(gset))[: cfg.novelty_samples])
    test_rows = np.sort(rng.permutation(len(data.test_x))[: cfg.novelty_samples])
    g_nov = gset.images[torch.from_numpy(nov_rows)]
    neutral_net = FeatureNet(f"neutral-resnet{cfg.neutral_depth}", NeutralFeatures(neutral),
                             neutral.num_features)

    def feats(x: torch.Tensor) -> torch.Tensor:
        return extract_features(neutral_net, x, dev).float()

    nov = novelty(g_nov, data.test_x[torch.from_numpy(test_rows)], data.train_x, feats,
                  cfg.copy_quantile, gen_labels=gset.labels[nov_rows],
                  test_labels=data.test_y.numpy()[test_rows])
    q = min(cfg.match_samples, len(g_nov))
    flagged = set(nov["pixel"]["flagged"]) | set(nov["feature"]["flagged"])
    pix_d = np.asarray(nov["pixel"]["gen_distances"])
    picks = {  # positions in g_nov: a random sample, and the generations closest to training
        "random": rng.permutation(len(g_nov))[:q],
        "closest": np.argsort(pix_d, kind="stable")[:q],
    }
    matches = {k: closest_training_matches(g_nov, v, data.train_x, nov, flagged)
               for k, v in picks.items()}
    for ms in matches.values():
        for m in ms:
            m["generation_row"] = int(nov_rows[m["position"]])
            m["label"] = int(gset.labels[m["generation_row"]])
    for name in ("pixel", "feature"):
        rows_f = nov_rows[np.asarray(nov[name]["flagged"], dtype=np.int64)]
        nov[name]["flagged_per_class"] = {
            str(c): int((gset.labels[rows_f] == c).sum()) for c in range(data.num_classes)}
        if gset.n_parents is not None:
            nov[name]["flagged_per_n"] = {
                str(int(k)): int((gset.n_parents[rows_f] == k).sum())
                for k in np.unique(gset.n_parents)}
    t0 = lap("novelty_s", t0)

    # 6. acceptance per class and step
    ns_present = sorted({int(n) for n in gset.n_parents}) if gset.n_parents is not None else []
    acc_ns = ns_present or cfg.n_parents
    acceptance = acceptance_per_class(gen, acc_ns, cfg.acceptance_per_class, cfg.seed)
    t0 = lap("acceptance_s", t0)

    # 7. pictures
    figures = [
        Figure("neutral_accuracy", "Neutral classifier accuracy on generations (paper Fig. 4a)",
               f"Fraction of {len(gset)} generations that the neutral ResNet-{cfg.neutral_depth} "
               "assigns to their intended class, per class and number of parents n; the dashed "
               "line is its accuracy on real test images.",
               figs.neutral_accuracy_bars(score, data.class_names, reference["real_test"])),
    ]
    interp = interpolation_rows(gen, data, cfg.interpolation_classes, cfg.seed)
    if interp:
        figures.append(Figure(
            "interpolation", "Interpolation strips (paper Fig. 5)",
            "Left and right: two real training images of one class. Between them: decoded "
            "convex mixes (1 - r) z_A + r z_B of their codes for r = 0.1 ... 0.9, unfiltered; "
            "the frame says whether the mix passes both filter steps.",
            figs.interpolation_strips(interp, INTERPOLATION_RATIOS)))
    groups = overlay_groups(gset, data.train_x, cfg.overlay_per_n)
    if groups:
        figures.append(Figure(
            "parents_overlay", "Generations beside an overlay of their parents",
            "Each framed generation is followed by the pixel-wise mean of its n parents' real "
            "training images: a generation that is just the blend of its parents would look "
            "like the overlay.", figs.parents_overlay(groups, cfg.overlay_per_n)))
    else:
        warnings.append("the generated set has no parent_ids; the parents overlay is left out")
    for key, title, what in (
            ("closest_matches", "Closest training images (paper Fig. 6)",
             "randomly chosen generations"),
            ("closest_matches_nearest", "Closest training images of the least novel generations",
             "the generations nearest to the training set in pixels (where copies would show)")):
        ms = matches["random" if key == "closest_matches" else "closest"]
        columns = [
            ("MSE", data.train_x[[m["mse"]["train_index"] for m in ms]].numpy(),
             [f"mse {m['mse']['distance']:.4f}" for m in ms]),
            ("SSIM", data.train_x[[m["ssim"]["train_index"] for m in ms]].numpy(),
             [f"ssim {m['ssim']['ssim']:.3f}" for m in ms]),
            (f"features (ResNet-{cfg.neutral_depth})",
             data.train_x[[m["feature"]["train_index"] for m in ms]].numpy(),
             [f"d {m['feature']['distance']:.3g}" for m in ms]),
        ]
        figures.append(Figure(
            key, title,
            f"Each of {len(ms)} {what} (first column) beside the training image nearest by pixel "
            "MSE, most similar by SSIM (exhaustive search) and nearest in the neutral "
            "classifier's features; a red frame marks a likely copy.",
            figs.closest_matches(g_nov[[m["position"] for m in ms]].numpy(), columns,
                                 [m["flagged"] for m in ms])))
    figures.append(Figure(
        "nn_distances", "Nearest-neighbour distances: generations vs real test images",
        f"Distance from each of {len(g_nov)} generations and {len(test_rows)} real test images "
        "to its nearest training image. Real test images are novel by construction; the red "
        f"line is their {cfg.copy_quantile:g} quantile over all classes (generations are "
        "flagged against the same quantile of their own class).",
        figs.distance_histograms({k: nov[k] for k in ("pixel", "feature")})))
    figures.append(Figure(
        "latent_embedding", "Latent space (paper Fig. 3)",
        f"{cfg.embedding.upper()} of {min(cfg.embedding_points, len(gen.bank))} training codes "
        "coloured by class; black lines are convex paths between two same-class codes, and one "
        "triangle is the hull of three (n = 3).",
        latent_embedding(gen, data.class_names, cfg.embedding_points, cfg.embedding, cfg.seed)))
    figures.append(Figure(
        "acceptance", "Acceptance per class and filter step",
        f"{cfg.acceptance_per_class} candidates per class and n; left: kept by the latent "
        "filter, right: kept by both steps.",
        figs.acceptance_bars(acceptance, data.class_names)))
    t0 = lap("figures_s", t0)

    # 8. metrics.json and report.html
    for name in ("pixel", "feature"):
        for key in ("gen_distances", "test_distances", "gen_nearest"):
            nov[name].pop(key)
        nov[name]["flagged_count"] = len(nov[name].pop("flagged"))
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    metrics = {
        "kind": REPORT_KIND,
        "run": str(run_dir.resolve()),
        "dataset": data_cfg.dataset,
        "class_names": data.class_names,
        "generated": {"source": gset.source, "evaluated": len(gset), "available": gset.total_rows},
        "device": str(dev),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "torch_threads": torch.get_num_threads(),
        "config": to_dict(cfg),
        "neutral": {"architecture": f"ResNet-{cfg.neutral_depth} v1 (width {cfg.neutral_width})",
                    "folder": str(neutral_dir.resolve()), **neutral_metrics},
        "generation_accuracy": score,
        "reference_accuracy": reference,
        "fid": {"features": feat_net.name, "features_note": feat_net.note, "rows": fid_rows},
        "novelty": nov | {"closest_matches": matches, "copy_quantile": cfg.copy_quantile},
        "acceptance": {"per_class": acceptance, "run_metrics": run_metrics.get("acceptance", {})},
        "warnings": warnings,
        "timings": timings,
        "figures": [f.key for f in figures],
    }
    (out / FIGURES_DIR).mkdir(exist_ok=True)
    for f in figures:
        _write(out / FIGURES_DIR / f"{f.key}.png", f.png)
    html = render_html(f"ReGene evaluation: {run_dir.name} ({data_cfg.dataset})",
                       _intro(metrics), _tables(metrics), figures, warnings,
                       footer=f"{REPORT_KIND}; timings (s) {timings}")
    _write(out / REPORT_FILE, html)
    save_json(metrics, out / METRICS_FILE)
    log.info("evaluation: neutral test acc %.4f, generations %.4f; FID org-gen %.3g +- %.2g (%s); "
             "copies %.3f (pixel); report %s in %.0fs", neutral_metrics["test_accuracy"],
             score["overall"], fid_rows["org_vs_gen"]["mean"], fid_rows["org_vs_gen"]["std"],
             feat_net.name, nov["pixel"]["copy_fraction"], out / REPORT_FILE, timings["total_s"])
    return metrics


def _intro(m: dict) -> list[str]:
    g = m["generated"]
    return [
        f"Run {m['run']} on {m['dataset']}; generations: {g['source']} ({g['evaluated']} "
        f"evaluated of {g['available']}); device {m['device']}, {m['torch_threads']} torch "
        f"thread(s) on {m['machine']}.",
        f"Neutral classifier: {m['neutral']['architecture']} trained from scratch on the run's "
        f"training split, test accuracy {m['neutral']['test_accuracy']:.4f}"
        f"{' (cached)' if m['neutral'].get('cached') else ''}.",
        "Org = real training images, Recon = decoder(encoder(training images)), Gen = accepted "
        "convex generations.",
    ]


def _tables(m: dict) -> list[Table]:
    s, ref = m["generation_accuracy"], m["reference_accuracy"]
    acc_rows = [[f"generations, n = {n}", v] for n, v in sorted(s["per_n"].items(), key=lambda
                                                                   kv: int(kv[0]))]
    acc_rows += [["generations, all", s["overall"]], ["real test images", ref["real_test"]],
                 ["reconstructed test images", ref["reconstructed_test"]]]
    fid = m["fid"]
    fid_rows = [[FID_ROWS[k][0], r["mean"], r["std"], r["seeds"], r["sample_size"], r["features"]]
                for k, r in fid["rows"].items()]
    nov_rows = [[name, v["copy_fraction"], v["expected_fraction"], v["near_duplicate_fraction"],
                 v["test_near_duplicate_fraction"], v["median_ratio"], v["threshold"]]
                for name, v in ((k, m["novelty"][k]) for k in ("pixel", "feature"))]
    acc = m["acceptance"]["run_metrics"]
    run_rows = [[f"n = {n}", a.get("latent_step", float("nan")),
                 a.get("image_step_given_latent", float("nan")), a.get("accepted", float("nan"))]
                for n, a in sorted(acc.items(), key=lambda kv: int(kv[0]))]
    tables = [
        Table("Neutral classifier accuracy (paper Fig. 4a)", ["images", "accuracy"], acc_rows,
              "Fraction assigned to the intended label. The paper reports >= 0.9 on MNIST."),
        Table("FID (paper Table 1)", ["pair", "mean", "std", "seeds", "images per side",
                                      "feature network"], fid_rows,
              f"Feature choice: {fid['features_note']}. The Org vs Org row compares two "
              "disjoint samples of real images: no FID at this sample size can go below it. "
              "Paper (MNIST, Inception): Org vs Gen 16.3, Org vs Recon 13.9, Recon vs Gen 3.03."),
        Table("Novelty and memorisation (paper Fig. 6)",
              ["space", "flagged as copies", "expected by chance", "near-duplicates among gens",
               "same among test images", "median NN distance gen / test", "copy threshold (all classes)"],
              nov_rows,
              "A generation is flagged when it is closer to its nearest training image than "
              f"the closest {m['novelty']['copy_quantile']:g} of real test images of its class "
              "are (copy threshold: the same over all classes); novel "
              "generations are flagged at about the chance rate, copies all are. A near-duplicate "
              "is a generation whose nearest other generation is closer than that threshold; "
              "the same fraction among as many real test images is the chance level."),
    ]
    if run_rows:
        tables.append(Table("Filter acceptance measured by jobs/train.py",
                            ["n", "latent step", "image step given latent", "both steps"],
                            run_rows))
    return tables
