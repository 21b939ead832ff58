"""Peak memory of jobs/train_on_generated.py against the number of generated rows it streams.

    python benchmarks/stream_memory.py --run runs/mnist --work /tmp/stream-memory
    python benchmarks/stream_memory.py --run runs/digits --rows 300,3000 --work /tmp/sm  # quick

For each row count (default 54,000 and 540,000), WORK/gen-<rows> is a generated folder of --run
made by jobs/mass_generate.py (--n-parents 2, --seed 0), unless a finished one is already there.
jobs/train_on_generated.py then trains on it alone (--epochs, default 1) in a child process,
while a sampler (benchmarks/generate_throughput.PeakMemory) sums the PSS and RSS of that child
and all its descendants (Ray's GCS, raylet and workers included) every --every-s seconds.
Prints one JSON line per folder and the ratio of the peaks (most rows over fewest): a stream
keeps the peak about flat, reading every row into memory makes it grow with the rows.
`--readers v1,v2` measures each folder through both of Ray Data's Parquet readers, in turn
(the stream's own, V1, and Ray Data 2.60's default DataSourceV2; benchmarks/stream_reader.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from generate_throughput import PeakMemory  # noqa: E402
from stream_reader import LAUNCH, READERS  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a jobs/train.py run folder")
    p.add_argument("--work", type=Path, required=True, help="folder for the generated folders "
                   "(reused when finished) and the training results")
    p.add_argument("--rows", default="54000,540000",
                   help="generated rows of each measured folder (default: 54000,540000)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default: 1)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--depth", type=int, default=8, help="ResNet depth (default: 8)")
    p.add_argument("--width", type=int, default=8, help="ResNet width (default: 8)")
    p.add_argument("--device", default="cpu", help="training device (default: cpu)")
    p.add_argument("--readers", default="v1", help="Ray Data Parquet readers to measure each "
                   "folder through, in turn: v1 (the stream's), v2 or v1,v2 (default: v1)")
    p.add_argument("--every-s", type=float, default=1.0,
                   help="seconds between memory samples (default: 1)")
    return p


def make_folder(run: Path, out: Path, rows: int) -> None:
    """A finished generated folder of `rows` rows at `out` (kept when already there)."""
    if (out / "summary.json").is_file():
        return
    subprocess.run([sys.executable, str(REPO / "jobs" / "mass_generate.py"), "--run", str(run),
                    "--out", str(out), "--count", str(rows), "--n-parents", "2", "--seed", "0",
                    "--resume"], check=True, cwd=REPO)


def measure(args: argparse.Namespace, folder: Path, rows: int, reader: str) -> dict:
    """Peak memory and wall time of jobs/train_on_generated.py on `folder`, its stream read
    through Ray Data's `reader`."""
    out = args.work / f"tog-{rows}-{reader}"
    cmd = [sys.executable, "-c", LAUNCH, reader, "--run", str(args.run),
           "--generated", str(folder), "--out", str(out), "--overwrite",
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--depth", str(args.depth), "--width", str(args.width), "--device", args.device]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    sampler = PeakMemory(proc.pid, args.every_s)
    sampler.start()
    code = proc.wait()
    sampler.stop()
    if code != 0:
        raise SystemExit(f"jobs/train_on_generated.py exited with {code}: {' '.join(cmd)}")
    m = json.loads((out / "metrics.json").read_text())
    return {"rows": rows, "reader": reader, "streamed_rows": m["trained_on"]["generated_rows"],
            "epochs": args.epochs, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_pss_mib": round(sampler.peak_pss_mib, 1),
            "peak_rss_mib": round(sampler.peak_rss_mib, 1),
            "peak_processes": sampler.peak_processes, "test_accuracy": m["test_accuracy"]}


def main(args: argparse.Namespace) -> list[dict]:
    sizes = sorted(int(float(v)) for v in args.rows.split(","))
    readers = args.readers.split(",")
    if not set(readers) <= set(READERS):
        raise SystemExit(f"--readers {args.readers}: pick from {', '.join(READERS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in sizes:
        folder = args.work / f"gen-{rows}"
        make_folder(args.run, folder, rows)
        for reader in readers:
            results.append(measure(args, folder, rows, reader))
            print(json.dumps(results[-1]), flush=True)
    for reader in readers:
        mine = [r for r in results if r["reader"] == reader]
        small, large = mine[0], mine[-1]
        print(f"{reader}: peak PSS {small['peak_pss_mib']:.0f} MiB at {small['rows']} rows, "
              f"{large['peak_pss_mib']:.0f} MiB at {large['rows']} rows: "
              f"{large['peak_pss_mib'] / small['peak_pss_mib']:.2f}x for "
              f"{large['rows'] / small['rows']:.0f}x the rows (RSS "
              f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x)")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
