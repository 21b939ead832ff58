"""What durable commits cost mass generation: one chunk's PNG files and its Parquet file,
written the way regene_ray.storage does now (PNGs made durable by one syncfs, the Parquet file
and its folder fsynced) against the same writes with no flush at all (the code before).

    python benchmarks/durable_writes.py                       # 20 chunks of 1,000 PNGs
    python benchmarks/durable_writes.py --chunks 5 --pngs 4096 --dir /data/scratch

Both sides run in one process, alternating chunk by chunk, in a temporary folder under --dir (on
the filesystem whose cost you want to know). Prints ms per chunk for each side and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.storage import Storage  # noqa: E402


def plain_writes(root: Path, pngs: list[tuple[str, bytes]], table: pa.Table) -> None:
    """The writes as they were: temporary name + rename, no fsync."""
    for rel, data in pngs:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    path = root / "_chunks" / "c000-k0000000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def durable_writes(st: Storage, pngs: list[tuple[str, bytes]], table: pa.Table) -> None:
    """The writes as regene_ray.mass.WriteChunks makes them now."""
    st.write_many(pngs)
    st.write_with("_chunks/c000-k0000000.parquet",
                  lambda p, fs: pq.write_table(table, p, filesystem=fs, compression="zstd"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=20, help="chunks per side (default: 20)")
    p.add_argument("--pngs", type=int, default=1000, help="PNG files per chunk (default: 1000)")
    p.add_argument("--png-bytes", type=int, default=300,
                   help="bytes per PNG (default: 300, a 28x28 MNIST-like PNG)")
    p.add_argument("--dir", default=tempfile.gettempdir(),
                   help="where to write (default: the temp dir)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(args.pngs, dtype=np.int64),
                      "image": [rng.bytes(args.png_bytes) for _ in range(args.pngs)]})
    times = {"plain": [], "durable": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for k in range(args.chunks):
            pngs = [(f"png/{k % 10}/{k:05d}/{i}.png", rng.bytes(args.png_bytes))
                    for i in range(args.pngs)]
            for side in ("plain", "durable") if k % 2 == 0 else ("durable", "plain"):
                root = Path(tmp) / side
                root.mkdir(exist_ok=True)
                t0 = time.perf_counter()
                if side == "plain":
                    plain_writes(root, pngs, table)
                else:
                    durable_writes(Storage(root), pngs, table)
                times[side].append(time.perf_counter() - t0)
    plain, durable = (statistics.median(times[s]) * 1000 for s in ("plain", "durable"))
    print(f"filesystem under {args.dir}; {args.chunks} chunks of {args.pngs} PNGs "
          f"({args.png_bytes} B) + one Parquet file, median per chunk:")
    print(f"  plain (no fsync):          {plain:8.1f} ms")
    print(f"  durable (syncfs + fsync):  {durable:8.1f} ms")
    print(f"  durable / plain: {durable / plain:.2f}x")


if __name__ == "__main__":
    main()
