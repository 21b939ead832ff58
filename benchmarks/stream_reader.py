"""Ray Data's two Parquet readers under jobs/train_on_generated.py's stream: the V1 reader the
stream uses (regene_ray.evaluation.stream.PARQUET_DATASOURCE_V2 = False) against Ray Data 2.60's
default DataSourceV2, on the same generated folders, in one run.

    python benchmarks/stream_reader.py --generated runs/low/gen-1pct runs/low-d1nov/gen-1pct
    REGENE_DATA_ROOT=../shared/data python benchmarks/stream_reader.py --generated G --run R \
        --job-pairs 2   # and the whole job

Part 1, the stream alone: one private Ray, then for each folder --rounds rounds of one epoch
read through each reader in turn (V1, V2, V1, V2 ...): every batch taken, nothing trained.
Part 2, what the user waits for (--run and --job-pairs > 0): jobs/train_on_generated.py --run R
--generated G, one seed and --job-epochs epochs, in a child process per reader, in turn, timed
prompt to prompt, with its own test accuracy. Prints one JSON line per measurement and a summary
line per folder: medians and the ratio V2 / V1 (above 1: V1 is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READERS = {"v1": False, "v2": True}
# runs the job with the stream's reader set first (the job has no flag for it)
LAUNCH = ("import runpy, sys; import regene_ray.evaluation.stream as s; "
          "s.PARQUET_DATASOURCE_V2 = sys.argv.pop(1) == 'v2'; "
          "sys.argv[0] = 'jobs/train_on_generated.py'; "
          "runpy.run_path('jobs/train_on_generated.py', run_name='__main__')")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", type=Path, nargs="+", required=True,
                   help="finished jobs/mass_generate.py output folders")
    p.add_argument("--rounds", type=int, default=3, help="epochs per reader and folder "
                   "(default: 3)")
    p.add_argument("--batch-size", type=int, default=128, help="rows per batch (default: 128)")
    p.add_argument("--run", type=Path, help="the folders' run, for part 2")
    p.add_argument("--job-pairs", type=int, default=0, help="whole-job runs per reader and "
                   "folder (default: 0, part 1 only)")
    p.add_argument("--job-epochs", type=int, default=1, help="the job's --epochs (default: 1)")
    p.add_argument("--work", type=Path, default=Path("/tmp/stream-reader"),
                   help="folder for the jobs' results (default: /tmp/stream-reader)")
    return p


def stream_epochs(folders: list[Path], rounds: int, batch_size: int) -> dict:
    import torch

    from regene_ray.cluster import init_ray
    from regene_ray.evaluation.stream import generated_batches
    from regene_ray.generated import GeneratedFolder

    init_ray()
    seconds = {}
    for folder in folders:
        epochs = {name: generated_batches([GeneratedFolder(folder)], batch_size=batch_size,
                                          datasource_v2=v2) for name, v2 in READERS.items()}
        for r in range(rounds):
            for name, (epoch, rows) in epochs.items():
                t0, n = time.perf_counter(), 0
                for _, y in epoch(r, torch.Generator().manual_seed(r)):
                    n += len(y)
                s = time.perf_counter() - t0
                assert n == rows, (n, rows)
                seconds.setdefault((str(folder), name), []).append(s)
                print(json.dumps({"part": "stream", "folder": str(folder), "reader": name,
                                  "round": r, "rows": n, "seconds": round(s, 2)}), flush=True)
    return seconds


def job_runs(args: argparse.Namespace) -> dict:
    seconds = {}
    for folder in args.generated:
        for pair in range(args.job_pairs):
            for name in READERS:
                out = args.work / f"{folder.name}-{name}-{pair}"
                cmd = [sys.executable, "-c", LAUNCH, name, "--run", str(args.run),
                       "--generated", str(folder), "--out", str(out), "--overwrite",
                       "--device", "cpu", "--seeds", "0", "--epochs", str(args.job_epochs)]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                s = time.perf_counter() - t0
                if p.returncode:
                    sys.exit(f"the job failed ({name}):\n{p.stderr[-3000:]}")
                acc = json.loads((out / "metrics.json").read_text())["test_accuracy"]
                seconds.setdefault((str(folder), name), []).append(s)
                print(json.dumps({"part": "job", "folder": str(folder), "reader": name,
                                  "pair": pair, "seconds": round(s, 1),
                                  "test_accuracy": acc}), flush=True)
    return seconds


def summarise(part: str, seconds: dict) -> None:
    for folder in sorted({f for f, _ in seconds}):
        med = {name: statistics.median(seconds[(folder, name)]) for name in READERS}
        print(json.dumps({"part": part, "folder": folder, "summary": True,
                          **{f"{k}_median_s": round(v, 2) for k, v in med.items()},
                          "v2_over_v1": round(med["v2"] / med["v1"], 2)}), flush=True)


def main() -> None:
    args = get_args_parser().parse_args()
    if args.job_pairs and args.run is None:
        sys.exit("--job-pairs needs --run")
    # the jobs run from the repository's root
    args.generated = [g.resolve() for g in args.generated]
    args.run = args.run.resolve() if args.run else None
    args.work = args.work.resolve()
    summarise("stream", stream_epochs(args.generated, args.rounds, args.batch_size))
    if args.job_pairs:
        summarise("job", job_runs(args))


if __name__ == "__main__":
    main()
