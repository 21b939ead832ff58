"""What a user waits for, prompt to prompt: jobs/mass_generate.py (Ray Data) against
benchmarks/plain_pool.py (a plain multiprocessing pool running the same batch transform), each
started from the shell as its own process, interleaved, with the job's start-up breakdown.

    python benchmarks/prompt_to_prompt.py --run runs/mnist --count 100000 --repeat 3
    python benchmarks/prompt_to_prompt.py --run runs/mnist --count 1e6 --repeat 3

Each command is timed from its launch to its exit, as `/usr/bin/time` would (the figure a user
sees), next to its own figures: for the job, summary.json's start-up phases, the time from
process start to the first chunk a worker took, the generating time (first chunk taken -> last
chunk landed) and the exit; for the pool, its first and last chunk landing. "Fixed cost" is
prompt to prompt minus generating. Medians over the repeats; the ratio is pool time / Ray time
(above 1: Ray is faster). Run it on an idle box: the load average before each side is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load() -> float:
    return os.getloadavg()[0]


def run_ray(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "jobs" / "mass_generate.py"), "--run", str(args.run),
           "--count", str(args.count), "--out", str(out), *args.job_flags]
    load, t0 = _load(), time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"the job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    extra = s["extra"]
    startup = extra.get("startup_s", {})
    first = extra["first_chunk_taken_at"] - t0
    return {"prompt_to_prompt_s": wall, "job_wall_s": s["wall_s"],
            "generating_s": extra["generating_s"], "fixed_s": wall - extra["generating_s"],
            "to_first_chunk_s": first,
            "after_last_chunk_s": wall - first - extra["generating_s"],
            "phases": {**{k: v for k, v in startup.items() if not k.endswith("ends at")},
                       "actor pools": extra["pool_start_s"]},
            "streams": s["streams"], "candidates": s["candidates_generated_this_run"],
            "load_before": load}


def run_pool(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "plain_pool.py"), "--run", str(args.run),
           "--count", str(args.count), "--out", str(out)]
    load, t0 = _load(), time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"the pool failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    generating = s["last_chunk_landed_s"] - s["first_chunk_landed_s"]
    return {"prompt_to_prompt_s": wall, "job_wall_s": s["wall_s"], "generating_s": generating,
            "fixed_s": wall - generating, "candidates": s["candidates"], "load_before": load}


def median(rows: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def main(args: argparse.Namespace) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="regene-p2p-", dir=args.scratch))  # ours to delete
    runs = {"ray": [], "pool": []}
    try:
        for rep in range(args.repeat):  # interleaved: drifts of the box hit both sides alike
            for side, fn in (("ray", run_ray), ("pool", run_pool)):
                out = scratch / f"{side}{rep}"
                r = fn(args, out)
                runs[side].append(r)
                shutil.rmtree(out)
                print(f"  {side} #{rep + 1}: {r['prompt_to_prompt_s']:.1f} s prompt to prompt, "
                      f"generating {r['generating_s']:.1f} s (load before {r['load_before']:.2f})",
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"count": args.count, "repeats": args.repeat, "cores": os.cpu_count()}
    for side, rows in runs.items():
        keys = [k for k in rows[0] if isinstance(rows[0][k], float | int)]
        result[side] = {k: median(rows, k) for k in keys}
        result[side]["each_prompt_to_prompt_s"] = [round(r["prompt_to_prompt_s"], 1) for r in rows]
    phases = {name: statistics.median(r["phases"][name] for r in runs["ray"])
              for name in runs["ray"][0]["phases"]}
    result["ray"]["phases"] = phases
    result["ray_vs_pool"] = result["pool"]["prompt_to_prompt_s"] / \
        result["ray"]["prompt_to_prompt_s"]
    result["ray_vs_pool_generating"] = result["pool"]["generating_s"] / \
        result["ray"]["generating_s"]
    print(f"count {args.count}, {args.repeat} interleaved repeats (medians), "
          f"{os.cpu_count()} cores")
    for side in ("ray", "pool"):
        r = result[side]
        print(f"{side:4s}: prompt to prompt {r['prompt_to_prompt_s']:.1f} s "
              f"{r['each_prompt_to_prompt_s']}, job's own wall {r['job_wall_s']:.1f} s, "
              f"generating {r['generating_s']:.1f} s, fixed cost {r['fixed_s']:.1f} s")
    ray = result["ray"]
    print(f"ray start-up: first chunk taken {ray['to_first_chunk_s']:.1f} s after the prompt; "
          f"after the last chunk {ray['after_last_chunk_s']:.1f} s; phases (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    print(f"Ray / pool: {result['ray_vs_pool']:.2f}x prompt to prompt, "
          f"{result['ray_vs_pool_generating']:.2f}x generating")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder (required)")
    p.add_argument("--count", default="100000", help="images per side (default: 100000)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per side (default: 3)")
    p.add_argument("--job-flags", nargs=argparse.REMAINDER, default=[],
                   help="extra flags for jobs/mass_generate.py, last (default: none)")
    p.add_argument("--scratch", default=None,
                   help="where to make the scratch folder (default: the system's temporary one)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
