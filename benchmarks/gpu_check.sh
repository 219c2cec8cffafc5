#!/usr/bin/env bash
# The GPU check in one call: correctness, speed against bare PyTorch and the benchmark, within a
# time budget (benchmarks/gpu_check.py). Results go to --out when given, else to $OUT when the
# device tool sets it, else to benchmarks/results/gpu (a rehearsal's to the ignored gpu_smoke);
# the log beside them.
# Extra arguments go to gpu_check.py, e.g.
#   bash benchmarks/gpu_check.sh --smoke                 # rehearsal on the CPU
#   bash benchmarks/gpu_check.sh --parts bench --bench-images 50 --bench-steps 300 \
#       --bench-boxes exact --budget 540                 # the reference recipe, one box mode
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-benchmarks/results/gpu}
case " $* " in *" --smoke "*) out=${OUT:-benchmarks/results/gpu_smoke} ;; esac
# an --out of the caller's wins; the log goes beside the results
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
    [ "${args[i]}" = --out ] && out=${args[i + 1]}
done
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"${PYTHON:-python3}" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
