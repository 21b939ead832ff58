"""A training run, end to end: data -> classifier -> (judge) -> decoder -> latent bank ->
thresholds -> metrics and pictures, written to one run folder that jobs and the Python API can
load.

The run folder is resumable. A re-run with the same config loads the networks that finished
training (the classifier, the perceptual loss's judge when it has one, the decoder) instead of
training them again, and a training that was interrupted continues after its last epoch
checkpoint. The steps after the trainings (latent bank, thresholds, novelty calibration,
metrics and pictures) take seconds and are recomputed and rewritten on every run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from regene_ray.bank_build import THRESHOLD_RULES, build_bank, compute_thresholds
from regene_ray.checkpoint import WEIGHTS_FILE
from regene_ray.classifier import ArchConfig, Classifier, ClassifierConfig
from regene_ray.config import ConfigError, from_dict, load_yaml, save_json, to_dict
from regene_ray.data import DataConfig, DataSplits, load_data
from regene_ray.decoder import Decoder, DecoderArch, DecoderConfig
from regene_ray.generator import ConvexGenerator, measure_acceptance
from regene_ray.latent_bank import BANK_FILE, THRESHOLDS_FILE, LatentBank, save_thresholds
from regene_ray.loop import scoped_seed
from regene_ray.losses import LossConfig, build_perceptual
from regene_ray.nearest import NOVELTY_FILE, holdout_distances, save_novelty
from regene_ray.ownership import claim_for_overwrite, inspect_owned, write_marker
from regene_ray.resnet import ResNet, ResNetConfig, ResNetTrainConfig, load_or_train_resnet
from regene_ray.storage import Storage, atomic_write_bytes
from regene_ray.train import (
    CLASSIFIER_STATE,
    DECODER_STATE,
    ClassifierTrainConfig,
    DecoderTrainConfig,
    evaluate_classifier,
    evaluate_decoder,
    resolve_device,
    train_classifier,
    train_decoder,
)

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
RECON_GRID = "reconstructions.png"
GEN_GRID = "generations.png"
JUDGE_DIR = "judge"  # the perceptual loss's judge network (perceptual: judge)
JUDGE_SEED = 7777  # offset from the run seed: the judge never shares the classifier's init
ACCEPTANCE_SEED = 1000  # offset from the run seed: acceptance candidates are not grid ones


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)  # which images, split and resolution
    classifier: ArchConfig = field(default_factory=ArchConfig)  # the (searched) architecture
    classifier_training: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    decoder: DecoderArch = field(default_factory=DecoderArch)  # upsampling and width
    decoder_training: DecoderTrainConfig = field(default_factory=DecoderTrainConfig)
    seed: int = 0  # model init, shuffling and generation sampling
    grid_n_parents: list[int] = field(default_factory=lambda: [2, 3, 5])  # columns of the grid
    acceptance_candidates: int = 2000  # candidates per n used to measure filter acceptance
    # tau of the image filter step: "originals" (the paper's: the classifier's mean confidence
    # on held-out originals, as the latent step) or "reconstructions" (on their decodings)
    image_threshold: str = "originals"

    def __post_init__(self):
        if self.image_threshold not in THRESHOLD_RULES:
            raise ConfigError(f"image_threshold '{self.image_threshold}' must be one of "
                              f"{list(THRESHOLD_RULES)}")
        if self.seed < 0:
            raise ConfigError(f"seed {self.seed} must be >= 0 (jobs/train.py --seed)")

    def smoke(self) -> RunConfig:
        """This run shrunk to seconds on 2 CPU cores: the one recipe that shrinks a RunConfig,
        used by jobs/train.py --smoke-test and by each trial of jobs/search.py --smoke-test. At
        most 600 training and 200 test images, 8 base channels (32 at most), a 32-wide code,
        2 + 2 epochs: a plumbing check, whose classifier may stay near chance."""
        d = to_dict(self)
        d["data"]["max_train"] = min(d["data"]["max_train"] or 600, 600)
        d["data"]["max_test"] = min(d["data"]["max_test"] or 200, 200)
        arch = d["classifier"]
        arch["base_channels"] = min(arch["base_channels"], 8)
        arch["max_channels"] = min(arch["max_channels"], 32)
        arch["latent_dim"] = min(arch["latent_dim"], 32)
        for stage in ("classifier_training", "decoder_training"):
            d[stage]["epochs"] = min(d[stage]["epochs"], 2)
        d["acceptance_candidates"] = min(d["acceptance_candidates"], 200)
        return from_dict(RunConfig, d, source="smoke test")


def smoke_run_config(*, epochs: int = 6, grid_n_parents: tuple[int, ...] = (2, 3)) -> RunConfig:
    """A fixed small digits run that trains in seconds on 2 CPU cores and learns enough to
    generate from: the input run that jobs reading a run folder (jobs/mass_generate.py,
    jobs/evaluate.py) train for their --smoke-test, and the tests' shared run. It shrinks no
    config of yours (that is RunConfig.smoke): all of digits at 16 x 16, a 2-stage 8-channel
    classifier with a 32-wide code, `epochs` + `epochs` epochs, the classifier's features as the
    perceptual loss."""
    return RunConfig(
        data=DataConfig(dataset="digits", image_size=16, holdout_fraction=0.15),
        classifier=ArchConfig(depth=2, convs_per_block=1, base_channels=8, latent_dim=32),
        classifier_training=ClassifierTrainConfig(epochs=epochs, batch_size=64, lr=3e-3),
        decoder_training=DecoderTrainConfig(epochs=epochs, batch_size=64, lr=3e-3,
                                            loss=LossConfig(perceptual="classifier")),
        acceptance_candidates=200,
        grid_n_parents=list(grid_n_parents),
    )


def load_run_config(path: str | Path) -> RunConfig:
    """A RunConfig from YAML; unknown keys and wrong types name the key and the file."""
    return from_dict(RunConfig, load_yaml(path), source=str(path))


# Everything a training run writes directly inside its folder: --overwrite deletes these (and
# only these, as the folder's ownership marker lists them) when it replaces an earlier run.
RUN_ARTEFACTS = [RUN_CONFIG_FILE, "classifier", "decoder", BANK_FILE, THRESHOLDS_FILE, METRICS_FILE,
                 RECON_GRID, GEN_GRID, CLASSIFIER_STATE, DECODER_STATE, JUDGE_DIR, NOVELTY_FILE]


def inspect_out_dir(out: Path, cfg: RunConfig, *, overwrite: bool) -> str:
    """What `out` allows, without touching it: 'new', 'resume' or 'overwrite'.

    Raises:
        ConfigError / OwnershipError: a file, a folder this job did not make, a run with a
            different config without --overwrite, or a protected folder with --overwrite.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder path")
    action = inspect_owned(Storage(out), "run", overwrite=overwrite,
                           what="a regene-ray run of jobs/train.py")
    if action != "existing":
        return action
    try:  # read through RunConfig, so fields added since (with their defaults) compare equal
        old = to_dict(from_dict(RunConfig, yaml.safe_load((out / RUN_CONFIG_FILE).read_text()),
                                source=str(out / RUN_CONFIG_FILE)))
    except (OSError, yaml.YAMLError, ConfigError, TypeError, AttributeError):
        old = None
    if old != to_dict(cfg):
        raise ConfigError(
            f"--out {out} holds a run with a different config; pass --overwrite to "
            "replace it, or choose another --out"
        )
    return "resume"


def prepare_out_dir(out: Path, cfg: RunConfig, *, overwrite: bool) -> bool:
    """Create or reuse `out` after inspect_out_dir; returns True when an earlier run of the same
    config is resumed. Call it only once every input was validated: --overwrite deletes here."""
    action = inspect_out_dir(out, cfg, overwrite=overwrite)
    st = Storage(out)
    st.check_writable("--out")
    if action == "resume":
        log.info("resuming the run in %s", out)
        return True
    if action == "overwrite":
        claim_for_overwrite(st, "run")
    write_marker(st, "run", RUN_ARTEFACTS, {"config": to_dict(cfg)})
    atomic_write_bytes(out / RUN_CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return False


def near_chance(accuracy: float, num_classes: int) -> bool:
    """A test accuracy too close to guessing for the run's codes to mean anything (below twice
    chance, or below half-way between chance and 1 for two classes)."""
    chance = 1.0 / num_classes
    return accuracy < min(2 * chance, (1 + chance) / 2)


def build_models(cfg: RunConfig, data: DataSplits) -> tuple[Classifier, Decoder]:
    """The classifier and its mirrored decoder for this data, initialised from cfg.seed (the
    caller's global RNG is left as it was)."""
    ccfg = ClassifierConfig.from_arch(cfg.classifier, in_channels=data.channels,
                                      image_size=data.image_size, num_classes=data.num_classes)
    with scoped_seed(cfg.seed, torch.device("cpu")):
        clf = Classifier(ccfg)
        dec = Decoder(DecoderConfig.mirror(ccfg, cfg.decoder))
    return clf, dec


@dataclass
class TrainedRun:
    """What the training steps of a run made, for its metrics and pictures."""

    classifier: Classifier
    decoder: Decoder
    bank: LatentBank
    thresholds: dict  # per class tau of both filter steps (bank_build.compute_thresholds)
    perceptual_backend: str  # the perceptual loss the decoder trained with
    judge: dict | None  # the judge network's name, seed and accuracy; None without one
    classifier_history: list[dict]  # per epoch, kept from an earlier run when loaded
    decoder_history: list[dict]
    timings: dict[str, float]  # seconds per step


def train_run(cfg: RunConfig, out: str | Path, *, device: str = "auto",
              overwrite: bool = False) -> dict:
    """Train everything for `cfg` into run folder `out`; returns the metrics written.

    Args:
        cfg: the whole run's config (saved as out/config.yaml).
        out: the run folder; re-running with the same config resumes it.
        device: 'auto', 'cpu' or 'cuda[:i]'.
        overwrite: replace an earlier run in `out` with a different config.
    """
    out = Path(out)
    dev = resolve_device(device)
    inspect_out_dir(out, cfg, overwrite=overwrite)  # fail on a bad --out before loading data
    t_start = time.perf_counter()
    data = load_data(cfg.data)  # missing or bad data fails here, before anything is deleted
    clf, dec = build_models(cfg, data)  # so does an architecture that does not fit the data
    prepare_out_dir(out, cfg, overwrite=overwrite)
    timings: dict[str, float] = {}
    with _timed(timings, "classifier_s"):  # 1. the classifier
        clf, clf_hist = train_or_load_classifier(clf, cfg, data, out, dev)
    with _timed(timings, "judge_s"):  # 2. the perceptual loss's judge, when it has one
        judge, judge_metrics = load_or_train_judge(cfg, data, out, dev)
    with _timed(timings, "decoder_s"):  # 3. the decoder, on the frozen classifier's codes
        perceptual, backend = build_perceptual(cfg.decoder_training.loss, clf, judge)
        dec, dec_hist = train_or_load_decoder(dec, clf, perceptual, cfg, data, out, dev)
    with _timed(timings, "bank_thresholds_s"):  # 4. latent bank, thresholds, novelty
        bank, thresholds = write_bank_and_thresholds(clf, dec, cfg, data, out, dev)
    trained = TrainedRun(clf, dec, bank, thresholds, backend, judge_metrics, clf_hist, dec_hist,
                         timings)
    return write_metrics(trained, cfg, data, out, dev, t_start)  # 5. metrics and pictures


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def train_or_load_classifier(clf: Classifier, cfg: RunConfig, data: DataSplits, out: Path,
                             dev: torch.device) -> tuple[Classifier, list[dict]]:
    """The run's classifier: loaded from out/classifier/ when it finished training, else
    trained (resuming from its epoch checkpoint) and saved there. Returns it and its
    per-epoch history (an earlier run's, from its metrics.json, when loaded)."""
    if (out / "classifier" / WEIGHTS_FILE).is_file():
        return (Classifier.load(out / "classifier", map_location=dev),
                _history(out / METRICS_FILE, "classifier_history"))
    hist = train_classifier(clf, data, cfg.classifier_training, dev,
                            checkpoint=out / CLASSIFIER_STATE, seed=cfg.seed)
    clf.save(out / "classifier")
    return clf, hist


def train_or_load_decoder(dec: Decoder, clf: Classifier, perceptual: torch.nn.Module | None,
                          cfg: RunConfig, data: DataSplits, out: Path, dev: torch.device
                          ) -> tuple[Decoder, list[dict]]:
    """The run's decoder, as train_or_load_classifier: loaded from out/decoder/ or trained on
    the frozen `clf`'s codes with the perceptual module `perceptual` (or None)."""
    if (out / "decoder" / WEIGHTS_FILE).is_file():
        return (Decoder.load(out / "decoder", map_location=dev),
                _history(out / METRICS_FILE, "decoder_history"))
    hist = train_decoder(dec, clf, data, cfg.decoder_training, dev, perceptual,
                         checkpoint=out / DECODER_STATE, seed=cfg.seed)
    dec.save(out / "decoder")
    return dec, hist


def write_bank_and_thresholds(clf: Classifier, dec: Decoder, cfg: RunConfig, data: DataSplits,
                              out: Path, dev: torch.device) -> tuple[LatentBank, dict]:
    """The latent bank of the training split, the filter thresholds tau_c and the novelty
    step's calibration, written to the run folder. Returns (bank, thresholds)."""
    bank = build_bank(clf, data.train_x, data.train_y, dev)
    bank.save(out / BANK_FILE)
    thresholds = compute_thresholds(clf, dec, data.holdout_x, data.holdout_y, data.num_classes, dev,
                                    image_rule=cfg.image_threshold)
    save_thresholds(thresholds, out / THRESHOLDS_FILE)
    save_novelty(holdout_distances(clf, bank, data.holdout_x, data.holdout_y, data.num_classes,
                                   dev), out / NOVELTY_FILE)
    return bank, thresholds


def write_metrics(run: TrainedRun, cfg: RunConfig, data: DataSplits, out: Path,
                  dev: torch.device, t_start: float) -> dict:
    """Test the trained run, measure the filters' acceptance, draw its two grids, and write
    out/metrics.json; returns the metrics."""
    from regene_ray.pictures import save_generation_grid, save_reconstruction_grid

    test = evaluate_classifier(run.classifier, data.test_x, data.test_y, dev)
    recon = evaluate_decoder(run.decoder, run.classifier, data.test_x, dev)
    gen = ConvexGenerator(run.bank, run.classifier, run.decoder, run.thresholds, device=dev)
    acceptance = run_acceptance(gen, cfg, data.num_classes)
    save_reconstruction_grid(run.classifier, run.decoder, data, out / RECON_GRID, dev)
    save_generation_grid(gen, data.class_names, cfg.grid_n_parents, out / GEN_GRID, seed=cfg.seed)
    metrics = {
        "dataset": cfg.data.dataset,
        "class_names": data.class_names,
        "device": str(dev),
        "test_accuracy": test["accuracy"],
        "test_latent_sparsity": test["latent_sparsity"],
        "recon_test_mae": recon["mae"],
        "recon_test_ssim": recon["ssim"],
        "class_mean_baseline_mae": class_mean_baseline_mae(data),
        "perceptual_backend": run.perceptual_backend,
        "judge": run.judge,
        "acceptance": acceptance,
        "bank_size": len(run.bank),
        "bank_eligible_parents": int(run.bank.correct.sum()),
        "train_images": len(data.train_x),
        "holdout_images": len(data.holdout_x),
        "test_images": len(data.test_x),
        "timings": run.timings | {"total_s": time.perf_counter() - t_start},
        "classifier_history": run.classifier_history,
        "decoder_history": run.decoder_history,
        "near_chance": near_chance(test["accuracy"], data.num_classes),
    }
    if metrics["near_chance"]:
        log.warning(
            "run %s: test accuracy %.3f is near chance (%.3f for %d classes): the classifier did "
            "not learn, so its codes are not a usable generator. Train longer or on more data "
            "(a --smoke-test run is only a plumbing check)", out, metrics["test_accuracy"],
            1 / data.num_classes, data.num_classes)
    save_json(metrics, out / METRICS_FILE)
    log.info(
        "run %s: test_acc %.4f recon_mae %.4f ssim %.3f perceptual=%s accept(n=2) %.2f in %.0fs",
        out, metrics["test_accuracy"], metrics["recon_test_mae"], metrics["recon_test_ssim"],
        run.perceptual_backend, acceptance.get("2", {}).get("accepted", float("nan")),
        metrics["timings"]["total_s"],
    )
    return metrics


def load_or_train_judge(cfg: RunConfig, data: DataSplits, out: Path, dev: torch.device
                        ) -> tuple[ResNet | None, dict | None]:
    """The judge network of the perceptual loss, when the run trains with one: the shared
    ResNet (regene_ray.resnet) of the loss config's depth, width and epochs, with a seed of its
    own, trained on the run's train split and kept in out/judge/ (loaded from there on a
    re-run). Returns (network, its name, seed, test accuracy and training seconds) or
    (None, None)."""
    loss = cfg.decoder_training.loss
    if loss.backend() != "judge":
        return None, None
    model_cfg = ResNetConfig(depth=loss.judge_depth, width=loss.judge_width,
                             in_channels=data.channels, num_classes=data.num_classes)
    train_cfg = ResNetTrainConfig(epochs=loss.judge_epochs, seed=cfg.seed + JUDGE_SEED)
    judge, metrics = load_or_train_resnet(out / JUDGE_DIR, data, model_cfg, train_cfg, dev,
                                          data_identity=to_dict(cfg.data), what="judge")
    judge.requires_grad_(False)
    if near_chance(metrics.get("test_accuracy", 0.0), data.num_classes):
        log.warning("judge network: test accuracy %.3f is near chance; its features are close to "
                    "a random network's, which still measure structure but not what tells "
                    "classes apart. Raise decoder_training.loss.judge_epochs, or train on more "
                    "data", metrics.get("test_accuracy", 0.0))
    return judge, {"network": f"resnet{loss.judge_depth}-w{loss.judge_width}",
                   "seed": train_cfg.seed, "test_accuracy": metrics.get("test_accuracy"),
                   "train_seconds": metrics.get("train_seconds")}


def _history(path: Path, key: str) -> list:
    """A per-epoch history from an earlier metrics.json (a resumed run keeps its curves)."""
    try:
        return json.loads(path.read_text()).get(key, [])
    except (OSError, ValueError):
        return []


def class_mean_baseline_mae(data: DataSplits) -> float:
    """MAE of predicting each test image by its class's mean training image (a trivial decoder)."""
    x = data.train_x.float() / 255
    means = torch.stack([x[data.train_y == c].mean(0) for c in range(data.num_classes)])
    t = data.test_x.float() / 255
    return float((means[data.test_y] - t).abs().mean())


def run_acceptance(gen: ConvexGenerator, cfg: RunConfig, num_classes: int) -> dict:
    """generator.measure_acceptance for each n of the grid, about cfg.acceptance_candidates
    candidates each (the prior mass generation plans its first wave from)."""
    out = {}
    for n in cfg.grid_n_parents:
        classes = gen.eligible_classes(n)
        if len(classes) < num_classes:
            log.warning("n=%d: classes %s have fewer than %d eligible parents; left out of the "
                        "acceptance measurement", n, sorted(set(range(num_classes)) - set(classes)),
                        n)
        per_class = -(-cfg.acceptance_candidates // max(len(classes), 1))
        # per class too: mass generation plans each class from its own rate (mass.prior_rates)
        out[str(n)] = measure_acceptance(gen, n, per_class, seed=cfg.seed + ACCEPTANCE_SEED)
    return out
