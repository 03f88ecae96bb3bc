#!/usr/bin/env bash
# Reproduces the cartpole rows of docs/results.md, through the npz path end to end: the
# generated family written as a task file, msr-mlp, maml-mlp and anil-mlp meta-trained on
# it (support 10; inner steps 1 or 5, whichever scores better on the validation tasks),
# then every model and per-task ridge regression evaluated on all 300 test tasks at
# K = 5, 10, 25, 50 support examples. One JSON line per result.
# Usage: scripts/results-cartpole.sh [STEPS] [OUT]   (defaults: 3000, out/cartpole)
set -euo pipefail
steps=${1:-3000}
out=${2:-out/cartpole}
trainer=${TRAINER:-target/release/trainer}
mkdir -p "$out"
"$trainer" tasks --problem cartpole --out "$out/cartpole.npz" >&2
problem="npz:$out/cartpole.npz"
for model in msr-mlp maml-mlp anil-mlp; do
  best=""
  for s in 1 5; do
    dir="$out/$model-s$s"
    rm -rf "$dir"
    start=$(date +%s.%N)
    "$trainer" train --problem "$problem" --model "$model" --hidden 64,64 --support 10 \
      --inner-steps "$s" --steps "$steps" --eval-every 500 --seed 0 --out "$dir" >"$dir.log" 2>&1
    end=$(date +%s.%N)
    val=$(tail -n 1 "$dir/metrics.jsonl" | sed 's/.*"val_loss":\([0-9.e+-]*\).*/\1/')
    echo "{\"model\":\"$model\",\"inner_steps\":$s,\"val_mse\":$val,\"train_wall_s\":$(echo "$end - $start" | bc)}"
    if [ -z "$best" ] || [ "$(echo "$val < $bestval" | bc -l)" = 1 ]; then
      best=$s
      bestval=$val
    fi
  done
  for k in 5 10 25 50; do
    json=$("$trainer" eval --model "$out/$model-s$best/model.msr" --support "$k" --json)
    echo "{\"model\":\"$model\",\"support\":$k,\"inner_steps\":$best,\"eval\":$json}"
  done
done
for k in 5 10 25 50; do
  json=$("$trainer" ridge --problem "$problem" --support "$k" --json)
  echo "{\"model\":\"ridge\",\"support\":$k,\"eval\":$json}"
done
