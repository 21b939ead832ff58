#!/usr/bin/env bash
# Start-up of jobs/mass_generate.py at two commits, interleaved in one run: each checkout's job
# (its own regene_ray, on PYTHONPATH so the workers of the private Ray it starts import it too)
# generates COUNT images from RUN, timed prompt to prompt; the job's own timeline line
# (imports, Ray start, reading the run, the actor pools, first chunk taken, generating) is
# printed beside it. A private Ray by default; with HEAD=1 each job joins a running head
# (`ray start --head --num-cpus 2`, started before the job with that checkout on PYTHONPATH, so
# its workers import that checkout's code, and stopped after it: one head at a time, since two
# side by side on a small box slowed every phase, BENCHMARKS.md section 12).
#
#   bash benchmarks/startup_ab.sh OLD_CHECKOUT NEW_CHECKOUT RUN [COUNT] [REPEAT]
#   git worktree add /tmp/old 17734dd && bash benchmarks/startup_ab.sh /tmp/old . runs/mnist
#   HEAD=1 bash benchmarks/startup_ab.sh /tmp/old . runs/mnist 100000 5
#   FLAGS="--workers 1" HEAD=1 bash benchmarks/startup_ab.sh /tmp/old . runs/mnist 50000 5
# Run it on an idle box (the load average is printed before each job).
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); run=$(cd "$3" && pwd)
count=${4:-100000}; repeat=${5:-3}
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for i in $(seq "$repeat"); do
  for side in old new; do
    dir=${!side}; out="$scratch/out-$side"; rm -rf "$out"; join=()
    if [ "${HEAD:-0}" = 1 ]; then
      (cd "$dir" && PYTHONPATH=$dir RAY_AUTH_MODE=token "$(dirname "$PY")/ray" start --head \
         --num-cpus 2 --include-dashboard=false --port 6391 > "$scratch/head-$side" 2>&1)
      sleep 5; join=(--address 127.0.0.1:6391)  # the token: ray get-auth-token --generate
    fi
    load=$(cut -d' ' -f1 /proc/loadavg); t0=$(date +%s.%N)
    (cd "$dir" && PYTHONPATH=$dir RAY_AUTH_MODE=token "$PY" jobs/mass_generate.py --run "$run" \
       --count "$count" --out "$out" "${join[@]}" ${FLAGS:-} > "$scratch/log-$side" 2>&1)
    t1=$(date +%s.%N)
    [ "${HEAD:-0}" = 1 ] && "$(dirname "$PY")/ray" stop --force > /dev/null 2>&1
    printf '%s %d: prompt to prompt %.1f s (load before %s); %s\n' "$side" "$i" \
      "$(echo "$t1 - $t0" | bc)" "$load" \
      "$(grep -o 'timeline.*' "$scratch/log-$side" | head -1)"
  done
done
