#!/usr/bin/env bash
# Reproduces the closed-loop section of docs/robots.md: builds examples/cpp/panda_payload.cpp
# against libmsr and MuJoCo, flies the 20 s run for every seed in SEEDS (one "summary" line
# each, on stdout) and writes the first seed's CSV and plot.
# Usage: scripts/results-closed-loop.sh [MODEL] [OUT]
#   defaults: robots/panda/msr-head.msr, out/closed-loop; SEEDS="11 12 ..." (default 11-20);
#   extra flags for the program in LOOP_FLAGS (e.g. "--forget 0.995 --damping 0.1").
# Needs: scripts/install-mujoco.sh, cargo build --release -p msr-ffi, a trainer binary.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-robots/panda/msr-head.msr}
out=${2:-out/closed-loop}
target=${CARGO_TARGET_DIR:-target}/release
trainer=${TRAINER:-$target/trainer}
mkdir -p "$out"
eval "$(scripts/install-mujoco.sh --env)"
# shellcheck disable=SC2046
c++ -std=c++17 -O2 -Wall -Wextra -Werror -Iinclude examples/cpp/panda_payload.cpp \
  examples/cpp/alloc_count.cpp $(pkg-config --cflags --libs mujoco) -L"$target" -lmsr \
  -Wl,-rpath,"$(cd "$target" && pwd)" -o "$out/panda_payload"
seeds=${SEEDS:-11 12 13 14 15 16 17 18 19 20}
first=${seeds%% *}
for seed in $seeds; do
  csv=()
  [ "$seed" = "$first" ] && csv=(--csv "$out/seed$seed.csv")
  # shellcheck disable=SC2086
  "$out/panda_payload" "$model" robots/panda/panda.xml --seed "$seed" --count-allocs \
    ${LOOP_FLAGS:-} "${csv[@]}" >"$out/seed$seed.txt"
  grep '^summary' "$out/seed$seed.txt"
done
"$trainer" plot-loop --csv "$out/seed$first.csv" --out "$out/closed-loop.png" >&2
