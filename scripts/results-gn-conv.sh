#!/usr/bin/env bash
# The convolutional rows of docs/results.md's SGD-vs-Gauss-Newton section, one JSON line per
# evaluation (all through the real-time engine, what libmsr runs):
# - glyphs, 5-way 1-shot, augmented queries: MSR-Conv meta-trained through 1 SGD step and
#   through 1 damped Gauss-Newton step with the same budget (1000 outer steps x 8 episodes),
#   then adapted with K shots and S steps of its own inner loop, 600 test episodes.
# - rot8: MSR-Conv meta-trained through SGD (1000 steps), adapted by its SGD step or by
#   damped Gauss-Newton on the same learned U, its damping the best of 1, 0.1, ... 1e-6 on
#   100 validation tasks (printed), then 100 test tasks.
# Usage: scripts/results-gn-conv.sh [OUT] [glyphs|rot8|all]
#   (defaults out/gn-conv, all; about an hour on 2 cores)
set -euo pipefail
out=${1:-out/gn-conv}
what=${2:-all}
trainer=${TRAINER:-target/release/trainer}
mkdir -p "$out"
[ "$what" = rot8 ] || for inner in sgd gn; do
  dir="$out/glyphs-$inner"
  if [ ! -f "$dir/model.msr" ]; then
    start=$(date +%s.%N)
    "$trainer" train --problem glyphs --model msr-conv --ways 5 --support 1 --queries 5 \
      --tasks-per-step 8 --steps 1000 --augment-query --inner "$inner" --damping 0.01 \
      --eval-every 250 --eval-tasks 100 --out "$dir" >"$dir.log" 2>&1
    end=$(date +%s.%N)
    echo "{\"problem\":\"glyphs\",\"inner\":\"$inner\",\"train_wall_s\":$(echo "$end - $start" | bc)}"
  fi
  for k in 1 5; do
    for s in 1 3 10 100; do
      json=$("$trainer" eval --model "$dir/model.msr" --ways 5 --support "$k" --queries 5 \
        --augment-query --tasks 600 --inner-steps "$s" --engine realtime --json)
      echo "{\"problem\":\"glyphs\",\"inner\":\"$inner\",\"support\":$k,\"steps\":$s,\"eval\":$json}"
    done
  done
done
[ "$what" = glyphs ] && exit 0
dir="$out/rot8-sgd"
if [ ! -f "$dir/model.msr" ]; then
  "$trainer" train --problem rot8 --model msr-conv --steps 1000 --eval-every 250 --out "$dir" \
    >"$dir.log" 2>&1
fi
damping=$(for d in 1 1e-1 1e-2 1e-3 1e-4 1e-5 1e-6; do
  "$trainer" eval --model "$dir/model.msr" --support 1 --query 19 --tasks 100 --validation \
    --inner gn --damping "$d" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["loss"], sys.argv[1])' "$d"
done | sort -g | head -n 1 | cut -d' ' -f2)
echo "{\"problem\":\"rot8\",\"inner\":\"gn\",\"damping_chosen_on_validation\":$damping}"
for inner in sgd gn; do
  for k in 1 5 20; do
    for s in 1 3 10 100; do
      json=$("$trainer" eval --model "$dir/model.msr" --support "$k" --query 19 --tasks 100 \
        --inner "$inner" --damping "$damping" --inner-steps "$s" --json)
      echo "{\"problem\":\"rot8\",\"inner\":\"$inner\",\"support\":$k,\"steps\":$s,\"eval\":$json}"
    done
  done
done
