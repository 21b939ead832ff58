"""Search spaces: a YAML file that names the fixed per-trial budget and the searched dimensions.

    # search_spaces/digits.yaml
    base:                          # a RunConfig: everything that is not searched
      data: {dataset: digits, image_size: 16}
      classifier_training: {epochs: 6}
    search:                        # dotted RunConfig paths -> a range or a list of choices
      classifier.depth: {low: 1, high: 3}             # integers when both bounds are integers
      classifier.latent_l1: {low: 1.0e-5, high: 1.0e-2, log: true}
      classifier.latent_activation: {choices: [relu, none]}
    final:                         # optional overrides for best_config.yaml (the full budget)
      classifier_training: {epochs: 30}
    num_samples: 16
    seed: 0
    sampler: tpe

Everything is validated when the file is loaded, before any trial starts: unknown keys, wrong
types, empty ranges and combinations the model cannot build (a depth too large for the image
size) fail with a message that names the key and the file.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regene_ray.classifier import ClassifierConfig
from regene_ray.config import ConfigError, from_dict, load_yaml, to_dict
from regene_ray.run import RunConfig

SAMPLERS = ("tpe", "gp", "nsga2", "random")  # regene_ray.search.study.make_sampler
WITH_STARTUP = ("tpe", "gp")  # the samplers with a random start-up phase


def startup_trials(num_samples: int, given: int | None = None) -> int:
    """The random start-up phase of tpe and gp: `given`, or a third of the budget, 3 to 10
    trials (Optuna's own is a fixed 10)."""
    return given if given is not None else min(10, max(3, num_samples // 3))


@dataclass
class Dimension:
    """One searched value: either `choices`, or a `low`..`high` range (inclusive)."""

    choices: list[Any] | None = None  # categorical values, tried as given
    low: int | float | None = None  # range start; integers when low and high are both integers
    high: int | float | None = None  # range end (inclusive)
    log: bool = False  # sample the range on a log scale (learning rates, L1 weights)

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def extremes(self) -> list[Any]:
        """The values whose feasibility bounds the whole dimension."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


@dataclass
class SearchSpace:
    base: dict[str, Any] = field(default_factory=dict)  # RunConfig fields fixed for every trial
    search: dict[str, Any] = field(default_factory=dict)  # dotted RunConfig path -> Dimension
    final: dict[str, Any] = field(default_factory=dict)  # overrides for best_config.yaml only
    num_samples: int = 16  # trials in the sweep (the --num-samples default)
    seed: int = 0  # seeds the sampler; trials also use base.seed for init and shuffling
    sampler: str = "tpe"  # tpe (multivariate, multi-objective TPE), gp, nsga2 or random
    smoke: bool = False  # every trial's RunConfig shrunk by RunConfig.smoke() (--smoke-test)
    source: str = "<search space>"  # the file it came from, quoted in errors

    def run_config(self, params: dict | None = None, *, final: bool = False) -> RunConfig:
        """The RunConfig of one trial: base, with searched `params` (dotted paths) set.

        Args:
            params: dotted path -> value, e.g. {"classifier.depth": 3}.
            final: also apply the `final` overrides (what best_config.yaml holds).
        """
        d = copy.deepcopy(self.base)
        if final:
            d = deep_merge(d, self.final)
        for path, value in (params or {}).items():
            set_path(d, path, value)
        cfg = from_dict(RunConfig, d, source=self.source)
        return cfg.smoke() if self.smoke else cfg


def deep_merge(a: dict, b: dict) -> dict:
    """`a` updated by `b`, recursing into nested mappings."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


def set_path(d: dict, path: str, value: Any) -> None:
    """d['a']['b'] = value for path 'a.b', creating the mapping on the way."""
    *head, last = path.split(".")
    for k in head:
        d = d.setdefault(k, {})
    d[last] = value


def _valid_paths() -> list[str]:
    """Every dotted leaf path of a RunConfig (what `search` keys may name)."""
    out = []

    def walk(prefix: str, obj: Any) -> None:
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                walk(f"{prefix}{k}.", v)
            else:
                out.append(prefix + k)

    walk("", to_dict(RunConfig()))
    return out


def native_image_size(dataset: str) -> int:
    """The side load_data uses when data.image_size is unset (kept in step with data.py)."""
    return {"digits": 16, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}.get(dataset, 64)


def _check_feasible(space: SearchSpace, params: dict, where: str) -> None:
    """Build the RunConfig and the classifier config for `params`; raise naming `where`."""
    try:
        cfg = space.run_config(params)
        size = cfg.data.image_size or native_image_size(cfg.data.dataset)
        channels = 3 if cfg.data.dataset == "cifar10" else 1
        ClassifierConfig.from_arch(cfg.classifier, in_channels=channels, image_size=size,
                                   num_classes=10)
    except ConfigError as e:
        msg = str(e).removeprefix(f"{space.source}: ")
        raise ConfigError(f"{space.source}: {where}: {msg}") from e


def _parse_dimension(path: str, raw: Any, source: str) -> Dimension:
    key = f"search.{path}"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: key '{key}' must be a mapping like {{low: 1, high: 4}} or "
            f"{{choices: [a, b]}}, got {raw!r}"
        )
    dim = from_dict(Dimension, raw, source=source, prefix=f"{key}.")
    has_range = dim.low is not None or dim.high is not None
    if dim.choices is not None:
        if has_range or dim.log:
            raise ConfigError(f"{source}: key '{key}' has both choices and low/high/log; give one")
        if not dim.choices:
            raise ConfigError(f"{source}: key '{key}.choices' is empty; list at least one value")
        if len({repr(c) for c in dim.choices}) != len(dim.choices):
            raise ConfigError(f"{source}: key '{key}.choices' lists a value twice: {dim.choices}")
        return dim
    if dim.low is None or dim.high is None:
        raise ConfigError(f"{source}: key '{key}' needs both low and high, or choices")
    if not dim.low < dim.high:
        raise ConfigError(
            f"{source}: key '{key}' is an empty range (low {dim.low} >= high {dim.high}); "
            "make low < high, or use choices: [value] to fix it"
        )
    if dim.log and dim.low <= 0:
        raise ConfigError(f"{source}: key '{key}' has log: true but low {dim.low} <= 0")
    return dim


def parse_search_space(data: dict, source: str = "<search space>") -> SearchSpace:
    """Validate a search-space mapping (see the module docstring) into a SearchSpace.

    Raises:
        ConfigError naming the key and `source` for unknown keys, wrong types, empty ranges
        or choice lists, and values the model cannot be built with.
    """
    if not isinstance(data, dict) or "source" in data:
        raise ConfigError(f"{source}: expected a mapping of base, search, final, num_samples, "
                          "seed and sampler")
    space = from_dict(SearchSpace, {**data, "source": source}, source=source)
    if space.sampler not in SAMPLERS:
        raise ConfigError(f"{source}: key 'sampler' is '{space.sampler}'; use one of {SAMPLERS}")
    if space.num_samples < 1:
        raise ConfigError(f"{source}: key 'num_samples' is {space.num_samples}; use at least 1")
    if not space.search:
        raise ConfigError(f"{source}: key 'search' is empty; name at least one searched value")
    # the base alone, and base + final, must be valid RunConfigs (unknown keys, types, ranges)
    for where, d in (("base", space.base), ("final", deep_merge(space.base, space.final))):
        try:
            from_dict(RunConfig, d, source=source, prefix=f"{where}.")
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(source) else f"{source}: {where}: {msg}") from e
    valid = _valid_paths()
    dims = {}
    for path, raw in space.search.items():
        if path not in valid:
            raise ConfigError(
                f"{source}: unknown key 'search.{path}'; searched keys are dotted RunConfig "
                f"paths, one of: {', '.join(valid)}"
            )
        dims[path] = _parse_dimension(path, raw, source)
    space.search = dims
    # every extreme of every dimension, and the joint extremes of the architecture, must build
    for path, dim in dims.items():
        for value in dim.extremes():
            _check_feasible(space, {path: value}, f"search.{path} = {value!r}")
    arch = {p: d.extremes() for p, d in dims.items() if p.startswith(("classifier.", "data."))}
    for combo in itertools.islice(itertools.product(*arch.values()), 4096):
        params = dict(zip(arch, combo, strict=True))
        where = "the combination " + ", ".join(f"search.{p} = {v!r}" for p, v in params.items())
        _check_feasible(space, params, where)
    return space


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    return parse_search_space(load_yaml(path), source=str(path))


def pin_data_root(space: SearchSpace) -> SearchSpace:
    """A relative `data.data_root` of the base or the final config made absolute against this
    process's working directory, as a user who wrote it relative meant: Ray Tune runs each
    trial in its own folder, where a relative root names nothing."""
    for section in (space.base, space.final):
        data = section.get("data")
        root = data.get("data_root") if isinstance(data, dict) else None
        if root and not Path(root).expanduser().is_absolute():
            data["data_root"] = str(Path(root).expanduser().resolve())
    return space


def smoke_test_space(space: SearchSpace) -> SearchSpace:
    """The same space shrunk to seconds per trial: each trial's config by RunConfig.smoke(),
    the searched widths to what that recipe allows, epochs no longer searched, 3 trials."""
    s = copy.deepcopy(space)
    s.smoke = True
    for k, dim in list(s.search.items()):
        if k in ("classifier.latent_dim", "classifier.base_channels"):
            if dim.choices is not None:
                dim.choices = sorted({min(int(c), 32) for c in dim.choices})
            else:
                dim.low, dim.high = min(dim.low, 8), min(dim.high, 32)
        if k in ("classifier_training.epochs", "decoder_training.epochs"):
            del s.search[k]
    s.final = {}
    s.num_samples = min(s.num_samples, 3)
    return s
