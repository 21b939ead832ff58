"""Multi-objective asynchronous successive halving (MO-ASHA): its rungs, decisions and state
file, in plain Python (no Ray; regene_ray.search.tuner.MOASHAScheduler hands it Tune's results).

Ray Tune's ASHA ranks the trials at a rung on one number. MO-ASHA (Schmucker et al. 2021,
"Multi-objective multi-fidelity hyperparameter optimization with application to fairness")
keeps the asynchronous rungs and replaces the ranking by non-dominated sorting with NSGA-II's
crowding distance as the tie-break (regene_ray.search.pareto.promotion_order): when a trial
first reaches rung r (a progress milestone grace * eta^k), its objective vector is compared
with those of every trial recorded at r so far, itself included, and it goes on only if it is
among the best ceil(n / eta) of them. As in Ray's ASHA (the stopping variant), early trials are
judged against few others, and a trial is never stopped for results that came after it.

In this project the objectives at a rung are (val_accuracy, val_mae_early), and the rungs are
classifier epochs (regene_ray.search.tuner.make_moasha): val_mae_early is then a cheap MAE
estimate (a linear decoder fitted in closed form on a subset, regene_ray.train.ridge_decoder_mae)
that the trial computes only at the rungs (`milestones`). Decoder-phase reports carry the
measured val_mae in it, so the class also works with rungs that reach into the decoder phase
(larger max_t), but that was measured worse (BENCHMARKS.md section 11). A vector with a NaN or
a missing value makes no decision and is not recorded.

State: Tune does not checkpoint a scheduler (its experiment state leaves `_scheduler_alg`
out), so a restored ASHA starts with empty rungs. MOASHA writes its rungs to `state_file`
(moasha_rungs.yaml in the sweep's driver folder) after every decision and reads them back on
first use, so a resumed sweep keeps judging against the trials that came before the kill. Not
JSON: on restore Tune copies every .json and .pkl file of the experiment folder into its
staging folder and syncs that back up while the sweep runs, which put the rungs as they were at
the restore back over every later decision.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import yaml

from regene_ray.search.pareto import promotion_order
from regene_ray.storage import atomic_write

log = logging.getLogger(__name__)

CONTINUE, STOP = "CONTINUE", "STOP"  # the decisions (the strings of Tune's TrialScheduler)


def milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """Rung milestones grace * eta^k below max_t (a trial at max_t has finished anyway)."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(int(round(t)))
        t *= reduction_factor
    return sorted(set(out))


class MOASHA:
    """MO-ASHA's rungs: asynchronous successive halving that promotes by non-dominated sorting.

    Args:
        metrics: the objective keys of a result, e.g. ["val_accuracy", "val_mae_early"].
        modes: "max" or "min" per metric.
        max_t: the progress at which a trial is complete.
        grace_period: the first rung.
        reduction_factor: eta; ceil(n / eta) of the n trials at a rung go on.
        state_file: where the rungs are kept across a restart (None: in memory only).
    """

    def __init__(self, metrics: list[str], modes: list[str], *, max_t: int,
                 grace_period: int = 1, reduction_factor: float = 2.0,
                 state_file: str | Path | None = None):
        if len(metrics) != len(modes) or len(metrics) < 2:
            raise ValueError(f"MO-ASHA needs two or more metrics with one mode each, got "
                             f"{metrics} / {modes}")
        if any(m not in ("max", "min") for m in modes):
            raise ValueError(f"modes {modes}: each must be 'max' or 'min'")
        if not (grace_period >= 1 and max_t > grace_period and reduction_factor > 1):
            raise ValueError(f"need 1 <= grace_period ({grace_period}) < max_t ({max_t}) and "
                             f"reduction_factor ({reduction_factor}) > 1")
        self.metrics, self.modes = list(metrics), list(modes)
        self.max_t, self.eta = max_t, reduction_factor
        self.milestones = milestones(grace_period, max_t, reduction_factor)
        self.rungs: dict[int, dict[str, list[float]]] = {m: {} for m in self.milestones}
        self.decisions: list[dict] = []  # every decision, in order (for the sweep's outputs)
        self.state_file = None if state_file is None else Path(state_file)
        self._loaded = False

    # state

    def _load(self) -> None:
        """On first use: the rungs a killed driver left (see the module docstring)."""
        if self._loaded:
            return
        self._loaded = True
        path = self.state_file
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
        if self.state_file is None:
            return
        state = {"metrics": self.metrics, "modes": self.modes, "eta": self.eta,
                 "rungs": {str(m): r for m, r in self.rungs.items()},
                 "decisions": self.decisions}
        atomic_write(self.state_file, lambda tmp: Path(tmp).write_text(yaml.safe_dump(state)))

    # decisions

    def judge(self, trial_id: str, t: float, vector: list[float]) -> str:
        """Record `vector` at the highest milestone <= t that the trial has not passed yet and
        say whether it goes on (CONTINUE) or stops (STOP)."""
        self._load()
        for m in reversed(self.milestones):
            if t < m:
                continue
            rung = self.rungs[m]
            if trial_id in rung:
                return CONTINUE  # already judged here (a repeated report)
            ids = [*rung, trial_id]
            values = np.array([*rung.values(), vector])
            order = promotion_order(values, [mode == "max" for mode in self.modes])
            place = int(np.flatnonzero(order == len(ids) - 1)[0])
            keep = math.ceil(len(ids) / self.eta)
            rung[trial_id] = list(vector)
            action = CONTINUE if place < keep else STOP
            self.decisions.append({"trial_id": trial_id, "milestone": m, "place": place,
                                   "of": len(ids), "kept": keep, "action": action,
                                   **dict(zip(self.metrics, vector, strict=True))})
            self._save()
            return action
        return CONTINUE

    def on_result(self, trial_id: str, t: float | None, result: dict) -> str:
        """The decision for a trial's report `result` at progress `t` (None: no progress key):
        STOP for a trial stopped before a kill that Tune restored and runs on; CONTINUE for a
        report without every objective; else `judge`."""
        if t is None:
            return CONTINUE
        self._load()
        if any(d["trial_id"] == trial_id and d["action"] == STOP for d in self.decisions):
            return STOP
        try:
            vector = [float(result[m]) for m in self.metrics]
        except (KeyError, TypeError, ValueError):
            return CONTINUE
        if any(math.isnan(x) for x in vector):
            return CONTINUE
        return self.judge(trial_id, t, vector)

    def describe(self) -> str:
        stopped = sum(d["action"] == STOP for d in self.decisions)
        rungs = ", ".join(f"t={m}: {len(r)}" for m, r in self.rungs.items())
        return f"MO-ASHA ({' / '.join(self.metrics)}): {stopped} stopped; rungs {rungs}"
