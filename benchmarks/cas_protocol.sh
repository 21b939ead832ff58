#!/usr/bin/env bash
# Issue 23's Classification Accuracy Score under the protocol of regene_ray.evaluation.cas,
# through the user-facing jobs only: for each generation setting, the real training split's
# size and class counts (--class-counts train: 54,000 MNIST images) generated from RUN, then
# jobs/train_on_generated.py's defaults (ResNet-8 of width 16, 5 epochs, cosine per step, the
# best epoch on the run's holdout kept, tested once) with three model seeds; the same on the
# real training images is the reference. The setting to recommend is chosen by VALIDATION
# accuracy (benchmarks/cas_table.py prints both; the test column is never used to choose).
#
#   REGENE_DATA_ROOT=../shared/data bash benchmarks/cas_protocol.sh [RUN] [OUT]
#   SETTINGS="2 uniform,2 dirichlet:1 0.01" bash benchmarks/cas_protocol.sh   # fewer settings
# Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${1:-runs/mnist}
OUT=${2:-runs/cas}
SEEDS=${SEEDS:-0 1 2}
# "n weights [novelty quantile]"
SETTINGS=${SETTINGS:-2 uniform,3 uniform,5 uniform,2 dirichlet:1,2 uniform 0.01,2 dirichlet:1 0.01}
mkdir -p "$OUT"
tog() {  # OUT FLAGS...
  local out=$1; shift
  [ -f "$out/metrics.json" ] || $PY jobs/train_on_generated.py --out "$out" --device cpu \
    --seeds $SEEDS "$@"
}
tog "$OUT/cas-real" --run "$RUN" --real-only
IFS=, read -ra settings <<< "$SETTINGS"
for s in "${settings[@]}"; do
  set -- $s
  case $2 in  # dirichlet:1 keeps its first name (runs/cas/*-n2-dirichlet); other alphas show
    dirichlet:1) w=dirichlet ;;
    *) w=${2/:/} ;;
  esac
  name="n$1-$w${3:+-nov$3}"
  gen="$OUT/gen-$name"
  [ -f "$gen/summary.json" ] || $PY jobs/mass_generate.py --run "$RUN" --out "$gen" \
    --class-counts train --n-parents "$1" --weights "$2" ${3:+--novelty-quantile "$3"}
  tog "$OUT/cas-$name" --run "$RUN" --generated "$gen"
done
$PY benchmarks/cas_table.py "$OUT"
