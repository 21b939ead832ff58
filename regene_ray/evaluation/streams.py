"""The evaluation's random streams: every stage that samples draws from its own, keyed by
(seed, stage) here and nowhere else.

A stage's stream is a numpy generator (`Streams.rng`) or, for a stage that calls the
generator, the seed of its keyed candidates (`Streams.seed`: a candidate's parents and weights
are a function of (seed, id), regene_ray.convex.KeyedRNG). Two stages that shared a seed and an
id would draw the same candidate: with stage seeds derived here, no two stages share one, and no
stage's seed is a small number such as the run's or a mass generation's own seed. Adding or
changing one stage never changes another's samples.
"""

from __future__ import annotations

import numpy as np

STREAMS = {  # stage -> its stream number; never renumber one (it fixes that stage's samples)
    "fid": 1,  # FID's real-image sets and its per-seed subsets (Table 1)
    "novelty": 2,  # generations and test images in the copy analysis (Fig. 6)
    "blend": 3,  # the test and training images of the blends (Fig. 7b)
    "autoencoder": 4,  # the contrast's training subset, init, shuffling and embedded points
    "subset": 5,  # the rows read from --generated beyond --max-generated
    "sample": 6,  # the in-process generations (without --generated)
    "dirichlet": 7,  # FID's extra row: n = 2 with Dirichlet weights
    "interpolation": 8,  # the interpolation strips' parents (Fig. 5)
    "acceptance": 9,  # the candidates of the acceptance chart
    "embedding": 10,  # the latent-space picture's codes and convex paths (Fig. 3)
    "fidelity": 11,  # the real and generated samples of precision/recall/density/coverage
}


def _sequence(seed: int, stage: str) -> np.random.SeedSequence:
    if stage not in STREAMS:
        raise KeyError(f"no random stream for stage {stage!r}; add it to STREAMS")
    return np.random.SeedSequence([seed, STREAMS[stage]])


def stage_seed(seed: int, stage: str) -> int:
    """A stage's seed derived from the evaluation's `seed`: for its generator calls (keyed
    candidates), torch's generators and scikit-learn's random_state. 32 bits, the range every
    one of them takes (and loop.epoch_seed multiplies without overflowing int64)."""
    return int(_sequence(seed, stage).generate_state(1, np.uint32)[0])


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """A stage's numpy generator: a function of (seed, stage) only."""
    return np.random.default_rng(_sequence(seed, stage))


class Streams:
    """The streams of one evaluation (its `seed`), recording which stages drew from them.

    Example:
        streams = Streams(cfg.seed)
        rng = streams.rng("fid")                   # numpy sampling of the FID stage
        seed = streams.seed("sample")              # keyed candidates of the in-process sample
        metrics["random_streams"] = streams.used   # {stage: seed}, for the record
    """

    def __init__(self, seed: int):
        self.base = int(seed)
        self.used: dict[str, int] = {}

    def seed(self, stage: str) -> int:
        self.used[stage] = stage_seed(self.base, stage)
        return self.used[stage]

    def rng(self, stage: str) -> np.random.Generator:
        self.used[stage] = stage_seed(self.base, stage)
        return stage_rng(self.base, stage)
