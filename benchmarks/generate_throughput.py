"""Mass-generation throughput: Ray Data against what a user would write instead, in one run.

    python benchmarks/generate_throughput.py --run runs/mnist --count 100_000 \
        --sides bare,pool,ray,split --bare-threads 1
    python benchmarks/generate_throughput.py --run runs/demo --count 2000   # a quick check

Every side does the same work on the same run folder, count, batch size and seed: mixing, the
latent filter, decoding, the image filter, PNG encoding and Parquet writing of exactly --count
images, handed out by the same ChunkPlanner:

* bare:  the chunks one after another in one process (regene_ray.mass.WriteChunks);
* pool:  benchmarks/plain_pool.py, a multiprocessing pool of N processes (spawned, one torch
         thread each), each holding a WriteChunks: the baseline without Ray;
* ray:   jobs/mass_generate.py --pipeline fused (N actors, one torch thread each);
* split: jobs/mass_generate.py --pipeline split (CPU mixing -> network actors -> CPU commit).

N is the number of CPUs (as the job's default). Each side runs in its own child process, and a
sampler sums the memory of that child and all its descendants (Ray's raylet, GCS and workers
included) every second: PSS from /proc/<pid>/smaps_rollup (shared pages such as the object store
counted once) and RSS. It also reports the decode + classify stage's achieved GFLOP/s against a
measured fp32 matmul.
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# memory of a process tree, from /proc (psutil is not a dependency)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _mem_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) once it is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class PeakMemory(threading.Thread):
    """Samples the summed PSS and RSS of a process tree until stopped; keeps the peaks.

    Reading smaps_rollup walks each process's page tables: at 0.2 s over Ray's 24 processes the
    sampler took about a quarter of a core, hence once a second.
    """

    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_pss_mib = self.peak_rss_mib = 0.0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            pids = process_tree(self.pid)
            mem = [_mem_kib(p) for p in pids]
            self.peak_pss_mib = max(self.peak_pss_mib, sum(m[0] for m in mem) / 1024)
            self.peak_rss_mib = max(self.peak_rss_mib, sum(m[1] for m in mem) / 1024)
            self.peak_processes = max(self.peak_processes, len(pids))
            self._halt.wait(self.every_s)

    def stop(self):
        self._halt.set()
        self.join()


# the two sides, each run in a child process


def bare(args: argparse.Namespace) -> dict:
    import torch

    from regene_ray import mass

    threads = args.bare_threads or os.cpu_count()
    torch.set_num_threads(threads)
    spec = _spec(args)
    identity = mass.job_metadata(spec, mass.run_hashes(spec.run))
    stage = mass.WriteChunks(spec.run, args.out, metadata=identity, n_parents=spec.n_parents,
                             seed=spec.seed, chunk_size=spec.chunk_size,
                             batch_size=spec.batch_size, torch_threads=threads)
    s = mass.run_job(spec, args.out, mass.serial_runner(stage), identity=identity)
    return {"wall_s": s.wall_s, "candidates": s.candidates_generated_this_run,
            "latent_step": s.acceptance["latent_step"], "torch_threads": threads}


def _spec(args: argparse.Namespace):
    from regene_ray import mass

    classes = tuple(range(_num_classes(args.run)))
    return mass.MassSpec(run=str(args.run.resolve()), count=args.count, classes=classes,
                         n_parents=tuple(args.n_parents), seed=args.seed,
                         chunk_size=mass.auto_chunk_size(args.count, len(classes),
                                                         args.batch_size),
                         batch_size=args.batch_size)  # as the job's --chunk-size auto


def _num_classes(run: Path) -> int:
    return int(json.loads((run / "classifier" / "config.json").read_text())["num_classes"])


def stage_gflop_per_candidate(run: Path, latent_step: float) -> float:
    """GFLOP per candidate of the networks: head on every code, decoder + classifier on those
    that pass the latent step (counted with torch's FlopCounterMode on one batch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from regene_ray.classifier import Classifier
    from regene_ray.decoder import Decoder

    clf, dec = Classifier.load(run / "classifier").eval(), Decoder.load(run / "decoder").eval()
    z = torch.rand(64, clf.cfg.latent_dim)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc_head:
        clf.classify_latent(z)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        clf(dec(z))
    return (fc_head.get_total_flops() + latent_step * fc.get_total_flops()) / 64 / 1e9


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


CHILD_SIDES = {"bare": bare}  # run by this script in a child process
JOB_SIDES = {"ray": "fused", "split": "split"}  # jobs/mass_generate.py --pipeline


def run_side(name: str, cmd: list[str]) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    mem = PeakMemory(proc.pid)
    mem.start()
    stdout, _ = proc.communicate()
    mem.stop()
    if proc.returncode:
        raise SystemExit(f"{name} side failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1]) if name in CHILD_SIDES else {}
    result.update(process_wall_s=time.perf_counter() - t, peak_pss_mib=mem.peak_pss_mib,
                  peak_rss_mib=mem.peak_rss_mib, peak_processes=mem.peak_processes)
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=REPO / "runs" / "demo",
                   help="run folder (default: runs/demo)")
    p.add_argument("--count", type=lambda s: int(float(s.replace("_", ""))), default=100_000,
                   help="images per side (default: 100000)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="decoder batch; chunks as the job's --chunk-size auto (default: 256)")
    p.add_argument("--n-parents", type=lambda s: [int(v) for v in s.split(",")], default=[2],
                   help="parents per mix (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--workers", default=None, help="Ray actor pool N or MIN,MAX (default: the "
                   "job's, 1..#CPUs)")
    p.add_argument("--bare-threads", type=int, default=None,
                   help="torch threads of the bare loop (default: all cores)")
    p.add_argument("--pool-workers", type=int, default=None,
                   help="processes of the pool side (default: all cores)")
    p.add_argument("--sides", default="bare,pool,ray,split",
                   help="which of bare, pool, ray, split to run, in this order (default: all)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of every side, interleaved; medians reported (default: 1)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to make the scratch folder (a new regene-bench-* folder inside "
                   "it, deleted at the end; default: the system's temporary folder)")
    p.add_argument("--phase", choices=list(CHILD_SIDES), help=argparse.SUPPRESS)  # a child
    return p


def main(args: argparse.Namespace) -> dict:
    if args.phase:
        print(json.dumps(CHILD_SIDES[args.phase](args)))
        return {}
    scratch = Path(tempfile.mkdtemp(prefix="regene-bench-", dir=args.out))  # ours to delete
    try:
        return measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_one(side: str, args: argparse.Namespace, out: Path) -> dict:
    common = ["--run", str(args.run), "--count", str(args.count), "--batch-size",
              str(args.batch_size), "--n-parents", ",".join(map(str, args.n_parents)),
              "--seed", str(args.seed)]
    if side in CHILD_SIDES:
        cmd = [sys.executable, __file__, "--phase", side, "--out", str(out), *common]
        if args.bare_threads:
            cmd += ["--bare-threads", str(args.bare_threads)]
        if args.pool_workers:
            cmd += ["--pool-workers", str(args.pool_workers)]
        return run_side(side, cmd)
    if side == "pool":
        cmd = [sys.executable, str(REPO / "benchmarks" / "plain_pool.py"), "--out", str(out),
               *common, *(["--processes", str(args.pool_workers)] if args.pool_workers else [])]
        cmd.remove("--n-parents")  # the pool script makes n = 2 mixes only
        cmd.remove(",".join(map(str, args.n_parents)))
        r = run_side(side, cmd)
        s = json.loads((out / "summary.json").read_text())
        r.update(wall_s=s["wall_s"], candidates=s["candidates"],
                 latent_step=float("nan"))
        return r
    cmd = [sys.executable, str(REPO / "jobs" / "mass_generate.py"), "--out", str(out),
           "--pipeline", JOB_SIDES[side], *common]
    if args.workers:
        cmd += ["--workers", args.workers]
    r = run_side(side, cmd)
    s = json.loads((out / "summary.json").read_text())
    r.update(wall_s=s["wall_s"], candidates=s["candidates_generated_this_run"],
             latent_step=s["acceptance"]["latent_step"])
    return r


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    sides = args.sides.split(",")
    unknown = [s for s in sides if s not in CHILD_SIDES and s not in JOB_SIDES and s != "pool"]
    if unknown:
        raise SystemExit(f"--sides {args.sides}: unknown {unknown}; use bare, pool, ray, split")
    runs = {side: [] for side in sides}
    for rep in range(args.repeat):  # interleaved, so drifts of the box hit every side alike
        for side in sides:
            out = scratch / f"{side}{rep}"
            r = run_one(side, args, out)
            r["images_per_s"] = args.count / r["wall_s"]
            r["images_per_s_incl_startup"] = args.count / r["process_wall_s"]
            runs[side].append(r)
            print(f"  ({side} #{rep + 1}: job wall {r['wall_s']:.1f} s, process wall "
                  f"{r['process_wall_s']:.1f} s)", flush=True)
            shutil.rmtree(out)  # keep the disk free for the next side
    latent = [r[0]["latent_step"] for r in runs.values() if r[0]["latent_step"] == r[0]["latent_step"]]
    gflop = stage_gflop_per_candidate(args.run, latent[0] if latent else 1.0)
    peak = {t: matmul_gflops(t) for t in sorted({1, os.cpu_count()})}
    print(f"run {args.run}  count {args.count}  batch {args.batch_size}  cores {os.cpu_count()}"
          f"  repeats {args.repeat} (medians)  matmul fp32 GFLOP/s: "
          + ", ".join(f"{v:.1f} ({t} thr)" for t, v in peak.items()))
    results = {}
    for name, rs in runs.items():
        r = dict(rs[0])
        for key in ("wall_s", "process_wall_s", "images_per_s", "images_per_s_incl_startup",
                    "peak_pss_mib", "peak_rss_mib"):
            r[key] = float(statistics.median(x[key] for x in rs))
        r["stage_gflops"] = gflop * r["candidates"] / r["wall_s"]
        r["all_images_per_s"] = [round(x["images_per_s"], 1) for x in rs]
        results[name] = r
        print(f"{name:5s} {r['images_per_s']:8.1f} img/s (job wall {r['wall_s']:.1f} s; "
              f"{r['images_per_s_incl_startup']:.1f} img/s with process and Ray start-up, "
              f"{r['process_wall_s']:.1f} s)  peak memory PSS {r['peak_pss_mib']:.0f} MiB, RSS "
              f"{r['peak_rss_mib']:.0f} MiB over {r['peak_processes']} processes  "
              f"networks {r['stage_gflops']:.2f} GFLOP/s  (each run: {r['all_images_per_s']})")
    for a, b in [("ray", "pool"), ("ray", "bare"), ("split", "pool"), ("split", "ray"),
                 ("pool", "bare")]:
        if a in results and b in results:
            ratio = results[a]["images_per_s"] / results[b]["images_per_s"]
            ratio_all = (results[a]["images_per_s_incl_startup"]
                         / results[b]["images_per_s_incl_startup"])
            print(f"{a} / {b}: {ratio:.2f}x (job wall), {ratio_all:.2f}x (with start-up)")
            results[f"{a}/{b}"] = [ratio, ratio_all]
    results["matmul_gflops"] = peak
    results["gflop_per_candidate"] = gflop
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
