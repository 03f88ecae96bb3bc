#!/usr/bin/env bash
# Reproduces the Gauss-Newton rows of docs/results.md: SGD and damped Gauss-Newton inner
# loops side by side, each meta-trained with the same budget (outer steps, tasks, 1 inner
# step, K = 1 support example on rank1/rank2/rank5; K = 10 and the better of 1 or 5 inner
# steps on cartpole), then evaluated with K support examples and S inner steps. One JSON
# line per evaluation. Gauss-Newton models are evaluated through the real-time engine
# (what libmsr runs), SGD models through the burn path (identical to it, tested).
# Usage: scripts/results-gn.sh [STEPS] [OUT]   (defaults: 1000, out/gn)
set -euo pipefail
steps=${1:-1000}
out=${2:-out/gn}
trainer=${TRAINER:-target/release/trainer}
mkdir -p "$out"
for problem in rank1 rank2 rank5; do
  for inner in sgd gn; do
    dir="$out/$problem-$inner"
    rm -rf "$dir"
    start=$(date +%s.%N)
    "$trainer" train --problem "$problem" --model msr-fc --no-bias --inner "$inner" --damping 0.01 \
      --steps "$steps" --eval-every "$steps" --seed 0 --out "$dir" >"$dir.log" 2>&1
    end=$(date +%s.%N)
    echo "{\"problem\":\"$problem\",\"inner\":\"$inner\",\"train_wall_s\":$(echo "$end - $start" | bc)}"
    for k in 1 5 20; do
      for s in 1 3 10 100; do
        json=$("$trainer" eval --model "$dir/model.msr" --support "$k" --query 19 --inner-steps "$s" --json)
        echo "{\"problem\":\"$problem\",\"inner\":\"$inner\",\"support\":$k,\"steps\":$s,\"eval\":$json}"
      done
    done
  done
done
# cartpole through its task file (scripts/results-cartpole.sh writes the SGD rows).
cp_steps=${CARTPOLE_STEPS:-3000}
"$trainer" tasks --problem cartpole --out "$out/cartpole.npz" >&2
for s_train in 1 5; do
  dir="$out/cartpole-gn-s$s_train"
  rm -rf "$dir"
  start=$(date +%s.%N)
  "$trainer" train --problem "npz:$out/cartpole.npz" --model msr-mlp --hidden 64,64 --support 10 \
    --inner gn --damping 0.01 --inner-steps "$s_train" --steps "$cp_steps" --eval-every 500 --seed 0 \
    --out "$dir" >"$dir.log" 2>&1
  end=$(date +%s.%N)
  val=$(tail -n 1 "$dir/metrics.jsonl" | sed 's/.*"val_loss":\([0-9.e+-]*\).*/\1/')
  echo "{\"problem\":\"cartpole\",\"inner\":\"gn\",\"train_inner_steps\":$s_train,\"val_mse\":$val,\"train_wall_s\":$(echo "$end - $start" | bc)}"
  for k in 5 10 25 50; do
    for s in 1 3 10 100; do
      json=$("$trainer" eval --model "$dir/model.msr" --support "$k" --inner-steps "$s" --json)
      echo "{\"problem\":\"cartpole\",\"inner\":\"gn\",\"train_inner_steps\":$s_train,\"support\":$k,\"steps\":$s,\"eval\":$json}"
    done
  done
done
