"""What a user could write instead of jobs/mass_generate.py on one machine: a `multiprocessing`
pool running the project's own batch transform. The baseline Ray has to beat, prompt to prompt.

    python benchmarks/plain_pool.py --run runs/mnist --count 100000 --out /tmp/pool-out

It does the same work as the job (mixing, both filter steps, decoding, PNG encoding, one
Parquet file per chunk, exactly --count rows in OUT/data): N spawned processes (one torch
thread each, N = the CPUs) each load the run and a WriteChunks, and take chunks from the parent,
which hands them out with the same ChunkPlanner the job uses, keeping two per process in flight,
then trims to exactly --count rows with the job's own finalize. None of the job's safety
machinery runs here (no ownership marker, lease, resume, identity checks of an existing folder):
that is what a quick script leaves out, and it only costs the job time at its start.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_STAGE = None  # the WriteChunks of a pool process


def _init(run: str, out: str, identity: dict, kw: dict) -> None:
    global _STAGE
    from regene_ray.mass.chunks import WriteChunks

    _STAGE = WriteChunks(run, out, metadata=identity, torch_threads=1, **kw)


def _chunk(key: tuple[int, int]):
    return _STAGE.write_chunk(*key)


def main(args: argparse.Namespace) -> dict:
    from regene_ray.mass import (
        ChunkPlanner,
        MassSpec,
        auto_chunk_size,
        cutoffs,
        finalize,
        job_metadata,
        prior_rates,
    )
    from regene_ray.run_files import RunFiles
    from regene_ray.storage import Storage

    t0 = time.perf_counter()
    files = RunFiles.read(args.run)
    classes = tuple(range(files.num_classes))
    spec = MassSpec(run=str(Path(args.run).resolve()), count=args.count, classes=classes,
                    n_parents=(2,), seed=args.seed, batch_size=args.batch_size,
                    chunk_size=auto_chunk_size(args.count, len(classes), args.batch_size))
    identity = job_metadata(spec, files.hashes, thresholds=files.thresholds)
    out = Storage(args.out)
    out.makedirs("_chunks")
    out.write_json("job.json", identity)  # the transform checks each commit against it
    kw = dict(n_parents=spec.n_parents, seed=spec.seed, chunk_size=spec.chunk_size,
              batch_size=spec.batch_size)
    n = args.processes or os.cpu_count()
    planner = ChunkPlanner(spec.quotas(), spec.chunk_size, prior=prior_rates(args.run, (2,)))
    first = last = None  # wall clock of the first and the last chunk landing
    with mp.get_context("spawn").Pool(n, _init, (args.run, args.out, identity, kw)) as pool:
        pending = []
        while True:
            while len(pending) < 2 * n and isinstance(key := planner.take(), tuple):
                pending.append(pool.apply_async(_chunk, (key,)))
            if not pending:
                break
            pending[0].wait()
            info = pending.pop(0).get()
            first, last = first or time.perf_counter(), time.perf_counter()
            info.path = f"_chunks/c{info.label:03d}-k{info.chunk:07d}.parquet"
            planner.record(info)
    cut = cutoffs(planner.done, spec.quotas())
    files_written = finalize(out, planner.done, cut, False, files.num_classes)
    wall = time.perf_counter() - t0
    result = {"count": args.count, "wall_s": round(wall, 3), "processes": n,
              "first_chunk_landed_s": round(first - t0, 3), "last_chunk_landed_s": round(last - t0, 3),
              "parquet_files": files_written,
              "candidates": sum(i.tried for i in planner.done.values())}
    out.write_json("summary.json", result)
    print(json.dumps(result))
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder from jobs/train.py (required)")
    p.add_argument("--count", type=lambda s: int(float(s.replace("_", ""))), required=True,
                   help="exact number of images (required)")
    p.add_argument("--out", required=True, help="output folder, new (required)")
    p.add_argument("--batch-size", type=int, default=256, help="decoder batch (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--processes", type=int, default=None,
                   help="pool processes (default: the CPUs)")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.stdout.flush()
    os._exit(0)  # as the job does: no interpreter teardown at the prompt
