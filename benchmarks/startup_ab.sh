#!/usr/bin/env bash
# Start-up of jobs/mass_generate.py at two commits, interleaved in one run: each checkout's job
# (its own regene_ray, on PYTHONPATH so the workers of the private Ray it starts import it too)
# generates COUNT images from RUN, timed prompt to prompt; the job's own timeline line
# (imports, Ray start, reading the run, the actor pools, first chunk taken, generating) is
# printed beside it. A private Ray only: two running heads side by side on a small box slowed
# every phase (BENCHMARKS.md section 12), so compare joined runs with prompt_to_prompt.py.
#
#   bash benchmarks/startup_ab.sh OLD_CHECKOUT NEW_CHECKOUT RUN [COUNT] [REPEAT]
#   git worktree add /tmp/old 17734dd && bash benchmarks/startup_ab.sh /tmp/old . runs/mnist
# Run it on an idle box (the load average is printed before each job).
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); run=$(cd "$3" && pwd)
count=${4:-100000}; repeat=${5:-3}
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for i in $(seq "$repeat"); do
  for side in old new; do
    dir=${!side}; out="$scratch/out-$side"; rm -rf "$out"
    load=$(cut -d' ' -f1 /proc/loadavg); t0=$(date +%s.%N)
    (cd "$dir" && PYTHONPATH=$dir "$PY" jobs/mass_generate.py --run "$run" --count "$count" \
       --out "$out" > "$scratch/log-$side" 2>&1)
    t1=$(date +%s.%N)
    printf '%s %d: prompt to prompt %.1f s (load before %s); %s\n' "$side" "$i" \
      "$(echo "$t1 - $t0" | bc)" "$load" \
      "$(grep -o 'timeline.*' "$scratch/log-$side" | head -1)"
  done
done
