"""The sweep's sampler start-up phase (--startup-trials): its default rule, the override, what a
resume must match, and the error for a sampler without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from regene_ray.config import ConfigError
from regene_ray.search.space import load_search_space
from regene_ray.search.study import check_sampler, make_sampler, startup_trials
from regene_ray.search.sweep import (
    SweepOptions,
    claim_experiment,
    prepare_resume,
    space_record,
)
from regene_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]


def test_the_start_up_phase_is_a_third_of_the_budget_unless_given():
    assert [startup_trials(n) for n in (4, 6, 16, 30, 500)] == [3, 3, 5, 10, 10]
    assert startup_trials(500, 3) == 3
    for name in ("tpe", "gp"):
        assert make_sampler(name, 0, 500)._n_startup_trials == 10
        assert make_sampler(name, 0, 500, 3)._n_startup_trials == 3


def _params(startup: int, n: int) -> list[dict]:
    """The first n trials' params of a seeded two-objective TPE study."""
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler("tpe", 7, 500, startup))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), (t.suggest_float("y", 0, 1) - .3) ** 2),
                   n_trials=n)
    return [t.params for t in study.trials]


def test_fewer_start_up_trials_model_the_results_sooner():
    """The same seed draws the same random trials; with 3 start-up trials the 4th is TPE's,
    with 10 it is still random, so the two runs part there."""
    short, default = _params(3, 4), _params(10, 4)
    assert short[:3] == default[:3]
    assert short[3] != default[3]


def test_a_sampler_without_a_start_up_phase_is_refused_with_what_to_do():
    check_sampler("tpe", 3)
    with pytest.raises(ConfigError, match="applies to the tpe and gp samplers, not random; "
                                          "leave it out or pass --sampler tpe"):
        check_sampler("random", 3)
    with pytest.raises(ConfigError, match="--startup-trials 0 must be >= 1"):
        SweepOptions("x", "n", startup_trials=0)


def test_the_start_up_phase_is_part_of_what_a_resume_must_match(tmp_path):
    """Recorded for tpe and gp; a sweep recorded before the flag existed ran the budget's rule,
    so it resumes with that number and is refused, naming it, with another."""
    space = load_search_space(REPO / "search_spaces" / "digits.yaml")
    rule = space_record(space, 30, SweepOptions("x", "n"))
    given = space_record(space, 30, SweepOptions("x", "n", startup_trials=3))
    assert (rule["startup_trials"], given["startup_trials"]) == (10, 3)
    assert "startup_trials" not in space_record(space, 30, SweepOptions("x", "n",
                                                                        sampler="random"))
    exp = Storage(tmp_path / "a")
    claim_experiment(exp)
    before_the_flag = {k: v for k, v in rule.items() if k != "startup_trials"}
    (tmp_path / "a" / "search_space.yaml").write_text(yaml.safe_dump(before_the_flag))
    prepare_resume(exp, tmp_path / "a", rule, "a")  # --startup-trials 10 resumes it
    with pytest.raises(ConfigError, match=r"\(startup_trials: 10 there, 3 here\)"):
        prepare_resume(exp, tmp_path / "a", given, "a")


def test_the_job_defaults_to_three_start_up_trials_and_refuses_them_for_random(tmp_path):
    """jobs/search.py's default (BENCHMARKS.md section 20) is 3 for tpe and gp, none for the
    samplers without the phase; asked for one with --sampler random, it says what to do before
    Ray starts."""
    sys.path.insert(0, str(REPO / "jobs"))
    import search

    assert search.STARTUP_TRIALS == 3
    args = search.get_args_parser().parse_args(["--space", "x.yaml", "--storage-path", "y",
                                               "--name", "z"])
    assert args.scheduler == "none" and args.startup_trials is None  # main() picks per sampler
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "search.py"), "--space",
                        str(REPO / "search_spaces" / "digits.yaml"), "--storage-path",
                        str(tmp_path), "--name", "s", "--sampler", "random",
                        "--startup-trials", "3"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--startup-trials applies to" in errors[0]
    assert "Started a local Ray" not in p.stderr and not any(tmp_path.iterdir())
