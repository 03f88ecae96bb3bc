#!/usr/bin/env bash
# Distributed meta-training, checked end to end (CI runs it; needs a trainer built with
# --features msr-trainer/mpi and OpenMPI: apt-get install openmpi-bin libopenmpi-dev):
#  1. `mpirun -np 1` and `mpirun -np 2` write byte-identical model files and checkpoints,
#     and so does a plain single-process run with the same --shards;
#  2. a one-shard run continued (--resume) with --shards 4 gives the same files under
#     `mpirun -np 2` as in one process;
#  3. a rank killed mid-run ends the job with MPI's message and an intact checkpoint, and
#     resuming from it (with another process count) gives the uninterrupted run's model;
#  4. the demo (two training runs in one process) works with the MPI build.
# Usage: scripts/mpi-check.sh [TRAINER] [OUT]
set -euo pipefail
trainer=${1:-target/release/trainer}
out=${2:-target/mpi-check}
rm -rf "$out"
mkdir -p "$out"
# CI runs as root; two processes on two cores (or fewer) need --oversubscribe.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe)

echo "== byte-identical files for 1 and 2 processes"
common=(--problem rank1 --model msr-fc --tasks-per-step 8 --shards 4 --steps 200
  --eval-every 100 --eval-tasks 20 --checkpoint-every 50)
"${mpi[@]}" -np 1 "$trainer" train "${common[@]}" --out "$out/np1" 2>"$out/np1.log"
"${mpi[@]}" -np 2 "$trainer" train "${common[@]}" --out "$out/np2" 2>"$out/np2.log"
"$trainer" train "${common[@]}" --out "$out/plain" 2>"$out/plain.log"
for f in model.msr checkpoint.bin; do
  cmp "$out/np1/$f" "$out/np2/$f"
  cmp "$out/np1/$f" "$out/plain/$f"
done
grep -q "4 gradient shards over 2 process(es)" "$out/np2.log"
echo "identical: $(sha256sum "$out/np1/model.msr" | cut -c1-16)"

echo "== a one-shard run continued with more shards and processes"
# --shards on --resume: the same tasks and meta-gradient, summed in another order; from the
# switch on, the process count again does not change a byte.
one=(--problem rank1 --model msr-fc --tasks-per-step 8 --eval-every 100 --eval-tasks 20
  --checkpoint-every 50)
"$trainer" train "${one[@]}" --steps 100 --out "$out/grow" 2>"$out/grow.log"
cp -r "$out/grow" "$out/grow-plain"
"${mpi[@]}" -np 2 "$trainer" train "${one[@]}" --steps 200 --shards 4 --resume "$out/grow" 2>"$out/grow-np2.log"
"$trainer" train "${one[@]}" --steps 200 --shards 4 --resume "$out/grow-plain" 2>"$out/grow-plain2.log"
grep -q "gradient shards 1 -> 4" "$out/grow-np2.log"
grep -q "4 gradient shards over 2 process(es)" "$out/grow-np2.log"
for f in model.msr checkpoint.bin; do cmp "$out/grow/$f" "$out/grow-plain/$f"; done
[ "$(head -c 8 "$out/grow/checkpoint.bin")" = MSRCKPT3 ] || { echo "expected a sharded checkpoint"; exit 1; }
echo "continued with 4 shards over 2 processes: identical to 1 process"

echo "== a rank that fails alone ends the whole job (no hang)"
# Rank 0 cannot open its metrics file (a directory stands in its way); the other rank is
# already waiting in the step's gather: rank 0 must abort the job, not finalise and wait.
mkdir -p "$out/fails/metrics.jsonl"
set +e
timeout 120 "${mpi[@]}" -np 2 "$trainer" train "${common[@]}" --out "$out/fails" 2>"$out/fails.log"
rc=$?
set -e
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { echo "expected the job to fail fast, rc $rc"; cat "$out/fails.log"; exit 1; }
grep -q "error on rank 0 of 2" "$out/fails.log"
echo "failed fast (rc $rc): $(grep -m1 'error on rank' "$out/fails.log")"

echo "== a rank killed mid-run; resumed with 1 process; equal to the uninterrupted run"
glyphs=(--problem glyphs-mini --model msr-conv --ways 5 --support 1 --queries 5
  --tasks-per-step 8 --augment-query --channels 8 --shards 8 --steps 300 --eval-every 1000
  --eval-tasks 10 --checkpoint-every 50)
"$trainer" train "${glyphs[@]}" --out "$out/whole" 2>"$out/whole.log"
"${mpi[@]}" -np 2 "$trainer" train "${glyphs[@]}" --out "$out/killed" 2>"$out/killed.log" &
job=$!
# Wait for the step-100 checkpoint and a few steps more, then kill one rank.
for _ in $(seq 3000); do
  step=$(tail -n 1 "$out/killed/metrics.jsonl" 2>/dev/null | sed -n 's/.*"step":\([0-9]*\).*/\1/p' || true)
  [ "${step:-0}" -ge 120 ] && break
  sleep 0.05
done
trap 'kill "$job" 2>/dev/null || true' EXIT
[ "${step:-0}" -ge 120 ] && [ "${step:-0}" -lt 300 ] || { echo "the run was not mid-way: step ${step:-none}"; exit 1; }
# Either rank will do: the job must end and the checkpoint survive.
victim=$(pgrep -f "^$trainer train .*$out/killed" | tail -n 1 || true)
[ -n "$victim" ] || { echo "no rank to kill (did the job end already?)"; kill "$job" 2>/dev/null; exit 1; }
kill -9 "$victim"
if wait "$job"; then
  echo "the job survived a killed rank"
  exit 1
fi
grep -E "signal 9|SIGNAL: 9" "$out/killed.log"
"$trainer" train "${glyphs[@]}" --resume "$out/killed" 2>"$out/resumed.log"
grep -q "resuming $out/killed at step [1-9]" "$out/resumed.log"
cmp "$out/whole/model.msr" "$out/killed/model.msr"
cmp "$out/whole/checkpoint.bin" "$out/killed/checkpoint.bin"
echo "resumed after a killed rank: identical to the uninterrupted run"

echo "== the demo with the MPI build (two runs in one process: MPI initialised once)"
"$trainer" demo --steps 20 --out "$out/demo" >"$out/demo.log" 2>&1 || { cat "$out/demo.log"; exit 1; }
echo "demo ran"
