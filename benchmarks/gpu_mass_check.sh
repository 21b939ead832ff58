#!/usr/bin/env bash
# GPU check of mass generation on a lent CUDA machine. Carry runs/demo (a trained digits run).
#   1. the batch transform on cuda without Ray: speed per batch size, agreement with the CPU
#   2. jobs/mass_generate.py with --gpus-per-worker: images/s, and identical output for 2 and 4
#      actors (determinism on the GPU)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
RUN=${RUN:-runs/demo}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 - "$RUN" <<'EOF'
import sys, time, numpy as np, torch
from regene_ray import mass
run = sys.argv[1]
cpu = mass.GenerateChunks(run, chunk_size=1024, torch_threads=4)
gpu = mass.GenerateChunks(run, chunk_size=1024, device="cuda", torch_threads=4)
a, _ = cpu.generate(3, 0); b, _ = gpu.generate(3, 0)
ia, ib = a["id"].to_numpy(), b["id"].to_numpy()
both = np.intersect1d(ia, ib)
from PIL import Image; import io
px = lambda t, i: np.asarray(Image.open(io.BytesIO(t["image"][int(np.flatnonzero(t["id"].to_numpy() == i)[0])]["bytes"].as_py()))).astype(int)
diff = max(np.abs(px(a, i) - px(b, i)).max() for i in both[:200])
print(f"cpu vs cuda, chunk (3,0): accepted {len(ia)} / {len(ib)}, common {len(both)}, "
      f"max pixel diff over 200 common rows {diff}, tf32 conv {torch.backends.cudnn.allow_tf32}")
for C in (1024, 4096, 16384):
    gpu.chunk_size = C
    gpu.generate(0, 0); torch.cuda.synchronize()
    t = time.perf_counter()
    for k in range(1, 4):
        gpu.generate(k % 10, k)
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 3
    print(f"cuda transform, one actor, batch {C}: {C / dt:.0f} candidates/s (incl. PNG encoding)")
EOF
python3 -c "import ray; print('ray', ray.__version__)" || { echo "no ray on this machine"; exit 0; }
for w in 2 4; do
  /usr/bin/time -v python3 jobs/mass_generate.py --run "$RUN" --count 100000 --batch-size 4096 \
    --gpus-per-worker 0.25 --workers $w --out /tmp/gpu_w$w 2> /tmp/gpu_w$w.log | tail -2
  grep -E "mass_generate:|Maximum resident|Elapsed" /tmp/gpu_w$w.log | tail -4
  cp /tmp/gpu_w$w/summary.json "$OUT/summary_gpu_w$w.json"
done
python3 - <<'EOF'
import pyarrow.parquet as pq
a = pq.read_table("/tmp/gpu_w2/data").sort_by("id"); b = pq.read_table("/tmp/gpu_w4/data").sort_by("id")
print("rows", a.num_rows, b.num_rows, "identical outputs with 2 and 4 GPU actors:", a.equals(b))
EOF
