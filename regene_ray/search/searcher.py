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
every finished trial it has not heard of. The searcher's own state may also be older than the
study it names (optuna.sqlite is uploaded after every step of the Tune loop): StudySearch tags
each Optuna trial with Tune's trial id, so a completion the restored state does not know finds
its trial in the study (and one told already is not told again); only a trial missing from the
study too is asked for again, with the config it ran with. Tune's reruns of errored trials
(restart_errored: new trial ids the limiter never gave out) reach the study the same way.
"""

from __future__ import annotations

import fnmatch
import json
import logging

import optuna
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils import flatten_dict

from regene_ray.search import study
from regene_ray.search.outputs import METRICS, MODES, STOPPED_EARLY
from regene_ray.search.space import SearchSpace
from regene_ray.search.sync import driver_folder
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

FINISHED = (Trial.TERMINATED, Trial.ERROR)
TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute naming an Optuna trial's Tune trial


def config_of(result: dict | None) -> dict:
    """The trial config in a Tune result: nested under "config", or flattened to "config/<key>"
    (Tune hands searchers flattened results)."""
    result = result or {}
    if isinstance(result.get("config"), dict):
        return result["config"]
    return {k[len("config/"):]: v for k, v in result.items() if k.startswith("config/")}


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

    def suggest(self, trial_id: str):
        if self._ot_study is None:  # Tune logged why restore() failed and went on without it
            raise RuntimeError(
                "the sweep's Optuna searcher state could not be restored (see the 'Failed to "
                "restore the run state' error above); rerun with a new --name to start afresh")
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def _trial_for(self, trial_id: str, result: dict | None) -> optuna.trial.Trial | None:
        """The Optuna trial of a Tune trial this state does not know (see the module
        docstring): the study's trial tagged with its id, else one asked for now with the
        config it ran with (None, with a warning, when the result names none)."""
        for frozen in self._ot_study.get_trials(deepcopy=False):
            if frozen.user_attrs.get(TUNE_TRIAL_ID) == trial_id:
                return optuna.trial.Trial(self._ot_study, frozen._trial_id)
        config = config_of(result)
        if not config:
            log.warning("trial %s is unknown to the restored Optuna study and reported no "
                        "config: it is left out of optuna.sqlite", trial_id)
            return None
        self._ot_study.enqueue_trial(config)
        trial = self._ot_study.ask(fixed_distributions=self._space)
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        return trial

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:  # OptunaSearch warns and does nothing
            return super().on_trial_complete(trial_id, result, error)
        if trial_id not in self._ot_trials:
            if (trial := self._trial_for(trial_id, result)) is None:
                return
            self._ot_trials[trial_id] = trial
        if self._storage.get_trial(self._ot_trials[trial_id]._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # told before the state restored was saved
            return
        if not error and (result or {}).get("phase") == "classifier":
            # stopped before its decoder trained: the MAE it is told is an early estimate (or
            # the WORST_MAE placeholder), which outputs.optuna_front leaves out of the front
            self._ot_trials[trial_id].set_user_attr(STOPPED_EARLY, True)
        super().on_trial_complete(trial_id, result, error)


def saved_trials(exp: Storage) -> list[Trial]:
    """The trials of the experiment state Tune restores in `exp` (its rule: of the files
    experiment_state-*.json there, the greatest name), with status, config and last result."""
    names = fnmatch.filter(exp.names(), TuneController.CKPT_FILE_TMPL.format("*"))
    if not names:
        return []
    trials = []
    for trial_state, run_metadata in json.loads(exp.read_text(max(names)))["trial_data"]:
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        trials.append(trial)
    return trials


class SweepSearch(SearchGenerator):
    """Tune's SearchGenerator around ConcurrencyLimiter(`searcher`), which on restore follows
    the trial list restored beside it (see the module docstring). Sweeps resume with
    resume_unfinished=True (run_sweep): an unfinished trial in the list runs on and holds a
    slot."""

    def __init__(self, searcher: StudySearch, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent))

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        self.reconcile(saved_trials(self.searcher.searcher.exp))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.searcher.live_trials:
            # never given out here (Tune's rerun of an errored trial has a new id): the limiter
            # would drop it, so the study hears of it directly
            self.searcher.searcher.on_trial_complete(trial_id, result, error)
            return
        super().on_trial_complete(trial_id, result, error)

    def reconcile(self, trials: list[Trial]) -> None:
        """Bring the restored counter, limiter and study in line with `trials`."""
        limiter, base = self.searcher, self.searcher.searcher
        status = {t.trial_id: t.status for t in trials}
        for trial in trials:  # finished: the study told once (StudySearch skips a told one)
            if trial.status in FINISHED and trial.trial_id not in base._completed_trials:
                error = trial.status == Trial.ERROR
                base.on_trial_complete(trial.trial_id,
                                       None if error else flatten_dict(trial.last_result),
                                       error=error)
        stale = {t for t in limiter.live_trials if status.get(t, Trial.TERMINATED) in FINISHED}
        for t in stale - status.keys():  # asked for, never in the list: FAIL, asked anew
            if t in base._ot_trials and t not in base._completed_trials:
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
