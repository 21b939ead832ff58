"""The report: what the evaluation's stages computed, as tables, figures and one self-contained
HTML page (inline CSS, images as base64 data URIs, no external resources: it opens from disk in
any browser with no server and no network). Nothing here measures or samples; the figures are
drawn by evaluation.figures from the stages' results (evaluation.evaluate.Results).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from regene_ray.evaluation import figures as figs

if TYPE_CHECKING:
    from regene_ray.evaluation.evaluate import EvalConfig, Results

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1100px; color: #1d2433; background: #fff; line-height: 1.4; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px;
     border-bottom: 1px solid #d0d4dc; padding-bottom: 3px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid #d0d4dc; padding: 4px 10px; text-align: left; }
th { background: #eef1f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption { font-size: 13px; color: #4a5266; } .note { font-size: 13px; color: #4a5266; }
.warn { background: #fff4e5; border-left: 4px solid #f4a261; padding: 6px 10px; }
code { background: #f3f4f7; padding: 1px 4px; }
"""


@dataclass
class Figure:
    key: str  # file stem, also the anchor
    title: str
    caption: str
    png: bytes


@dataclass
class Table:
    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return '<td class="num">–</td>'
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def render_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>{note}"


def render_html(title: str, intro: Sequence[str], tables: Sequence[Table],
                figures: Sequence[Figure], warnings: Sequence[str] = (),
                footer: str = "") -> str:
    """The whole report as one HTML string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<p class="note">{html.escape(line)}</p>' for line in intro]
    parts += [f'<p class="warn">{html.escape(w)}</p>' for w in warnings]
    parts += [render_table(t) for t in tables]
    for f in figures:
        parts.append(
            f'<h2 id="{html.escape(f.key)}">{html.escape(f.title)}</h2><figure>'
            f'<img alt="{html.escape(f.title)}" src="{data_uri(f.png)}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    if footer:
        parts.append(f'<p class="note">{html.escape(footer)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


# the text around the numbers


def intro(m: dict) -> list[str]:
    g = m["generated"]
    return [
        f"Run {m['run']} on {m['dataset']}; generations: {g['source']} ({g['evaluated']} "
        f"evaluated of {g['available']}); device {m['device']}, {m['torch_threads']} torch "
        f"thread(s) on {m['machine']}.",
        f"Neutral classifier: {m['neutral']['architecture']} trained from scratch on the run's "
        f"training split, test accuracy {m['neutral']['test_accuracy']:.4f}"
        f"{' (cached)' if m['neutral'].get('cached') else ''}.",
        "Org = real training images, Recon = decoder(encoder(training images)), Gen = accepted "
        "generations: mixes of same-class codes (convex when made in-process; a generated "
        "folder's weights are in its job.json).",
    ]


def tables(m: dict) -> list[Table]:
    """The report's tables, from metrics.json's content (those with nothing to show left out)."""
    made = [_accuracy_table(m), _fid_table(m), *_shown(m.get("fidelity"), _fidelity_table),
            _novelty_table(m)]
    for key, build in (("train_on_generated", _trained_table), ("blends", _blend_table),
                       ("autoencoder", _autoencoder_table)):
        made += _shown(m.get(key), build)
    return made + _shown(m["acceptance"]["run_metrics"], _run_acceptance_table)


def _shown(section, build) -> list[Table]:
    """[build(section)], or [] when metrics.json's section is missing or empty."""
    return [build(section)] if section else []


def _accuracy_table(m: dict) -> Table:
    s, ref = m["generation_accuracy"], m["reference_accuracy"]
    rows = [[f"generations, n = {n}", v]
            for n, v in sorted(s["per_n"].items(), key=lambda kv: int(kv[0]))]
    rows += [["generations, all", s["overall"]], ["real test images", ref["real_test"]],
             ["reconstructed test images", ref["reconstructed_test"]]]
    return Table("Neutral classifier accuracy (paper Fig. 4a)", ["images", "accuracy"], rows,
                 "Fraction assigned to the intended label. The paper reports >= 0.9 on MNIST.")


def _fid_table(m: dict) -> Table:
    fid = m["fid"]
    rows = [[r["name"], r["mean"], r["std"], r.get("mifid_mean", ""), r.get("mifid_std", ""),
             r["seeds"], r["sample_size"], r["features"]] for r in fid["rows"].values()]
    return Table(
        "FID (paper Table 1)", ["pair", "mean", "std", "MiFID mean", "MiFID std", "seeds",
                                "images per side", "feature network"], rows,
        f"Feature choice: {fid['features_note']}. The Org vs Org row compares two "
        "disjoint samples of real images: no FID at this sample size can go below it. "
        "Paper (MNIST, Inception): Org vs Gen 16.3, Org vs Recon 13.9, Recon vs Gen 3.03. "
        "MiFID (torchmetrics, cosine eps 0.1) is FID divided by a memorisation distance: "
        "the mean cosine distance from each generation's features to its nearest "
        "training image's, when that mean is below eps (else 1, and MiFID = FID); copies "
        "drive it towards 0 and MiFID up. Its Org vs Org value (two disjoint halves of the "
        "training images) is the reference for images that are not copies.")


def _fidelity_table(f: dict) -> Table:
    rows = [[r["name"], r["precision"], r["recall"], r["density"], r["coverage"], r["real"],
             r["generated"]] for r in f["rows"].values()]
    return Table(
        "Fidelity and diversity apart: precision, recall, density, coverage",
        ["pair", "precision", "recall", "density", "coverage", "real images",
         "generated images"], rows,
        f"prdc (Kynkäänniemi et al. 2019; Naeem et al. 2020), k = {f['nearest_k']}, in "
        f"{f['features']} features, against one fixed sample of real training images. "
        "Precision and density: how much of the set lies where real images are (realism; "
        "density can pass 1 where generations crowd dense real regions). Recall and coverage: "
        "how much of the real distribution the set reaches (diversity). The Org vs Org row is "
        "what disjoint real images score at this size; identical sets score 1 on all four.")


def _novelty_table(m: dict) -> Table:
    rows = [[name, v["copy_fraction"], v["expected_fraction"], v["near_duplicate_fraction"],
             v["test_near_duplicate_fraction"], v["median_ratio"], v["threshold"]]
            for name, v in ((k, m["novelty"][k]) for k in ("pixel", "feature"))]
    return Table(
        "Novelty and memorisation (paper Fig. 6)",
        ["space", "flagged as copies", "expected by chance", "near-duplicates among gens",
         "same among test images", "median NN distance gen / test",
         "copy threshold (all classes)"], rows,
        "A generation is flagged when it is closer to its nearest training image than "
        f"the closest {m['novelty']['copy_quantile']:g} of real test images of its class "
        "are (copy threshold: the same over all classes); novel "
        "generations are flagged at about the chance rate, copies all are. A near-duplicate "
        "is a generation whose nearest other generation is closer than that threshold; "
        "the same fraction among as many real test images is the chance level.")


def _trained_table(trained: list[dict]) -> Table:
    def pm(t: dict, key: str) -> str:
        if t[key] is None:
            return "-"
        std = t.get(f"{key}_std")
        return f"{t[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    return Table(
        "Trained on generated images (Classification Accuracy Score, Ravuri & Vinyals 2019)",
        ["result", "generated images", "real images", "real share of each batch",
         "weight of a generated image", "fine-tuned on real (epochs)", "network", "epochs",
         "seeds", "validation accuracy", "real test accuracy"],
        [[t["name"], t["generated_rows"], t["real_images"], t["real_fraction"],
          t["generated_weight"], t["finetune_epochs"], t["network"], t["epochs"], t["seeds"],
          pm(t, "val_accuracy"), pm(t, "test_accuracy")] for t in trained],
        "Each row is a jobs/train_on_generated.py result: a classifier trained from scratch "
        "on the images named, once per model seed (mean ± sample standard deviation over "
        "seeds); each seed keeps the epoch that scores best on the run's holdout split (real "
        "training images, never the test set), and only that model is tested, once, on the "
        "real test set (a row with validation '-' predates this protocol: one seed, its last "
        "epoch). Generated-only rows against the real-only row give CAS; a small real subset "
        "with and without generations gives the low-data gain.")


def _blend_table(blends: dict) -> Table:
    return Table(
        "Original : reconstruction blends (paper Fig. 7b)",
        ["reconstruction share r", "FID vs real", "neutral accuracy", "images"],
        [[r["ratio"], r["fid"], r["neutral_accuracy"], r["images"]] for r in blends["rows"]],
        f"(1 - r) x + r dec(enc(x)) of real test images against real training images, in "
        f"{blends['features']} features; r = 0 is the real-vs-real floor at this size.")


def _autoencoder_table(ae: dict) -> Table:
    return Table(
        "The classifier's code against an autoencoder's (paper Fig. 3)",
        ["code", "test MAE", "test SSIM", "trained on"],
        [["classifier + decoder (this run)", ae["run_test_mae"], ae["run_test_ssim"],
          "labels, then reconstruction"],
         ["autoencoder, same encoder and decoder", ae["test_mae"], ae["test_ssim"],
          f"reconstruction only ({ae['images']} images, {ae['epochs']} epochs)"]],
        "The autoencoder keeps what reconstruction needs; the classifier keeps what "
        "separates classes, so its classes form the convex clusters the generator mixes in "
        "(figure latent_spaces).")


def _run_acceptance_table(acc: dict) -> Table:
    return Table("Filter acceptance measured by jobs/train.py",
                 ["n", "latent step", "image step given latent", "both steps"],
                 [[f"n = {n}", a.get("latent_step", float("nan")),
                   a.get("image_step_given_latent", float("nan")),
                   a.get("accepted", float("nan"))]
                  for n, a in sorted(acc.items(), key=lambda kv: int(kv[0]))])


# the pictures, with their captions


def report_figures(cfg: EvalConfig, r: Results) -> tuple[list[Figure], list[str]]:
    """The report's figures (PNG bytes + title + caption), drawn from the stages' results, and
    the warnings about figures left out."""
    made = [_accuracy_figure(cfg, r), _interpolation_figure(r), _overlay_figure(cfg, r),
            *_match_figures(cfg, r), _distance_figure(cfg, r), _embedding_figure(r),
            _latent_spaces_figure(r), _blend_figure(r), _acceptance_figure(cfg, r)]
    warnings = [] if r.pictures.overlays else [
        "the generated set has no parent_ids; the parents overlay is left out"]
    return [f for f in made if f is not None], warnings


def _accuracy_figure(cfg: EvalConfig, r: Results) -> Figure:
    return Figure(
        "neutral_accuracy", "Neutral classifier accuracy on generations (paper Fig. 4a)",
        f"Fraction of {len(r.generations)} generations that the neutral "
        f"ResNet-{cfg.neutral_depth} assigns to their intended class, per class and number of "
        "parents n; the dashed line is its accuracy on real test images.",
        figs.neutral_accuracy_bars(r.scores.generations, r.inputs.data.class_names,
                                   r.scores.reference["real_test"]))


def _interpolation_figure(r: Results) -> Figure | None:
    if not r.pictures.interpolation:
        return None
    from regene_ray.evaluation.figure_data import INTERPOLATION_RATIOS

    return Figure(
        "interpolation", "Interpolation strips (paper Fig. 5)",
        "Left and right: two real training images of one class. Between them: decoded "
        "convex mixes (1 - r) z_A + r z_B of their codes for r = 0.1 ... 0.9, unfiltered; "
        "the frame says whether the mix passes both filter steps.",
        figs.interpolation_strips(r.pictures.interpolation, INTERPOLATION_RATIOS))


def _overlay_figure(cfg: EvalConfig, r: Results) -> Figure | None:
    if not r.pictures.overlays:
        return None
    return Figure(
        "parents_overlay", "Generations beside an overlay of their parents",
        "Each framed generation is followed by the pixel-wise mean of its n parents' real "
        "training images: a generation that is just the blend of its parents would look "
        "like the overlay.", figs.parents_overlay(r.pictures.overlays, cfg.overlay_per_n))


def _match_figures(cfg: EvalConfig, r: Results) -> list[Figure]:
    train_x, out = r.inputs.data.train_x, []
    for key, pick, title, what in (
            ("closest_matches", "random", "Closest training images (paper Fig. 6)",
             "randomly chosen generations"),
            ("closest_matches_nearest", "closest",
             "Closest training images of the least novel generations",
             "the generations nearest to the training set in pixels (where copies would show)")):
        ms = r.novelty.matches[pick]
        columns = [
            ("MSE", train_x[[m["mse"]["train_index"] for m in ms]].numpy(),
             [f"mse {m['mse']['distance']:.4f}" for m in ms]),
            ("SSIM", train_x[[m["ssim"]["train_index"] for m in ms]].numpy(),
             [f"ssim {m['ssim']['ssim']:.3f}" for m in ms]),
            (f"features (ResNet-{cfg.neutral_depth})",
             train_x[[m["feature"]["train_index"] for m in ms]].numpy(),
             [f"d {m['feature']['distance']:.3g}" for m in ms]),
        ]
        out.append(Figure(
            key, title,
            f"Each of {len(ms)} {what} (first column) beside the training image nearest by "
            "pixel MSE, most similar by SSIM (exhaustive search) and nearest in the neutral "
            "classifier's features; a red frame marks a likely copy.",
            figs.closest_matches(r.novelty.generations[[m["position"] for m in ms]].numpy(),
                                 columns, [m["flagged"] for m in ms])))
    return out


def _distance_figure(cfg: EvalConfig, r: Results) -> Figure:
    nov = r.novelty
    return Figure(
        "nn_distances", "Nearest-neighbour distances: generations vs real test images",
        f"Distance from each of {len(nov.generations)} generations and {nov.test_count} real "
        "test images to its nearest training image. Real test images are novel by "
        f"construction; the red line is their {cfg.copy_quantile:g} quantile over all classes "
        "(generations are flagged against the same quantile of their own class).",
        figs.distance_histograms({k: nov.raw[k] for k in ("pixel", "feature")}))


def _embedding_figure(r: Results) -> Figure:
    e = r.pictures.embedding
    return Figure(
        "latent_embedding", "Latent space (paper Fig. 3)",
        f"{e.method} of {len(e.points)} training codes coloured by class; black lines are "
        "convex paths between two same-class codes, and one triangle is the hull of three "
        "(n = 3).",
        figs.latent_embedding(e.points, e.labels, r.inputs.data.class_names, e.paths, e.method,
                              e.vertices))


def _latent_spaces_figure(r: Results) -> Figure | None:
    ae = r.autoencoder
    if ae is None:
        return None
    return Figure(
        "latent_spaces", "Classifier codes beside autoencoder codes (paper Fig. 3)",
        f"{ae.method} of the codes of the same real test images: left, the run's "
        "classifier; right, an autoencoder with the same encoder architecture and code width "
        "trained for reconstruction only.",
        figs.latent_spaces_side_by_side(ae.embedding, ae.labels, r.inputs.data.class_names,
                                        ae.method))


def _blend_figure(r: Results) -> Figure:
    return Figure(
        "blends", "Original : reconstruction blends (paper Fig. 7b)",
        "FID against real training images (left axis) and neutral accuracy (right axis) of "
        "(1 - r) x + r dec(enc(x)) for real test images x.",
        figs.blend_curves(r.blends.rows, r.blends.features))


def _acceptance_figure(cfg: EvalConfig, r: Results) -> Figure:
    weights = next(iter(r.acceptance.values()), {}).get("weights", "uniform")
    return Figure(
        "acceptance", "Acceptance per class and filter step",
        f"{cfg.acceptance_per_class} candidates per class and n, mixed with {weights} weights "
        "(the judged generations' own; uniform where their folder records none); left: kept "
        "by the latent filter, right: kept by both steps.",
        figs.acceptance_bars(r.acceptance, r.inputs.data.class_names))
