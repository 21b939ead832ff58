"""jobs/evaluate.py as users run it: a subprocess on a trained run, the report it writes, the
generated-folder reader (regene_ray.generated), error messages, and the HTML rendered by
headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import load_job, run_job
from PIL import Image

from regene_ray.evaluation.evaluate import REPORT_KIND, prepare_report_dir
from regene_ray.evaluation.neutral import NeutralClassifier
from regene_ray.evaluation.streams import STREAMS, stage_seed
from regene_ray.generated import JOB_FILE, SUMMARY_FILE, GeneratedFolder
from regene_ray.generator import ConvexGenerator, encode_png
from regene_ray.mass import sinks
from regene_ray.run_files import run_hashes

FAST = ["--smoke-test", "--threads", "1", "--device", "cpu"]



def run(*args, check=True):
    return run_job("evaluate", *args, check=check)


@pytest.fixture(scope="module")
def neutral_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("neutral") / "cache"


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory, neutral_cache):
    base = tmp_path_factory.mktemp("eval")
    real_only = base / "tog-real"  # a jobs/train_on_generated.py result for the CAS table
    tog = load_job("train_on_generated")
    threads = torch.get_num_threads()
    try:
        tog.main(tog.get_args_parser().parse_args([
            "--run", str(tiny_run), "--real-only", "--out", str(real_only), "--depth", "8",
            "--width", "4", "--epochs", "1", "--threads", "1", "--device", "cpu", "--seeds", "0"]))
    finally:
        torch.set_num_threads(threads)
    out = base / "report"
    p = run("--run", tiny_run, "--out", out, "--neutral-cache", neutral_cache,
            "--train-on-generated", real_only, *FAST)
    return out, p


def read_generated(folder, **kw):
    return GeneratedFolder(folder).read(**kw)


def write_generated(folder, gen: ConvexGenerator, n: int, *, seed: int = 0, n_parents=(2, 3),
                    with_n_column: bool = True):
    """A small Parquet file in mass generation's schema (without its metadata) in `folder`
    (a generated folder's data/)."""
    b = gen(np.arange(n) % gen.num_classes, n_parents=list(n_parents), seed=seed).accepted_only()
    k = b.n_parents
    cols = {
        "id": pa.array(b.ids, pa.int64()),
        "label": pa.array(b.labels.astype(np.int16), pa.int16()),
        "parent_ids": pa.array([r[:m].tolist() for r, m in zip(b.parent_ids, k, strict=True)],
                               pa.list_(pa.int64())),
        "weights": pa.array([r[:m].tolist() for r, m in zip(b.weights, k, strict=True)],
                            pa.list_(pa.float32())),
        "latent_confidence": pa.array(b.latent_confidence, pa.float32()),
        "image_confidence": pa.array(b.image_confidence, pa.float32()),
        "image": pa.StructArray.from_arrays(
            [pa.array([encode_png(im) for im in b.images], pa.binary()),
             pa.array([None] * len(b), pa.string())], names=["bytes", "path"]),
    }
    if with_n_column:
        cols["n_parents"] = pa.array(k.astype(np.int8), pa.int8())
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), folder / f"part-{seed}.parquet")
    return b


# the job and its report


def test_report_is_written_and_every_embedded_image_decodes(report):
    out, p = report
    assert f"report: {out / 'report.html'}" in p.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == REPORT_KIND and m["generated"]["source"] == "in-process"
    assert set(m["generation_accuracy"]["per_n"]) == {"2", "3", "5"}
    assert {a["weights"] for a in m["acceptance"]["per_class"].values()} == {"uniform"}
    # accepted generations pass the run's own classifier twice: the judge recognises them at
    # least as the paper reports (>= 0.9 on MNIST)
    assert m["generation_accuracy"]["overall"] > 0.9
    assert m["neutral"]["test_accuracy"] > 0.8
    # every sampling stage drew from its own stream (no --generated: no subset was drawn)
    streams = m["random_streams"]
    assert set(streams) == set(STREAMS) - {"subset"}
    assert streams == {k: stage_seed(0, k) for k in streams}
    assert len(set(streams.values())) == len(streams)
    rows = m["fid"]["rows"]
    # Table 1's rows on the n = 2 generations, and one extra Org vs Gen row per other n
    assert set(rows) == {"org_vs_gen", "org_vs_recon", "recon_vs_gen", "org_vs_org",
                         "org_vs_gen_n3", "org_vs_gen_n5", "org_vs_gen_dirichlet"}
    for r in rows.values():
        assert r["features"] == m["fid"]["features"] != "" and len(r["values"]) == 3
        assert np.isfinite(r["mean"]) and r["std"] > 0  # another sample per seed
    floor = rows["org_vs_org"]["mean"]  # two samples of real images: no Org vs X goes below
    assert all(r["mean"] > floor for k, r in rows.items() if k.startswith("org_vs_")
               and k != "org_vs_org")
    # MiFID where the real side is the training images: every Org vs Gen row and the floor
    assert {k for k, r in rows.items() if "mifid_mean" in r} == set(rows) - {"org_vs_recon",
                                                                           "recon_vs_gen"}
    # realism and diversity apart: accepted mixes lie where real images are (precision), but
    # reach less of the real distribution than real images do (recall below the floor's)
    fidelity = m["fidelity"]["rows"]
    assert set(fidelity) == set(rows) - {"org_vs_recon", "recon_vs_gen"}
    floor = fidelity.pop("org_vs_org")
    assert min(floor["precision"], floor["recall"], floor["coverage"]) > 0.8
    for k, r in fidelity.items():
        assert r["real"] == 150 and r["generated"] == (150 if "dirichlet" in k else 100)
        assert r["precision"] >= 0.8 and r["recall"] < floor["recall"], k
    for space in ("pixel", "feature"):  # convex mixes are new images: flagged about by chance
        assert m["novelty"][space]["copy_fraction"] <= 0.15, space
    # Fig. 7b: one row per ratio; r = 0 is real vs real, so its FID is the lowest and its
    # neutral accuracy is the judge's accuracy on those real test images
    blends = m["blends"]["rows"]
    assert [r["ratio"] for r in blends] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert blends[0]["fid"] == min(r["fid"] for r in blends)
    assert blends[-1]["fid"] > blends[0]["fid"]
    assert all(r["neutral_accuracy"] > 0.85 and r["images"] == 150 for r in blends)
    # Fig. 3's contrast: the autoencoder (same encoder + decoder, MAE + SSIM only) learned
    ae = m["autoencoder"]
    assert ae["images"] == 500 and ae["epochs"] == 2
    assert ae["test_mae"] < 0.8 * ae["initial_test_mae"] and ae["test_ssim"] > 0.4
    assert {"latent_spaces", "blends"} <= set(m["figures"])
    (tog,) = m["train_on_generated"]
    tog_metrics = json.loads((out.parent / "tog-real" / "metrics.json").read_text())
    assert tog["name"] == "tog-real" and tog["real_only"] and tog["generated_weight"] == 1.0
    assert tog["test_accuracy"] == tog_metrics["test_accuracy"]  # tabulated as measured
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html), "external resource"
    assert "<script" not in html and "<link" not in html
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == len(m["figures"]) >= 6
    for u in uris:
        with Image.open(io.BytesIO(base64.b64decode(u))) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    for key in m["figures"]:
        assert (out / "figures" / f"{key}.png").is_file()
    for name in ("Org vs Gen", "Org vs Recon", "Recon vs Gen", "Org vs Gen, n = 5 (extra row)",
                 "Org vs Gen, n = 2, Dirichlet weights (extra row)", m["fid"]["features"], "paper Fig. 7b", "autoencoder, same encoder and decoder",
                 "Fidelity and diversity apart"):
        assert name in html


def test_neutral_model_is_cached_where_asked_and_the_run_is_only_read(report, tiny_run,
                                                                     neutral_cache):
    m = json.loads((report[0] / "metrics.json").read_text())
    model = NeutralClassifier.load(neutral_cache)
    assert model.cfg.depth == 8 and m["neutral"]["folder"] == str(neutral_cache.resolve())
    assert not (tiny_run / "neutral").exists()  # nothing written into the input run


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); "
                    ".ci/run installs it")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,2600", (report[0] / "report.html").resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), p.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2600, 1200)
    ink = (img.min(axis=2) < 200).mean()  # text, tables and pictures
    assert ink > 0.02, f"screenshot is nearly blank ({ink:.4f} non-white)"
    # matplotlib's first colour (n = 2 bars, 31,119,180) proves the embedded figures render
    blue = (np.abs(img - np.array([31, 119, 180])).max(axis=2) < 12).sum()
    assert blue > 500, f"no figure pixels in the screenshot ({blue})"


# the report folder and errors


def test_report_folder_rules(tmp_path):
    prepare_report_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "new" / "metrics.json").write_text(json.dumps({"kind": REPORT_KIND}))
    prepare_report_dir(tmp_path / "new", overwrite=False)  # an earlier report: fine
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier evaluation report"):
        prepare_report_dir(foreign, overwrite=False)
    prepare_report_dir(foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "keep me"  # nothing is deleted


def test_user_errors_are_one_line(tmp_path):
    p = run("--run", tmp_path / "nope", "--out", tmp_path / "r", check=False)
    assert p.returncode == 2 and "not a run folder" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()
    p = run("--run", tmp_path / "nope", "--out", tmp_path / "r", "--prdc-k", "5",
            "--prdc-samples", "5", check=False)  # the config is checked before the run
    assert p.returncode == 2 and "prdc_samples 5 larger than it" in p.stderr
    assert not (tmp_path / "r").exists()


# the generated-Parquet reader


def test_read_generated_reads_the_mass_generation_schema(tiny_run, tmp_path):
    gen = ConvexGenerator.from_run(tiny_run)
    b0 = write_generated(tmp_path / "gen" / "data", gen, 60, seed=0)
    b1 = write_generated(tmp_path / "gen" / "data", gen, 40, seed=1, with_n_column=False)
    # not data: other folders, nested folders, temporaries, the folder's root
    write_generated(tmp_path / "gen" / "data" / "more", gen, 20, seed=2)
    write_generated(tmp_path / "gen", gen, 20, seed=3)
    (tmp_path / "gen" / "_chunks").mkdir()
    (tmp_path / "gen" / "_chunks" / "x.parquet").write_bytes(b"not parquet")
    (tmp_path / "gen" / "data" / ".part-9.parquet.tmp1.parquet").write_bytes(b"half")
    folder = GeneratedFolder(tmp_path / "gen")
    assert folder.data_files() == ["data/part-0.parquet", "data/part-1.parquet"]
    assert folder.count_rows() == len(b0) + len(b1)
    g = folder.read()  # files in sorted order
    assert len(g) == len(b0) + len(b1) == g.total_rows
    assert g.weights is None  # no job.json records them
    assert torch.equal(g.images, torch.from_numpy(np.concatenate([b0.images, b1.images])))
    assert g.labels.tolist() == b0.labels.tolist() + b1.labels.tolist()
    assert g.n_parents.tolist() == b0.n_parents.tolist() + b1.n_parents.tolist()
    assert [len(p) for p in g.parent_ids] == g.n_parents.tolist()
    sub = folder.read(max_images=25, seed=3)
    assert len(sub) == 25 and sub.total_rows == len(g)
    keep = np.sort(np.random.default_rng(3).permutation(len(g))[:25])  # seeded, in file order
    assert torch.equal(sub.images, g.images[torch.from_numpy(keep)])
    assert sub.labels.tolist() == g.labels[keep].tolist()


def test_read_generated_reads_files_from_the_mass_generation_writer(tiny_run, tmp_path):
    gen = ConvexGenerator.from_run(tiny_run)
    b = gen(np.arange(50) % 10, n_parents=[2, 3, 5], seed=4).accepted_only()
    table = sinks.rows_table(b, [encode_png(im) for im in b.images], [""] * len(b))
    sinks.write_parquet_atomic(table, tmp_path / "out" / "data" / "00000.parquet", {"run": "x"})
    g = read_generated(tmp_path / "out")
    assert torch.equal(g.images, torch.from_numpy(b.images))
    assert g.n_parents.tolist() == b.n_parents.tolist() and g.labels.tolist() == b.labels.tolist()


def test_read_generated_errors(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_generated(tmp_path / "missing")
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no data/\*\.parquet"):
        read_generated(tmp_path / "empty")
    (tmp_path / "cols" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2]}), tmp_path / "cols" / "data" / "a.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['image', 'label'\]"):
        read_generated(tmp_path / "cols")
    (tmp_path / "png" / "data").mkdir(parents=True)
    img = pa.StructArray.from_arrays([pa.array([b"junk"]), pa.array(["x"])],
                                     names=["bytes", "path"])
    pq.write_table(pa.table({"label": pa.array([1], pa.int16()), "image": img}),
                   tmp_path / "png" / "data" / "a.parquet")
    with pytest.raises(ValueError, match=r"data/a.parquet row 0: image bytes are not a readable PNG"):
        read_generated(tmp_path / "png")


def test_a_finished_folder_of_the_run_passes_the_check_and_others_are_named(tiny_run, tmp_path):
    gen = ConvexGenerator.from_run(tiny_run)
    rows = len(write_generated(tmp_path / "gen" / "data", gen, 40))
    folder = GeneratedFolder(tmp_path / "gen")
    (tmp_path / "gen" / JOB_FILE).write_text(json.dumps(
        {"checkpoint_sha256": run_hashes(tiny_run)}))
    with pytest.raises(ValueError, match="has no summary.json.*--allow-partial"):
        folder.check(tiny_run)
    folder.check(tiny_run, allow_partial=True)  # partial, but from this run
    (tmp_path / "gen" / SUMMARY_FILE).write_text(json.dumps({"requested": rows + 1}))
    with pytest.raises(ValueError, match=f"holds {rows} rows where its summary.json promises "
                                         f"{rows + 1}"):
        folder.check(tiny_run)
    (tmp_path / "gen" / SUMMARY_FILE).write_text(json.dumps({"requested": rows}))
    folder.check(tiny_run)  # finished, this run's: accepted without flags
    (tmp_path / "gen" / JOB_FILE).write_text(json.dumps(
        {"checkpoint_sha256": {"classifier/weights.pt": "0" * 64}}))
    with pytest.raises(ValueError, match="made from other checkpoints than --run"):
        folder.check(tiny_run)
    folder.check(tiny_run, allow_other_run=True)


def _smoke_config(run_dir):
    """The EvalConfig that `jobs/evaluate.py --smoke-test` uses (so the cached neutral fits)."""
    job = load_job("evaluate")
    args = job.get_args_parser().parse_args(["--run", str(run_dir), "--out", "x", *FAST])
    return job.build_config(args)


def test_training_images_passed_as_generations_are_flagged_as_copies(report, tiny_run, tmp_path,
                                                                  neutral_cache):
    from regene_ray.data import load_data
    from regene_ray.evaluation.evaluate import evaluate
    from regene_ray.run import load_run_config

    data = load_data(load_run_config(tiny_run / "config.yaml").data)
    rows = np.arange(0, len(data.train_x), 6)[:200]
    img = pa.StructArray.from_arrays(
        [pa.array([encode_png(data.train_x[i].numpy()) for i in rows], pa.binary()),
         pa.array([None] * len(rows), pa.string())], names=["bytes", "path"])
    (tmp_path / "gen" / "data").mkdir(parents=True)
    pq.write_table(pa.table({
        "id": pa.array(rows, pa.int64()),
        "label": pa.array(data.train_y[rows].numpy().astype(np.int16), pa.int16()),
        "parent_ids": pa.array([[int(i), int(i)] for i in rows], pa.list_(pa.int64())),
        "image": img}), tmp_path / "gen" / "data" / "copies.parquet")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dataclasses.replace(_smoke_config(tiny_run), autoencoder_epochs=0)
        m = evaluate(tiny_run, tmp_path / "report", cfg,
                     generated=tmp_path / "gen", device="cpu", neutral_cache=neutral_cache,
                     allow_partial=True, allow_other_run=True)
    finally:
        torch.set_num_threads(before)
    assert m["neutral"]["cached"]
    for space in ("pixel", "feature"):
        assert m["novelty"][space]["copy_fraction"] == 1.0, space
    assert all(x["flagged"] for x in m["novelty"]["closest_matches"]["random"])
    assert all(x["ssim"]["ssim"] > 0.999 for x in m["novelty"]["closest_matches"]["random"])
    # n_parents comes from the parent_ids lengths when the column is absent
    assert set(m["generation_accuracy"]["per_n"]) == {"2"}


def test_job_evaluates_a_generated_folder(report, tiny_run, tmp_path, neutral_cache):
    gen = ConvexGenerator.from_run(tiny_run)
    write_generated(tmp_path / "gen" / "data", gen, 200, n_parents=(2, 3, 5))
    out = tmp_path / "report"
    # hand-written Parquet: no summary.json and no provenance, so it must be accepted knowingly
    # (GeneratedFolder.check's every refusal: test_a_finished_folder_of_the_run_passes...)
    p = run("--run", tiny_run, "--generated", tmp_path / "gen", "--out", out, *FAST,
            check=False)
    assert p.returncode == 2 and "no summary.json" in p.stderr and "--allow-partial" in p.stderr
    assert not out.exists()
    # the weights the folder says made it: the acceptance figure mixes its candidates with them
    (tmp_path / "gen" / JOB_FILE).write_text(json.dumps({"spec": {"weights": "affine:1"}}))
    run("--run", tiny_run, "--generated", tmp_path / "gen", "--out", out, "--allow-partial",
        "--allow-other-run", "--neutral-cache", neutral_cache, "--autoencoder-epochs", "0",
        *FAST)
    m = json.loads((out / "metrics.json").read_text())
    assert m["generated"]["source"] == f"parquet:{tmp_path / 'gen'}"
    assert m["neutral"]["cached"]  # trained by the first job, reused
    assert set(m["generation_accuracy"]["per_n"]) == {"2", "3", "5"}
    assert {a["weights"] for a in m["acceptance"]["per_class"].values()} == {"affine:1"}
    assert "mixed with affine:1 weights" in (out / "report.html").read_text()
    assert m["autoencoder"] is None and "latent_spaces" not in m["figures"]  # asked: none
    bad = run("--run", tiny_run, "--generated", tmp_path / "nowhere", "--out", tmp_path / "r2",
              *FAST, check=False)
    assert bad.returncode == 2 and "--generated" in bad.stderr
    assert not (tmp_path / "r2").exists()  # nothing written on a user error
