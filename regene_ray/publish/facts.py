"""What a generated folder's card and Croissant file say, gathered from the job's own records:
OUT/job.json (the identity: spec, checkpoint hashes, thresholds, class names, novelty, runtime),
the finished job's summary (counts, acceptance, the command), the run's metrics.json (dataset,
test accuracy, reconstruction MAE / SSIM), and, when they exist, an evaluation report made from
this folder and the WebDataset shards' index. Nothing is measured here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from regene_ray.convex import parse_weights
from regene_ray.generated import JOB_FILE, SUMMARY_FILE
from regene_ray.publish.sources import Source, source_of
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"  # WebDataset tar shards (regene_ray.publish.shards)
SHARDS_INDEX = f"{SHARDS_DIR}/index.json"  # written last: the shards are complete


@dataclass
class DatasetFacts:
    out: Storage
    identity: dict  # job.json
    summary: dict  # summary.json's fields (a Summary as a dict)
    run: dict  # the run's metrics.json ({} when unreadable)
    source: Source
    report: dict | None = None  # headline figures of an evaluation of this folder
    shards: dict | None = None  # shards/index.json

    @property
    def spec(self) -> dict:
        return self.identity["spec"]

    @property
    def class_names(self) -> list[str]:
        return self.identity["class_names"]

    @property
    def rows(self) -> int:
        return int(self.summary["requested"])

    @property
    def dataset(self) -> str:
        return self.run.get("dataset", "unknown")

    @property
    def finished(self) -> str:
        """The UTC date the job finished (when the summary was written), or today's for a
        folder whose summary predates that field."""
        return self.summary.get("extra", {}).get("finished") or \
            datetime.now(timezone.utc).date().isoformat()

    @property
    def command(self) -> str | None:
        return self.summary.get("extra", {}).get("command")

    def class_counts(self) -> list[tuple[str, int]]:
        counts = self.summary["accepted_per_class"]
        return [(self.class_names[int(c)], int(n)) for c, n in sorted(counts.items(),
                                                                      key=lambda kv: int(kv[0]))]

    def method(self) -> str:
        """The generation method in one sentence."""
        n = " or ".join(map(str, self.spec["n_parents"]))
        weights = self.spec["weights"]
        mixes = ("affine mixes (weights that sum to 1 and may be negative: extrapolation beyond "
                 "the parents, outside the paper's convex setting)"
                 if parse_weights(weights).kind == "affine" else "convex mixes")
        text = (f"ReGene (Gopalakrishnan et al., Neurocomputing 2021): {mixes} of {n} "
                f"latent codes of one class (weights {weights}) of the run's "
                "classifier, decoded by its decoder, kept when the classifier is confident in "
                "the code and in the decoded image (per-class thresholds)")
        q = self.spec.get("novelty_quantile")
        if q:
            text += (f", and when the code is no nearer a training code than the closest "
                     f"{q:g} of real held-out images are (the novelty step)")
        return text + "."


def gather(out: Storage, summary: dict | None = None, report: str | Path | None = None,
           run: str | None = None, *, require_run: bool = False) -> DatasetFacts:
    """The facts of the finished generated folder `out`.

    Args:
        summary: the Summary being written, when summary.json is not written yet.
        report: an evaluation report folder of `out`.
        run: the run folder with its credentials and options (job.json records it without
            them, which is not enough to read an s3:// run); default: job.json's.
        require_run: fail when the run's metrics.json cannot be read (else the card leaves the
            run's figures out and calls the licence unknown).
    """
    identity = out.read_json(JOB_FILE)
    summary = summary if summary is not None else out.read_json(SUMMARY_FILE)
    run = _run_metrics(run or identity["spec"]["run"], require_run)
    shards = out.read_json(SHARDS_INDEX) if out.is_file(SHARDS_INDEX) else None
    return DatasetFacts(out, identity, summary, run, source_of(run.get("dataset", "unknown")),
                        headline(report, out) if report else None, shards)


def _run_metrics(run: str, require: bool) -> dict:
    try:
        return Storage(run).read_json("metrics.json")
    except (OSError, ValueError) as e:  # the run may have moved since: the card says less
        if require:
            raise FileNotFoundError(
                f"the run's metrics.json ({run}) is not readable ({e}); pass --run with the "
                "run folder (and its credentials, for s3:// or gs://)") from None
        log.warning("the run's metrics.json is not readable (%s); the card leaves its figures "
                    "out and calls the licence unknown", e)
        return {}


def headline(report: str | Path, out: Storage) -> dict:
    """The headline figures of an evaluation report (jobs/evaluate.py --generated OUT) made from
    this folder: neutral accuracy, FID rows, precision / recall / density / coverage rows."""
    path = Path(report) / "metrics.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"--report {report}: no readable metrics.json ({e}); pass the "
                                "--out folder of a jobs/evaluate.py run") from None
    source = m.get("generated", {}).get("source", "")
    from regene_ray.evaluation.evaluate import REPORT_KIND

    if m.get("kind") != REPORT_KIND or not _same_folder(source, out):
        raise ValueError(f"--report {report} is not an evaluation of {out.display()} (it "
                         f"evaluated {source or 'something else'}); evaluate this folder with "
                         f"jobs/evaluate.py --generated {out.display()}")
    return {"folder": str(Path(report).resolve()), "dataset": m.get("dataset"),
            "evaluated": m["generated"].get("evaluated"),
            "neutral": m.get("neutral", {}).get("architecture"),
            "neutral_test_accuracy": m.get("neutral", {}).get("test_accuracy"),
            "generation_accuracy": m.get("generation_accuracy", {}).get("overall"),
            "fid_features": m.get("fid", {}).get("features"),
            "fid": [{k: r.get(k) for k in ("name", "mean", "std")}
                    for r in m.get("fid", {}).get("rows", {}).values()],
            "fidelity": [{k: r.get(k) for k in ("name", "precision", "recall", "density",
                                                "coverage")}
                         for r in m.get("fidelity", {}).get("rows", {}).values()]}


def _same_folder(source: str, out: Storage) -> bool:
    where = source.removeprefix("parquet:")
    if out.is_local:
        try:
            return Path(where).resolve() == out.local_path().resolve()
        except OSError:
            return False
    return where.rstrip("/") == out.display().rstrip("/")
