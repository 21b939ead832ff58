#!/usr/bin/env bash
# Start-up of jobs/mass_generate.py at two commits, interleaved in one run: each checkout's job
# (its own regene_ray, on PYTHONPATH so Ray's workers import it too) generates COUNT images from
# RUN, timed prompt to prompt; the job's own timeline line (imports, Ray start, reading the run,
# the actor pools, first chunk taken, generating) is printed beside it. With HEAD_PORT set, each
# checkout gets its own running head (`ray start --head`, started with that checkout on
# PYTHONPATH) and the jobs join it with --address; else each job starts a private Ray.
#
#   bash benchmarks/startup_ab.sh OLD_CHECKOUT NEW_CHECKOUT RUN [COUNT] [REPEAT]
#   git worktree add /tmp/old 17734dd && bash benchmarks/startup_ab.sh /tmp/old . runs/mnist
#   HEAD_PORT=6390 bash benchmarks/startup_ab.sh /tmp/old . runs/mnist
# Run it on an idle box (the load average is printed before each job).
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); run=$(cd "$3" && pwd)
count=${4:-100000}; repeat=${5:-3}
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
RAY=$(dirname "$PY")/ray
scratch=$(mktemp -d)
heads() {  # start|stop
  [ -n "${HEAD_PORT:-}" ] || return 0
  local port=$HEAD_PORT side
  for side in old new; do
    local dir=${!side}
    if [ "$1" = start ]; then
      PYTHONPATH=$dir RAY_AUTH_MODE=token "$RAY" start --head --num-cpus 2 --port $port \
        --include-dashboard=false --temp-dir "$scratch/ray-$side" > /dev/null
    fi
    port=$((port + 1))
  done
  [ "$1" = stop ] && "$RAY" stop --force > /dev/null 2>&1 || true
}
trap 'heads stop; rm -rf "$scratch"' EXIT
flags() {  # side -> --address for its head
  [ -n "${HEAD_PORT:-}" ] || return 0
  [ "$1" = old ] && echo "--address 127.0.0.1:$HEAD_PORT" || echo "--address 127.0.0.1:$((HEAD_PORT + 1))"
}
heads start
for i in $(seq "$repeat"); do
  for side in old new; do
    dir=${!side}; out="$scratch/out-$side"; rm -rf "$out"
    load=$(cut -d' ' -f1 /proc/loadavg); t0=$(date +%s.%N)
    (cd "$dir" && PYTHONPATH=$dir RAY_AUTH_MODE=token "$PY" jobs/mass_generate.py --run "$run" \
       --count "$count" --out "$out" $(flags $side) > "$scratch/log-$side" 2>&1)
    t1=$(date +%s.%N)
    printf '%s %d: prompt to prompt %.1f s (load before %s); %s\n' "$side" "$i" \
      "$(echo "$t1 - $t0" | bc)" "$load" \
      "$(grep -o 'timeline.*' "$scratch/log-$side" | head -1)"
  done
done
