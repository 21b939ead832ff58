"""The evaluation's stages, one function each, with typed results (no Ray).

    load_inputs -> neutral_stage -> generations_stage -> score_stage -> fid_stage
    -> novelty_stage -> acceptance_per_class -> blend_stage (Fig. 7b)
    -> autoencoder_stage (Fig. 3's contrast)        (the pictures: evaluation.report)

Every stage that samples has its own random stream (`stage_rng(seed, stage)`), so inserting or
changing one stage never changes another's samples. Also here: reading and checking a generated
folder, and sampling generations in-process.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from regene_ray.config import to_dict
from regene_ray.data import DataConfig, DataSplits, load_data
from regene_ray.evaluation import figures as figs
from regene_ray.evaluation.fid import (
    FeatureNet,
    NeutralFeatures,
    choose_feature_net,
    extract_features,
    fid_from_features,
    fid_table,
)
from regene_ray.evaluation.neutral import (
    NeutralClassifier,
    NeutralTrainConfig,
    ResNetConfig,
    load_or_train_neutral,
    score_generations,
)
from regene_ray.evaluation.novelty import nearest_ssim, novelty
from regene_ray.generator import ConvexGenerator, measure_acceptance, to_uint8
from regene_ray.run import METRICS_FILE, RUN_CONFIG_FILE, load_run_config

log = logging.getLogger(__name__)

STAGE_STREAMS = {"fid": 1, "novelty": 2, "blend": 3, "autoencoder": 4}  # each sampling stage's own stream of the seed
NOVELTY_RAW = ("gen_distances", "test_distances", "gen_nearest", "flagged")  # not in metrics


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """The random generator of one stage: a function of (seed, stage) only."""
    return np.random.default_rng([seed, STAGE_STREAMS[stage]])


FID_ROWS = {  # key -> (paper's row name, real side, generated side)
    "org_vs_gen": ("Org vs Gen (n = 2 when known, as Table 1)", "org", "gen"),
    "org_vs_recon": ("Org vs Recon", "org", "recon"),
    "recon_vs_gen": ("Recon vs Gen", "recon", "gen"),
    "org_vs_org": ("Org vs Org (sampling floor)", "org", "org"),
}


INTERPOLATION_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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


def generated_files(folder: Path) -> list[Path]:
    """Every *.parquet under --generated; a missing folder or none there is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--generated {folder} does not exist; pass the --out folder of "
                                "jobs/mass_generate.py, or leave --generated out to sample "
                                "generations in-process")
    files = _parquet_files(folder)
    if not files:
        raise ValueError(f"--generated {folder} holds no Parquet files; pass the --out folder of "
                         "a finished jobs/mass_generate.py run")
    return files


def read_generated(folder: str | Path, *, max_images: int = 20000, seed: int = 0
                   ) -> GeneratedSet:
    """Read mass generation's Parquet output (all *.parquet under `folder`, recursively).

    Columns used: label and image {bytes, path} (required); n_parents and parent_ids (optional).
    Beyond `max_images` rows, a seeded random subset is read (only its images are decoded).
    """
    folder = Path(folder)
    files = generated_files(folder)
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


def check_generated(generated: str | Path, run_dir: Path, *, allow_partial: bool = False,
                    allow_other_run: bool = False) -> None:
    """Refuse a --generated folder that is not a finished mass generation of this run: without
    summary.json it is partial (a job still running, or killed), and generations made from other
    checkpoints say nothing about this run. The flags accept them knowingly."""
    from regene_ray.mass import DATA_DIR, JOB_FILE, SUMMARY_FILE, count_rows, run_hashes

    folder = Path(generated)
    generated_files(folder)  # a missing folder or one without Parquet files: say so first
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


def generate_sample(gen: ConvexGenerator, count: int, n_parents: list[int], seed: int,
                    weights: str = "uniform") -> GeneratedSet:
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
                    weights=weights, seed=seed, ids=ids)
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
        pool = gen.mixer.pools[c]
        a, b = bank.latents[rng.choice(pool, 2, replace=False)]
        paths.append((1 - t) * a + t * b)  # (11, D) a two-parent path
    if paths:
        c = gen.eligible_classes(3)[-1]
        a, b, d = bank.latents[rng.choice(gen.mixer.pools[c], 3, replace=False)]
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


# the stages


@dataclass
class Inputs:
    """What every stage reads: the run's data, its generator and its training metrics."""

    run_dir: Path
    data_cfg: DataConfig
    data: DataSplits
    gen: ConvexGenerator
    run_metrics: dict


def load_inputs(run_dir: Path, data_root: str | None, dev: torch.device) -> Inputs:
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


@dataclass
class NeutralResult:
    model: NeutralClassifier
    metrics: dict  # test_accuracy, history, cached, ...
    folder: Path
    warning: str | None  # set when the judge is too weak to trust


def neutral_stage(inp: Inputs, cfg, dev: torch.device, folder: Path) -> NeutralResult:
    """Train (or reuse from `folder`) the neutral ResNet judge on the run's training split."""
    ncfg = ResNetConfig(depth=cfg.neutral_depth, width=cfg.neutral_width,
                        in_channels=inp.data.channels, num_classes=inp.data.num_classes)
    tcfg = NeutralTrainConfig(epochs=cfg.neutral_epochs, batch_size=cfg.neutral_batch_size,
                              seed=cfg.seed)
    identity = {k: v for k, v in to_dict(inp.data_cfg).items() if k != "data_root"}
    model, metrics = load_or_train_neutral(folder, inp.data, ncfg, tcfg, dev, identity)
    run_acc = inp.run_metrics.get("test_accuracy")
    warning = None
    if metrics["test_accuracy"] < 0.9 or (
            run_acc is not None and metrics["test_accuracy"] < run_acc - 0.05):
        warning = (f"the neutral classifier reaches only {metrics['test_accuracy']:.3f} test "
                   f"accuracy (the run's classifier: {run_acc}); its scores and FID features "
                   "are unreliable; train it longer with --neutral-epochs or a smaller "
                   "--neutral-batch-size")
    return NeutralResult(model, metrics, folder, warning)


def generations_stage(inp: Inputs, cfg, generated: str | Path | None) -> GeneratedSet:
    """The generations to judge: read from --generated (checked against the run), or sampled."""
    if generated is None:
        return generate_sample(inp.gen, cfg.num_generated, cfg.n_parents, cfg.seed)
    gset = read_generated(generated, max_images=cfg.max_generated, seed=cfg.seed)
    dcfg = inp.gen.decoder.cfg
    shape = (dcfg.out_channels, dcfg.image_size, dcfg.image_size)
    if tuple(gset.images.shape[1:]) != shape:
        raise ValueError(f"--generated images are {tuple(gset.images.shape[1:])} but run "
                         f"{inp.run_dir} makes {shape}; pass the run the images came from")
    if gset.labels.min() < 0 or gset.labels.max() >= inp.data.num_classes:
        raise ValueError(f"--generated labels span {gset.labels.min()}..{gset.labels.max()} "
                         f"but run {inp.run_dir} has {inp.data.num_classes} classes")
    return gset


@dataclass
class Scores:
    generations: dict  # overall / per_class / per_n neutral accuracy (paper Fig. 4a)
    reference: dict  # the same judge on real and on reconstructed test images


def score_stage(neutral: NeutralResult, gset: GeneratedSet, inp: Inputs,
                dev: torch.device) -> Scores:
    data, model = inp.data, neutral.model
    score = score_generations(model, gset.images, gset.labels, gset.n_parents,
                              data.num_classes, dev)
    recon_test = reconstruct(inp.gen, data.test_x)
    reference = {
        "real_test": score_generations(model, data.test_x, data.test_y.numpy(), None,
                                       data.num_classes, dev)["overall"],
        "reconstructed_test": score_generations(model, recon_test, data.test_y.numpy(), None,
                                                data.num_classes, dev)["overall"],
    }
    return Scores(score, reference)


TABLE1_N = 2  # the paper's Table 1 generates with two parents
DIRICHLET_SET = "gen_dirichlet"  # the extra row's set: n = 2, Dirichlet weights, in-process


def fid_sets(org: torch.Tensor, recon: torch.Tensor, gset: GeneratedSet
             ) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """The image sets and pairs of the FID table in Table 1's shape: "gen" holds the n = 2
    generations only (all of them when n is unknown or none has n = 2), and every other n gets
    an extra Org vs Gen row ("gen_n3", ...)."""
    sets = {"org": org, "recon": recon, "gen": gset.images}
    pairs = [v[1:] for v in FID_ROWS.values()]
    n = gset.n_parents
    if n is None or (n == TABLE1_N).sum() < 2:
        return sets, pairs
    sets["gen"] = gset.images[torch.from_numpy(np.flatnonzero(n == TABLE1_N))]
    for k in sorted(set(n.tolist()) - {TABLE1_N}):
        if (n == k).sum() >= 2:
            sets[f"gen_n{k}"] = gset.images[torch.from_numpy(np.flatnonzero(n == k))]
            pairs.append(("org", f"gen_n{k}"))
    return sets, pairs


def fid_row_name(key: str) -> str:
    """The report's name of an FID row: the paper's for its rows, else the extra row's n."""
    if key in FID_ROWS:
        return FID_ROWS[key][0]
    if key == f"org_vs_{DIRICHLET_SET}":
        return f"Org vs Gen, n = {TABLE1_N}, Dirichlet weights (extra row)"
    return f"Org vs Gen, n = {key.rsplit('_n', 1)[1]} (extra row)"


@dataclass
class FidResult:
    features: FeatureNet
    rows: dict  # FID_ROWS key -> mean, std, seeds, sample_size, features
    warning: str | None


def fid_stage(neutral: NeutralResult, inp: Inputs, gset: GeneratedSet, cfg,
              dev: torch.device) -> FidResult:
    """FID Org vs Gen, Org vs Recon, Recon vs Gen (and the Org vs Org floor), paper Table 1."""
    if cfg.fid_features == "inception" and cfg.inception_weights is None:
        from regene_ray.evaluation.fid import find_inception_weights

        path, why = find_inception_weights(None)
        if path is None:
            raise FileNotFoundError(f"--fid-features inception: {why}; pass --inception-weights")
    feat_net = choose_feature_net(neutral.model, cfg.inception_weights,
                                  allow_inception=cfg.fid_features != "neutral")
    if cfg.fid_features == "inception" and not feat_net.name.startswith("inception"):
        raise ValueError(f"--fid-features inception asked for, but {feat_net.note}")
    rng = stage_rng(cfg.seed, "fid")
    train_x = inp.data.train_x
    pool = min(len(train_x), 3 * cfg.fid_samples)
    org = train_x[torch.from_numpy(np.sort(rng.permutation(len(train_x))[:pool]))]
    recon = reconstruct(inp.gen, train_x[torch.from_numpy(
        np.sort(rng.permutation(len(train_x))[:pool]))])
    sets, pairs = fid_sets(org, recon, gset)
    if cfg.dirichlet_alpha > 0:  # extra row: n = 2 with random convex weights (in-process)
        d = generate_sample(inp.gen, cfg.fid_samples, [TABLE1_N], cfg.seed + 1,
                            weights=f"dirichlet:{cfg.dirichlet_alpha:g}")
        sets[DIRICHLET_SET] = d.images
        pairs.append(("org", DIRICHLET_SET))
    rows = fid_table(sets, pairs, cfg.seeds, cfg.fid_samples, feat_net, dev, base_seed=cfg.seed,
                     # Org (training images) vs any Gen, and the Org vs Org floor: real images
                     # that are not copies (a disjoint half) give MiFID's reference value
                     mifid_pairs=frozenset(p for p in pairs if p[0] == "org" and (
                         p[1].startswith("gen") or p[1] == "org")))
    warning = None if feat_net.name.startswith("inception") else (
        f"FID uses {feat_net.name} features ({feat_net.note}); these numbers are not "
        "comparable with the paper's Inception FIDs, only with each other.")
    return FidResult(feat_net, rows, warning)


@dataclass
class NoveltyResult:
    summary: dict  # per space (pixel, feature): copy fractions, thresholds, flagged counts
    raw: dict  # per space: distances and flags (for the histograms, not for metrics.json)
    matches: dict  # "random" / "closest" -> closest training images of chosen generations
    generations: torch.Tensor  # (M, C, H, W) uint8: the generations examined
    test_count: int  # real test images used as the novel reference


def novelty_stage(neutral: NeutralResult, inp: Inputs, gset: GeneratedSet, cfg,
                  dev: torch.device) -> NoveltyResult:
    """Nearest training images of generations and of real test images (paper Fig. 6)."""
    data, rng = inp.data, stage_rng(cfg.seed, "novelty")
    nov_rows = np.sort(rng.permutation(len(gset))[: cfg.novelty_samples])
    test_rows = np.sort(rng.permutation(len(data.test_x))[: cfg.novelty_samples])
    g_nov = gset.images[torch.from_numpy(nov_rows)]
    net = FeatureNet(f"neutral-resnet{cfg.neutral_depth}", NeutralFeatures(neutral.model),
                     neutral.model.num_features)
    raw = novelty(g_nov, data.test_x[torch.from_numpy(test_rows)], data.train_x,
                  lambda x: extract_features(net, x, dev).float(), cfg.copy_quantile,
                  gen_labels=gset.labels[nov_rows], test_labels=data.test_y.numpy()[test_rows])
    q = min(cfg.match_samples, len(g_nov))
    flagged = set(raw["pixel"]["flagged"]) | set(raw["feature"]["flagged"])
    picks = {  # positions in g_nov: a random sample, and the generations closest to training
        "random": rng.permutation(len(g_nov))[:q],
        "closest": np.argsort(np.asarray(raw["pixel"]["gen_distances"]), kind="stable")[:q],
    }
    matches = {k: closest_training_matches(g_nov, v, data.train_x, raw, flagged)
               for k, v in picks.items()}
    for ms in matches.values():
        for m in ms:
            m["generation_row"] = int(nov_rows[m["position"]])
            m["label"] = int(gset.labels[m["generation_row"]])
    summary = {}
    for name in ("pixel", "feature"):
        rows_f = nov_rows[np.asarray(raw[name]["flagged"], dtype=np.int64)]
        summary[name] = {k: v for k, v in raw[name].items() if k not in NOVELTY_RAW}
        summary[name]["flagged_count"] = len(raw[name]["flagged"])
        summary[name]["flagged_per_class"] = {
            str(c): int((gset.labels[rows_f] == c).sum()) for c in range(data.num_classes)}
        if gset.n_parents is not None:
            summary[name]["flagged_per_n"] = {
                str(int(k)): int((gset.n_parents[rows_f] == k).sum())
                for k in np.unique(gset.n_parents)}
    return NoveltyResult(summary, raw, matches, g_nov, len(test_rows))


@dataclass
class BlendResult:
    rows: list[dict]  # per ratio: ratio, fid, neutral_accuracy, images
    features: str  # the FID feature network's name


def blend_stage(neutral: NeutralResult, inp: Inputs, fid: FidResult, cfg,
                dev: torch.device) -> BlendResult:
    """Paper Fig. 7b: original:reconstruction blends (1 - r) x + r dec(enc(x)) of real test
    images for r in cfg.blend_ratios, each rounded to uint8 pixels; per ratio their FID against
    as many real training images (one fixed sample, the FID table's feature network) and the
    neutral classifier's accuracy on them. r = 0 is the real-vs-real floor at this size."""
    data = inp.data
    rng = stage_rng(cfg.seed, "blend")
    k = min(cfg.fid_samples, len(data.test_x), len(data.train_x))
    test_rows = torch.from_numpy(np.sort(rng.permutation(len(data.test_x))[:k]))
    train_rows = torch.from_numpy(np.sort(rng.permutation(len(data.train_x))[:k]))
    x, y = data.test_x[test_rows], data.test_y[test_rows].numpy()
    x_rec = reconstruct(inp.gen, x)
    ref = extract_features(fid.features, data.train_x[train_rows], dev)
    rows = []
    for r in cfg.blend_ratios:
        blend = ((1 - r) * x.float() + r * x_rec.float()).round().clamp(0, 255).to(torch.uint8)
        rows.append({
            "ratio": float(r),
            "fid": fid_from_features(ref, extract_features(fid.features, blend, dev)),
            "neutral_accuracy": score_generations(neutral.model, blend, y, None,
                                                  data.num_classes, dev)["overall"],
            "images": k})
    return BlendResult(rows, fid.features.name)


@dataclass
class AutoencoderResult:
    test_mae: float  # the autoencoder's reconstruction MAE on the test split
    test_ssim: float
    images: int  # training images it saw
    epochs: int
    seconds: float
    figure: bytes  # both latent spaces, one embedding method


def autoencoder_stage(inp: Inputs, cfg, dev: torch.device) -> AutoencoderResult:
    """Paper Fig. 3's contrast: an autoencoder with the run's encoder architecture and code width
    and the mirrored decoder, trained end to end on MAE + SSIM (no labels) on a seeded subset of
    the training split, its codes embedded beside the classifier's (same points, same method)."""
    import time

    from regene_ray.classifier import Classifier
    from regene_ray.decoder import Decoder, DecoderConfig
    from regene_ray.losses import LossConfig, ReconstructionLoss
    from regene_ray.train import DecoderTrainConfig, evaluate_decoder

    t0 = time.perf_counter()
    data, gen = inp.data, inp.gen
    torch.manual_seed(cfg.seed)
    encoder = Classifier(gen.classifier.cfg).to(dev)  # only its encode() is used
    run_cfg = load_run_config(inp.run_dir / RUN_CONFIG_FILE)
    decoder = Decoder(DecoderConfig.mirror(gen.classifier.cfg, run_cfg.decoder)).to(dev)
    rng = stage_rng(cfg.seed, "autoencoder")
    n = min(cfg.autoencoder_images, len(data.train_x))
    rows = torch.from_numpy(rng.permutation(len(data.train_x))[:n])
    x_train = data.train_x[rows]
    loss_fn = ReconstructionLoss(LossConfig(perceptual="none"), None)
    params = [*encoder.blocks.parameters(), *encoder.to_latent.parameters(),
              *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3)
    train_cfg = DecoderTrainConfig(epochs=cfg.autoencoder_epochs)
    gen_t = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.autoencoder_epochs):
        encoder.train()
        decoder.train()
        for idx in torch.split(torch.randperm(n, generator=gen_t), 128):
            xb = x_train[idx].to(dev).float() / 255.0
            loss, _ = loss_fn(decoder(encoder.encode(xb)), xb, epoch, train_cfg.epochs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    encoder.eval()
    test = evaluate_decoder(decoder, encoder, data.test_x, dev)
    pts = min(cfg.embedding_points, len(data.test_x))
    pick = torch.from_numpy(np.sort(rng.permutation(len(data.test_x))[:pts]))
    xs, labels = data.test_x[pick], data.test_y[pick].numpy()
    with torch.no_grad():
        codes = {name: torch.cat([net.encode(xb.to(dev).float() / 255.0).cpu()
                                  for xb in torch.split(xs, 512)]).numpy()
                 for name, net in (("classifier", gen.classifier), ("autoencoder", encoder))}
    emb = {name: embed_2d(z, cfg.embedding, cfg.seed) for name, z in codes.items()}
    figure = figs.latent_spaces_side_by_side(emb, labels, data.class_names, cfg.embedding)
    return AutoencoderResult(test["mae"], test["ssim"], n, cfg.autoencoder_epochs,
                             time.perf_counter() - t0, figure)


def embed_2d(z: np.ndarray, method: str, seed: int) -> np.ndarray:
    """(N, D) codes -> (N, 2) by PCA or t-SNE."""
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", random_state=seed,
                    perplexity=float(min(30, max(5, len(z) // 4)))).fit_transform(z)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(z)
