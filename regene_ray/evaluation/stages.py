"""The evaluation's measurements, one function each, with typed results (no Ray).

    neutral_stage -> score_stage (Fig. 4a) -> fid_stage (Table 1) -> novelty_stage (Fig. 6)
    -> acceptance_stage -> blend_stage (Fig. 7b)

Each takes the inputs (evaluation.inputs) and earlier results; each that samples draws from its
own random stream (evaluation.streams), so inserting or changing one stage never changes
another's samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from regene_ray.config import to_dict
from regene_ray.evaluation.fid import (
    FeatureNet,
    NeutralFeatures,
    choose_feature_net,
    extract_features,
    fid_from_features,
    fid_table,
    find_inception_weights,
)
from regene_ray.evaluation.inputs import Inputs, generate_sample, reconstruct
from regene_ray.evaluation.neutral import load_or_train_neutral, score_generations
from regene_ray.evaluation.novelty import nearest_ssim, novelty
from regene_ray.evaluation.streams import Streams
from regene_ray.generated import GeneratedSet
from regene_ray.generator import ConvexGenerator, measure_acceptance
from regene_ray.resnet import ResNet, ResNetConfig, ResNetTrainConfig

NOVELTY_RAW = ("gen_distances", "test_distances", "gen_nearest", "flagged")  # not in metrics
FID_ROWS = {  # key -> (paper's row name, real side, generated side)
    "org_vs_gen": ("Org vs Gen (n = 2 when known, as Table 1)", "org", "gen"),
    "org_vs_recon": ("Org vs Recon", "org", "recon"),
    "recon_vs_gen": ("Recon vs Gen", "recon", "gen"),
    "org_vs_org": ("Org vs Org (sampling floor)", "org", "org"),
}
TABLE1_N = 2  # the paper's Table 1 generates with two parents
DIRICHLET_SET = "gen_dirichlet"  # the extra row's set: n = 2, Dirichlet weights, in-process


# the neutral judge and its scores (Fig. 4a)


@dataclass
class NeutralResult:
    model: ResNet
    metrics: dict  # test_accuracy, history, cached, ...
    folder: Path
    warning: str | None  # set when the judge is too weak to trust


def neutral_stage(inp: Inputs, cfg, dev: torch.device, folder: Path) -> NeutralResult:
    """Train (or reuse from `folder`) the neutral ResNet judge on the run's training split."""
    ncfg = ResNetConfig(depth=cfg.neutral_depth, width=cfg.neutral_width,
                        in_channels=inp.data.channels, num_classes=inp.data.num_classes)
    tcfg = ResNetTrainConfig(epochs=cfg.neutral_epochs, batch_size=cfg.neutral_batch_size,
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


@dataclass
class Scores:
    generations: dict  # overall / per_class / per_n neutral accuracy (paper Fig. 4a)
    reference: dict  # the same judge on real and on reconstructed test images


def score_stage(neutral: NeutralResult, gset: GeneratedSet, inp: Inputs,
                dev: torch.device) -> Scores:
    """The judge's accuracy on the generations, and on real and reconstructed test images."""
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


def acceptance_stage(gen: ConvexGenerator, n_parents: list[int], per_class: int,
                     streams: Streams, weights: str = "uniform") -> dict:
    """Fraction of candidates kept by step 1 and by both steps, per class, for each n
    (generator.measure_acceptance, the measurement jobs/train.py records, on fresh candidates
    mixed with `weights`: the judged generations' own where they are recorded)."""
    seed = streams.seed("acceptance")
    return {str(n): measure_acceptance(gen, n, per_class, seed=seed, weights=weights)["per_class"]
            | {"candidates_per_class": per_class, "weights": weights} for n in n_parents}


# FID (Table 1) and the blends (Fig. 7b)


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
    rows: dict  # row key -> name, mean, std, seeds, sample_size, features (fid.fid_table)
    warning: str | None
    sets: dict[str, torch.Tensor]  # the compared image sets by key ("org", "gen", "gen_n3", ...)


def fid_features(neutral: NeutralResult, cfg) -> FeatureNet:
    """FID's feature network as cfg.fid_features asks: Inception (its weights on disk) or the
    neutral classifier's; `inception` without Inception weights is an error."""
    if cfg.fid_features == "inception" and cfg.inception_weights is None:
        path, why = find_inception_weights(None)
        if path is None:
            raise FileNotFoundError(f"--fid-features inception: {why}; pass --inception-weights")
    net = choose_feature_net(neutral.model, cfg.inception_weights,
                             allow_inception=cfg.fid_features != "neutral")
    if cfg.fid_features == "inception" and not net.name.startswith("inception"):
        raise ValueError(f"--fid-features inception asked for, but {net.note}")
    return net


def fid_stage(neutral: NeutralResult, inp: Inputs, gset: GeneratedSet, cfg,
              dev: torch.device, streams: Streams) -> FidResult:
    """FID Org vs Gen, Org vs Recon, Recon vs Gen (and the Org vs Org floor), paper Table 1."""
    feat_net = fid_features(neutral, cfg)
    rng = streams.rng("fid")
    train_x = inp.data.train_x
    pool = min(len(train_x), 3 * cfg.fid_samples)
    org = train_x[torch.from_numpy(np.sort(rng.permutation(len(train_x))[:pool]))]
    recon = reconstruct(inp.gen, train_x[torch.from_numpy(
        np.sort(rng.permutation(len(train_x))[:pool]))])
    sets, pairs = fid_sets(org, recon, gset)
    if cfg.dirichlet_alpha > 0:  # extra row: n = 2 with random convex weights (in-process)
        d = generate_sample(inp.gen, cfg.fid_samples, [TABLE1_N], streams.seed("dirichlet"),
                            weights=f"dirichlet:{cfg.dirichlet_alpha:g}")
        sets[DIRICHLET_SET] = d.images
        pairs.append(("org", DIRICHLET_SET))
    rows = fid_table(sets, pairs, cfg.seeds, cfg.fid_samples, feat_net, dev,
                     base_seed=streams.seed("fid"),
                     # Org (training images) vs any Gen, and the Org vs Org floor: real images
                     # that are not copies (a disjoint half) give MiFID's reference value
                     mifid_pairs=frozenset(p for p in pairs if p[0] == "org" and (
                         p[1].startswith("gen") or p[1] == "org")))
    rows = {k: {"name": fid_row_name(k), **r} for k, r in rows.items()}
    warning = None if feat_net.name.startswith("inception") else (
        f"FID uses {feat_net.name} features ({feat_net.note}); these numbers are not "
        "comparable with the paper's Inception FIDs, only with each other.")
    return FidResult(feat_net, rows, warning, sets)


@dataclass
class BlendResult:
    rows: list[dict]  # per ratio: ratio, fid, neutral_accuracy, images
    features: str  # the FID feature network's name


def blend_stage(neutral: NeutralResult, inp: Inputs, fid: FidResult, cfg,
                dev: torch.device, streams: Streams) -> BlendResult:
    """Paper Fig. 7b: original:reconstruction blends (1 - r) x + r dec(enc(x)) of real test
    images for r in cfg.blend_ratios, each rounded to uint8 pixels; per ratio their FID against
    as many real training images (one fixed sample, the FID table's feature network) and the
    neutral classifier's accuracy on them. r = 0 is the real-vs-real floor at this size."""
    data = inp.data
    rng = streams.rng("blend")
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


# novelty (Fig. 6)


@dataclass
class NoveltyResult:
    summary: dict  # per space (pixel, feature): copy fractions, thresholds, flagged counts
    raw: dict  # per space: distances and flags (for the histograms, not for metrics.json)
    matches: dict  # "random" / "closest" -> closest training images of chosen generations
    generations: torch.Tensor  # (M, C, H, W) uint8: the generations examined
    test_count: int  # real test images used as the novel reference


def novelty_stage(neutral: NeutralResult, inp: Inputs, gset: GeneratedSet, cfg,
                  dev: torch.device, streams: Streams) -> NoveltyResult:
    """Nearest training images of generations and of real test images (paper Fig. 6)."""
    data, rng = inp.data, streams.rng("novelty")
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
    summary = {name: _flag_summary(raw[name], nov_rows, gset, data.num_classes)
               for name in ("pixel", "feature")}
    return NoveltyResult(summary, raw, matches, g_nov, len(test_rows))


def _flag_summary(space: dict, rows: np.ndarray, gset: GeneratedSet, num_classes: int) -> dict:
    """One space's novelty numbers for metrics.json, with its flags counted per class and n."""
    flagged = rows[np.asarray(space["flagged"], dtype=np.int64)]  # rows of gset
    out = {k: v for k, v in space.items() if k not in NOVELTY_RAW}
    out["flagged_count"] = len(space["flagged"])
    out["flagged_per_class"] = {str(c): int((gset.labels[flagged] == c).sum())
                                for c in range(num_classes)}
    if gset.n_parents is not None:
        out["flagged_per_n"] = {str(int(k)): int((gset.n_parents[flagged] == k).sum())
                                for k in np.unique(gset.n_parents)}
    return out


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
