#!/usr/bin/env bash
# Issue 14's train-on-generated numbers on MNIST, through the user-facing jobs only:
#   1. CAS: as many generated images per class as the real training split has (54,000 in all,
#      --class-counts train), per n and weight scheme, with and without the novelty step, from
#      RUN; a ResNet trained on them alone, tested on the real test set, against the same
#      network trained on the real training images;
#   2. low data: ReGene runs trained on 1% and 10% of the real training images (configs/mnist.yaml
#      otherwise), 54,000 generations from each; the ResNet on that real subset alone against
#      the subset plus the generations (half of every batch real), at the same number of steps.
#
#   REGENE_DATA_ROOT=../shared/data bash benchmarks/cas_mnist.sh [RUN] [OUT]
#   PARTS=low SETTINGS="2 uniform" bash benchmarks/cas_mnist.sh     # a part, fewer settings
# Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${1:-runs/issue13/judge}
OUT=${2:-runs/issue14}
NET=(--depth 8 --width 8 --batch-size 128 --device cpu)
EPOCHS=${EPOCHS:-2}
PARTS=${PARTS:-cas low}
# "n weights [novelty quantile]"
SETTINGS=${SETTINGS:-2 uniform,3 uniform,5 uniform,2 dirichlet:1,2 uniform 0.01,2 dirichlet:1 0.01}
mkdir -p "$OUT"
gen() {  # RUN OUT FLAGS...
  local run=$1 out=$2; shift 2
  [ -f "$out/summary.json" ] || $PY jobs/mass_generate.py --run "$run" --out "$out" "$@"
}
tog() {  # OUT FLAGS...
  local out=$1; shift
  [ -f "$out/metrics.json" ] || $PY jobs/train_on_generated.py --out "$out" "${NET[@]}" "$@"
}
# 1. CAS
if [[ " $PARTS " == *" cas "* ]]; then
  tog "$OUT/cas-real" --run "$RUN" --real-only --epochs "$EPOCHS"
  IFS=, read -ra settings <<< "$SETTINGS"
  for s in "${settings[@]}"; do
    set -- $s
    name="n$1-${2%%:*}-rc${3:+-nov$3}"
    gen "$RUN" "$OUT/gen-$name" --class-counts train --n-parents "$1" --weights "$2" \
      ${3:+--novelty-quantile "$3"}
    tog "$OUT/cas-$name" --run "$RUN" --generated "$OUT/gen-$name" --epochs "$EPOCHS"
  done
fi
# 2. low data: max_train counts train + holdout (holdout_fraction 0.1)
for pct in $([[ " $PARTS " == *" low "* ]] && echo 1 10); do
  n=$((600 * pct))          # 1% / 10% of the 60,000 official training images
  real=$((n * 9 / 10))      # of which 90% train the networks
  run="$OUT/run-${pct}pct"
  # as many optimiser steps as the full run (5 + 6 epochs of 54,000): 540 images in 5 epochs
  # of 128 are 20 steps, which leave the classifier at chance
  scale=$((100 / pct))
  $PY jobs/train.py --config configs/mnist.yaml --max-train "$n" --out "$run" --device cpu \
    --classifier-epochs $((5 * scale)) --decoder-epochs $((6 * scale))
  gen "$run" "$OUT/gen-${pct}pct" --count 54000 --n-parents 2
  # the same number of steps for both: the mixed run sees 54,000 / 64 batches per epoch
  steps=$((54000 / 64 * EPOCHS))
  real_epochs=$(( (steps * 128 + real - 1) / real ))
  tog "$OUT/low-${pct}pct-real" --run "$run" --real-only --epochs "$real_epochs"
  tog "$OUT/low-${pct}pct-mixed" --run "$run" --generated "$OUT/gen-${pct}pct" \
    --real-fraction 0.5 --epochs "$EPOCHS"
done
$PY benchmarks/cas_table.py "$OUT"
