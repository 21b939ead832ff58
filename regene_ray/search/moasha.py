"""Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune scheduler.

Ray Tune's ASHA ranks the trials at a rung on one number. MO-ASHA (Schmucker et al. 2021,
"Multi-objective multi-fidelity hyperparameter optimization with application to fairness")
keeps the asynchronous rungs and replaces the ranking by non-dominated sorting with NSGA-II's
crowding distance as the tie-break (regene_ray.search.pareto.promotion_order): when a trial
first reaches rung r (a `time_attr` milestone grace * eta^k), its objective vector is compared
with those of every trial recorded at r so far, itself included, and it goes on only if it is
among the best ceil(n / eta) of them. As in Ray's ASHA (the stopping variant), early trials are
judged against few others, and a trial is never stopped for results that came after it.

In this project the objectives at a rung are (val_accuracy, val_mae_early), and the rungs are
classifier epochs (regene_ray.search.tuner.make_moasha): val_mae_early is then a cheap MAE
estimate (a linear decoder fitted in closed form on a subset, regene_ray.train.ridge_decoder_mae)
that the trainable computes only at the rungs (`milestones`). Decoder-phase reports carry the
measured val_mae in it, so the class also works with rungs that reach into the decoder phase
(larger max_t), but that was measured worse (BENCHMARKS.md section 11). A vector with a NaN or
a missing value makes no decision and is not recorded.

State: Tune does not checkpoint a scheduler (its experiment state leaves `_scheduler_alg`
out), so a restored ASHA starts with empty rungs. This scheduler writes its rungs to a small
YAML file after every decision (`use_state_folder` says where: the sweep's driver folder) and
reads them back on first use after a restore, so a resumed sweep keeps judging against the
trials that came before the kill. Not JSON: on restore Tune copies every .json and .pkl file of
the experiment folder into its staging folder and syncs that back up while the sweep runs, which
put the rungs as they were at the restore back over every later decision.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import yaml
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from regene_ray.search.outputs import MOASHA_FILE as STATE_FILE
from regene_ray.search.pareto import promotion_order
from regene_ray.storage import atomic_write

log = logging.getLogger(__name__)

_state_folder: Path | None = None  # where schedulers read and write their rungs from now on


def use_state_folder(folder: str | Path | None) -> None:
    """Make MO-ASHA schedulers keep their rungs in `folder`/moasha_rungs.yaml (None: memory)."""
    global _state_folder
    _state_folder = None if folder is None else Path(folder)


def milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """Rung milestones grace * eta^k below max_t (a trial at max_t has finished anyway)."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(int(round(t)))
        t *= reduction_factor
    return sorted(set(out))


class MOASHAScheduler(FIFOScheduler):
    """MO-ASHA: asynchronous successive halving that promotes by non-dominated sorting.

    Args:
        metrics: the objective keys of a result, e.g. ["val_accuracy", "val_mae_early"].
        modes: "max" or "min" per metric.
        time_attr: the monotone progress key (default: training_iteration).
        max_t: the progress at which a trial is complete.
        grace_period: the first rung.
        reduction_factor: eta; ceil(n / eta) of the n trials at a rung go on.
    """

    def __init__(self, metrics: list[str], modes: list[str], *, max_t: int,
                 time_attr: str = "training_iteration", grace_period: int = 1,
                 reduction_factor: float = 2.0):
        if len(metrics) != len(modes) or len(metrics) < 2:
            raise ValueError(f"MO-ASHA needs two or more metrics with one mode each, got "
                             f"{metrics} / {modes}")
        if any(m not in ("max", "min") for m in modes):
            raise ValueError(f"modes {modes}: each must be 'max' or 'min'")
        if not (grace_period >= 1 and max_t > grace_period and reduction_factor > 1):
            raise ValueError(f"need 1 <= grace_period ({grace_period}) < max_t ({max_t}) and "
                             f"reduction_factor ({reduction_factor}) > 1")
        super().__init__()
        self._metric = None  # several objectives: nothing for Tune's single-metric checks
        self.metrics, self.modes = list(metrics), list(modes)
        self.time_attr, self.max_t, self.eta = time_attr, max_t, reduction_factor
        self.milestones = milestones(grace_period, max_t, reduction_factor)
        self.rungs: dict[int, dict[str, list[float]]] = {m: {} for m in self.milestones}
        self.decisions: list[dict] = []  # every decision, in order (for the sweep's outputs)
        self._loaded = False

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are fixed at construction

    # state

    def _state_path(self) -> Path | None:
        return None if _state_folder is None else _state_folder / STATE_FILE

    def _load(self) -> None:
        """On first use: the rungs a killed driver left (see the module docstring)."""
        if self._loaded:
            return
        self._loaded = True
        path = self._state_path()
        if path is None or not path.is_file():
            return
        try:
            state = yaml.safe_load(path.read_text())
            rungs = {int(m): {t: [float(x) for x in v] for t, v in rec.items()}
                     for m, rec in state["rungs"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
            raise ValueError(f"{path} is not a MO-ASHA state this version wrote ({e}); move it "
                             "away to resume with empty rungs") from e
        if sorted(rungs) != self.milestones:
            raise ValueError(f"{path} has rungs {sorted(rungs)}, this sweep {self.milestones}")
        self.rungs = rungs
        self.decisions = list(state.get("decisions", []))
        log.info("MO-ASHA: restored %d rung records from %s",
                 sum(len(r) for r in rungs.values()), path)

    def _save(self) -> None:
        path = self._state_path()
        if path is None:
            return
        state = {"metrics": self.metrics, "modes": self.modes, "eta": self.eta,
                 "rungs": {str(m): r for m, r in self.rungs.items()},
                 "decisions": self.decisions}
        atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(state)))

    # decisions

    def _vector(self, result: dict) -> list[float] | None:
        try:
            v = [float(result[m]) for m in self.metrics]
        except (KeyError, TypeError, ValueError):
            return None
        return None if any(math.isnan(x) for x in v) else v

    def judge(self, trial_id: str, t: float, vector: list[float]) -> str:
        """Record `vector` at the highest milestone <= t that the trial has not passed yet and
        say whether it goes on (CONTINUE) or stops (STOP). Pure bookkeeping, no Tune objects."""
        self._load()
        for m in reversed(self.milestones):
            if t < m:
                continue
            rung = self.rungs[m]
            if trial_id in rung:
                return TrialScheduler.CONTINUE  # already judged here (a repeated report)
            ids = [*rung, trial_id]
            values = np.array([*rung.values(), vector])
            order = promotion_order(values, [mode == "max" for mode in self.modes])
            place = int(np.flatnonzero(order == len(ids) - 1)[0])
            keep = math.ceil(len(ids) / self.eta)
            rung[trial_id] = list(vector)
            action = TrialScheduler.CONTINUE if place < keep else TrialScheduler.STOP
            self.decisions.append({"trial_id": trial_id, "milestone": m, "place": place,
                                   "of": len(ids), "kept": keep, "action": action,
                                   **dict(zip(self.metrics, vector, strict=True))})
            self._save()
            return action
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        t = result.get(self.time_attr)
        if t is None:
            return TrialScheduler.CONTINUE
        self._load()
        if any(d["trial_id"] == trial.trial_id and d["action"] == TrialScheduler.STOP
               for d in self.decisions):  # stopped before a kill, restored by Tune: stop again
            return TrialScheduler.STOP
        vector = self._vector(result)
        if vector is None:
            return TrialScheduler.CONTINUE
        return self.judge(trial.trial_id, t, vector)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        pass  # a finished trial's rungs were recorded as it passed them

    def debug_string(self) -> str:
        stopped = sum(d["action"] == TrialScheduler.STOP for d in self.decisions)
        rungs = ", ".join(f"t={m}: {len(r)}" for m, r in self.rungs.items())
        return f"Using MO-ASHA ({' / '.join(self.metrics)}): {stopped} stopped; rungs {rungs}"
