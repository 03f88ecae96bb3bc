#!/bin/bash
# Meta-trains glyph classifiers on 4 nodes x 16 cores with Slurm: one MPI process per core,
# every process computing its share of each step's 64 gradient shards (docs/scale.md).
# The run directory must be on a filesystem every node sees (rank 0 writes it; a resume
# reads the checkpoint on every rank). A rank that dies ends the step (--kill-on-bad-exit);
# requeued, the job resumes from the last checkpoint. Submit: sbatch examples/cluster/slurm.sh
#SBATCH --job-name=msr-glyphs
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=16
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=msr-glyphs-%j.log
#SBATCH --requeue
set -euo pipefail
# One thread per process: the processes are the parallelism.
export RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1
run=${RUN:-$HOME/msr-runs/glyphs-5way-1shot}
args=(--problem glyphs --model msr-conv --ways 5 --support 1 --queries 5
  --tasks-per-step 64 --shards 64 --augment-query --steps 20000
  --eval-every 500 --eval-tasks 300 --checkpoint-every 100)
if [ -e "$run/checkpoint.bin" ]; then
  # Requeued or restarted: continue from the last checkpoint, with any process count.
  srun --mpi=pmix --kill-on-bad-exit=1 target/release/trainer train "${args[@]}" --resume "$run"
else
  srun --mpi=pmix --kill-on-bad-exit=1 target/release/trainer train "${args[@]}" --out "$run"
fi
