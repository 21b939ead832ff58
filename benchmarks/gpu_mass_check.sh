#!/usr/bin/env bash
# GPU check of mass generation on a lent CUDA machine, with an MNIST-size run (configs/mnist.yaml),
# in one go (about 7 minutes expected on one H100; each step has a timeout, and they add up to
# under the device tool's 10 minutes a call). Writes its figures to $OUT:
#   machine.txt    GPU, cores, torch, Ray
#   networks.txt   the bare single-process GPU loops: the whole transform (GenerateChunks) and
#                  the networks alone (ScoreChunks on mixed chunks), fp32 / bf16 / fp16, with
#                  the effect of half precision on pixels and decisions, and GFLOP/s against
#                  the measured matmul peak of the same GPU
#   ray_100k.txt   the split pipeline through Ray with 2 and 4 GPU actors, and the fused stage:
#                  identical outputs
#   ray_1m.txt     1e6 images, split pipeline, 4 actors x 0.25 GPU: job wall, prompt to prompt
#                  (Elapsed), the start-up timeline, the runtime identity the worker probe
#                  reported (GPU model, cuDNN); Ray Data's per-operator statistics (the stage
#                  that limits it) in ray_1m_stats.txt
#   dmon.txt       nvidia-smi dmon -s u samples (1 s) during the Ray runs
# Carried beside the repo (both git-ignored):
#   .whl/                   ../shared/tools/device-bundle.sh: Ray without its jars + missing wheels
#   .gpu_data/MNIST/raw/    gzipped official MNIST files
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
mkdir -p /tmp/site && tar -xJf .whl/ray-nojars.tar.xz -C /tmp/site && \
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
  export PYTHONPATH=/tmp/site:$PWD || exit 1
mkdir -p /tmp/data/MNIST/raw && for f in .gpu_data/MNIST/raw/*.gz; do
  gunzip -c "$f" > /tmp/data/MNIST/raw/$(basename "$f" .gz); done
export REGENE_DATA_ROOT=/tmp/data PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

echo "== 1. train configs/mnist.yaml on cuda"
timeout 120 python3 jobs/train.py --config configs/mnist.yaml --out /tmp/run --device cuda > "$OUT/train.log" 2>&1
tail -2 "$OUT/train.log"; cp /tmp/run/metrics.json "$OUT/metrics_run.json" 2>/dev/null

echo "== 2. bare single-process GPU loops (no Ray): chunk 16384, decoder batch 4096"
timeout 45 python3 - <<'PY' 2>&1 | tee "$OUT/networks.txt"
import time, torch
from regene_ray import mass
g = mass.GenerateChunks("/tmp/run", chunk_size=16384, batch_size=4096, device="cuda", torch_threads=4)
g.generate(0, 0); torch.cuda.synchronize()
t, n, acc = time.perf_counter(), 0, 0
for k in range(1, 9):
    table, info = g.generate(k % 10, k); n += info.tried; acc += info.accepted
torch.cuda.synchronize(); dt = time.perf_counter() - t
print(f"whole transform (mix, networks, PNG, table) in 1 process: {n / dt:.0f} candidates/s, "
      f"{acc / dt:.0f} accepted img/s over {n} candidates")
PY
timeout 90 python3 benchmarks/networks_throughput.py --run /tmp/run --device cuda --threads 4 \
  --chunk 16384 --batch 4096 --reps 8 --precisions fp32,tf32,bf16,fp16 2>&1 | tee -a "$OUT/networks.txt"

nvidia-smi dmon -s u -d 1 > "$OUT/dmon.txt" 2>&1 &
DMON=$!
echo "== 3. split pipeline, identical output for 2 and 4 GPU actors (100k, --gpus-per-worker 0.25)"
for w in 2 4; do
  timeout 65 /usr/bin/time -v python3 jobs/mass_generate.py --run /tmp/run --count 100000 \
    --batch-size 4096 --gpus-per-worker 0.25 --workers $w --out /tmp/gen_w$w > /dev/null 2> /tmp/gen_w$w.log
  grep -E "mass_generate:.*(img/s|pipeline|timeline)|Elapsed|Maximum resident" /tmp/gen_w$w.log | tee -a "$OUT/ray_100k.txt"
done
echo "-- the fused stage, 4 actors x 0.25 GPU, same job" | tee -a "$OUT/ray_100k.txt"
timeout 65 /usr/bin/time -v python3 jobs/mass_generate.py --run /tmp/run --count 100000 \
  --batch-size 4096 --gpus-per-worker 0.25 --workers 4 --pipeline fused --out /tmp/gen_fused \
  > /dev/null 2> /tmp/gen_fused.log
grep -E "mass_generate:.*(img/s|pipeline)|Elapsed|Maximum resident" /tmp/gen_fused.log | tee -a "$OUT/ray_100k.txt"
timeout 20 python3 - <<'PY' 2>&1 | tee -a "$OUT/ray_100k.txt"
import pyarrow.parquet as pq
a, b, f = (pq.read_table(f"/tmp/gen_{n}/data").sort_by("id") for n in ("w2", "w4", "fused"))
print("rows", a.num_rows, b.num_rows, f.num_rows, "identical outputs with 2 and 4 GPU actors:",
      a.equals(b), "; split and fused identical:", a.equals(f))
PY
rm -rf /tmp/gen_w2 /tmp/gen_w4 /tmp/gen_fused
echo "== 4. 1e6 images, split pipeline, 4 actors x 0.25 GPU, batch 4096 (stopped after 110 s)"
echo "dmon line at 1e6 start: $(wc -l < "$OUT/dmon.txt")" >> "$OUT/ray_1m.txt"
timeout 110 /usr/bin/time -v python3 jobs/mass_generate.py --run /tmp/run --count 1e6 -v \
  --batch-size 4096 --gpus-per-worker 0.25 --workers 4 --out /tmp/gen_1m > /tmp/gen_1m.out 2> /tmp/gen_1m.log
echo "exit $?" >> "$OUT/ray_1m.txt"
echo "dmon line at 1e6 end: $(wc -l < "$OUT/dmon.txt")" >> "$OUT/ray_1m.txt"
grep -E "mass_generate:.*(img/s|pipeline|timeline)|stream|Elapsed|Maximum resident" /tmp/gen_1m.log | tee -a "$OUT/ray_1m.txt"
python3 -c "import json; print('runtime identity (from the worker probe):', json.load(open('/tmp/gen_1m/job.json'))['runtime'])" 2>&1 | tee -a "$OUT/ray_1m.txt"
sed -n '/per-operator statistics/,/^[0-9][0-9]:[0-9][0-9]:[0-9][0-9] /p' /tmp/gen_1m.log > "$OUT/ray_1m_stats.txt"
grep -E "^Operator|Remote wall time|Remote cpu time|UDF time" "$OUT/ray_1m_stats.txt" | head -40
cp /tmp/gen_1m/summary.json "$OUT/summary_1m.json" 2>/dev/null
kill $DMON 2>/dev/null
tail -5 /tmp/gen_1m.log > "$OUT/ray_1m_tail.txt"
echo "total $(( $(date +%s) - T0 )) s"
