#!/usr/bin/env bash
# Issue 13's MNIST measurements in one script: configs/mnist.yaml trained with each perceptual
# option (judge = the default without lpips weights, classifier, none) and a second seed of the
# default, each evaluated by jobs/evaluate.py with one shared neutral ResNet-20, then the
# perceptual-option table and Table 1 (mean +- std over the two seeds) printed as Markdown.
#
#   REGENE_DATA_ROOT=../shared/data bash benchmarks/perceptual_options.sh [RUNS_DIR]
#
# About 75 minutes on an idle 2-core CPU. Runs resume: rerunning skips finished trainings.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${1:-runs/issue13}
NEUTRAL=(--neutral-cache "$RUNS/neutral" --neutral-epochs "${NEUTRAL_EPOCHS:-5}")
mkdir -p "$RUNS"
train() {  # NAME FLAGS...
  local name=$1; shift
  $PY jobs/train.py --config configs/mnist.yaml --out "$RUNS/$name" --device cpu "$@"
}
evaluate() {  # NAME
  $PY jobs/evaluate.py --run "$RUNS/$1" --out "$RUNS/report-$1" --device cpu --overwrite \
    "${NEUTRAL[@]}"
}
train judge --perceptual auto
train classifier --perceptual classifier
train none --perceptual none
train judge-seed1 --perceptual auto --seed 1
for name in judge classifier none judge-seed1; do evaluate "$name"; done
$PY benchmarks/perceptual_table.py "$RUNS"
