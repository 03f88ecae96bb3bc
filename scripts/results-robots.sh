#!/usr/bin/env bash
# Reproduces docs/robots.md: on panda-payload and quadrotor-wind, meta-trains msr-mlp (SGD
# and Gauss-Newton inner loops), maml-mlp and anil-mlp with one budget, then evaluates every
# model and per-task ridge on the same 300 test tasks for K = 1, 5, 20, 100 support examples
# and 100 queries, each line with the nominal model's and the physics oracle's MSE on those
# tasks. One JSON line per evaluation on stdout; training logs beside the models.
# Needs a trainer built with --features mujoco (scripts/install-mujoco.sh).
# Usage: scripts/results-robots.sh [STEPS] [OUT]   (defaults: 8000, out/robots)
# PROBLEMS="panda-payload" runs one family only.
set -euo pipefail
steps=${1:-8000}
out=${2:-out/robots}
trainer=${TRAINER:-target/release/trainer}
mkdir -p "$out"
common="--hidden 64,64 --activation tanh --k 10 --tasks-per-step 16 --seed 0"
for problem in ${PROBLEMS:-panda-payload quadrotor-wind}; do
  # name | flags (every model: 64-64 tanh MLP, 16 tasks per outer step, the same steps)
  while IFS='|' read -r name flags; do
    dir="$out/$problem-$name"
    rm -rf "$dir"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$trainer" train --problem "$problem" $common $flags --steps "$steps" \
      --eval-every "$steps" --eval-tasks 100 --out "$dir" >"$dir.log" 2>&1
    end=$(date +%s.%N)
    echo "{\"problem\":\"$problem\",\"model\":\"$name\",\"train_wall_s\":$(echo "$end - $start" | bc)}"
    for k in 1 5 20 100; do
      json=$("$trainer" eval --model "$dir/model.msr" --support "$k" --query 100 --json)
      echo "{\"problem\":\"$problem\",\"model\":\"$name\",\"support\":$k,\"eval\":$json}"
    done
  done <<'MODELS'
msr-sgd|--model msr-mlp --inner sgd --inner-steps 3 --support 20
msr-gn|--model msr-mlp --inner gn --damping 0.01 --support 5
maml|--model maml-mlp --inner sgd --inner-steps 3 --support 20
anil|--model anil-mlp --inner sgd --inner-steps 3 --support 20
MODELS
  for k in 1 5 20 100; do
    json=$("$trainer" ridge --problem "$problem" --support "$k" --query 100 --json)
    echo "{\"problem\":\"$problem\",\"model\":\"ridge\",\"support\":$k,\"eval\":$json}"
  done
done
