#!/usr/bin/env bash
# Issue 23's low-data case under the protocol of regene_ray.evaluation.cas: a ReGene run of
# configs/mnist.yaml on 1%, 5% and 10% of the official training images (epochs scaled so the
# classifier and decoder take as many optimiser steps as the full run), 54,000 generations from
# each, then jobs/train_on_generated.py (three model seeds, the best epoch on the run's own
# holdout kept, tested once) for each way of using them, every option taking the same number
# of optimiser steps as the real-only baseline:
#   real            the real subset alone, in epochs of 108,000 images (as many steps as mix50)
#   mix50           half of every batch real, half generated (54,000 / 64 steps an epoch)
#   mix75           three quarters real, 27,000 generations an epoch (the same steps)
#   mix50-ft        mix50, then 2 epochs of 50 steps fine-tuning on the real subset alone
#   mix50-ft-wW     mix50-ft with each generated image's loss weighted W (--generated-weight)
#   gen-ft          generated only for 10 epochs, then the same fine-tuning
# (5 epochs of 844 steps each, 4,219 steps; the fine-tuning adds 100 at a quarter the rate).
# EPOCHS=E scales every option alike (gen-ft: 2E epochs of generations); results of E != 5 go
# to OUT/low-<pct>pct-<option>-e<E>.
# The option to recommend is the one with the best VALIDATION accuracy (the run's holdout: 60 /
# 300 / 600 real images); benchmarks/cas_table.py prints both columns.
#
#   REGENE_DATA_ROOT=../shared/data bash benchmarks/low_data.sh [OUT]
#   PCTS="1" OPTIONS="real mix50" bash benchmarks/low_data.sh       # a part
#   EPOCHS=2 PCTS="1" OPTIONS="real gen-ft mix50-ft" bash benchmarks/low_data.sh   # shorter
#   TRAIN_FLAGS="--shift 2" GEN_FLAGS="--n-parents 2" ... runs/other   # other runs / generations:
#                                 a new OUT (a finished run or set in OUT is reused as it is)
# Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/low}
SEEDS=${SEEDS:-0 1 2}
PCTS=${PCTS:-1 5 10}
OPTIONS=${OPTIONS:-real mix50 mix75 mix50-ft gen-ft}
EPOCHS=${EPOCHS:-5}
suffix=$([ "$EPOCHS" = 5 ] || echo "-e$EPOCHS")
GEN_FLAGS=${GEN_FLAGS:---n-parents 2}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
mkdir -p "$OUT"
for pct in $PCTS; do
  n=$((600 * pct))          # of the 60,000 official training images; 90% train, 10% holdout
  run="$OUT/run-${pct}pct"
  scale=$((100 / pct))      # 1% in 100x the epochs: the full run's number of steps
  [ -f "$run/metrics.json" ] || $PY jobs/train.py --config configs/mnist.yaml --max-train "$n" \
    --out "$run" --device cpu --classifier-epochs $((5 * scale)) --decoder-epochs $((6 * scale)) $TRAIN_FLAGS
  gen="$OUT/gen-${pct}pct"
  [ -f "$gen/summary.json" ] || $PY jobs/mass_generate.py --run "$run" --out "$gen" \
    --count 54000 $GEN_FLAGS
  for option in $OPTIONS; do
    case $option in
      real) flags=(--real-only --real-epoch-images 108000 --epochs "$EPOCHS") ;;
      mix50) flags=(--generated "$gen" --real-fraction 0.5 --epochs "$EPOCHS") ;;
      mix75) flags=(--generated "$gen" --real-fraction 0.75 --max-generated 27000
                    --epochs "$EPOCHS") ;;
      mix50-ft) flags=(--generated "$gen" --real-fraction 0.5 --finetune-epochs 2
                       --real-epoch-images 6400 --epochs "$EPOCHS") ;;
      mix50-ft-w*) flags=(--generated "$gen" --real-fraction 0.5 --finetune-epochs 2
                          --real-epoch-images 6400 --epochs "$EPOCHS"
                          --generated-weight "${option#mix50-ft-w}") ;;
      gen-ft) flags=(--generated "$gen" --epochs $((2 * EPOCHS)) --finetune-epochs 2
                     --real-epoch-images 6400) ;;
      *) echo "unknown option $option" >&2; exit 2 ;;
    esac
    out="$OUT/low-${pct}pct-$option$suffix"
    [ -f "$out/metrics.json" ] || $PY jobs/train_on_generated.py --run "$run" --out "$out" \
      --device cpu --seeds $SEEDS "${flags[@]}"
  done
done
$PY benchmarks/cas_table.py "$OUT"
