#!/usr/bin/env bash
# MNIST evaluation benchmark (benchmarks/RESULTS-evaluate.md) on a lent CUDA machine: trains the
# MNIST run of configs/mnist.yaml, then runs jobs/evaluate.py with the paper's ResNet-56 judge.
# Expects, carried beside the repo (as benchmarks/gpu_core_check.sh does):
#   .whl/pytorch_msssim-*.whl        (the only core dependency missing from the device image)
#   .gpu_data/MNIST/raw/*.gz         (gzipped official MNIST files)
# DRY=1 runs the same steps on digits with smoke sizes on the CPU (to check the script here).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then
    PY=${PY:-.venv/bin/python}; DEV=cpu
    TRAIN=(--smoke-test); EVAL=(--smoke-test --threads 1)
else
    PY=python3; DEV=cuda
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    mkdir -p /tmp/data/MNIST/raw && for f in .gpu_data/MNIST/raw/*.gz; do
        gunzip -c "$f" > /tmp/data/MNIST/raw/$(basename "$f" .gz); done
    export REGENE_DATA_ROOT=/tmp/data
    TRAIN=(--config configs/mnist.yaml)
    EVAL=(--neutral-depth 56 --neutral-epochs ${EPOCHS:-10} --fid-samples 5000 --num-generated 10000
          --novelty-samples 2000 --seeds 3)
fi
RUN=/tmp/runs/mnist_eval; REPORT=/tmp/reports/mnist_eval
rm -rf "$RUN" "$REPORT"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
/usr/bin/time -v $PY jobs/train.py "${TRAIN[@]}" --out "$RUN" --device $DEV 2> "$OUT/train.log" | tail -2
grep -E "run /tmp|Elapsed" "$OUT/train.log"
/usr/bin/time -v $PY jobs/evaluate.py --run "$RUN" --out "$REPORT" --device $DEV "${EVAL[@]}" \
    2> "$OUT/evaluate.log" | tee "$OUT/evaluate_summary.json"
grep -E "neutral epoch|neutral:|FID features|evaluation:|Elapsed|Error|error" "$OUT/evaluate.log" | tail -30
cp "$REPORT/metrics.json" "$OUT/metrics.json"; cp "$REPORT/report.html" "$OUT/report.html"
cp "$RUN/metrics.json" "$OUT/run_metrics.json"
