#!/usr/bin/env bash
# The distributed training throughput of docs/scale.md: `trainer bench --shards` under
# `mpirun -np 1` and `-np 2`, alternated for ROUNDS rounds (machine noise hits both alike),
# on glyph 5-way 1-shot (8 episodes per step, 8 shards) and rank1 (32 tasks, 8 shards).
# Prints every run's line, then the median steps/s per process count and their ratio.
# Needs a trainer built with --features msr-trainer/mpi and OpenMPI.
# Usage: scripts/bench-mpi.sh [TRAINER]   (ROUNDS=3, REPS=60 by default)
set -euo pipefail
trainer=${1:-target/release/trainer}
rounds=${ROUNDS:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
bench() { # NAME NP ARGS...
  local name=$1 np=$2
  shift 2
  mpirun --oversubscribe -np "$np" "$trainer" bench "$@" | tail -n 1 |
    sed -n 's/.*"steps_per_s":\([0-9.e+-]*\).*/\1/p' >>"$tmp/$name-$np"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
glyphs=(--problem glyphs-mini --model msr-conv --ways 5 --support 1 --queries 5 --tasks 8
  --augment-query --shards 8 --reps "${REPS:-60}")
rank1=(--problem rank1 --model msr-fc --tasks 32 --shards 8 --reps "$((${REPS:-60} * 10))")
for r in $(seq "$rounds"); do
  for np in 1 2; do
    bench glyphs "$np" "${glyphs[@]}"
    bench rank1 "$np" "${rank1[@]}"
  done
  echo "round $r: glyphs $(tail -n 1 "$tmp/glyphs-1") / $(tail -n 1 "$tmp/glyphs-2"), rank1 $(tail -n 1 "$tmp/rank1-1") / $(tail -n 1 "$tmp/rank1-2") steps/s (np 1 / np 2)"
done
for name in glyphs rank1; do
  one=$(median <"$tmp/$name-1")
  two=$(median <"$tmp/$name-2")
  echo "$name: median outer steps/s np=1 $one, np=2 $two, ratio $(echo "$two / $one" | bc -l | cut -c1-5)"
done
