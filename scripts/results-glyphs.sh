#!/usr/bin/env bash
# Reproduces the glyph rows of docs/results.md: every classifier on 5-way and 20-way,
# 1-shot and 5-shot episodes of the full glyph set (Debian's fonts-noto-core), meta-trained
# with augmented queries (Algorithm 2) and tested on 600 episodes of the meta-test alphabets
# whose queries are augmented.
# Usage: scripts/results-glyphs.sh [OUT] [SET]   (defaults: out/glyphs, glyphs)
# Budget per row: STEPS outer steps of TASKS episodes (the same for every model).
set -euo pipefail
out=${1:-out/glyphs}
set_name=${2:-glyphs}
trainer=${TRAINER:-target/release/trainer}
models=${MODELS:-"msr-conv maml-conv anil protonet"}
settings=${SETTINGS:-"5:1:5:8:1000 5:5:5:8:500 20:1:2:4:500 20:5:2:4:500"}
mkdir -p "$out"
for setting in $settings; do
  IFS=: read -r ways shots queries tasks steps <<<"$setting"
  for model in $models; do
    dir="$out/${ways}way-${shots}shot-$model"
    rm -rf "$dir"
    start=$(date +%s.%N)
    "$trainer" train --problem "$set_name" --model "$model" --ways "$ways" --support "$shots" \
      --queries "$queries" --tasks-per-step "$tasks" --steps "$steps" --augment-query \
      --eval-every 250 --eval-tasks 100 --seed 0 --out "$dir" >"$dir.log" 2>&1
    end=$(date +%s.%N)
    json=$("$trainer" eval --model "$dir/model.msr" --ways "$ways" --support "$shots" \
      --queries "$queries" --augment-query --tasks 600 --json)
    echo "{\"ways\":$ways,\"shots\":$shots,\"model\":\"$model\",\"steps\":$steps,\"tasks_per_step\":$tasks,\"train_wall_s\":$(echo "$end - $start" | bc),\"eval\":$json}"
  done
done
