#!/usr/bin/env bash
# GPU check of the core on a lent CUDA machine (see BENCHMARKS.md). Expects, carried beside the repo:
#   .whl/pytorch_msssim-*.whl        (the only core dependency missing from the device image)
#   .gpu_data/MNIST/raw/*.gz         (gzipped official MNIST files)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p /tmp/data/MNIST/raw && for f in .gpu_data/MNIST/raw/*.gz; do gunzip -c "$f" > /tmp/data/MNIST/raw/$(basename "$f" .gz); done
export REGENE_DATA_ROOT=/tmp/data PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_generator.py tests/test_lemma1.py \
    tests/test_models.py tests/test_train.py tests/test_convex.py 2>&1 | tail -15
/usr/bin/time -v python3 jobs/train.py --config configs/mnist.yaml --out /tmp/runs/mnist_gpu --device cuda \
    2> "$OUT/train_gpu.log" | tail -3
grep -E "epoch|run /tmp|Maximum resident|Elapsed" "$OUT/train_gpu.log" | tail -25
cp /tmp/runs/mnist_gpu/metrics.json "$OUT/metrics_gpu.json" 2>/dev/null
cp /tmp/runs/mnist_gpu/generations.png "$OUT/generations_gpu.png" 2>/dev/null
