"""The evaluation report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Every function takes plain arrays (uint8 images (N, C, H, W), numbers) and knows nothing about
models, so the report can embed the bytes and tests can decode them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ACCEPT_COLOUR, REJECT_COLOUR = "#2a9d8f", "#e63946"


# helpers


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _show(ax, img: np.ndarray | None, title: str = "", colour: str | None = None,
          fontsize: int = 7) -> None:
    """One uint8 (C, H, W) image on `ax`, no ticks; an optional coloured frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(colour is not None)
        if colour is not None:
            s.set_color(colour)
            s.set_linewidth(2.5)
    if img is not None:
        img = np.asarray(img)
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray",
                  vmin=0, vmax=255, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=fontsize)


def _scatter_classes(ax, points: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     alpha: float) -> None:
    """(N, 2) points on `ax`, one colour and legend entry per class."""
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        m = labels == c
        ax.scatter(points[m, 0], points[m, 1], s=5, alpha=alpha, color=cmap(c % cmap.N),
                   label=str(name)[:12])


# image figures


def interpolation_strips(rows: Sequence[dict], ratios: Sequence[float]) -> bytes:
    """Fig. 5: per row, parent A, decoded mixes (1 - r) z_A + r z_B for each ratio, parent B.

    Args:
        rows: dicts with "name", "left", "right" (uint8 (C, H, W) real parents),
            "mixes" (uint8 (R, C, H, W)) and "accepted" (R,) bool.
        ratios: the R weights r on parent B.
    """
    cols = len(ratios) + 2
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.0 + 0.5),
                             squeeze=False)
    for i, row in enumerate(rows):
        _show(axes[i, 0], row["left"], "A" if i == 0 else "")
        axes[i, 0].set_ylabel(str(row["name"])[:10], fontsize=8, rotation=0, labelpad=16)
        for j, r in enumerate(ratios):
            colour = ACCEPT_COLOUR if row["accepted"][j] else REJECT_COLOUR
            _show(axes[i, j + 1], row["mixes"][j], f"{r:.1f}" if i == 0 else "", colour)
        _show(axes[i, -1], row["right"], "B" if i == 0 else "")
    fig.suptitle("interpolation between two same-class codes (weight on B; green frame: passes "
                 "both filter steps, red: rejected)", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def parents_overlay(groups: Sequence[dict], per_group: int) -> bytes:
    """Generations beside the pixel mean of their real parents, one row per n.

    Args:
        groups: dicts with "n", "gens" (uint8 (k, C, H, W)), "overlays" (uint8 (k, C, H, W)).
        per_group: pairs per row.
    """
    fig, axes = plt.subplots(len(groups), 2 * per_group,
                             figsize=(2 * per_group * 0.85, len(groups) * 1.05 + 0.4),
                             squeeze=False)
    for i, g in enumerate(groups):
        axes[i, 0].set_ylabel(f"n = {g['n']}", fontsize=8, rotation=0, labelpad=18)
        for j in range(per_group):
            has = j < len(g["gens"])
            _show(axes[i, 2 * j], g["gens"][j] if has else None, "gen" if i == 0 else "",
                  ACCEPT_COLOUR if has else None)
            _show(axes[i, 2 * j + 1], g["overlays"][j] if has else None,
                  "parents" if i == 0 else "")
    fig.suptitle("generations (framed) beside the mean of their parents' images", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def closest_matches(queries: np.ndarray, columns: Sequence[tuple[str, np.ndarray, Sequence[str]]],
                    flagged: Sequence[bool]) -> bytes:
    """Fig. 6: each generation beside its closest training images under several measures.

    Args:
        queries: uint8 (Q, C, H, W) generations.
        columns: (measure name, uint8 (Q, C, H, W) nearest training images, Q captions).
        flagged: (Q,) likely copies (red frame).
    """
    Q, cols = len(queries), 1 + len(columns)
    fig, axes = plt.subplots(Q, cols, figsize=(cols * 1.25, Q * 1.15 + 0.4), squeeze=False)
    for i in range(Q):
        _show(axes[i, 0], queries[i], "generation" if i == 0 else "",
              REJECT_COLOUR if flagged[i] else ACCEPT_COLOUR)
        for j, (name, imgs, captions) in enumerate(columns):
            _show(axes[i, j + 1], imgs[i])
            axes[i, j + 1].set_xlabel(captions[i], fontsize=6)
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=7)
    fig.suptitle("closest training images (red frame: flagged as a likely copy)", fontsize=8)
    fig.tight_layout()
    return _png(fig)


# charts


def latent_embedding(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     paths: Sequence[np.ndarray], method: str,
                     vertices: Sequence[np.ndarray] | None = None) -> bytes:
    """Fig. 3: 2-D embedding of latent codes coloured by class, with convex paths drawn.

    Args:
        points: (N, 2) embedded codes; labels: (N,).
        paths: each (P, 2), the embedded path or polygon of one convex mix (first and last
            vertices are parents).
        vertices: per path, the rows that are parents (default: first and last).
    """
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    _scatter_classes(ax, points, labels, class_names, alpha=0.45)
    for i, p in enumerate(paths):
        v = vertices[i] if vertices is not None else np.array([0, len(p) - 1])
        ax.plot(p[:, 0], p[:, 1], "-", color="black", lw=1.2)
        ax.plot(p[v, 0], p[v, 1], "o", color="black", ms=4)
    ax.set_title(f"classifier latent space ({method}); black: convex paths between parents",
                 fontsize=9)
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2)
    fig.tight_layout()
    return _png(fig)


def acceptance_bars(per_class: dict, class_names: Sequence[str]) -> bytes:
    """Acceptance rate per class, per filter step, for each n.

    Args:
        per_class: {n: {"latent_step": [K], "accepted": [K]}} rates (NaN where not measured).
    """
    ns = sorted(per_class, key=int)
    K = len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    width = 0.8 / max(1, len(ns))
    for ax, step, title in ((axes[0], "latent_step", "step 1: latent filter"),
                            (axes[1], "accepted", "steps 1 + 2: latent and image filter")):
        for i, n in enumerate(ns):
            ax.bar(np.arange(K) + (i - (len(ns) - 1) / 2) * width, per_class[n][step], width,
                   label=f"n = {n}")
        ax.set_xticks(np.arange(K), [str(c)[:8] for c in class_names], fontsize=7, rotation=45)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("fraction of candidates kept")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def neutral_accuracy_bars(score: dict, class_names: Sequence[str], reference: float) -> bytes:
    """Fig. 4a: fraction of generations the neutral classifier assigns to the intended class.

    Args:
        score: neutral.score_generations output.
        reference: the neutral classifier's accuracy on real test images (dashed line).
    """
    K = len(class_names)
    groups = score["per_n_class"] or {"all": score["per_class"]}
    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = 0.8 / len(groups)
    for i, (n, per) in enumerate(sorted(groups.items())):
        vals = [per.get(str(c), np.nan) for c in range(K)]
        ax.bar(np.arange(K) + (i - (len(groups) - 1) / 2) * width, vals, width,
               label=f"n = {n}" if n != "all" else "all")
    ax.axhline(reference, ls="--", color="black", lw=1, label=f"real test images {reference:.3f}")
    ax.set_xticks(np.arange(K), [str(c)[:8] for c in class_names], fontsize=7, rotation=45)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("neutral accuracy")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("generations recognised by the neutral classifier, per class and n", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def distance_histograms(spaces: dict) -> bytes:
    """Nearest-training-image distances of generations vs real test images, per space.

    Args:
        spaces: {name: {"gen_distances", "test_distances", "threshold"}}.
    """
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.2 * len(spaces), 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], spaces.items(), strict=True):
        g, t = np.asarray(s["gen_distances"]), np.asarray(s["test_distances"])
        hi = float(np.quantile(np.concatenate([g, t]), 0.99)) or 1.0
        bins = np.linspace(0, hi, 40)
        ax.hist(t, bins=bins, alpha=0.55, density=True, label="real test images")
        ax.hist(g, bins=bins, alpha=0.55, density=True, label="generations")
        ax.axvline(s["threshold"], color=REJECT_COLOUR, lw=1.2, label="copy threshold")
        ax.set_title(f"{name}: distance to nearest training image", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def latent_spaces_side_by_side(points: dict[str, np.ndarray], labels: np.ndarray,
                               class_names: Sequence[str], method: str) -> bytes:
    """Fig. 3's contrast: the same images' codes in several latent spaces, one panel each.

    Args:
        points: panel title -> (N, 2) embedded codes of the same N images.
        labels: (N,) their classes.
        method: the embedding's name ("PCA", "t-SNE").
    """
    fig, axes = plt.subplots(1, len(points), figsize=(5.2 * len(points), 4.6), squeeze=False)
    for ax, (title, pts) in zip(axes[0], points.items(), strict=True):
        _scatter_classes(ax, pts, labels, class_names, alpha=0.5)
        ax.set_title(f"{title} codes ({method})", fontsize=9)
    axes[0][0].legend(fontsize=7, markerscale=2, loc="best", ncol=2)
    fig.tight_layout()
    return _png(fig)


def blend_curves(rows: Sequence[dict], features: str) -> bytes:
    """Fig. 7b: FID and neutral accuracy of original:reconstruction blends over the ratio."""
    r = [row["ratio"] for row in rows]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    ax.plot(r, [row["fid"] for row in rows], "o-", color="tab:blue")
    ax.set_xlabel("reconstruction share r of the blend (1 - r) x + r dec(enc(x))")
    ax.set_ylabel(f"FID vs real ({features})", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(r, [row["neutral_accuracy"] for row in rows], "s--", color="tab:red")
    ax2.set_ylabel("neutral accuracy", color="tab:red")
    ax.set_title("original : reconstruction blends", fontsize=9)
    fig.tight_layout()
    return _png(fig)
