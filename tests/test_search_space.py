"""Search-space validation, the Pareto / selection / hypervolume functions, and the sweep's
folder and Optuna state (all without Ray)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from regene_ray.config import ConfigError
from regene_ray.ownership import MARKER_FILE, OwnershipError, write_marker
from regene_ray.search.pareto import (
    choose_within_tolerance,
    crowding_distance,
    hypervolume_2d,
    knee_point,
    nondominated_ranks,
    pareto_mask,
    promotion_order,
)
from regene_ray.search.space import (
    load_search_space,
    parse_search_space,
    pin_data_root,
    smoke_test_space,
)
from regene_ray.search.study import load_state, open_storage, save_state
from regene_ray.search.sweep import SweepOptions, claim_experiment, prepare_resume, space_record
from regene_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def _write(tmp_path: Path, data: dict, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _base_space() -> dict:
    return {
        "base": {"data": {"dataset": "digits", "image_size": 16}},
        "search": {"classifier.depth": {"low": 1, "high": 3},
                   "classifier.latent_dim": {"choices": [16, 32]}},
    }


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_load(path):
    space = load_search_space(path)
    assert {"classifier.depth", "classifier.latent_dim"} <= set(space.search)
    cfg = space.run_config(final=True)  # best_config's shape: a valid RunConfig
    assert cfg.data.dataset in path.stem.replace("_", "-")
    small = smoke_test_space(space)
    assert small.num_samples <= 3 and small.run_config().classifier_training.epochs == 2


def test_required_spaces_exist():
    assert {"digits", "mnist", "fashion_mnist", "cifar10"} <= {p.stem for p in SPACES}


def test_a_relative_data_root_in_a_space_is_pinned_to_where_the_user_ran(tmp_path,
                                                                          monkeypatch):
    """Tune runs each trial in its own folder: a relative data.data_root (base or final) is
    made absolute against the driver's working directory; an absolute one is kept."""
    doc = _base_space()
    doc["base"]["data"]["data_root"] = "../shared/data"
    doc["final"] = {"data": {"data_root": "/abs/root"}}
    monkeypatch.chdir(tmp_path)
    space = pin_data_root(parse_search_space(doc))
    assert space.run_config().data.data_root == str((tmp_path / "../shared/data").resolve())
    assert space.run_config(final=True).data.data_root == "/abs/root"


def test_integer_and_log_ranges_typed():
    space = parse_search_space({**_base_space(), "search": {
        "classifier.depth": {"low": 1, "high": 2},
        "classifier.latent_l1": {"low": 1e-5, "high": 1e-1, "log": True}}})
    assert space.search["classifier.depth"].is_int
    assert not space.search["classifier.latent_l1"].is_int


@pytest.mark.parametrize("mutate, needles", [
    (lambda d: d.update(serach={}), ["unknown key", "serach"]),
    (lambda d: d["base"]["data"].update(datasett="x"), ["unknown key", "base.data.datasett"]),
    (lambda d: d["search"].update({"classifier.dept": {"low": 1, "high": 2}}),
     ["unknown key", "search.classifier.dept"]),
    (lambda d: d["search"]["classifier.depth"].update(hi=3),
     ["unknown key", "search.classifier.depth.hi"]),
    (lambda d: d["search"].update({"classifier.depth": {"low": 1.5, "high": 3}}),
     ["classifier.depth", "must be an integer"]),
    (lambda d: d["search"].update({"classifier.depth": {"low": "1", "high": 3}}),
     ["search.classifier.depth.low", "must be"]),
    (lambda d: d["search"].update({"classifier.depth": {"low": 3, "high": 3}}),
     ["search.classifier.depth", "empty range"]),
    (lambda d: d["search"].update({"classifier.depth": {"low": 3, "high": 1}}),
     ["search.classifier.depth", "empty range"]),
    (lambda d: d["search"].update({"classifier.latent_dim": {"choices": []}}),
     ["search.classifier.latent_dim.choices", "empty"]),
    (lambda d: d["search"].update({"classifier.latent_dim": 32}),
     ["search.classifier.latent_dim", "must be a mapping"]),
    (lambda d: d["search"].update({"classifier.latent_l1": {"low": 0, "high": 1, "log": True}}),
     ["search.classifier.latent_l1", "log"]),
    (lambda d: d["search"].update({"classifier.latent_activation": {"choices": ["relu", "tanh"]}}),
     ["search.classifier.latent_activation = 'tanh'", "latent_activation"]),
    (lambda d: d["search"].update({"classifier.depth": {"low": 1, "high": 5}}),
     ["search.classifier.depth = 5", "too small for depth 5"]),
    (lambda d: d["base"]["classifier"].update(channels=[8, 16]) if "classifier" in d["base"]
     else d["base"].update(classifier={"channels": [8, 16]}),
     ["base", "channels [8, 16]"]),
    (lambda d: d["search"].update({"classifier.depth": {"low": 1, "high": 4},
                                   "data.image_size": {"choices": [8, 16]}}),
     ["the combination", "search.classifier.depth = 4", "search.data.image_size = 8"]),
    (lambda d: d.update(search={}), ["key 'search' is empty"]),
    (lambda d: d.update(sampler="grid"), ["key 'sampler'"]),
    (lambda d: d.update(num_samples="many"), ["key 'num_samples'", "integer"]),
    (lambda d: d.update(final={"classifier_training": {"epoch": 3}}),
     ["unknown key", "final.classifier_training.epoch"]),
])
def test_bad_yaml_names_key_and_file(tmp_path, mutate, needles):
    data = _base_space()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_search_space(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_search_space(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_space(tmp_path / "nope.yaml")


# Pareto front, selection rule, hypervolume


def _brute_force_front(v: np.ndarray, maximize) -> np.ndarray:
    sign = np.where(maximize, -1, 1)
    out = []
    for i, a in enumerate(v):
        if np.isnan(a).any():
            out.append(False)
            continue
        dominated = False
        for j, b in enumerate(v):
            if j == i or np.isnan(b).any():
                continue
            if all(sign * b <= sign * a) and any(sign * b < sign * a):
                dominated = True
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    v = rng.integers(0, 6, size=(n, 2)).astype(float)  # coarse grid: many ties and duplicates
    v[rng.random(n) < 0.1, int(rng.integers(0, 2))] = np.nan
    maximize = [True, False]
    np.testing.assert_array_equal(pareto_mask(v, maximize), _brute_force_front(v, maximize))


def test_pareto_mask_three_objectives_and_shape_check():
    rng = np.random.default_rng(1)
    v = rng.random((30, 3))
    m = [True, False, True]
    np.testing.assert_array_equal(pareto_mask(v, m), _brute_force_front(v, m))
    with pytest.raises(ValueError):
        pareto_mask(v, [True, False])


def test_choose_within_tolerance_is_on_front():
    rng = np.random.default_rng(0)
    for _ in range(50):
        acc, mae = rng.random(12).round(2), rng.random(12).round(2)
        for tol in (0.0, 0.05, 0.2, 1.0):
            i = choose_within_tolerance(acc, mae, tol)
            ok = acc >= acc.max() - tol
            assert ok[i] and mae[i] == mae[ok].min()
            assert pareto_mask(np.stack([acc, mae], 1), [True, False])[i]
    # the paper's example: accuracy within the tolerance, then the lowest MAE
    assert choose_within_tolerance([0.99, 0.985, 0.95], [0.10, 0.05, 0.01], 0.01) == 1
    assert choose_within_tolerance([np.nan], [np.nan], 0.01) == -1


def test_hypervolume_matches_grid_count():
    rng = np.random.default_rng(0)
    acc, mae = rng.integers(1, 10, 8) / 10, rng.integers(1, 10, 8) / 10
    ref = (0.0, 1.0)
    # count 0.1 x 0.1 cells dominated by some point (cell centres)
    cells = 0
    for a, e in itertools.product(np.arange(0.05, 1, 0.1), np.arange(0.05, 1, 0.1)):
        cells += bool(((acc >= a) & (mae <= e)).any())
    assert hypervolume_2d(acc, mae, ref) == pytest.approx(cells * 0.01)
    assert hypervolume_2d([0.5], [2.0], ref) == 0.0


def test_nondominated_ranks_of_hand_made_fronts():
    # (accuracy up, MAE down): three fronts and a row without MAE
    v = np.array([[0.9, 0.10], [0.8, 0.05], [0.85, 0.12], [0.7, 0.2], [0.95, 0.3],
                  [0.6, np.nan], [0.9, 0.10]])
    np.testing.assert_array_equal(nondominated_ranks(v, [True, False]), [0, 0, 1, 2, 0, 3, 0])


def test_crowding_distance_by_hand():
    v = np.array([[0.0, 1.0], [0.2, 0.6], [0.5, 0.5], [1.0, 0.0]])
    d = crowding_distance(v)
    assert np.isinf(d[[0, 3]]).all()
    # row 1: neighbours 0 and 2 -> 0.5/1 + 0.5/1; row 2: neighbours 1 and 3 -> 0.8 + 0.6
    np.testing.assert_allclose(d[[1, 2]], [1.0, 1.4])
    assert np.isinf(crowding_distance(v[:2])).all()


def test_promotion_order_front_first_then_crowding():
    v = np.array([
        [0.90, 0.30],  # 0 front, an extreme of it
        [0.80, 0.20],  # 1 front, crowded between 0 and 3
        [0.70, 0.19],  # 2 second front (3 dominates it)
        [0.70, 0.05],  # 3 front, the other extreme
        [0.85, 0.26],  # 4 front, more crowded than 1
        [0.99, np.nan],  # 5 never measured: last
    ])
    # front {0, 1, 3, 4}: 0 and 3 (extremes, inf, earlier row first), then 1 (crowding
    # 0.15/0.2 + 0.21/0.25 = 1.59) before 4 (0.1/0.2 + 0.1/0.25 = 0.9); then 2; then 5
    np.testing.assert_array_equal(promotion_order(v, [True, False]), [0, 3, 1, 4, 2, 5])


def test_knee_point_by_hand():
    # a front with a clear knee at (0.95, 0.05): the far corner from the ends' chord
    acc = np.array([0.99, 0.95, 0.80, 0.70, 0.96])
    mae = np.array([0.30, 0.05, 0.03, 0.20, 0.20])
    assert knee_point(acc, mae) == 1
    # two points: nearest the ideal in the front's scaling (both at distance 1: the earlier)
    assert knee_point([0.9, 0.8], [0.2, 0.1]) == 0
    assert knee_point([0.9], [0.2]) == 0 and knee_point([np.nan], [0.1]) == -1


# the sweep's folder


def test_a_sweep_claims_only_its_own_folders(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match="is a non-empty folder without a regene-ray "
                       "ownership marker .* not a regene-ray sweep"):
        claim_experiment(Storage(foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]  # nothing written or deleted
    run = tmp_path / "run"
    write_marker(Storage(run), "run", ["config.yaml"], {})
    with pytest.raises(OwnershipError, match="of a search job"):
        claim_experiment(Storage(run))
    claim_experiment(Storage(tmp_path / "sweep"))  # new: claimed, with where it is
    marker = yaml.safe_load((tmp_path / "sweep" / MARKER_FILE).read_text())
    assert (marker["kind"], marker["identity"]) == \
        ("search", {"name": "sweep", "storage": str(tmp_path / "sweep")})
    claim_experiment(Storage(tmp_path / "sweep"))  # its own: kept as it is
    assert yaml.safe_load((tmp_path / "sweep" / MARKER_FILE).read_text()) == marker


def test_a_moved_sweep_is_refused_on_resume(tmp_path):
    """Tune's tuner.pkl names the place a sweep started (its study and rungs live there)."""
    space = load_search_space(REPO / "search_spaces" / "digits.yaml")
    record = space_record(space, 4, SweepOptions(storage_path=tmp_path, name="a"))
    claim_experiment(Storage(tmp_path / "a"))
    (tmp_path / "a" / "search_space.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    prepare_resume(Storage(tmp_path / "a"), tmp_path / "a", record, "a")  # where it started
    with pytest.raises(ConfigError, match=r"different search space or options \(num_samples: "
                       r"4 there, 5 here\)"):
        prepare_resume(Storage(tmp_path / "a"), tmp_path / "a", {**record, "num_samples": 5}, "a")
    asha = space_record(space, 4, SweepOptions(storage_path=tmp_path, name="a", scheduler="asha"))
    with pytest.raises(ConfigError, match=r"\(early_stopping differs; scheduler: none there, "
                       r"asha here\); pass a new --name"):
        prepare_resume(Storage(tmp_path / "a"), tmp_path / "a", asha, "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ConfigError, match=f"started at {tmp_path / 'a'}.*move it back"):
        prepare_resume(Storage(tmp_path / "b"), tmp_path / "b", record, "b")


def test_searcher_state_reopens_the_study_where_it_is_given(tmp_path):
    """The state a searcher saves holds no study path: each load uses the storage it is given,
    so a study copied to another folder (another machine's cache) is continued there, and two
    loads in one process never share one."""
    (tmp_path / "a").mkdir()
    study = optuna.create_study(study_name="s", storage=open_storage(tmp_path / "a"),
                                directions=["maximize", "minimize"])
    study.tell(study.ask(), [0.9, 0.1])
    pending = study.ask()
    save_state({"_ot_study": study, "_ot_trials": {"t2": pending}}, tmp_path / "state.pkl")
    assert b"optuna.sqlite" not in (tmp_path / "state.pkl").read_bytes()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    states = {d: load_state(tmp_path / "state.pkl", open_storage(tmp_path / d)) for d in "ab"}
    states["b"]["_ot_study"].tell(states["b"]["_ot_trials"]["t2"], [0.8, 0.05])
    done = {d: [t.values for t in optuna.load_study(study_name="s", storage=open_storage(
        tmp_path / d)).get_trials(states=[optuna.trial.TrialState.COMPLETE])] for d in "ab"}
    assert done == {"a": [[0.9, 0.1]], "b": [[0.9, 0.1], [0.8, 0.05]]}
