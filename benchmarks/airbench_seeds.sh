#!/usr/bin/env bash
# The airbench comparison, one seed at a time for every row, kept in docs/ as it grows (issue #41):
#   bash benchmarks/airbench_seeds.sh [SEEDS=5] [ABLATION_SEEDS=3]
# For seed n = 1..SEEDS: `compare --preset airbench --seeds n` (baseline, SE, SB with sigmoid) and SB with tanh,
# into results/compare-airbench; then the ablation's other activations at ABLATION_SEEDS seeds into
# results/ablation-airbench, its sigmoid and tanh runs the comparison's. Finished runs already in
# docs/compare-airbench/runs and docs/ablation-airbench/runs are put in first, so nothing is trained twice; after
# each suite the finished runs' JSON and CSV and the tables go back into docs/. Run it under `nice` beside other
# work; Ctrl-C or SIGTERM checkpoints the run under way, and the same command resumes it.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-5}
ABLATION_SEEDS=${2:-3}
SBATTN=${SBATTN:-$(if [ -x .venv/bin/sbattn ]; then echo .venv/bin/sbattn; else command -v sbattn; fi)}
DATA=${DATA:-../shared/data}
COMPARE=results/compare-airbench
ABLATION=results/ablation-airbench

keep() {  # the finished runs of results/$1 (JSON and CSV) and its tables and figures into docs/$1
    local from=results/$1 to=docs/$1
    mkdir -p "$to/runs"
    for json in "$from"/airbench_*.json; do
        case "$json" in *.config.json) continue ;; esac  # the options of a run under way
        [ -e "${json%.json}.ckpt" ] && continue  # not finished
        cp "$json" "$to/runs/"
        [ -e "${json%.json}.csv" ] && cp "${json%.json}.csv" "$to/runs/"
    done
    "$SBATTN" report "$from" >/dev/null
    for table in "$from"/{compare,ablation}.{md,csv,json,png} "$from"/lambda.png; do
        [ -e "$table" ] && cp "$table" "$to/"
    done
    return 0
}

mkdir -p "$COMPARE" "$ABLATION"
cp -n docs/compare-airbench/runs/*.json "$COMPARE/" 2>/dev/null || true
cp -n docs/ablation-airbench/runs/*.json "$ABLATION/" 2>/dev/null || true
for n in $(seq 1 "$SEEDS"); do
    "$SBATTN" compare --preset airbench --seeds "$n" --data-dir "$DATA" --output-dir "$COMPARE"
    "$SBATTN" compare --preset airbench --attention sb --activation tanh --seeds "$n" --data-dir "$DATA" \
        --output-dir "$COMPARE"
    keep compare-airbench
done
cp -n "$COMPARE"/airbench_*_True_False_{sigmoid,tanh}_*.{json,csv} "$ABLATION/"
"$SBATTN" ablate --preset airbench --seeds "$ABLATION_SEEDS" --data-dir "$DATA" --output-dir "$ABLATION"
keep ablation-airbench
