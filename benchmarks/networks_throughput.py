"""The network stage of mass generation alone, in one process, on CPU or GPU: decode + both
classifier passes (regene_ray.mass.chunks.ScoreChunks) on mixed chunks, against the measured
fp32 matmul peak of the same device, and the effect of a bf16 / fp16 decoder.

    python benchmarks/networks_throughput.py --run runs/mnist --device cpu --threads 1
    python benchmarks/networks_throughput.py --run /tmp/run --device cuda --chunk 16384 --batch 4096

For each precision it prints candidates/s and achieved GFLOP/s of the networks; for bf16 and
fp16 also how far their pixels and accept decisions are from fp32 on the same candidates. It also
times the other two stages in this process (mixing; PNG encoding + the Parquet table), so the
stage that limits a fused worker is visible.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_throughput import stage_gflop_per_candidate  # noqa: E402

from regene_ray.mass.chunks import MixChunks, ScoreChunks, chunk_table  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int, reps: int = 10) -> float:
    """fp32 GFLOP/s of an n x n matmul (TF32 off: the decoder runs plain fp32 by default)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def rate(f, items: list, device: str) -> float:
    """Items per second of f over items (after one warm-up call)."""
    f(items[0])
    sync(device)
    t = time.perf_counter()
    for it in items:
        f(it)
    sync(device)
    return len(items) / (time.perf_counter() - t)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    mixer = MixChunks(args.run, chunk_size=args.chunk, seed=0)
    K = mixer.num_classes
    keys = [(k % K, k) for k in range(args.reps)]
    mix_rate = rate(lambda key: mixer.mix_chunk(*key), keys, "cpu") * args.chunk
    mixes = [mixer.mix_chunk(*key) for key in keys]
    results, ref = {"mix_candidates_per_s": mix_rate}, None
    print(f"run {args.run}  device {args.device}  threads {args.threads}  chunk {args.chunk}  "
          f"batch {args.batch}  chunks {args.reps}")
    print(f"mixing (CPU, 1 process): {mix_rate:.0f} candidates/s")
    for prec in args.precisions.split(","):
        s = ScoreChunks(args.run, batch_size=args.batch, device=args.device, precision=prec,
                        torch_threads=args.threads)
        cps = rate(s.score_chunk, mixes, args.device) * args.chunk
        scored = [s.score_chunk(m) for m in mixes]
        if ref is None:
            ref = scored
            lat = float(np.mean([g.latent_pass.mean() for g in scored]))
            gflop = stage_gflop_per_candidate(Path(args.run), lat)
            png = rate(lambda gk: chunk_table(gk[0], gk[1][0], gk[1][1], K),
                       list(zip(scored, keys, strict=True)), "cpu") * args.chunk
            print(f"PNG encoding + Parquet table (CPU, 1 process): {png:.0f} candidates/s")
            results["png_candidates_per_s"] = png
        r = {"candidates_per_s": cps, "gflops": gflop * cps,
             "acceptance": float(np.mean(np.concatenate([g.accepted for g in scored])))}
        line = (f"networks ({prec}): {cps:.0f} candidates/s, {r['gflops']:.1f} GFLOP/s, "
                f"acceptance {r['acceptance']:.4f}")
        if scored is not ref:
            both = np.concatenate([a.latent_pass & b.latent_pass for a, b in zip(ref, scored,
                                                                                 strict=True)])
            ri = np.concatenate([g.images for g in ref])[both].astype(np.int16)
            oi = np.concatenate([g.images for g in scored])[both].astype(np.int16)
            d = np.abs(ri - oi)
            r.update(pixels_changed=float((d > 0).mean()), mean_abs_levels=float(d.mean()),
                     max_abs_levels=int(d.max()),
                     decisions_changed=int(sum((a.accepted != b.accepted).sum()
                                               for a, b in zip(ref, scored, strict=True))))
            line += (f"; vs fp32: {r['pixels_changed']:.4f} of pixel values differ, mean |d| "
                     f"{r['mean_abs_levels']:.3f}, max |d| {r['max_abs_levels']} levels, "
                     f"{r['decisions_changed']} of {len(both)} accept decisions changed")
        print(line)
        results[prec] = r
    peak = matmul_peak(args.device, args.matmul_n)
    results.update(gflop_per_candidate=gflop, matmul_gflops=peak)
    print(f"{gflop:.5f} GFLOP per candidate; matmul {args.matmul_n}^3 fp32: {peak:.1f} GFLOP/s; "
          f"networks fp32 at {results['fp32']['gflops'] / peak:.1%} of it"
          if "fp32" in results else f"matmul {peak:.1f} GFLOP/s")
    return results


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder from jobs/train.py (required)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--chunk", type=int, default=4096, help="candidates per chunk (default: 4096)")
    p.add_argument("--batch", type=int, default=256, help="decoder batch (default: 256)")
    p.add_argument("--reps", type=int, default=4, help="chunks timed (default: 4)")
    p.add_argument("--precisions", default="fp32,bf16,fp16",
                   help="decoder precisions, fp32 first (default: fp32,bf16,fp16)")
    p.add_argument("--matmul-n", type=int, default=None,
                   help="matmul size for the peak (default: 8192 on cuda, 1024 on cpu)")
    return p


if __name__ == "__main__":
    a = get_args_parser().parse_args()
    a.matmul_n = a.matmul_n or (8192 if a.device.startswith("cuda") else 1024)
    main(a)
