"""Mass generation, the job's identity: what to generate (MassSpec) and everything besides it
that fixes the output's bytes (run checkpoints, thresholds, the novelty step, the runtime, the
format), digested into the job key that job.json and every Parquet file carry. Two jobs with the
same key write the same bytes, so a resume may continue one with the other. No Ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from regene_ray.convex import parse_weights
from regene_ray.generator import PRECISIONS
from regene_ray.latent_bank import THRESHOLDS_FILE
from regene_ray.mass.plan import quotas
from regene_ray.nearest import NOVELTY_FILE, novelty_thresholds
from regene_ray.runtime import runtime_identity
from regene_ray.storage import Storage, redact

# Bumped whenever the bytes of an output can change (keyed random streams, PNG encoding, batch
# make-up, memory format ...): a resume never mixes files of two formats. v2: job key, runtime.
# v3: mixing on CPU whatever the device (CUDA bytes changed; CPU bytes did not), precision.
# v4: nearest_train_id / nearest_train_distance columns (the novelty step); label int64 with
# ClassLabel metadata (DESIGN.md's int16 is read by Hugging Face as a plain Value, not a class).
FORMAT = "regene-ray mass generation v4"


@dataclass(frozen=True)
class MassSpec:
    """What to generate; two jobs with equal specs (and run hashes) write identical outputs."""

    run: str  # run folder (absolute)
    count: int  # exact number of images to keep
    classes: tuple[int, ...]  # classes to generate, balanced
    n_parents: tuple[int, ...] = (2,)  # parents per mix, drawn per candidate when several
    weights: str = "uniform"  # uniform | dirichlet:<alpha> | affine:<reach> | ratios
    seed: int = 0  # all randomness is a function of (seed, candidate id)
    chunk_size: int = 1024  # candidates per chunk: the unit of work, resume and Parquet files
    png: bool = False  # also write OUT/png/<label>/<shard>/<id>.png
    batch_size: int = 0  # candidates per decoder batch inside a chunk (0: the whole chunk)
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (the decoder's; see ConvexGenerator)
    novelty_quantile: float = 0.0  # novelty step: reject codes nearer a training code than this
    # quantile of real held-out images are (RUN/novelty.json); 0 runs no novelty step
    class_weights: tuple[int, ...] = ()  # per-class quota weights, one per class (such as the
    # training split's class sizes, --class-counts train); () balances the classes

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: use one of "
                             f"{', '.join(PRECISIONS)}")
        if not 0 <= self.novelty_quantile < 1:
            raise ValueError(f"--novelty-quantile {self.novelty_quantile} must be in (0, 1), "
                             "e.g. 0.01 (or 0 for no novelty step)")
        if self.batch_size < 0:
            raise ValueError(f"--batch-size {self.batch_size} must be at least 1 (0, in the "
                             "Python API only, means one batch per chunk)")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size {self.chunk_size} must be at least 1")
        if not self.classes:
            raise ValueError("--classes is empty; give class indices such as 0,1,2")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"--classes {list(self.classes)} repeats a class")
        if any(n < 2 for n in self.n_parents):
            raise ValueError(f"--n-parents {list(self.n_parents)}: a mix needs at least 2 parents")
        if self.class_weights and (len(self.class_weights) != len(self.classes)
                                   or min(self.class_weights) < 1):
            raise ValueError(f"class weights {list(self.class_weights)} must be one whole number "
                             f">= 1 for each of the {len(self.classes)} classes")
        scheme = parse_weights(self.weights)
        if scheme.kind == "ratios" and any(n != len(scheme.ratios) for n in self.n_parents):
            raise ValueError(f"--weights {self.weights} gives {len(scheme.ratios)} ratios but "
                             f"--n-parents is {','.join(map(str, self.n_parents))}; give one "
                             "ratio per parent, or use uniform, dirichlet:<alpha> or affine:<reach>")

    def quotas(self) -> dict[int, int]:
        return quotas(self.count, self.classes, self.class_weights)


def job_metadata(spec: MassSpec, hashes: dict[str, str], *, device: str = "cpu",
                 thresholds: dict | None = None, runtime: dict | None = None) -> dict:
    """The job's identity, stored in job.json and in every Parquet file.

    Args:
        spec: what to generate; its run path is recorded without credentials.
        hashes: sha256 of the run files (RunFiles.hashes / run_hashes).
        device: the device kind the workers run on ('cpu' or 'cuda').
        thresholds: the run's thresholds.json (read from spec.run when not given).
        runtime: the workers' runtime_identity, as a worker reported it (default: this
            process's for `device`).
    """
    if thresholds is None:
        thresholds = Storage(spec.run).read_json(THRESHOLDS_FILE)
    spec_record = asdict(spec) | {"run": redact(spec.run)}
    if not spec.class_weights:  # balanced: recorded as before class weights existed, so the
        del spec_record["class_weights"]  # outputs of earlier versions keep their job key
    identity = {"spec": spec_record, "checkpoint_sha256": hashes,
                "thresholds": {k: thresholds[k] for k in ("latent", "image")},
                "class_names": run_class_names(spec.run, len(thresholds["latent"])),
                "novelty": novelty_identity(spec),
                "runtime": runtime or runtime_identity(str(device).split(":")[0]),
                "format": FORMAT}
    identity = json.loads(json.dumps(identity))  # as job.json holds it (tuples become lists)
    identity["job_key"] = job_key(identity)
    return identity


def novelty_identity(spec: MassSpec) -> dict | None:
    """The novelty step's space, quantile and per-class thresholds (from RUN/novelty.json), or
    None when the spec runs no novelty step."""
    if not spec.novelty_quantile:
        return None
    st = Storage(spec.run)
    if not st.is_file(NOVELTY_FILE):
        raise FileNotFoundError(
            f"--novelty-quantile needs {st.display(NOVELTY_FILE)} (held-out nearest-train "
            "distances), which jobs/train.py writes; run jobs/train.py again on this run (it "
            "resumes without retraining and adds the file), or drop --novelty-quantile")
    stats = st.read_json(NOVELTY_FILE)
    return {"space": stats.get("space"), "quantile": spec.novelty_quantile,
            "thresholds": novelty_thresholds(stats, spec.novelty_quantile)}


def run_class_names(run: str, num_classes: int) -> list[str]:
    """The run's class names (metrics.json, written by jobs/train.py), or "0", "1", ... for a
    run that predates them; they become the `label` column's Hugging Face ClassLabel names."""
    try:
        names = Storage(run).read_json("metrics.json").get("class_names")
    except (OSError, ValueError, AttributeError):
        names = None
    if not isinstance(names, list) or len(names) != num_classes:
        return [str(c) for c in range(num_classes)]
    return [str(n) for n in names]


def job_key(identity: dict) -> str:
    """A digest of everything that fixes the output's bytes. The run folder's path is left out
    (the same checkpoints, by hash, may sit elsewhere on another driver host)."""
    ident = json.loads(json.dumps(identity))
    ident.pop("job_key", None)
    ident.get("spec", {}).pop("run", None)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def same_job(a: dict, b: dict) -> bool:
    """Whether two job identities describe the same output."""
    return job_key(a) == job_key(b)


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two identities, in flag names, for the refusal message."""
    differ = sorted(k for k in set(old.get("spec", {})) | set(new["spec"])
                    if k != "run" and old.get("spec", {}).get(k) != new["spec"].get(k))
    if old.get("checkpoint_sha256") != new.get("checkpoint_sha256"):
        differ.append("run checkpoints")
    if old.get("thresholds") != new.get("thresholds"):
        differ.append("thresholds")
    old_rt, new_rt = old.get("runtime", {}), new.get("runtime", {})
    if old_rt.get("device") != new_rt.get("device"):
        differ.append(f"device kind ({old_rt.get('device')} -> {new_rt.get('device')})")
    for key, what in (("torch", "torch version"), ("gpu", "GPU model"),
                      ("cudnn", "cuDNN version")):
        if old_rt.get(key) != new_rt.get(key):
            differ.append(f"{what} ({old_rt.get(key)} -> {new_rt.get(key)})")
    if old.get("format") != new.get("format"):
        differ.append(f"output format ({old.get('format')} -> {new.get('format')})")
    return differ


