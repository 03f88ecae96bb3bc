//! `trainer bench`: the outer step's speed (exact against first order, same process) or,
//! with `--shards`, the throughput of sharded steps over the processes of an MPI job.

use msr_trainer::models::ModelKind;
use msr_trainer::tasks::{Family, TaskSource};
use msr_trainer::train::TrainConfig;

use super::train::{EpisodeArgs, split_sizes};
use crate::*;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Task family (as for train).
    #[arg(long, default_value = "rank1")]
    pub(crate) problem: TaskSource,
    /// Model.
    #[arg(long, default_value = "msr-fc")]
    pub(crate) model: ModelKind,
    /// Tasks per outer step.
    #[arg(long, default_value_t = 32)]
    pub(crate) tasks: usize,
    /// Timed repetitions (after 20 warm-up steps).
    #[arg(long, default_value_t = 200)]
    pub(crate) reps: usize,
    /// Where to compute: cpu, gpu or gpu:N.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Training throughput of sharded steps instead: this many shards per step over the
    /// processes of the job (run it under `mpirun -np N`, feature `mpi`); reports outer
    /// steps per second, per-shard compute and the gathered bytes. On the CPU.
    #[arg(long)]
    pub(crate) shards: Option<usize>,
    /// Support examples per task (shots per class on glyphs), for --shards.
    #[arg(long, default_value_t = 1)]
    pub(crate) support: usize,
    #[command(flatten)]
    pub(crate) episodes: EpisodeArgs,
    /// Augment the training queries (glyphs), for --shards.
    #[arg(long)]
    pub(crate) augment_query: bool,
    /// The meta-gradient's engine (fast or burn) [default: fast where it applies]
    #[arg(long)]
    pub(crate) engine: Option<msr_trainer::train::GradEngine>,
}

pub(crate) fn bench(args: BenchArgs) -> Result<()> {
    match args {
        BenchArgs {
            shards: Some(shards),
            problem,
            model,
            tasks,
            reps,
            support,
            episodes,
            augment_query,
            ..
        } => {
            let family = Family::from_source(&problem)?;
            let mut c = TrainConfig::new(problem.clone(), model);
            c.tasks_per_step = tasks;
            (c.support, c.query) = split_sizes(&family, support, episodes)?;
            if family.is_classification() {
                c.ways = episodes.ways;
                c.augment_query = augment_query;
            } else if augment_query {
                return Err("--augment-query is for the classification families (glyphs)".into());
            }
            let collective = msr_trainer::train::shard::process_collective();
            let rank = collective.rank();
            let r = msr_trainer::train::bench_sharded(c, shards, collective, 5, reps as u64)?;
            if rank == 0 {
                println!(
                    "{problem} {model}, {tasks} tasks per step in {shards} shards over {} process(es): {:.2} outer steps/s ({reps} steps after 5 warm-up); {:.2} ms per shard (median), gather {:.3} ms per step (median), {} bytes gathered per step",
                    r.processes, r.steps_per_s, r.shard_ms, r.gather_ms, r.gathered_bytes
                );
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        BenchArgs {
            problem,
            model,
            tasks,
            reps,
            device,
            engine,
            ..
        } => {
            let device = msr_runtime::device::by_name(&device)?;
            let mut c = TrainConfig::new(problem.clone(), model);
            c.tasks_per_step = tasks;
            let mut fo = c.clone();
            fo.first_order = true;
            // Both in this process, interleaved in rounds, so machine noise hits both alike.
            let (mut exact, mut first) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                exact.push(msr_trainer::train::bench_outer_step(
                    c.clone(),
                    device.clone(),
                    reps / 5,
                    engine,
                )?);
                first.push(msr_trainer::train::bench_outer_step(
                    fo.clone(),
                    device.clone(),
                    reps / 5,
                    engine,
                )?);
            }
            let med = |rs: &[msr_trainer::train::BenchResult]| {
                let mut m: Vec<f64> = rs.iter().map(|r| r.median_ms).collect();
                m.sort_by(f64::total_cmp);
                (m[m.len() / 2], m[0], m[m.len() - 1])
            };
            let (e, elo, ehi) = med(&exact);
            let (f, flo, fhi) = med(&first);
            println!(
                "{problem} {model}, {tasks} tasks per outer step, {} engine, median ms per step (5 rounds of {} steps; range of round medians)",
                engine.map_or_else(|| "default".to_string(), |e| e.to_string()),
                reps / 5
            );
            println!("  exact second order: {e:.3} ms ({elo:.3}..{ehi:.3})");
            println!("  first order:        {f:.3} ms ({flo:.3}..{fhi:.3})");
            println!("  ratio exact / first order: {:.2}", e / f);
            Ok(())
        }
    }
}
