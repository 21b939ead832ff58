"""The files of a training run that generation needs, read once.

    RunFiles.read(run)   reads classifier/, decoder/, latent_bank.parquet and thresholds.json
                         of a jobs/train.py run folder (local, s3://... or gs://...) once,
                         hashes their bytes (part of a mass-generation job's identity) and
                         parses them; every error names the file as the user gave it
    ConvexGenerator.from_files(files)   builds the networks from them (regene_ray.generator)

A RunFiles holds the bank as numpy arrays and the weights as bytes, so Ray ships it to the
generation actors through the object store once, and the actors on a node map the same bank
instead of each reading (or copying) the run folder again.

Reading imports no torch (only `models()` does), so a job reads the run while torch loads; the
bank is hashed while Arrow decodes it (both release the GIL).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from regene_ray.config import MODEL_CONFIG_FILE, WEIGHTS_FILE, parse_config
from regene_ray.latent_bank import BANK_FILE, THRESHOLDS_FILE, LatentBank, parse_thresholds
from regene_ray.storage import Storage

if TYPE_CHECKING:
    from regene_ray.classifier import Classifier
    from regene_ray.decoder import Decoder

CLASSIFIER_DIR = "classifier"
DECODER_DIR = "decoder"
RUN_FILES = (f"{CLASSIFIER_DIR}/{MODEL_CONFIG_FILE}", f"{CLASSIFIER_DIR}/{WEIGHTS_FILE}",
             f"{DECODER_DIR}/{MODEL_CONFIG_FILE}", f"{DECODER_DIR}/{WEIGHTS_FILE}", BANK_FILE,
             THRESHOLDS_FILE)


@dataclass
class RunFiles:
    """A run's generation files, read and checked once (see the module docstring)."""

    where: str  # the run folder as the user named it (credentials redacted), for messages
    classifier_config: dict
    decoder_config: dict
    classifier_weights: bytes  # weights.pt as saved (a state dict; loaded with weights_only)
    decoder_weights: bytes
    thresholds: dict  # thresholds.json: per-class tau for the latent and the image step
    bank: LatentBank
    hashes: dict[str, str]  # sha256 of each file's bytes, by its name in RUN_FILES

    @classmethod
    def read(cls, run: str | Path | Storage) -> RunFiles:
        """Read a run folder's generation files; a missing folder or file, or a corrupt one,
        raises (FileNotFoundError / CheckpointError) naming it."""
        st = run if isinstance(run, Storage) else Storage(run)
        if st.is_local and not st.local_path().is_dir():
            raise FileNotFoundError(f"run folder {st} does not exist; create one with "
                                    f"jobs/train.py --out {st}")
        missing = [n for n in RUN_FILES if not st.is_file(n)]
        if missing:
            raise FileNotFoundError(f"run folder {st} lacks {missing}; it is not a finished "
                                    "jobs/train.py run (train it, or resume its training)")
        raw = {n: st.read_bytes(n) for n in RUN_FILES}  # each file read once
        with ThreadPoolExecutor(1, thread_name_prefix="hash-run") as pool:
            hashing = pool.submit(hashes_of, raw)
            bank = LatentBank.load(raw[BANK_FILE], name=st.display(BANK_FILE))
            hashes = hashing.result()
        clf_cfg = parse_config(raw[f"{CLASSIFIER_DIR}/{MODEL_CONFIG_FILE}"],
                               st.display(f"{CLASSIFIER_DIR}/{MODEL_CONFIG_FILE}"))
        num_classes = int(clf_cfg.get("num_classes", 0))
        return cls(
            where=st.display(),
            classifier_config=clf_cfg,
            decoder_config=parse_config(raw[f"{DECODER_DIR}/{MODEL_CONFIG_FILE}"],
                                        st.display(f"{DECODER_DIR}/{MODEL_CONFIG_FILE}")),
            classifier_weights=raw[f"{CLASSIFIER_DIR}/{WEIGHTS_FILE}"],
            decoder_weights=raw[f"{DECODER_DIR}/{WEIGHTS_FILE}"],
            thresholds=parse_thresholds(raw[THRESHOLDS_FILE], num_classes,
                                        st.display(THRESHOLDS_FILE)),
            bank=bank,
            hashes=hashes,
        )

    @property
    def num_classes(self) -> int:
        return int(self.classifier_config["num_classes"])

    def models(self, device: str = "cpu") -> tuple[Classifier, Decoder]:
        """(Classifier, Decoder), rebuilt from their configs and weights on `device`."""
        from regene_ray.checkpoint import model_from_files  # torch: see the module docstring
        from regene_ray.classifier import Classifier, ClassifierConfig
        from regene_ray.decoder import Decoder, DecoderConfig

        clf = model_from_files(Classifier, ClassifierConfig, self.classifier_config,
                               self.classifier_weights, f"{self.where}/{CLASSIFIER_DIR}", device)
        dec = model_from_files(Decoder, DecoderConfig, self.decoder_config,
                               self.decoder_weights, f"{self.where}/{DECODER_DIR}", device)
        return clf, dec


def hashes_of(files: dict[str, bytes]) -> dict[str, str]:
    """sha256 of each file's bytes."""
    return {n: hashlib.sha256(data).hexdigest() for n, data in files.items()}


def run_hashes(run_dir: str | Path) -> dict[str, str]:
    """sha256 of every file a generation depends on (weights, configs, bank, thresholds)."""
    st = Storage(run_dir)
    return hashes_of({n: st.read_bytes(n) for n in RUN_FILES if st.is_file(n)})
