"""The fixed cost Ray itself adds before and after any job, against a plain multiprocessing pool,
prompt to prompt, with no job inside: what no change to regene-ray can remove.

    python benchmarks/ray_floor.py --workers 2 --repeat 5

Each side is its own Python script (written to a temporary folder) started as its own process,
timed from launch to exit:
- ray: import ray, start a private local Ray (no dashboard, as jobs/mass_generate.py does),
  start `--workers` actors that import torch (as the job's actors do) and answer once, then
  ray.shutdown(); it prints its own phases.
- pool: a `multiprocessing` spawn pool of `--workers` processes that import torch and answer
  once, then closes.
Interleaved repeats, medians; the difference is Ray's floor over the pool's. Run it on an idle
box: the load average before each side is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RAY_SIDE = """
import json, sys, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(address="local", include_dashboard=False, num_cpus={workers},
         log_to_driver=False)
t2 = time.perf_counter()

@ray.remote(num_cpus=1)
class Worker:
    def __init__(self):
        import torch  # noqa: F401

    def ping(self):
        return 1

actors = [Worker.remote() for _ in range({workers})]
ray.get([a.ping.remote() for a in actors])
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({{"import ray": t1 - t0, "ray.init": t2 - t1,
                  "actors importing torch": t3 - t2, "ray.shutdown": t4 - t3}}))
"""

POOL_SIDE = """
import json, multiprocessing as mp, time

def work(_):
    import torch  # noqa: F401
    return 1

if __name__ == "__main__":
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool({workers}) as pool:
        pool.map(work, range({workers}), chunksize=1)
        t1 = time.perf_counter()
    t2 = time.perf_counter()
    print(json.dumps({{"processes importing torch": t1 - t0, "close": t2 - t1}}))
"""


def timed(script: str) -> dict:
    load, t0 = os.getloadavg()[0], time.time()
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"a side failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    phases = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"prompt_to_prompt_s": wall, "phases": phases, "load_before": load}


def median_phases(runs: list[dict]) -> dict:
    return {k: statistics.median(r["phases"][k] for r in runs) for k in runs[0]["phases"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="actors / pool processes (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved repeats (default 5)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    folder = tempfile.mkdtemp(prefix="ray-floor-")  # scripts: spawn re-imports the pool's main
    sides = {}
    for name, code in (("ray", RAY_SIDE), ("pool", POOL_SIDE)):
        sides[name] = os.path.join(folder, f"{name}_side.py")
        with open(sides[name], "w") as f:
            f.write(code.format(workers=args.workers))
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(args.repeat):
        for name, script in sides.items():
            r = timed(script)
            runs[name].append(r)
            print(f"  {name} #{i + 1}: {r['prompt_to_prompt_s']:.2f} s prompt to prompt "
                  f"(load before {r['load_before']:.2f})", flush=True)
    med = {name: statistics.median(r["prompt_to_prompt_s"] for r in rs)
           for name, rs in runs.items()}
    print(f"{args.workers} workers, {args.repeat} interleaved repeats (medians), "
          f"{os.cpu_count()} cores")
    for name, rs in runs.items():
        phases = ", ".join(f"{k} {v:.2f}" for k, v in median_phases(rs).items())
        each = ", ".join(f"{r['prompt_to_prompt_s']:.2f}" for r in rs)
        print(f"{name:4}: prompt to prompt {med[name]:.2f} s [{each}]; phases (s): {phases}")
    print(f"Ray's floor over the pool's: {med['ray'] - med['pool']:+.2f} s "
          f"(pool / Ray {med['pool'] / med['ray']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": args.workers, "runs": runs, "median_s": med}, f, indent=1)


if __name__ == "__main__":
    main()
