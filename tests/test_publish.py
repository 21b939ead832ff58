"""A generated folder as a dataset: the dataset card and Croissant file every mass job writes,
and jobs/export.py's WebDataset shards, read back with the packages people use (datasets,
mlcroissant, webdataset)."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml
from conftest import REPO, load_job
from masstools import generate, read_out
from PIL import Image

from regene_ray.ownership import OwnershipError, read_marker
from regene_ray.publish import card, croissant
from regene_ray.publish.facts import gather
from regene_ray.publish.sources import source_of
from regene_ray.storage import Storage

export_job = load_job("export")
FLAGS = ["--count", "300", "--n-parents", "2", "--chunk-size", "24", "--batch-size", "24",
         "--seed", "3"]


def export(*flags):
    return export_job.main(export_job.get_args_parser().parse_args([str(f) for f in flags]))


def header(out):
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


@pytest.fixture(scope="module")
def generated(ray_cluster, tiny_run, tmp_path_factory):
    """The same job with one and with two workers."""
    base = tmp_path_factory.mktemp("publish")
    for workers in ("1", "2"):
        generate(tiny_run, base / f"w{workers}", *FLAGS, "--workers", workers)
    return base / "w1", base / "w2"


def test_every_job_writes_a_card_and_croissant(generated, tiny_run):
    out, _ = generated
    marker = read_marker(Storage(out))
    assert {"README.md", "croissant.json"} <= set(marker["artefacts"])
    assert "shards" not in marker["artefacts"]  # listed when jobs/export.py writes shards
    head, text = header(out)
    names = json.loads((tiny_run / "metrics.json").read_text())["class_names"]
    (label,) = [f for f in head["dataset_info"]["features"] if f["name"] == "label"]
    assert list(label["class_label"]["names"].values()) == names
    assert head["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert head["license"] == "cc-by-4.0"  # the tiny run trains on scikit-learn's digits
    assert head["size_categories"] == ["n<1K"]
    assert "300 labelled images" in text
    run = json.loads((tiny_run / "metrics.json").read_text())
    assert f"{run['test_accuracy']:.4f}" in text
    assert "python jobs/mass_generate.py --run" in text and "--count 300" in text  # the command
    counts = json.loads((out / "summary.json").read_text())["accepted_per_class"]
    assert f"| {names[0]} | {counts['0']:,} |" in text


def test_datasets_loads_the_folder_with_its_class_names(generated, tiny_run):
    import datasets

    out, _ = generated
    ds = datasets.load_dataset(str(out), split="train")
    names = json.loads((tiny_run / "metrics.json").read_text())["class_names"]
    assert ds.num_rows == 300 and ds.features["label"].names == names
    assert sorted(ds["id"]) == read_out(out).column("id").to_pylist()


def test_mlcroissant_validates_and_reads_every_record(generated):
    import mlcroissant as mlc

    out, _ = generated
    ds = mlc.Dataset(jsonld=str(out / "croissant.json"))
    assert not ds.metadata.ctx.issues.errors
    meta = json.loads((out / "croissant.json").read_text())
    assert meta["prov:wasDerivedFrom"][0]["name"].startswith("scikit-learn digits")
    assert meta["prov:wasGeneratedBy"]["prov:used"][0]["sha256"] == \
        json.loads((out / "job.json").read_text())["checkpoint_sha256"]
    records = list(ds.records(record_set="default"))
    assert sorted(r["default/id"] for r in records) == read_out(out).column("id").to_pylist()
    first = records[0]  # the image decoded from the row's PNG bytes, the weights a list
    row = read_out(out).filter(pc.equal(read_out(out).column("id"), first["default/id"]))
    png = row.column("image")[0]["bytes"].as_py()
    assert np.array_equal(np.asarray(first["default/image"]), np.asarray(Image.open(io.BytesIO(png))))
    assert len(first["default/weights"]) == 2


def test_a_folder_dataset_has_an_unknown_licence(generated):
    out, _ = generated
    facts = gather(Storage(out))
    facts.source = source_of("folder:/data/my-images")
    head, text = yaml.safe_load(card.render(facts).split("---\n")[1]), card.render(facts)
    assert head["license"] == "unknown" and "source_datasets" not in head
    assert "state it in this card before sharing" in text
    assert croissant.metadata(facts)["license"] == "unknown"
    assert source_of("mnist").licence == "mit" and source_of("cifar10").licence == "unknown"


def test_the_card_says_which_mixes_made_the_set(generated):
    out, _ = generated
    facts = gather(Storage(out))
    assert "convex mixes of 2" in card.render(facts) and "affine" not in facts.method()
    facts.identity = copy.deepcopy(facts.identity)
    facts.identity["spec"]["weights"] = "affine:1"
    for text in (card.render(facts), croissant.metadata(facts)["description"]):
        assert "affine mixes" in text and "may be negative" in text and "convex mixes" not in text


def fresh_copy(src, dst):
    """A copy of a generated folder without its shards."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("shards", ".regene-ray.lease"))
    return dst


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_webdataset_shards_exact_and_the_same_for_any_worker_count(generated):
    import webdataset as wds

    w1, w2 = generated
    for out in (w1, w2):
        result = export("--generated", out, "--webdataset", "--shard-size", "128")
        assert result["shards"] == 3
        assert "shards" in read_marker(Storage(out))["artefacts"]
    assert shard_bytes(w1) == shard_bytes(w2) and len(shard_bytes(w1)) == 3
    samples = list(wds.WebDataset(str(w1 / "shards" / "{00000..00002}.tar"), shardshuffle=False)
                   .decode("pil").to_tuple("__key__", "png", "cls", "json"))
    ids = [s[3]["id"] for s in samples]
    assert sorted(ids) == ids == read_out(w1).column("id").to_pylist()  # each id once, in order
    assert all(int(k) == j["id"] and c == j["label"] for k, _, c, j in samples)
    index = json.loads((w1 / "shards" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [128, 128, 44]
    head, text = header(w1)
    assert "webdataset" in text.lower() and "{00000..00002}.tar" in text


def test_an_export_killed_mid_way_completes_to_the_same_bytes(generated, tmp_path):
    w1, _ = generated
    ref, out = fresh_copy(w1, tmp_path / "ref"), fresh_copy(w1, tmp_path / "copy")
    export("--generated", ref, "--webdataset", "--shard-size", "2")  # unbroken: 150 shards
    cmd = [sys.executable, str(REPO / "jobs" / "export.py"), "--generated", str(out),
           "--webdataset", "--shard-size", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "shards").glob("*.tar"))) < 5:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    written = len(list((out / "shards").glob("*.tar")))
    assert 5 <= written < 150 and not (out / "shards" / "index.json").exists()
    export("--generated", out, "--webdataset", "--shard-size", "2")  # the same command again
    assert shard_bytes(out) == shard_bytes(ref)
    assert (out / "shards" / "index.json").read_text() == \
        (ref / "shards" / "index.json").read_text()


def test_export_refuses_what_it_did_not_make(generated, tmp_path):
    out = fresh_copy(generated[0], tmp_path / "copy")
    export("--generated", out, "--webdataset", "--shard-size", "100")
    with pytest.raises(FileExistsError, match="shard size 100, not 50.* or --overwrite"):
        export("--generated", out, "--webdataset", "--shard-size", "50")
    export("--generated", out, "--webdataset", "--shard-size", "50", "--overwrite")
    assert len(list((out / "shards").glob("*.tar"))) == 6
    (out / "shards" / "notes.txt").write_text("mine")
    with pytest.raises(OwnershipError, match="no export wrote"):
        export("--generated", out, "--webdataset", "--shard-size", "100", "--overwrite")
    assert (out / "shards" / "notes.txt").read_text() == "mine"
    (tmp_path / "plain").mkdir()
    with pytest.raises(OwnershipError, match="not a jobs/mass_generate.py output"):
        export("--generated", tmp_path / "plain")
    with pytest.raises(ValueError, match="add --webdataset"):
        export("--generated", out, "--shard-size", "10")
    # an index without an export's plan is not this export's
    stale = fresh_copy(generated[0], tmp_path / "stale")
    (stale / "shards").mkdir()
    (stale / "shards" / "index.json").write_text("{}")
    with pytest.raises(OwnershipError, match="without an export's plan"):
        export("--generated", stale, "--webdataset")
    # a folder of an earlier version, whose marker did not list README.md, holding the user's
    older = fresh_copy(generated[0], tmp_path / "older")
    marker = json.loads((older / ".regene-ray.json").read_text())
    marker["artefacts"] = [a for a in marker["artefacts"] if a != "README.md"]
    (older / ".regene-ray.json").write_text(json.dumps(marker))
    (older / "README.md").write_text("my notes")
    with pytest.raises(OwnershipError, match="never written over"):
        export("--generated", older)
    assert (older / "README.md").read_text() == "my notes"
    job = json.loads((older / "job.json").read_text())
    (older / "job.json").write_text(json.dumps(job | {"format": "regene-ray mass generation v3"}))
    with pytest.raises(ValueError, match="earlier output format"):
        export("--generated", older)
    (out / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="unfinished"):
        export("--generated", out)


def test_the_card_carries_an_evaluation_of_this_folder(generated, tiny_run, tmp_path):
    from conftest import run_job

    w1, w2 = generated
    report = tmp_path / "report"
    run_job("evaluate", "--run", tiny_run, "--generated", w1, "--out", report, "--smoke-test",
            "--threads", "1", "--device", "cpu", "--autoencoder-epochs", "0")
    m = json.loads((report / "metrics.json").read_text())
    with pytest.raises(ValueError, match="is not an evaluation of"):
        export("--generated", w2, "--report", report)  # another folder's report
    export("--generated", w1, "--report", report)
    _, text = header(w1)
    assert "## Evaluation" in text
    assert f"{m['generation_accuracy']['overall']:.4f}" in text
    for row in m["fidelity"]["rows"].values():
        assert f"| {row['name']} | {row['precision']:.3f} |" in text


def test_the_readme_lines_for_a_generated_set_run(generated, tmp_path, monkeypatch):
    """README.md's "Using a generated set" lines, each run as written on a folder at
    gen/mnist (with shards)."""
    import datasets  # noqa: F401  (the lines' imports)
    import duckdb  # noqa: F401
    import torch  # noqa: F401
    import webdataset as wds  # noqa: F401

    folder = fresh_copy(generated[0], tmp_path / "gen" / "mnist")
    export("--generated", folder, "--webdataset", "--shard-size", "3")  # 100 shards
    readme = (REPO / "README.md").read_text()
    block = readme.split("One line each:")[1].split("```python\n")[1].split("```")[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 4
    monkeypatch.chdir(tmp_path)
    for line in lines:
        value = eval(line.split("  # ")[0])
        if hasattr(value, "fetchall"):
            assert sum(n for _, n in value.fetchall()) == 300
        else:
            assert next(iter(value)) is not None
