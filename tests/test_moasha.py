"""MO-ASHA's promotion rule against hand-made rungs, its rungs surviving a restart, the early MAE
estimate it ranks on and a trial's reports of it (plain Python, no Ray but Tune's ASHA object;
tests/test_search.py runs the schedulers in Tune)."""

from __future__ import annotations

import pytest
import torch
import yaml

from regene_ray.config import ConfigError
from regene_ray.data import DataConfig, load_data
from regene_ray.run import RunConfig, build_models
from regene_ray.search.moasha import CONTINUE, MOASHA, STOP, milestones
from regene_ray.search.outputs import MOASHA_FILE, WORST_MAE
from regene_ray.search.space import load_search_space, smoke_test_space
from regene_ray.search.sweep import SweepOptions, estimate_rungs, moasha_rungs, space_record
from regene_ray.search.trial import run_trial
from regene_ray.train import (
    ClassifierTrainConfig,
    DecoderTrainConfig,
    estimate_decoder_mae,
    ridge_decoder_mae,
    train_classifier,
)

GO = CONTINUE


def sched(**kw) -> MOASHA:
    return MOASHA(["val_accuracy", "val_mae_early"], ["max", "min"], max_t=6, **kw)


def test_milestones():
    assert milestones(1, 6, 2) == [1, 2, 4]
    assert milestones(1, 27, 3) == [1, 3, 9]
    assert milestones(2, 3, 2) == [2]
    assert sched().milestones == [1, 2, 4]


def test_promotion_by_non_dominated_sort_at_a_rung():
    s = sched()
    # (accuracy up, MAE down), in order of arrival at rung 1; eta = 2 keeps ceil(n / 2)
    assert s.judge("t1", 1, [0.90, 0.30]) == GO  # alone
    assert s.judge("t2", 1, [0.80, 0.40]) == STOP  # dominated by t1: place 1 of 2, keep 1
    assert s.judge("t3", 1, [0.95, 0.50]) == GO  # on the front with t1: place 1 of 3, keep 2
    # the least accurate so far, but the best MAE: an extreme of the front, so it goes on
    # (accuracy-only ASHA would stop it: 0.70 is below every recorded accuracy)
    assert s.judge("t4", 1, [0.70, 0.10]) == GO
    # dominated by t1 (second front, ahead of t2 only): place 3 of 5, keep 3
    assert s.judge("t5", 1, [0.85, 0.35]) == STOP
    assert [d["place"] for d in s.decisions] == [0, 1, 1, 1, 3]
    # rung 2 is judged separately; a repeated report at a judged rung changes nothing
    assert s.judge("t1", 2, [0.91, 0.25]) == GO
    assert s.judge("t1", 2, [0.10, 0.99]) == GO and s.rungs[2]["t1"] == [0.91, 0.25]
    # a report between rungs is judged at the highest rung it passed and has not been judged at
    assert s.judge("t3", 3, [0.96, 0.20]) == GO and "t3" in s.rungs[2]
    assert s.judge("t1", 4, [0.92, 0.20]) == GO  # alone at rung 4
    assert s.judge("t4", 5, [0.60, 0.90]) == STOP and "t4" in s.rungs[4]  # dominated by t1


def test_reports_without_both_objectives_make_no_decision():
    s = sched()
    for result in ({"training_iteration": 1, "val_accuracy": 0.9, "val_mae_early": float("nan")},
                   {"training_iteration": 1, "val_accuracy": 0.9},
                   {"val_accuracy": 0.9, "val_mae_early": 0.2}):
        assert s.on_result("a", result.get("training_iteration"), result) == GO
    assert s.rungs[1] == {} and s.decisions == []
    assert s.on_result("a", 1, {"training_iteration": 1, "val_accuracy": 0.9,
                                "val_mae_early": 0.2}) == GO
    assert s.rungs[1] == {"a": [0.9, 0.2]}


def test_rungs_survive_a_restarted_driver(tmp_path):
    state = tmp_path / MOASHA_FILE
    first = sched(state_file=state)
    first.judge("t1", 1, [0.90, 0.30])
    first.judge("t2", 1, [0.95, 0.20])
    assert yaml.safe_load(state.read_text())["rungs"]["1"].keys() == {"t1", "t2"}
    again = sched(state_file=state)  # what Tuner.restore hands back: fresh, from tuner.pkl
    # t3 is dominated by t2, which the restarted scheduler remembers: stopped
    assert again.judge("t3", 1, [0.85, 0.35]) == STOP
    assert set(again.rungs[1]) == {"t1", "t2", "t3"} and len(again.decisions) == 3
    # a trial stopped before the kill that Tune restores and runs on is stopped again
    assert again.on_result("t3", 2, {"val_accuracy": 0.99, "val_mae_early": 0.01}) == STOP
    state.write_text("{not json")
    with pytest.raises(ValueError, match="move it away"):
        sched(state_file=state).judge("t4", 1, [0.5, 0.5])
    assert sched().judge("t4", 1, [0.5, 0.5]) == GO  # without a state file: memory only


def test_bad_arguments():
    with pytest.raises(ValueError, match="two or more metrics"):
        MOASHA(["val_accuracy"], ["max"], max_t=4)
    with pytest.raises(ValueError, match="'max' or 'min'"):
        MOASHA(["a", "b"], ["max", "up"], max_t=4)
    with pytest.raises(ValueError, match="grace_period"):
        MOASHA(["a", "b"], ["max", "min"], max_t=1)


def test_rungs_of_the_shipped_mnist_space():
    space = load_search_space("search_spaces/mnist.yaml")  # 3 + 3 epochs
    assert moasha_rungs(space).milestones == [1, 2]  # classifier epochs, as ASHA's rungs
    opts = {s: SweepOptions("x", "n", scheduler=s) for s in ("none", "asha", "moasha")}
    assert estimate_rungs(opts["moasha"], space) == estimate_rungs(opts["asha"], space) == (1, 2)
    assert estimate_rungs(opts["none"], space) == ()
    eta3 = SweepOptions("x", "n", scheduler="moasha", reduction_factor=3)
    assert estimate_rungs(eta3, space) == (1, 3)  # 3 = the last classifier epoch
    assert tune_asha_rungs(space, 3) == [1, 3]  # Tune's ASHA: the same rungs


def tune_asha_rungs(space, eta: float) -> list[int]:
    """The milestones Ray Tune's ASHA uses for tuner.make_asha (its one bracket's rungs)."""
    from regene_ray.search.tuner import make_asha

    return sorted(m for m, _ in make_asha(space, eta)._brackets[0]._rungs if m <= 3)


def test_sweep_options_refuse_what_cannot_run():
    with pytest.raises(ConfigError, match="--reduction-factor 1 must be > 1"):
        SweepOptions("x", "n", scheduler="asha", reduction_factor=1)
    with pytest.raises(ConfigError, match="--early-estimate 'exact': use one of ridge, fit"):
        SweepOptions("x", "n", early_estimate="exact")


def test_early_stopping_settings_are_part_of_what_a_resume_must_match():
    space = load_search_space("search_spaces/digits.yaml")
    fifo = space_record(space, 8, SweepOptions("x", "n"))
    assert "early_stopping" not in fifo  # FIFO sweeps of earlier versions still resume
    a, b = (space_record(space, 8, SweepOptions("x", "n", scheduler="moasha", reduction_factor=r))
            for r in (2, 3))
    assert a != b and a["early_stopping"] == {"reduction_factor": 2, "estimate": "ridge",
                                               "tell_estimate": True}


@pytest.mark.parametrize("estimate, tell", [("ridge", True), ("fit", False)])
def test_a_trial_reports_its_estimate_at_the_rungs(tmp_path, estimate, tell):
    """run_trial on the smoke digits space (2 + 2 epochs), rungs at classifier epochs 1 and 2:
    the rung reports carry the estimate, as val_mae too when it is told (what Optuna hears of a
    trial stopped there); `fit` uses the short decoder fit at the last rung only."""
    torch.set_num_threads(1)
    space = smoke_test_space(load_search_space("search_spaces/digits.yaml"))
    reports = []
    run_trial({}, space, lambda m, state: reports.append(m), tmp_path, estimate_at=(1, 2),
              estimate=estimate, tell_estimate=tell)
    rungs = [r for r in reports if r["phase"] == "classifier"]
    assert [r["classifier_epochs_done"] for r in rungs] == [1, 2]
    assert [r["estimate"] for r in rungs] == ["ridge", estimate]
    for r in rungs:
        assert 0 < r["val_mae_early"] < 1 and r["mae_estimate_s"] > 0
        assert r["val_mae"] == (r["val_mae_early"] if tell else WORST_MAE)
    final = reports[-1]
    assert final["phase"] == "decoder" and final["val_mae"] == final["val_mae_early"] < 1


def test_early_estimates_rank_a_bottleneck_worse_and_leave_the_classifier_alone():
    """Codes squeezed through 2 units decode worse than 64-wide ones, by the estimate too (at its
    default 100 steps; 30 steps learn little beyond the mean image and order them the other
    way); the estimate changes neither the classifier's weights nor its mode nor the global RNG."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a trial runs (1 CPU); 2 threads crawl on a busy 2-core box
    data = load_data(DataConfig(dataset="digits", image_size=16, max_train=500))
    dec_cfg = DecoderTrainConfig(batch_size=64, lr=3e-3)
    maes = {}
    for width in (2, 64):
        cfg = RunConfig()
        cfg.classifier.depth, cfg.classifier.base_channels = 2, 8
        cfg.classifier.latent_dim = width
        clf, _ = build_models(cfg, data)
        train_classifier(clf, data, ClassifierTrainConfig(epochs=2, batch_size=64),
                         torch.device("cpu"))
        clf.train()
        decoders = [build_models(cfg, data)[1] for _ in range(1 + (width == 64))]  # seeds RNG
        before = {k: v.clone() for k, v in clf.state_dict().items()}
        rng = torch.get_rng_state()
        runs = [estimate_decoder_mae(clf, dec, data, dec_cfg, torch.device("cpu"),
                                     val_images=128) for dec in decoders]
        ridge = [ridge_decoder_mae(clf, data, torch.device("cpu")) for _ in range(2)]
        assert clf.training and torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
        assert runs[0]["mae"] == runs[-1]["mae"] and runs[0]["seconds"] > 0  # deterministic
        assert ridge[0]["mae"] == ridge[1]["mae"] and ridge[0]["seconds"] > 0
        maes[width] = runs[0]["mae"], ridge[0]["mae"]
    torch.set_num_threads(threads)
    # the floor: predicting the mean training image for every holdout image (about 0.15 here)
    mean_image = (data.holdout_x.float() / 255 - data.train_x.float().mean(0) / 255).abs().mean()
    for k in range(2):  # the short decoder fit, and the linear (ridge) decoder
        assert maes[64][k] < maes[2][k] < float(mean_image), (maes, float(mean_image))
