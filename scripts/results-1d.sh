#!/usr/bin/env bash
# Reproduces the 1-D rows of docs/results.md: every model on rank1, rank2, rank5.
# Usage: scripts/results-1d.sh [STEPS] [OUT]   (defaults: 1000, out/results)
set -euo pipefail
steps=${1:-1000}
out=${2:-out/results}
trainer=${TRAINER:-target/release/trainer}
for problem in rank1 rank2 rank5; do
  for model in msr-fc maml-fc maml-lc maml-conv; do
    dir="$out/$problem-$model"
    rm -rf "$dir"
    start=$(date +%s.%N)
    "$trainer" train --problem "$problem" --model "$model" --steps "$steps" --seed 0 --out "$dir" >/dev/null 2>&1
    end=$(date +%s.%N)
    json=$("$trainer" eval --model "$dir/model.msr" --tasks 300 --json)
    echo "{\"problem\":\"$problem\",\"model\":\"$model\",\"steps\":$steps,\"wall_s\":$(echo "$end - $start" | bc),\"eval\":$json}"
  done
done
