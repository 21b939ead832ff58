"""Search outputs, pure pandas / matplotlib / optuna (no Ray): the trial table with its Pareto
flags and hypervolume history, the cross-check against Optuna's own front, best_config.yaml by
the paper's rule (the front's knee point beside it, in its comments), pareto.parquet,
pareto.png, hypervolume.png and summary.json. Tune's ResultGrid comes in as a plain iterable of
results.

Hypervolume: the area of (accuracy, MAE) space dominated by the front of the trials finished so
far, bounded by HV_REFERENCE = (accuracy 0, MAE 1), the worst value of each objective, so every
measured trial counts and sweeps of one space compare. A trial's `hypervolume` in
trials.parquet is that area just after it finished (trials in order of finishing).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from regene_ray.config import to_dict
from regene_ray.search.pareto import (
    choose_within_tolerance,
    hypervolume_2d,
    knee_point,
    pareto_mask,
)
from regene_ray.search.space import SearchSpace
from regene_ray.storage import Storage, atomic_write

log = logging.getLogger(__name__)

METRICS = ["val_accuracy", "val_mae"]  # the two objectives, in this order


MODES = ["max", "min"]


STOPPED_EARLY = "stopped_early"  # Optuna user attribute: the MAE told is not a measured one
WORST_MAE = 1.0  # val_mae placeholder before the decoder has trained (MAE of [0,1] pixels <= 1)


STUDY_FILE = "optuna.sqlite"


SPACE_FILE = "search_space.yaml"


TRIALS_FILE = "trials.parquet"


PARETO_PNG = "pareto.png"


BEST_CONFIG = "best_config.yaml"


SUMMARY_FILE = "summary.json"


PARETO_FILE = "pareto.parquet"


HYPERVOLUME_PNG = "hypervolume.png"


MOASHA_FILE = "moasha_rungs.yaml"  # the MO-ASHA scheduler's rungs (regene_ray.search.moasha;
# not .json: Tune re-uploads a restored experiment's .json files over later writes)


HV_REFERENCE = (0.0, WORST_MAE)  # (accuracy, MAE): the worst of each objective


OUTPUT_FILES = (SPACE_FILE, STUDY_FILE, TRIALS_FILE, PARETO_PNG, BEST_CONFIG, SUMMARY_FILE,
                PARETO_FILE, HYPERVOLUME_PNG, MOASHA_FILE)


def study_url(exp_dir: Path) -> str:
    return f"sqlite:///{Path(exp_dir).resolve() / STUDY_FILE}"


def trials_table(grid, space: SearchSpace) -> pd.DataFrame:
    """One row per trial: searched values, final metrics, status (TERMINATED, STOPPED, ERROR)."""
    rows, never_ran = [], 0
    for r in grid:
        m = r.metrics or {}
        if r.config is None:  # cut off (--time-budget-s) before it ever reported
            never_ran += 1
            continue
        cfg = space.run_config(r.config)  # epochs may be searched: the step count is per trial
        n_steps = cfg.classifier_training.epochs + cfg.decoder_training.epochs
        finished = m.get("phase") == "decoder" and m.get("epoch") == n_steps - 1
        status = "ERROR" if r.error is not None else ("TERMINATED" if finished else "STOPPED")
        rows.append({
            "trial_id": m.get("trial_id") or Path(r.path).name,
            **{k: r.config.get(k) for k in space.search},
            "val_accuracy": float(m.get("val_accuracy", np.nan)),
            "val_mae": float(m["val_mae"]) if finished else np.nan,
            "val_ssim": float(m["val_ssim"]) if finished else np.nan,
            "latent_sparsity": float(m.get("latent_sparsity", np.nan)),
            "status": status,
            "error": str(r.error).strip().splitlines()[-1][:300] if r.error is not None else "",
            "epochs_done": int(m.get("training_iteration", 0) or 0),
            "time_total_s": float(m.get("time_total_s", np.nan) or np.nan),
            "finished_at": float(m.get("timestamp", np.nan) or np.nan),  # unix s, last report
            "node_id": str(m.get("node_id", "")),
        })
    if never_ran:
        log.info("%d trial(s) were cut off before their first report; left out", never_ran)
    columns = ["trial_id", *space.search, "val_accuracy", "val_mae", "val_ssim",
               "latent_sparsity", "status", "error", "epochs_done", "time_total_s",
               "finished_at", "node_id"]  # also the columns of a sweep where none reported
    df = pd.DataFrame(rows, columns=columns).sort_values("trial_id", kind="stable")
    df = df.reset_index(drop=True)
    for k in space.search:  # mixed-type choice columns (e.g. None and numbers) as text
        if df[k].map(type).nunique() > 1:
            df[k] = df[k].map(repr)
    if len(df):
        df["is_pareto"] = pareto_mask(df[METRICS].to_numpy(), [True, False])
    else:
        df["is_pareto"] = pd.Series(dtype=bool)
    df["hypervolume"] = hypervolume_history(df)
    return df


def hypervolume_history(table: pd.DataFrame, ref: tuple[float, float] = HV_REFERENCE
                        ) -> np.ndarray:
    """Per row: the hypervolume of the rows finished at or before it (by finished_at, ties and
    unknown times in row order). Rows without both metrics add nothing but get the value too."""
    out = np.zeros(len(table))
    if not len(table):
        return out
    when = table["finished_at"].to_numpy(float) if "finished_at" in table else \
        np.full(len(table), np.nan)
    order = np.lexsort((np.arange(len(table)), np.nan_to_num(when, nan=np.inf)))
    acc, mae = table.val_accuracy.to_numpy(float), table.val_mae.to_numpy(float)
    for k in range(len(order)):
        seen = order[:k + 1]
        out[order[k]] = hypervolume_2d(acc[seen], mae[seen], ref)
    return out


def optuna_front(exp_dir: Path, study_name: str) -> list[tuple[float, float]]:
    """(accuracy, MAE) of Optuna's best_trials among the trials told a measured MAE, read back
    from the sqlite storage.

    Trials stopped before their decoder trained were told an early estimate or the WORST_MAE
    placeholder (user attribute STOPPED_EARLY; studies of earlier versions: the placeholder
    only); Optuna's front is taken without them, in an in-memory copy of the study.
    """
    import optuna

    study = optuna.load_study(study_name=study_name, storage=study_url(exp_dir))
    measured = [t for t in study.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.COMPLETE,))
                if not t.user_attrs.get(STOPPED_EARLY) and t.values[1] < WORST_MAE]
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(measured)
    return sorted((t.values[0], t.values[1]) for t in copy.best_trials)


def crosscheck_front(table: pd.DataFrame, exp_dir: Path, study_name: str) -> dict:
    """Compare our is_pareto rows with Optuna's best_trials (as sets of objective values)."""
    ours = sorted(map(tuple, table.loc[table.is_pareto, METRICS].to_numpy().tolist()))
    theirs = optuna_front(exp_dir, study_name)
    same = len(ours) == len(theirs) and all(
        np.allclose(a, b, rtol=0, atol=1e-9) for a, b in zip(ours, theirs, strict=True))
    if not same:
        log.warning("Pareto front differs from Optuna's study.best_trials: ours %s, optuna %s",
                    ours, theirs)
    return {"matches_optuna_best_trials": bool(same), "optuna_front": theirs}


def write_outputs(table: pd.DataFrame, space: SearchSpace, exp_dir: Path, study_name: str,
                  tolerance: float, where: Storage | None = None) -> dict:
    """trials.parquet, pareto.png, best_config.yaml and the printed front; returns the summary.

    `where` names the experiment's storage in messages (the files go to local exp_dir)."""
    where = where or Storage(exp_dir)
    idx = choose_within_tolerance(table.val_accuracy.to_numpy(), table.val_mae.to_numpy(),
                                  tolerance) if len(table) else -1
    knee = knee_point(table.val_accuracy.to_numpy(), table.val_mae.to_numpy()) \
        if len(table) else -1
    table = table.assign(chosen=np.arange(len(table)) == idx,
                         knee=np.arange(len(table)) == knee)
    atomic_write(exp_dir / TRIALS_FILE, lambda tmp: table.to_parquet(tmp, index=False))
    front = table[table.is_pareto].sort_values("val_mae", kind="stable")
    atomic_write(exp_dir / PARETO_FILE, lambda tmp: front.to_parquet(tmp, index=False))
    plot_front(table, exp_dir / PARETO_PNG, tolerance)
    plot_hypervolume(table, exp_dir / HYPERVOLUME_PNG)
    counts = table.status.value_counts().to_dict()
    summary = {"trials": len(table), "status_counts": counts, "accuracy_tolerance": tolerance,
               "rule": "lowest val_mae among trials with val_accuracy >= best - tolerance",
               "hypervolume": float(table.hypervolume.max()) if len(table) else 0.0,
               "hypervolume_reference": {"val_accuracy": HV_REFERENCE[0],
                                         "val_mae": HV_REFERENCE[1]}}
    summary.update(crosscheck_front(table, exp_dir, study_name))
    if idx < 0:
        seen = counts or "no trial reported"
        raise RuntimeError(f"no trial in {where} finished with both metrics ({seen}): see the "
                           f"trial errors in {where.display(TRIALS_FILE)}, or give the sweep "
                           "more time (--time-budget-s)")
    best, kn = table.iloc[idx], table.iloc[knee]
    params = {k: _plain(best[k]) for k in space.search}
    knee_params = {k: _plain(kn[k]) for k in space.search}
    cfg = space.run_config(params, final=True)
    same = "the same trial" if knee == idx else "another trial"
    header = (f"# Chosen by the architecture search in {where}\n"
              f"# trial {best.trial_id}: val_accuracy {best.val_accuracy:.4f}, val_mae "
              f"{best.val_mae:.4f}, latent_sparsity {best.latent_sparsity:.3f}\n"
              f"# rule: lowest val_mae among trials with val_accuracy >= best - {tolerance}\n"
              f"# searched: {json.dumps(params)}\n"
              f"# knee point of the front ({same}; the point farthest beyond the line joining "
              f"the front's ends, in scaled objectives):\n"
              f"#   trial {kn.trial_id}: val_accuracy {kn.val_accuracy:.4f}, val_mae "
              f"{kn.val_mae:.4f}\n"
              f"#   searched: {json.dumps(knee_params)}\n")
    atomic_write(exp_dir / BEST_CONFIG, lambda tmp: Path(tmp).write_text(
        header + yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    summary["chosen"] = {"trial_id": best.trial_id, **params,
                         "val_accuracy": float(best.val_accuracy), "val_mae": float(best.val_mae)}
    summary["knee"] = {"trial_id": kn.trial_id, **knee_params,
                       "val_accuracy": float(kn.val_accuracy), "val_mae": float(kn.val_mae)}
    log.info("%s", front_table(table))
    log.info("chosen: trial %s (val_accuracy %.4f, val_mae %.4f) -> %s", best.trial_id,
             best.val_accuracy, best.val_mae, where.display(BEST_CONFIG))
    return summary


def _plain(v):
    """numpy scalars -> Python values for YAML."""
    return v.item() if hasattr(v, "item") else v


def front_table(table: pd.DataFrame) -> str:
    """The Pareto front as text, sorted by MAE."""
    front = table[table.is_pareto].sort_values("val_mae")
    cols = ["trial_id", *[c for c in table.columns if "." in c], "val_accuracy", "val_mae",
            "latent_sparsity", "chosen"]
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        return f"Pareto front ({len(front)} of {len(table)} trials):\n" + \
            front[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}")


def plot_hypervolume(table: pd.DataFrame, path: Path) -> None:
    """Hypervolume of the finished trials' front against seconds since the first trial began."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.dropna(subset=["finished_at"]).sort_values("finished_at", kind="stable")
    start = (t.finished_at - t.time_total_s.fillna(0)).min() if len(t) else 0.0
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.step(t.finished_at - start, t.hypervolume, where="post", c="tab:blue")
    ax.scatter(t.finished_at - start, t.hypervolume, s=12, c="tab:blue")
    ax.set_xlabel("seconds since the first trial started")
    ax.set_ylabel(f"hypervolume (ref: accuracy {HV_REFERENCE[0]}, MAE {HV_REFERENCE[1]})")
    ax.set_title(f"{len(t)} trials, {int(t.is_pareto.sum()) if len(t) else 0} on the front")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def plot_front(table: pd.DataFrame, path: Path, tolerance: float) -> None:
    """Accuracy vs MAE: every finished trial, the front as a step line, the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table.dropna(subset=METRICS)
    front = done[done.is_pareto].sort_values("val_mae")
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter(done.val_mae, done.val_accuracy, c="0.6", s=25, label="trial")
    ax.plot(front.val_mae, front.val_accuracy, "o-", c="tab:red", drawstyle="steps-post",
            label="Pareto front")
    knee = done[done.knee] if "knee" in done else done.iloc[:0]
    if len(knee):
        ax.scatter(knee.val_mae, knee.val_accuracy, marker="D", s=90, facecolors="none",
                   edgecolors="tab:blue", lw=1.5, zorder=6, label="knee point")
    chosen = done[done.chosen]
    if len(chosen):
        ax.scatter(chosen.val_mae, chosen.val_accuracy, marker="*", s=250, c="gold",
                   edgecolors="k", zorder=5, label="chosen")
        ax.axhline(done.val_accuracy.max() - tolerance, ls="--", c="0.4", lw=0.8,
                   label=f"best accuracy - {tolerance}")
    ax.set_xlabel("decoder val MAE (lower is better)")
    ax.set_ylabel("classifier val accuracy (higher is better)")
    ax.set_title(f"{len(done)} finished trials, {int(front.shape[0])} on the front")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
