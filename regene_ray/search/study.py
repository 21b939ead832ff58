"""The sweep's Optuna pieces (no Ray): the space as Optuna distributions, the seeded sampler, and
the searcher state written with its study storage left out, so a resumed searcher reopens the
study wherever the driver keeps it now.

Why the storage stays out of the state: Ray Tune saves a searcher by pickling its `__dict__`
(searcher-state-*.pkl, at every experiment checkpoint), and Optuna's RDBStorage pickles its URL,
`sqlite:////abs/path/optuna.sqlite`, and reopens that path when unpickled. When the driver's
folder for the study differs on resume (remote storage: a cache folder on whatever machine
resumes), the old path is wrong: sqlite fails ("unable to open database file") or silently
starts an empty study there. `save_state` therefore writes every RDBStorage in the state as a
persistent id, and `load_state` puts back the storage it is given (opened at the study's
current place) wherever one was.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage

from regene_ray.config import ConfigError
from regene_ray.search.outputs import study_url
from regene_ray.search.space import SAMPLERS, WITH_STARTUP, SearchSpace, startup_trials

_STORAGE_ID = "regene-ray sweep study storage"  # what save_state writes for an RDBStorage


def optuna_distributions(space: SearchSpace) -> dict:
    """The space's dimensions as Optuna distributions (keys are the dotted paths)."""
    out = {}
    for path, dim in space.search.items():
        if dim.choices is not None:
            out[path] = optuna.distributions.CategoricalDistribution(dim.choices)
        elif dim.is_int:
            out[path] = optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
        else:
            out[path] = optuna.distributions.FloatDistribution(float(dim.low), float(dim.high),
                                                               log=dim.log)
    return out


def check_sampler(name: str, startup: int | None = None) -> None:
    """Raises ConfigError, saying what to use, for a sampler or start-up phase that cannot run."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; use one of {', '.join(SAMPLERS)}")
    if startup is not None and name not in WITH_STARTUP:
        raise ConfigError(f"--startup-trials applies to the tpe and gp samplers, not {name}; "
                          "leave it out or pass --sampler tpe")


def make_sampler(name: str, seed: int, num_samples: int, startup: int | None = None
                 ) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler sized for a small budget.

    tpe: multivariate multi-objective TPE; its random start-up phase is `startup` trials, by
    default a third of the budget (3 to 10) instead of Optuna's fixed 10, so a 16-trial sweep
    is mostly guided (a time-budgeted sweep's --num-samples is only a cap: pass `startup`).
    gp: Optuna's Gaussian-process sampler (multi-objective since Optuna 4.4: expected
    hypervolume improvement), the same start-up phase. nsga2: a population of a quarter of the
    budget (at least 4). random: the baseline.
    """
    check_sampler(name, startup)
    startup = startup_trials(num_samples, startup)
    with warnings.catch_warnings():  # older Optuna flags multivariate TPE as experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                              n_startup_trials=startup)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed,
                                                 population_size=max(4, num_samples // 4))
        return optuna.samplers.RandomSampler(seed=seed)


def open_storage(folder: Path) -> RDBStorage:
    """The Optuna storage of the study in `folder`/optuna.sqlite (created if missing)."""
    return RDBStorage(study_url(folder))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return _STORAGE_ID if isinstance(obj, RDBStorage) else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage: RDBStorage):
        super().__init__(file)
        self.storage = storage

    def persistent_load(self, pid):
        if pid != _STORAGE_ID:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self.storage


def save_state(state: dict, path: str | Path) -> None:
    """Pickle a searcher's state to `path`, every Optuna RDBStorage in it as a reference only."""
    with open(path, "wb") as f:
        _Pickler(f).dump(state)


def load_state(path: str | Path, storage: RDBStorage) -> dict:
    """A state written by `save_state`, with `storage` wherever it held a storage."""
    with open(path, "rb") as f:
        state = _Unpickler(f, storage).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a searcher state written by regene-ray's StudySearch")
    return state
