"""ConvexGenerator: one object, one call, from class labels to filtered images with provenance."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regene_ray.classifier import Classifier
from regene_ray.convex import (
    KeyedRNG,
    WeightScheme,
    choose_n_parents,
    mix,
    parse_weights,
    sample_convex_weights,
    sample_parents,
)
from regene_ray.data import to_uint8
from regene_ray.decoder import Decoder, check_compatible
from regene_ray.filtering import label_confidence, passes
from regene_ray.latent_bank import LatentBank
from regene_ray.nearest import NearestTrain
from regene_ray.run_files import RunFiles


@dataclass
class GenerationBatch:
    """Every candidate of one call, aligned row by row.

    parent_ids and weights are padded with -1 / 0 beyond each row's n_parents.
    images holds uint8 (B, C, H, W); rows that failed the latent step were never decoded (zeros).
    image_confidence is NaN for those rows. nearest_train_id / nearest_train_distance are the
    novelty step's (the nearest training code of the image's code, same class): -1 / NaN where
    it did not run (no novelty step, or the row failed an earlier step); novel is False only for
    rows the novelty step rejected.
    """

    ids: np.ndarray  # (B,) int64 candidate ids
    labels: np.ndarray  # (B,) int64 intended class
    n_parents: np.ndarray  # (B,) int64
    parent_ids: np.ndarray  # (B, n_max) int64 latent-bank ids
    weights: np.ndarray  # (B, n_max) float32
    latent_confidence: np.ndarray  # (B,) float32
    latent_pass: np.ndarray  # (B,) bool
    image_confidence: np.ndarray  # (B,) float32
    accepted: np.ndarray  # (B,) bool, passed every step
    images: np.ndarray  # (B, C, H, W) uint8
    nearest_train_id: np.ndarray  # (B,) int64 latent-bank id, -1 where not measured
    nearest_train_distance: np.ndarray  # (B,) float32, NaN where not measured
    novel: np.ndarray  # (B,) bool, False where the novelty step rejected a near-copy

    def select(self, mask: np.ndarray) -> GenerationBatch:
        return GenerationBatch(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def accepted_only(self) -> GenerationBatch:
        return self.select(self.accepted)

    def __len__(self) -> int:
        return len(self.ids)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) -> PNG bytes (deterministic: fixed compression, no metadata)."""
    arr = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@contextmanager
def tf32(allow: bool) -> Iterator[None]:
    """CUDA convolutions and matmuls may use TF32 tensor cores inside the block (`allow`), or
    not; the process's previous setting is restored after it."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


# the decoder's precision -> autocast dtype; "tf32" lets CUDA convs and matmuls use TF32 tensor
# cores (torch's cuDNN default), "fp32" turns TF32 off so both filter passes and the decoder
# really run in float32 on every GPU generation
PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Mixes:
    """Mixed codes of one call with their provenance (the CPU half of a generation).

    parent_ids and weights are padded with -1 / 0 beyond each row's n_parents.
    """

    ids: np.ndarray  # (B,) int64 candidate ids
    labels: np.ndarray  # (B,) int64 intended class
    n_parents: np.ndarray  # (B,) int64
    parent_ids: np.ndarray  # (B, n_max) int64 latent-bank ids
    weights: np.ndarray  # (B, n_max) float32
    z: np.ndarray  # (B, D) float32 mixed codes

    def rows(self, start: int, stop: int) -> Mixes:
        return Mixes(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})

    def __len__(self) -> int:
        return len(self.ids)


class LatentMixer:
    """Step 3 of ReGene, on CPU: draw n parents of a candidate's class and mixing weights (all a
    function of (seed, id)) and mix their codes. Needs only the latent bank, so a CPU worker of
    a split pipeline holds no networks.

    Mixing always runs on CPU in float32, whatever device decodes: the codes a GPU decodes are
    then bit for bit those a CPU worker would decode.
    """

    def __init__(self, bank: LatentBank, num_classes: int):
        self.bank = bank
        self.num_classes = int(num_classes)
        self.pools = bank.pools(self.num_classes)
        self.latents = bank.latents_tensor()  # never written: only indexed, (N, D)

    def eligible_classes(self, n_parents: int) -> list[int]:
        """Classes with at least `n_parents` eligible codes in the bank."""
        return [c for c, pool in enumerate(self.pools) if len(pool) >= n_parents]

    def __call__(self, labels: Sequence[int] | np.ndarray, n_parents: int | Sequence[int] = 2,
                 weights: str | WeightScheme = "uniform", *, seed: int = 0,
                 ids: Sequence[int] | np.ndarray | None = None) -> Mixes:
        """One mixed code per label; see ConvexGenerator.__call__ for the arguments."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}); got {np.unique(labels)}")
        ids = np.arange(len(labels), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids for {len(labels)} labels")
        options = [n_parents] if np.isscalar(n_parents) else list(n_parents)
        scheme = parse_weights(weights)
        n_per = choose_n_parents(options, KeyedRNG(seed, ids))  # (B,)
        n_max = int(max(options))
        B = len(labels)
        parent_rows = np.full((B, n_max), -1, dtype=np.int64)
        w = np.zeros((B, n_max), dtype=np.float32)
        z = torch.empty(B, self.bank.latent_dim)
        with torch.inference_mode():
            for k in sorted(set(n_per.tolist())):
                rows = np.flatnonzero(n_per == k)
                sub = KeyedRNG(seed, ids[rows])
                pr = sample_parents(self.pools, labels[rows], k, sub)  # (b, k)
                wk = sample_convex_weights(k, scheme, sub)  # (b, k)
                parent_rows[rows, :k], w[rows, :k] = pr, wk
                z[torch.from_numpy(rows)] = mix(self.latents[torch.from_numpy(pr)],  # (b, k, D)
                                                torch.from_numpy(wk))
        parent_ids = np.where(parent_rows >= 0, self.bank.ids[np.maximum(parent_rows, 0)], -1)
        return Mixes(ids=ids, labels=labels, n_parents=n_per, parent_ids=parent_ids, weights=w,
                     z=z.numpy())


class ConvexGenerator:
    """Mix same-class codes (convexly, unless asked for affine weights), filter in latent space,
    decode, filter the images.

    Args:
        bank: the latent bank (parents come from codes the head assigns to their own label).
        classifier: the trained classifier (encoder + linear head).
        decoder: the decoder trained on this classifier's codes.
        thresholds: {"latent": [tau_c], "image": [tau_c]} as in thresholds.json.
        device: where the networks run (mixing runs on CPU, see LatentMixer).
        precision: 'fp32' (default; on CUDA TF32 is off while this generator scores, whatever
            the process's setting), 'tf32' (TF32 on CUDA, fp32 elsewhere), or 'bf16' / 'fp16'
            for the decoder only (autocast); in those two both classifier passes, and so both
            filter decisions, stay in fp32.
    """

    def __init__(self, bank: LatentBank, classifier: Classifier, decoder: Decoder,
                 thresholds: dict, device: torch.device | str = "cpu", precision: str = "fp32"):
        check_compatible(classifier.cfg, decoder.cfg)
        if bank.latent_dim != classifier.cfg.latent_dim:
            raise ValueError(
                f"latent bank codes have dim {bank.latent_dim} but classifier latent_dim is "
                f"{classifier.cfg.latent_dim}; rebuild the bank with jobs/train.py"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        self.precision = precision
        self.bank = bank
        self.num_classes = classifier.cfg.num_classes
        self.mixer = LatentMixer(bank, self.num_classes)
        self.classifier = classifier.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        self.tau_latent = torch.tensor(thresholds["latent"], dtype=torch.float32)
        self.tau_image = torch.tensor(thresholds["image"], dtype=torch.float32)
        self.nearest: NearestTrain | None = None  # the novelty step (off until set_novelty)
        self.tau_novelty: torch.Tensor | None = None

    def set_novelty(self, thresholds: Sequence[float] | None) -> None:
        """Turn on the novelty step (a third filter step): reject an image whose code lies
        closer than thresholds[c] to a training code of its class c (nearest.novelty_thresholds);
        None turns it off."""
        if thresholds is None:
            self.nearest, self.tau_novelty = None, None
            return
        if len(thresholds) != self.num_classes:
            raise ValueError(f"{len(thresholds)} novelty thresholds for {self.num_classes} classes")
        self.nearest = NearestTrain(self.bank, self.num_classes, self.device)
        self.tau_novelty = torch.tensor(list(thresholds), dtype=torch.float32)

    def eligible_classes(self, n_parents: int) -> list[int]:
        """Classes with at least `n_parents` eligible codes in the bank."""
        return self.mixer.eligible_classes(n_parents)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: torch.device | str = "cpu",
                 precision: str = "fp32") -> ConvexGenerator:
        """Load classifier, decoder, bank and thresholds from a jobs/train.py run folder."""
        return cls.from_files(RunFiles.read(run_dir), device=device, precision=precision)

    @classmethod
    def from_files(cls, files: RunFiles, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> ConvexGenerator:
        """The generator of a run's files, read once (regene_ray.run_files)."""
        clf, dec = files.models(device)
        check_compatible(clf.cfg, dec.cfg, where=f"run dir {files.where}")
        return cls(files.bank, clf, dec, files.thresholds, device=device, precision=precision)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":  # page-locked, so the copy runs asynchronously
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self.decoder(z)
        with torch.autocast(self.device.type, dtype=dtype):
            return self.decoder(z).float()

    def score(self, m: Mixes, *, filter: bool = True) -> GenerationBatch:
        """The device half: the latent filter, decoding, the image filter, as one batch (its
        make-up fixes the float noise of the convs: callers keep it a function of the ids).
        TF32 follows `precision` for the call and is restored after it."""
        with tf32(self.device.type == "cuda" and self.precision == "tf32"):
            return self._score(m, filter=filter)

    @torch.inference_mode()
    def _score(self, m: Mixes, *, filter: bool) -> GenerationBatch:
        B = len(m)
        z = self._to_device(m.z)
        y = self._to_device(m.labels)
        logits = self.classifier.classify_latent(z)
        lat_conf = label_confidence(logits, y)
        lat_pass = passes(lat_conf, y, self.tau_latent)
        # Lemma 1 puts a convex mix in its class region; an affine one (a negative weight) must
        # also be shown there, since a threshold of 0.5 or less would pass another class's code
        outside = (m.weights < 0).any(axis=1)
        if outside.any():
            lat_pass &= ~self._to_device(outside) | (logits.argmax(1) == y)
        decode = lat_pass if filter else torch.ones_like(lat_pass)
        images = torch.zeros(B, self.decoder.cfg.out_channels, self.decoder.cfg.image_size,
                             self.decoder.cfg.image_size, dtype=torch.uint8, device=self.device)
        img_conf = torch.full((B,), float("nan"), device=self.device)
        near_id = torch.full((B,), -1, dtype=torch.int64, device=self.device)
        near_d = torch.full((B,), float("nan"), device=self.device)
        codes = None
        if decode.any():
            x = to_uint8(self._decode(z[decode]))
            images[decode] = x
            # classify the image exactly as it is stored (uint8), so the stored bytes reproduce
            # the stored confidence
            codes = self.classifier.encode(x.float() / 255.0)
            img_conf[decode] = label_confidence(self.classifier.classify_latent(codes),
                                                y[decode])
        accepted = lat_pass & passes(img_conf.nan_to_num(-1.0), y, self.tau_image)
        novel = torch.ones_like(accepted)
        if self.nearest is not None and codes is not None:
            check = accepted[decode]  # decoded rows that passed both confidence steps
            if check.any():
                rows = decode.nonzero().squeeze(1)[check]
                ids, dist = self.nearest(codes[check], y[rows])
                near_id[rows], near_d[rows] = ids, dist
                novel[rows] = ~(dist < self.tau_novelty.to(self.device)[y[rows]])
            accepted &= novel
        return GenerationBatch(
            ids=m.ids, labels=m.labels, n_parents=m.n_parents, parent_ids=m.parent_ids,
            weights=m.weights, latent_confidence=lat_conf.cpu().numpy().astype(np.float32),
            latent_pass=lat_pass.cpu().numpy(),
            image_confidence=img_conf.cpu().numpy().astype(np.float32),
            accepted=accepted.cpu().numpy(), images=images.cpu().numpy(),
            nearest_train_id=near_id.cpu().numpy(),
            nearest_train_distance=near_d.cpu().numpy().astype(np.float32),
            novel=novel.cpu().numpy(),
        )

    def __call__(self, labels: Sequence[int] | np.ndarray, n_parents: int | Sequence[int] = 2,
                 weights: str | WeightScheme = "uniform", *, seed: int = 0,
                 ids: Sequence[int] | np.ndarray | None = None, filter: bool = True
                 ) -> GenerationBatch:
        """Generate one candidate per label.

        Args:
            labels: (B,) intended classes.
            n_parents: parents per mix, or a list to draw from per candidate (e.g. [2, 3, 5]).
            weights: 'uniform', 'dirichlet:<alpha>', ratios such as '0.3,0.7', or 'affine:<reach>'
                (extrapolation beyond the parents; not convex, see convex.WeightScheme).
            seed, ids: randomness is a function of (seed, id); ids default to 0..B-1.
            filter: when False, every candidate is decoded (accepted still reports both steps).
        Returns:
            A GenerationBatch over all B candidates; `.accepted_only()` keeps the survivors.
        """
        return self.score(self.mixer(labels, n_parents, weights, seed=seed, ids=ids),
                          filter=filter)


def measure_acceptance(gen: ConvexGenerator, n_parents: int, per_class: int, *,
                       seed: int, weights: str = "uniform") -> dict:
    """How often fresh candidates pass the filter steps: `per_class` candidates of every class
    with at least `n_parents` eligible parents, ids 0, 1, ... (the keyed streams make `seed`
    alone decide which candidates these are).

    Returns:
        {"classes", "candidates" (in all), "latent_step", "image_step_given_latent",
         "accepted" (overall fractions), "per_class": {"latent_step", "accepted"} (lists of
         length num_classes, NaN for classes left out)}
    """
    classes = gen.eligible_classes(n_parents)
    K = gen.num_classes
    per = {"latent_step": [float("nan")] * K, "accepted": [float("nan")] * K}
    if not classes:
        return {"classes": [], "candidates": 0, "per_class": per}
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)  # (C * per_class,)
    b = gen(labels, n_parents=n_parents, weights=weights, seed=seed,
            ids=np.arange(len(labels), dtype=np.int64))
    for c in classes:
        m = b.labels == c
        per["latent_step"][c] = float(b.latent_pass[m].mean())
        per["accepted"][c] = float(b.accepted[m].mean())
    lat, acc = float(b.latent_pass.mean()), float(b.accepted.mean())
    return {"classes": list(classes), "candidates": len(labels), "latent_step": lat,
            "image_step_given_latent": acc / lat if lat > 0 else 0.0, "accepted": acc,
            "per_class": per}

