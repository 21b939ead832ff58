"""The sweep's searcher on Ray Tune: Optuna's study behind Tune's OptunaSearch, and the search
algorithm around it that a resumed sweep brings back in line with the trial list it restores.

- `StudySearch`: OptunaSearch with metric=[val_accuracy, val_mae], mode=[max, min], a seeded
  sampler and an Optuna sqlite storage in the sweep's driver folder (optuna-dashboard opens it).
  Its saved state leaves the storage out (study.save_state), and `restore` reopens the study in
  the driver folder of the machine resuming.
- `SweepSearch`: Tune's SearchGenerator around ConcurrencyLimiter(StudySearch), which
  reconciles its restored state with the restored trial list.

Why the reconciling: Tune saves an experiment as three files, the trial list
(experiment_state-*.json), the search algorithm with its concurrency limiter
(search_gen_state-*.json) and the searcher (searcher-state-*.pkl), and uploads them to remote
storage one by one, perhaps seconds apart. A driver killed between two uploads leaves files of
different moments, and Tune restores each as it finds it. With a limiter older than the trial
list, a finished trial still holds the only slot: the limiter never suggests again, the
generator has not created enough trials to finish, and the resumed sweep waits forever; the
interrupted trial, unknown to the limiter, would also have its completion dropped before
Optuna heard of it. The trial list is what Tune runs, so it is the truth: after Tune restores
the search state, `SweepSearch` counts the trials it holds, frees the slots of trials that
finished or that it never recorded, holds one for each unfinished one, and tells Optuna of
every finished trial it has not heard of (a state newer than the trial list is the case
StudySearch.on_trial_complete already handles: a trial the study never asked for is asked for
again, with the config it ran with).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from pathlib import Path

from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from regene_ray.search import study
from regene_ray.search.outputs import METRICS, MODES, STOPPED_EARLY
from regene_ray.search.space import SearchSpace
from regene_ray.search.sync import driver_folder
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

FINISHED = (Trial.TERMINATED, Trial.ERROR)


class StudySearch(OptunaSearch):
    """OptunaSearch over `space` and both objectives, seeded, its study in the driver folder of
    `exp` (optuna.sqlite) wherever the searcher runs.

    Ray 2.60's OptunaSearch takes `storage=` (an optuna BaseStorage instance, not a URL) and
    `study_name=`, and creates the study with load_if_exists=True.
    """

    def __init__(self, space: SearchSpace, exp: Storage, study_name: str, num_samples: int,
                 sampler: str | None = None, startup: int | None = None):
        self.exp = exp
        super().__init__(study.optuna_distributions(space), metric=METRICS, mode=MODES,
                         sampler=study.make_sampler(sampler or space.sampler, space.seed,
                                                    num_samples, startup),
                         study_name=study_name, storage=study.open_storage(driver_folder(exp)))

    def __getstate__(self) -> dict:  # tuner.pkl: the live study comes back through restore()
        return {**self.__dict__, "_ot_study": None, "_storage": None, "_ot_trials": {}}

    def save(self, checkpoint_path: str) -> None:
        study.save_state(self.__dict__.copy(), checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        storage = study.open_storage(driver_folder(self.exp))
        self.__dict__.update(study.load_state(checkpoint_path, storage))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._ot_trials and trial_id not in self._completed_trials:
            # a trial list newer than this state (see the module docstring) resumes a trial
            # that this state never asked for. Ask again, for the config the trial ran with.
            config = (result or {}).get("config")
            if config is None:
                log.warning("trial %s is unknown to the restored Optuna study and reported no "
                            "config: it is left out of optuna.sqlite", trial_id)
                return
            self._ot_study.enqueue_trial(config)
            self._ot_trials[trial_id] = self._ot_study.ask(fixed_distributions=self._space)
        if not error and (result or {}).get("phase") == "classifier":
            # stopped before its decoder trained: the MAE it is told is an early estimate (or
            # the WORST_MAE placeholder), which outputs.optuna_front leaves out of the front
            self._ot_trials[trial_id].set_user_attr(STOPPED_EARLY, True)
        super().on_trial_complete(trial_id, result, error)

    def suggest(self, trial_id: str):
        if self._ot_study is None:  # Tune logged why restore() failed and went on without it
            raise RuntimeError(
                "the sweep's Optuna searcher state could not be restored (see the 'Failed to "
                "restore the run state' error above); rerun with a new --name to start afresh")
        return super().suggest(trial_id)


def saved_trials(folder: str | os.PathLike) -> list[Trial]:
    """The trials of the newest experiment state in `folder` (Tune's rule: the greatest file
    name), as Tune restores them: status, config and last result."""
    names = fnmatch.filter(os.listdir(folder), TuneController.CKPT_FILE_TMPL.format("*"))
    if not names:
        return []
    data = json.loads(Path(folder, max(names)).read_text())
    trials = []
    for trial_state, run_metadata in data["trial_data"]:
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        trials.append(trial)
    return trials


class SweepSearch(SearchGenerator):
    """Tune's SearchGenerator around ConcurrencyLimiter(`searcher`), which on restore follows
    the trial list restored beside it (see the module docstring)."""

    def __init__(self, searcher: StudySearch, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent))

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        self.reconcile(saved_trials(dirpath))

    def reconcile(self, trials: list[Trial]) -> None:
        """Bring the restored counter, limiter and study in line with `trials`."""
        limiter, base = self.searcher, self.searcher.searcher
        status = {t.trial_id: t.status for t in trials}
        for trial in trials:  # finished: Optuna told once (again: only a warning)
            if trial.status in FINISHED and trial.trial_id not in base._completed_trials:
                error = trial.status == Trial.ERROR
                base.on_trial_complete(trial.trial_id, None if error else trial.last_result,
                                       error=error)
        stale = {t for t in limiter.live_trials if status.get(t, Trial.TERMINATED) in FINISHED}
        for t in stale - status.keys():  # asked for, never in the list: FAIL, asked anew
            if t in base._ot_trials:
                base.on_trial_complete(t, error=True)
        unfinished = {t for t, s in status.items() if s not in FINISHED}
        live = (set(limiter.live_trials) - stale) | unfinished
        if live != limiter.live_trials or self._counter != len(trials):
            log.warning("the restored search state was saved at another moment than the trial "
                        "list (%d trials created, %s running; the list: %d trials, %s "
                        "unfinished): following the trial list", self._counter,
                        sorted(limiter.live_trials), len(trials), sorted(unfinished))
        limiter.live_trials, limiter.num_unfinished_live_trials = live, len(live)
        self._counter = len(trials)
