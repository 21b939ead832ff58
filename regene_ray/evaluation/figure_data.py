"""What the report's pictures show, computed here so the report only draws it (no Ray):
interpolation strips (Fig. 5), generations beside their parents' overlay, and the latent space
in 2-D with convex paths (Fig. 3). `embed_2d` is the one 2-D embedding of codes (also the
autoencoder contrast's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from regene_ray.data import DataSplits
from regene_ray.evaluation.streams import Streams
from regene_ray.generated import GeneratedSet
from regene_ray.generator import ConvexGenerator

INTERPOLATION_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PATH_STEPS = 11  # points along each drawn convex path, parents included
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE"}


def embed_2d(z: np.ndarray, method: str, seed: int, extra: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Codes in 2-D: (N, D) `z` and (M, D) `extra` points (paths between codes) -> (N, 2) and
    (M, 2). PCA is fitted on `z` alone, so straight paths stay straight; t-SNE embeds all."""
    extra = np.zeros((0, z.shape[1]), z.dtype) if extra is None else extra
    if method == "tsne":
        from sklearn.manifold import TSNE

        both = np.concatenate([z, extra])
        emb = TSNE(2, init="pca", random_state=seed,
                   perplexity=float(min(30, max(5, len(both) // 4)))).fit_transform(both)
        return emb[: len(z)], emb[len(z):]
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=seed).fit(z)
    return pca.transform(z), pca.transform(extra) if len(extra) else np.zeros((0, 2))


@dataclass
class Embedding:
    """Latent codes in 2-D with the convex paths drawn between some of them (Fig. 3)."""

    points: np.ndarray  # (N, 2) embedded bank codes
    labels: np.ndarray  # (N,) their classes
    paths: list[np.ndarray]  # each (P, 2): a two-parent path, or a triangle's three edges
    vertices: list[np.ndarray]  # per path, its rows that are parents
    method: str  # "PCA" or "t-SNE"


def latent_embedding(gen: ConvexGenerator, points: int, method: str, streams: Streams
                     ) -> Embedding:
    """`points` bank codes in 2-D, with two-parent paths in up to three classes and one
    triangle, the hull of three parents (n = 3)."""
    rng = streams.rng("embedding")
    bank = gen.bank
    rows = rng.permutation(len(bank))[:points]
    t = np.linspace(0, 1, PATH_STEPS)[:, None]
    paths = []  # each (PATH_STEPS, D), or (3 * PATH_STEPS, D) for the triangle
    classes = gen.eligible_classes(3)
    for c in classes[:3]:
        a, b = bank.latents[rng.choice(gen.mixer.pools[c], 2, replace=False)]
        paths.append((1 - t) * a + t * b)
    if paths:
        a, b, d = bank.latents[rng.choice(gen.mixer.pools[classes[-1]], 3, replace=False)]
        paths.append(np.concatenate([(1 - t) * a + t * b, (1 - t) * b + t * d,
                                     (1 - t) * d + t * a]))
    pts, flat = embed_2d(bank.latents[rows], method, streams.seed("embedding"),
                         np.concatenate(paths) if paths else None)
    cuts = np.cumsum([len(p) for p in paths])[:-1]
    out_paths = np.split(flat, cuts) if paths else []
    vertices = [np.array([0, len(p) - 1]) for p in out_paths]
    if len(out_paths) > 1:
        vertices[-1] = np.arange(3) * PATH_STEPS
    return Embedding(pts, bank.labels[rows], out_paths, vertices, METHOD_NAMES[method])


def interpolation_rows(gen: ConvexGenerator, data: DataSplits, n_rows: int, seed: int
                       ) -> list[dict]:
    """Two same-class parents per row and their decoded mixes at INTERPOLATION_RATIOS
    (unfiltered; `accepted` says which pass both steps). `seed` keys the candidates."""
    classes = gen.eligible_classes(2)
    if not classes:
        return []
    pick = [classes[i] for i in np.linspace(0, len(classes) - 1, min(n_rows, len(classes)))
            .round().astype(int)]
    labels = np.asarray(sorted(set(pick)), dtype=np.int64)
    ids = np.arange(len(labels), dtype=np.int64)
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
    """Per n, up to `per_n` generations beside the pixel mean of their parents' training
    images; [] when the generations carry no parent ids."""
    if generated.parent_ids is None:
        return []
    ns = generated.n_parents if generated.n_parents is not None else np.array(
        [len(p) for p in generated.parent_ids])
    groups = []
    for k in sorted(set(ns.tolist())):
        gens, overlays = [], []
        for r in np.flatnonzero(ns == k)[:per_n]:
            p = generated.parent_ids[r]
            if len(p) == 0 or p.max() >= len(train_x) or p.min() < 0:
                continue
            gens.append(generated.images[r].numpy())
            overlays.append(train_x[torch.from_numpy(p)].float().mean(0).round().to(torch.uint8)
                            .numpy())
        if gens:
            groups.append({"n": int(k), "gens": gens, "overlays": overlays})
    return groups


@dataclass
class FigureData:
    interpolation: list[dict]  # rows of figures.interpolation_strips ([]: no class has 2 codes)
    overlays: list[dict]  # groups of figures.parents_overlay ([]: no parent ids)
    embedding: Embedding  # the latent space with convex paths


def figure_data_stage(gen: ConvexGenerator, data: DataSplits, gset: GeneratedSet, cfg,
                      streams: Streams) -> FigureData:
    """The data of the pictures that are not a measurement's own."""
    return FigureData(
        interpolation_rows(gen, data, cfg.interpolation_classes, streams.seed("interpolation")),
        overlay_groups(gset, data.train_x, cfg.overlay_per_n),
        latent_embedding(gen, cfg.embedding_points, cfg.embedding, streams))
