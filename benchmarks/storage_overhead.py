"""Mass generation to a local folder against the same job to an S3-compatible server.

    python benchmarks/storage_overhead.py --run runs/demo --count 5000
    python benchmarks/storage_overhead.py --run runs/demo --count 2000 --png

Both sides run jobs/mass_generate.py as a user would (a child process, its own local Ray), with
the same run, count, seed, batch and chunk size and workers; the only difference is --out: a
local temporary folder, or s3://bench/<name> on a moto server started here on 127.0.0.1 (moto's
server mode keeps objects in memory, so this measures the object-store code path and HTTP
round trips, not a real S3's network). It prints each side's wall time and images/s (from the
job's summary.json) and their ratio, and checks that both outputs hold the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(out: str, args: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, str(REPO / "jobs" / "mass_generate.py"), "--run", str(args.run),
           "--count", str(args.count), "--out", out, "--seed", "0",
           "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    if args.png:
        cmd.append("--png")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{out}: the job failed:\n{proc.stderr[-3000:]}")
    from regene_ray.storage import Storage

    summary = Storage(out).read_json("summary.json")
    return {"process_wall_s": round(wall, 2), "job_wall_s": summary["wall_s"],
            "images_per_s": summary["images_per_s"]}


def _rows(out: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from regene_ray.mass import DATA_DIR
    from regene_ray.storage import Storage

    st = Storage(out)
    tables = [pq.read_table(st.path(f"{DATA_DIR}/{n}"), filesystem=st.fs)
              for n in st.list(DATA_DIR)]
    return pa.concat_tables(tables).sort_by("id").replace_schema_metadata(None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a jobs/train.py run folder")
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--png", action="store_true", help="also write one PNG per image")
    args = p.parse_args()
    if not (args.run / "thresholds.json").is_file():
        sys.exit(f"--run {args.run} is not a finished run folder; train one with jobs/train.py")

    port = _free_port()
    env = {**os.environ, **CREDS}
    env.pop("RAY_ADDRESS", None)
    os.environ.update(CREDS)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        import pyarrow.fs as pafs

        deadline = time.time() + 60
        while True:
            try:
                pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                                  allow_bucket_creation=True).create_dir("bench")
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("the moto server did not start")
                time.sleep(0.5)
        with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
            local = str(Path(tmp) / "local")
            s3 = f"s3://bench/gen?endpoint_override=127.0.0.1:{port}&scheme=http"
            results = {"local": _job(local, args, env), "s3_moto": _job(s3, args, env)}
            same = _rows(local).equals(_rows(s3))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    ratio = results["s3_moto"]["job_wall_s"] / results["local"]["job_wall_s"]
    report = {"count": args.count, "png": args.png, "workers": args.workers,
              "batch_size": args.batch_size, **results,
              "s3_over_local_wall_ratio": round(ratio, 3), "same_rows": same}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
