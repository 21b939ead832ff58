"""An OptunaSearch whose sqlite study can move between folders and machines.

Ray Tune pickles the searcher twice: the object itself into tuner.pkl (when the Tuner is made)
and its `__dict__` into searcher-state-*.pkl (at every experiment checkpoint). Optuna's
RDBStorage pickles its URL, `sqlite:////abs/path/optuna.sqlite`, and reopens that path when
unpickled. When the driver's folder for the study differs on resume (remote storage: a cache
folder on whatever machine resumes; local storage: a moved experiment folder), the old path is
wrong: sqlite fails ("unable to open database file") or silently starts an empty study there.

`StudySearch` therefore
* leaves the live study out of its own pickle (tuner.pkl): Tune restores it right after from the
  searcher state, which always happens on resume;
* restores the searcher state with an unpickler that reopens every RDBStorage at `relocate_to`
  (set by regene_ray.search.run_sweep before Tuner.restore).
"""

from __future__ import annotations

import pickle

from optuna.storages import RDBStorage
from ray.tune.search.optuna import OptunaSearch

_relocate_to: str | None = None  # the study URL for storages unpickled from now on


def relocate_to(url: str | None) -> None:
    """Make restored searchers open their Optuna study at `url` (None: where it was)."""
    global _relocate_to
    _relocate_to = url


class RelocatedRDBStorage(RDBStorage):
    """RDBStorage that, when unpickled, opens the URL given to `relocate_to` instead."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({**state, "url": _relocate_to or state["url"]})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        cls = super().find_class(module, name)
        if isinstance(cls, type) and issubclass(cls, RDBStorage):
            return RelocatedRDBStorage
        return cls


class StudySearch(OptunaSearch):
    """OptunaSearch that survives its sqlite study moving (see the module docstring)."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_ot_study=None, _storage=None, _ot_trials={})  # back from restore()
        return state

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = _Unpickler(f).load()
        if not isinstance(state, dict):
            raise ValueError(f"{checkpoint_path}: not a searcher state written by StudySearch")
        self.__dict__.update(state)

    def suggest(self, trial_id: str):
        if self._ot_study is None:  # Tune logged why restore() failed and went on without it
            raise RuntimeError(
                "the sweep's Optuna searcher state could not be restored (see the 'Failed to "
                "restore the run state' error above); rerun with a new --name to start afresh")
        return super().suggest(trial_id)
