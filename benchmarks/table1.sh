#!/usr/bin/env bash
# The paper's Table 1 from three independently trained MNIST runs (issue 23): configs/mnist.yaml
# with model seeds 0, 1 and 2 (--seed leaves the data split alone, so every run shares one
# train/holdout split and one neutral judge), each evaluated by jobs/evaluate.py (10,000 fresh
# uniform n = 2 generations against 10,000 originals and 10,000 reconstructions, 3 subsamples)
# with one neutral-network cache, then benchmarks/table1.py: mean +- std across the runs and the
# order of the rows. About 12 min of training and 7 min of evaluation per run on 2 CPU cores
# (the first evaluation also trains the neutral network, 3.5 min).
#
#   REGENE_DATA_ROOT=../shared/data bash benchmarks/table1.sh [OUT]
# Finished steps are skipped on a rerun; OUT/mnist-seed<s> may be a link to an existing run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/table1}
SEEDS=${SEEDS:-0 1 2}
NEUTRAL=${NEUTRAL:-$OUT/neutral}
mkdir -p "$OUT"
for s in $SEEDS; do
  run="$OUT/mnist-seed$s"
  [ -f "$run/metrics.json" ] || $PY jobs/train.py --config configs/mnist.yaml --seed "$s" \
    --out "$run" --device cpu
done
reports=()
for s in $SEEDS; do
  report="$OUT/report-seed$s"
  [ -f "$report/metrics.json" ] || $PY jobs/evaluate.py --run "$OUT/mnist-seed$s" --out "$report" \
    --device cpu --neutral-cache "$NEUTRAL" --neutral-epochs 3
  reports+=("$report")
done
$PY benchmarks/table1.py "${reports[@]}"
