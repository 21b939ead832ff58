"""jobs/train_on_generated.py: a classifier trained on generated Parquet streamed through Ray
Data (alone, or mixed with real images), tested on the real test set."""

from __future__ import annotations

import json
import math

import pytest
import ray
import torch
from conftest import load_job
from masstools import generate

from regene_ray.config import ConfigError
from regene_ray.data import load_data
from regene_ray.ownership import OwnershipError
from regene_ray.resnet import ResNet, accuracy
from regene_ray.run import load_run_config

FAST = ["--depth", "8", "--width", "4", "--epochs", "2", "--batch-size", "64", "--threads", "1",
        "--device", "cpu", "--seeds", "0"]


def history(m):
    (seed,) = m["per_seed"]
    return seed["history"]


job = load_job("train_on_generated")


def train(*flags):
    return job.main(job.get_args_parser().parse_args([str(f) for f in flags]))


@pytest.fixture(scope="module")
def generated(ray_cluster, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tog") / "gen"
    generate(tiny_run, out, "--count", "300", "--n-parents", "2", "--batch-size", "50",
             "--workers", "1", "--seed", "4")
    return out


def test_generated_only_streams_every_row_each_epoch(generated, tiny_run, tmp_path):
    out = tmp_path / "cas"
    m = train("--run", tiny_run, "--generated", generated, "--out", out, *FAST)
    assert m["trained_on"]["generated_rows"] == 300 and m["trained_on"]["real_images"] == 0
    assert [h["images"] for h in history(m)] == [300, 300]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == m["test_accuracy"]
    # the saved model is the one scored: its accuracy on the run's real test split, again
    data = load_data(load_run_config(tiny_run / "config.yaml").data)
    model = ResNet.load(out / "models" / "seed-0")
    assert model.cfg.width == 4 and m["test_images"] == len(data.test_x)
    assert accuracy(model, data.test_x, data.test_y, "cpu") == m["test_accuracy"]
    assert m["test_accuracy_std"] is None and m["seeds"] == 1  # no spread from one seed
    # the same command again: refused without --overwrite; with it, the same result (seeded
    # shuffle of an order-preserving stream)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        train("--run", tiny_run, "--generated", generated, "--out", out, *FAST)
    again = train("--run", tiny_run, "--generated", generated, "--out", out, "--overwrite", *FAST)
    assert again["test_accuracy"] == m["test_accuracy"]
    assert [h["train_loss"] for h in history(again)] == [h["train_loss"] for h in history(m)]


def test_seeds_select_on_the_holdout_and_test_the_kept_model_once(generated, tiny_run, tmp_path):
    out = tmp_path / "cas"
    m = train("--run", tiny_run, "--generated", generated, "--out", out, *FAST[:-2],
              "--epochs", "3", "--seeds", "3", "7")
    data = load_data(load_run_config(tiny_run / "config.yaml").data)
    tests, vals = [], []
    for seed in m["per_seed"]:
        val = [h["val_accuracy"] for h in seed["history"]]
        latest = len(val) - 1 - val[::-1].index(max(val))  # the latest of the best
        assert seed["best_epoch"] == latest and seed["val_accuracy"] == max(val)
        model = ResNet.load(out / "models" / f"seed-{seed['seed']}")  # the kept epoch's model
        assert accuracy(model, data.holdout_x, data.holdout_y, "cpu") == seed["val_accuracy"]
        assert accuracy(model, data.test_x, data.test_y, "cpu") == seed["test_accuracy"]
        tests.append(seed["test_accuracy"])
        vals.append(seed["val_accuracy"])
    # two seeds train differently (init and batch order)
    assert m["per_seed"][0]["history"][0]["train_loss"] != m["per_seed"][1]["history"][0][
        "train_loss"]
    assert m["test_accuracy"] == pytest.approx(sum(tests) / 2)
    assert m["test_accuracy_std"] == pytest.approx(abs(tests[0] - tests[1]) / math.sqrt(2))
    assert m["val_accuracy"] == pytest.approx(sum(vals) / 2) and m["seeds"] == 2
    assert m["protocol"]["validation_images"] == len(data.holdout_x)


def test_selection_never_reads_the_test_set(tiny_run):
    """The same training with the test labels scrambled: every epoch, every validation score
    and the kept epoch are the same; only the one test figure differs."""
    from regene_ray.evaluation import cas
    from regene_ray.resnet import ResNetConfig, ResNetTrainConfig

    torch.set_num_threads(1)
    data = load_data(load_run_config(tiny_run / "config.yaml").data)

    def batches(epoch, gen):
        from regene_ray.data import iterate_batches
        return iterate_batches(data.train_x, data.train_y, 64, shuffle=True, generator=gen)

    stages = [cas.Stage("train", batches, math.ceil(len(data.train_x) / 64),
                        ResNetTrainConfig(epochs=3, batch_size=64))]
    build = lambda: ResNet(ResNetConfig(depth=8, width=4))  # noqa: E731
    val = (data.holdout_x, data.holdout_y)
    scrambled = data.test_y[torch.randperm(len(data.test_y),
                                           generator=torch.Generator().manual_seed(1))]
    a = cas.run_seeds([0], build, stages, val, (data.test_x, data.test_y), torch.device("cpu"))
    b = cas.run_seeds([0], build, stages, val, (data.test_x, scrambled), torch.device("cpu"))
    for key in ("best_epoch", "val_accuracy"):
        assert getattr(a[0], key) == getattr(b[0], key)
    strip = [{k: v for k, v in h.items() if k != "images_per_s"} for h in a[0].history]
    assert strip == [{k: v for k, v in h.items() if k != "images_per_s"} for h in b[0].history]
    assert a[0].test_accuracy != b[0].test_accuracy


def test_finetune_on_real_after_generated(generated, tiny_run, tmp_path):
    m = train("--run", tiny_run, "--generated", generated, "--out", tmp_path / "ft",
              "--real-images", "100", "--finetune-epochs", "1", *FAST)
    h = history(m)
    assert [(x["stage"], x["epoch"], x["images"]) for x in h] == [
        ("train", 0, 300), ("train", 1, 300), ("fine-tune", 2, 100)]
    assert m["trained_on"]["real_images"] == 100 and m["trained_on"]["finetune_epochs"] == 1
    assert [t["stage"] for t in m["training"]] == ["train", "fine-tune"]
    assert m["training"][1]["lr"] == 5e-4 and m["training"][1]["epochs"] == 1
    (seed,) = m["per_seed"]
    kept = max(x["val_accuracy"] for x in h)
    assert seed["best_stage"] == h[seed["best_epoch"]]["stage"] and seed["val_accuracy"] == kept


def test_model_seeds_leave_the_real_subset_alone(tiny_run):
    args = job.get_args_parser().parse_args(
        ["--run", str(tiny_run), "--real-only", "--out", "x", "--real-images", "50"])
    _, _, (x0, y0) = job.real_images(args)
    args.seeds = [5, 6]
    _, _, (x1, y1) = job.real_images(args)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    args.subset_seed = 1
    _, _, (x2, _) = job.real_images(args)
    assert not torch.equal(x0, x2)


def test_real_share_of_every_batch(generated, tiny_run, tmp_path):
    m = train("--run", tiny_run, "--generated", generated, "--out", tmp_path / "mix",
              "--real-fraction", "0.5", "--real-images", "100", *FAST)
    # 32 generated + 32 real per batch: ceil(300 / 32) batches, each with 32 real images
    batches = math.ceil(300 / 32)
    assert [h["images"] for h in history(m)] == [300 + 32 * batches] * 2
    assert m["trained_on"]["real_images"] == 100 and m["trained_on"]["real_fraction"] == 0.5
    assert m["trained_on"]["generated_weight"] == 1.0


def test_generated_weight_weighs_the_generated_rows_of_a_mixed_batch(generated, tiny_run):
    """--generated-weight: each batch carries per-image weights, the generated rows first at the
    weight, then the real rows at 1; fit_resnet takes the weighted mean, so equal weights train
    exactly as no weights do, and unequal ones train another model."""
    from regene_ray.evaluation.stream import generated_batches
    from regene_ray.generated import GeneratedFolder
    from regene_ray.resnet import ResNetConfig, ResNetTrainConfig, fit_resnet

    real = (torch.full((40, 1, 16, 16), 7, dtype=torch.uint8), torch.full((40,), 99))
    epoch, rows = generated_batches([GeneratedFolder(generated)], batch_size=40, real=real,
                                    real_fraction=0.25, generated_weight=0.5)
    batches = list(epoch(0, torch.Generator().manual_seed(0)))
    assert rows == 300 and len(batches) == math.ceil(300 / 30)
    for x, y, w in batches:
        assert (y[-10:] == 99).all() and (y[:-10] < 10).all() and (x[-10:] == 7).all()
        assert w[-10:].eq(1).all() and w[:-10].eq(0.5).all() and len(w) == len(y)

    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 2
    cfg = ResNetTrainConfig(epochs=2, batch_size=8, shift=0)

    def trained(*weights):
        torch.manual_seed(0)
        model = ResNet(ResNetConfig(depth=8, width=2, num_classes=2))
        fit_resnet(model, lambda e, g: [(x, y, *weights)] * 3, cfg, torch.device("cpu"))
        return torch.cat([p.flatten() for p in model.parameters()])

    plain = trained()
    assert torch.allclose(trained(torch.full((8,), 3.0)), plain, atol=1e-6)
    assert not torch.allclose(trained(torch.tensor([0.1] * 4 + [1.0] * 4)), plain, atol=1e-4)
    with pytest.raises(ValueError, match="differ from 1 only with --real-fraction"):
        generated_batches([GeneratedFolder(generated)], batch_size=40, generated_weight=0.5)


def test_the_stream_reads_through_the_v1_parquet_reader_and_every_row_once(generated):
    """The stream's default reader is Ray Data's V1 Parquet reader (V2 lists every file in its
    own task, every epoch: benchmarks/stream_reader.py). Both readers stream each row once an
    epoch; the batches differ (another block layout under the seeded shuffle), each run alike."""
    from regene_ray.evaluation.stream import generated_batches
    from regene_ray.generated import GeneratedFolder

    def epoch_of(**reader):
        epoch, rows = generated_batches([GeneratedFolder(generated)], batch_size=64, **reader)
        batches = list(epoch(0, torch.Generator().manual_seed(0)))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    default, v1, v2 = epoch_of(), epoch_of(datasource_v2=False), epoch_of(datasource_v2=True)
    assert torch.equal(default[0], v1[0]) and torch.equal(default[1], v1[1])
    assert len(v1[1]) == len(v2[1]) == 300

    def rows(xy):
        return sorted(zip(xy[1].tolist(), (x.flatten().tolist() for x in xy[0]), strict=True))

    assert rows(v1) == rows(v2)


def test_real_only_reference(tiny_run, tmp_path):
    m = train("--run", tiny_run, "--real-only", "--real-images", "200", "--out",
              tmp_path / "real", *FAST)
    assert [h["images"] for h in history(m)] == [200, 200]
    assert m["trained_on"]["generated_rows"] == 0
    # a small real set in longer epochs: as many steps as a generated run would take
    m = train("--run", tiny_run, "--real-only", "--real-images", "50", "--real-epoch-images",
              "130", "--out", tmp_path / "long", *FAST)
    assert [h["images"] for h in history(m)] == [130, 130]


def test_epochs_of_a_chosen_length_draw_every_image_once_per_pass():
    from regene_ray.data import iterate_batches

    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    labels = torch.cat([b for _, b in iterate_batches(x, y, 4, shuffle=True, images=25,
                                                      generator=torch.Generator().manual_seed(0))])
    assert len(labels) == 25
    assert sorted(labels[:10].tolist()) == sorted(labels[10:20].tolist()) == list(range(10))
    assert len(set(labels[20:].tolist())) == 5


@pytest.mark.parametrize("flags, error, message", [
    (["--real-only", "--generated", "x"], ConfigError, "not both or neither"),
    ([], ConfigError, "not both or neither"),
    (["--generated", "x", "--real-images", "5"], ConfigError, "none are used"),
    (["--generated", "x", "--real-fraction", "1.0"], ConfigError, "must be in \\[0, 1\\)"),
    (["--real-only", "--finetune-epochs", "1"], ConfigError, "add to --epochs instead"),
    (["--real-only", "--seeds", "1", "1"], ConfigError, "must be distinct"),
    (["--real-only", "--finetune-lr", "0"], ConfigError, "--finetune-lr 0.0 > 0"),
    (["--real-only", "--epochs", "0"], ConfigError, "--epochs 0 and"),
    (["--generated", "x", "--max-generated", "0"], ConfigError, "--max-generated 0"),
    (["--generated", "x", "--generated-weight", "0.5"], ConfigError, "add --real-fraction"),
    (["--generated", "x", "--real-fraction", "0.001", "--generated-weight", "2"], ConfigError,
     "at least one real image a batch"),
    (["--generated", "x", "--real-fraction", "0.5", "--generated-weight", "0"], ConfigError,
     "--generated-weight 0.0 must be > 0"),
    (["--generated", "x", "--real-fraction", "0.99", "--batch-size", "4"], ConfigError,
     "leaves no generated image"),
])
def test_bad_flags(tiny_run, tmp_path, flags, error, message):
    with pytest.raises(error, match=message):
        train("--run", tiny_run, "--out", tmp_path / "o", *FAST[:-2], *flags)
    assert not (tmp_path / "o").exists()


def test_bad_folders(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="is not a run folder"):
        train("--run", tmp_path, "--real-only", "--out", tmp_path / "o", *FAST)
    with pytest.raises(FileNotFoundError, match="has no data/\\*.parquet"):
        train("--run", tiny_run, "--generated", tmp_path, "--out", tmp_path / "o", *FAST)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OwnershipError, match="not a jobs/train_on_generated.py result"):
        train("--run", tiny_run, "--real-only", "--out", tmp_path / "mine", "--overwrite", *FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"




def test_the_shuffle_buffer_holds_two_files_of_every_class_within_its_budget():
    """A data file holds one class: 140 files of a 540,000-row MNIST folder hold 3,858 rows
    each, so a fixed 8,192-row buffer drew every batch from 3 of 10 classes. The buffer holds
    two average files of every class, at least 8,192 rows, at most 256 MiB of decoded images."""
    from regene_ray.evaluation.stream import SHUFFLE_BUDGET, shuffle_buffer_rows

    files = [f"gen/data/c{c:03d}-k{k:07d}.parquet" for c in range(10) for k in range(14)]
    assert shuffle_buffer_rows(files, 540_000, 784) == 2 * 10 * 3858
    assert shuffle_buffer_rows(files[:20], 3_000, 784) == 8192  # small files: the floor
    assert shuffle_buffer_rows(files, 540_000, 64 * 64 * 3) == SHUFFLE_BUDGET // (64 * 64 * 3)
    two = [f for f in files if f.startswith(("gen/data/c000", "gen/data/c001"))]
    assert shuffle_buffer_rows(two, 112_000, 784) == 2 * 2 * 4000  # two classes: two files each
    assert shuffle_buffer_rows(["a.parquet"], 20_000, 784) == 2 * 20_000  # no chunk names: 1 class


def test_a_shuffle_buffer_the_budget_cuts_short_of_the_classes_is_warned_about(caplog):
    from regene_ray.evaluation.stream import SHUFFLE_BUFFER, shuffle_buffer_rows

    files = [f"gen/data/c{c:03d}-k{k:07d}.parquet" for c in range(100) for k in range(4)]
    with caplog.at_level("WARNING", logger="regene_ray.evaluation.stream"):
        rows = shuffle_buffer_rows(files, 1_600_000, 128 * 128 * 3)  # 4,000-row files
    assert rows == SHUFFLE_BUFFER and "spans about 2 of the 100 classes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="regene_ray.evaluation.stream"):
        shuffle_buffer_rows(files[:40], 16_000, 784)
    assert caplog.text == ""


def test_the_row_size_comes_from_the_first_file_with_a_row(generated, tmp_path):
    """A chunk that accepted no image is an empty data file, and may come first."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from regene_ray.evaluation.stream import decoded_row_bytes
    from regene_ray.generated import GeneratedFolder

    first = GeneratedFolder(generated).files()[0]
    table = pq.read_table(first)
    pq.write_table(table.slice(0, 0), tmp_path / "c000-k0000000.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "none.parquet", row_group_size=1)
    fs = pafs.LocalFileSystem()
    empty, none = str(tmp_path / "c000-k0000000.parquet"), str(tmp_path / "none.parquet")
    assert decoded_row_bytes([empty, first], fs) == 16 * 16 == decoded_row_bytes([first], fs)
    assert decoded_row_bytes([empty, none], fs) == 1  # no row anywhere: the floor decides


def test_class_interleaved_order():
    from regene_ray.evaluation.stream import class_interleaved

    files = [f"s3://b/gen/data/c{c:03d}-k{k:07d}.parquet" for c in range(3) for k in range(2)]
    names = [f.rsplit("/", 1)[1] for f in class_interleaved([*files, "x/other.parquet"])]
    assert names == ["c000-k0000000.parquet", "c001-k0000000.parquet", "c002-k0000000.parquet",
                     "c000-k0000001.parquet", "c001-k0000001.parquet", "c002-k0000001.parquet",
                     "other.parquet"]


def test_a_max_rows_prefix_holds_every_class(ray_cluster, tiny_run, tmp_path):
    """One class per data file, in class order: the first rows in file order were of the first
    classes only."""
    from regene_ray.evaluation.stream import generated_batches
    from regene_ray.generated import GeneratedFolder

    out = tmp_path / "gen"
    generate(tiny_run, out, "--count", "600", "--n-parents", "2", "--chunk-size", "24",
             "--batch-size", "24", "--workers", "1", "--seed", "4")
    before = ray.data.DataContext.get_current().execution_options.preserve_order
    epoch, rows = generated_batches([GeneratedFolder(out)], batch_size=50, max_rows=200)
    # the order is kept on the dataset's own context: the process's is as it was
    assert ray.data.DataContext.get_current().execution_options.preserve_order == before
    labels = torch.cat([y for _, y in epoch(0, torch.Generator().manual_seed(0))])
    assert rows == 200 == len(labels)
    assert torch.bincount(labels, minlength=10).min() >= 10  # 20 a class, give or take a file


def test_the_per_step_cosine_ends_annealed_and_holds_past_its_steps(monkeypatch):
    """fit_resnet(per_step_lr=True): the rate falls every step to 5% of the peak at the last
    planned step, and a stream with more batches than planned stays there."""
    from regene_ray.resnet import ResNetConfig, ResNetTrainConfig, fit_resnet

    rates, step = [], torch.optim.AdamW.step

    def recording(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 2

    def batches(epoch, gen):  # 3 batches planned per epoch; the last epoch yields 4
        return [(x, y)] * (3 if epoch == 0 else 4)

    cfg = ResNetTrainConfig(epochs=2, batch_size=8, lr=1e-3)
    fit_resnet(ResNet(ResNetConfig(depth=8, width=2, num_classes=2)), batches, cfg,
               torch.device("cpu"), steps=3, per_step_lr=True)
    assert len(rates) == 7 and rates[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates[:5], rates[1:6], strict=True))
    assert rates[5] == rates[6] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(
        math.pi * 5 / 6))))


def test_the_latest_of_equal_epochs_is_kept():
    """A small validation split saturates: of epochs scoring the same, the latest is kept."""
    from regene_ray.evaluation.cas import KeepBest

    model = torch.nn.Linear(1, 1)
    best = KeepBest(model)
    for epoch, acc in enumerate([0.9, 1.0, 0.95, 1.0, 0.98]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        best(epoch, {"val_accuracy": acc})
    best.restore()
    assert best.epoch == 3 and best.accuracy == 1.0 and float(model.weight.detach()) == 3.0
