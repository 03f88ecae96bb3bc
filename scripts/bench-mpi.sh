#!/usr/bin/env bash
# The distributed training throughput of docs/scale.md: `trainer bench --shards` in a plain
# process (1 shard and S shards) and under `mpirun -np 1` and `-np 2`, alternated for
# ROUNDS rounds (machine noise hits all alike), on glyph 5-way 1-shot (8 episodes per step)
# and rank1 (32 tasks).
# Prints every run's line, then the median steps/s per process count and their ratio.
# Needs a trainer built with --features msr-trainer/mpi and OpenMPI.
# Usage: scripts/bench-mpi.sh [TRAINER]   (ROUNDS=3, REPS=60 by default)
set -euo pipefail
trainer=${1:-target/release/trainer}
rounds=${ROUNDS:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
steps_per_s() { tail -n 1 | sed -n 's/.*"steps_per_s":\([0-9.e+-]*\).*/\1/p'; }
bench() { # NAME NP ARGS...   (NP 0: a plain process, no mpirun)
  local name=$1 np=$2
  shift 2
  if [ "$np" = 0 ]; then
    "$trainer" bench "$@" | steps_per_s >>"$tmp/$name"
  else
    mpirun --oversubscribe -np "$np" "$trainer" bench "$@" | steps_per_s >>"$tmp/$name"
  fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
glyphs=(--problem glyphs-mini --model msr-conv --ways 5 --support 1 --queries 5 --tasks 8
  --augment-query --reps "${REPS:-60}")
rank1=(--problem rank1 --model msr-fc --tasks 32 --reps "$((${REPS:-60} * 10))")
# Four ways to run a step, alternated: a plain process with one shard (one backward pass:
# what a run without --shards does) and with S shards, then S shards under mpirun with one
# and two processes. (mpirun binds each process to a core: under it, one process cannot
# lend the second core to its batch generator.) S = 8 for glyphs, 2 for rank1 (its tasks
# are small: a shard's fixed costs dominate at 8).
for r in $(seq "$rounds"); do
  for fam in glyphs rank1; do
    if [ "$fam" = glyphs ]; then args=("${glyphs[@]}"); s=8; else args=("${rank1[@]}"); s=2; fi
    bench "$fam-plain-1" 0 "${args[@]}" --shards 1
    bench "$fam-plain-s" 0 "${args[@]}" --shards "$s"
    bench "$fam-np1" 1 "${args[@]}" --shards "$s"
    bench "$fam-np2" 2 "${args[@]}" --shards "$s"
    echo "round $r $fam (steps/s): plain 1 shard $(tail -n 1 "$tmp/$fam-plain-1"), plain $s shards $(tail -n 1 "$tmp/$fam-plain-s"), mpirun np 1 $(tail -n 1 "$tmp/$fam-np1"), np 2 $(tail -n 1 "$tmp/$fam-np2")"
  done
done
for fam in glyphs rank1; do
  p1=$(median <"$tmp/$fam-plain-1")
  ps=$(median <"$tmp/$fam-plain-s")
  n1=$(median <"$tmp/$fam-np1")
  n2=$(median <"$tmp/$fam-np2")
  best=$(printf '%s\n%s\n' "$p1" "$ps" | sort -g | tail -n 1)
  echo "$fam medians (steps/s): plain 1 shard $p1, plain S shards $ps, mpirun np 1 $n1, np 2 $n2; np 2 / np 1 $(echo "$n2 / $n1" | bc -l | cut -c1-5), np 2 / best plain process $(echo "$n2 / $best" | bc -l | cut -c1-5)"
done
