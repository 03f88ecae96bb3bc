//! The outer step's speed, measured.

use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use super::*;

/// Seconds since `start`.
pub fn elapsed(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Timing of one outer step.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Median milliseconds per outer step.
    pub median_ms: f64,
    /// 10th percentile.
    pub p10_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
}

/// Times `reps` outer steps (after 20 warm-up steps) on pre-generated batches, so that only
/// the meta-gradient and the update (and, for burn, the batch's upload; for the fast
/// engine, its standardisation) are timed. `engine`: the run's default if `None`.
pub fn bench_outer_step(
    config: TrainConfig,
    device: Device,
    reps: usize,
    engine: Option<GradEngine>,
) -> Result<BenchResult, TrainError> {
    let mut t = Trainer::on_device(config, device)?;
    if let Some(e) = engine {
        t.set_engine(e)?;
    }
    let fam = t.family().clone();
    let batches: Vec<crate::tasks::Batch> = (0..8u64)
        .map(|s| {
            let ids = fam.train_ids(t.config.seed, s, t.config.tasks_per_step);
            fam.batch(&ids, t.config.support, t.config.query)
        })
        .collect();
    for i in 0..20 {
        t.meta_step_host(&batches[i % batches.len()]);
    }
    let mut ms: Vec<f64> = (0..reps.max(1))
        .map(|i| {
            let start = Instant::now();
            t.meta_step_host(&batches[i % batches.len()]);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    Ok(BenchResult {
        median_ms: q(0.5),
        p10_ms: q(0.1),
        p90_ms: q(0.9),
    })
}

/// Throughput of sharded outer steps over this process's [`Collective`](super::shard::Collective).
#[derive(Clone, Debug, Serialize)]
pub struct ShardBench {
    /// Processes.
    pub processes: usize,
    /// Shards per step.
    pub shards: usize,
    /// Outer steps per second, batch generation (on a second thread, as in training),
    /// gradients and the gather included.
    pub steps_per_s: f64,
    /// Milliseconds of one shard's gradient (forward, inner loop, backward), median.
    pub shard_ms: f64,
    /// Bytes of gradients each process receives per step (every shard's).
    pub gathered_bytes: usize,
    /// Milliseconds per step in the gather, median.
    pub gather_ms: f64,
}

/// Runs `warmup` then `steps` sharded outer steps of `config` with `shards` shards over
/// `collective` (as `trainer train --shards` does, files aside) and times them.
pub fn bench_sharded(
    config: TrainConfig,
    shards: usize,
    collective: Box<dyn super::shard::Collective>,
    warmup: u64,
    steps: u64,
) -> Result<ShardBench, TrainError> {
    let mut t = Trainer::new(config)?;
    t.set_shards(shards)?;
    t.set_collective(collective);
    let (rank, size) = (t.collective().rank(), t.collective().size());
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let producer = {
        let (family, cfg) = (t.family().clone(), t.config.clone());
        std::thread::spawn(move || {
            for step in 0..warmup + steps {
                if tx
                    .send(train_shards(&family, &cfg, step, shards, rank, size))
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut start = Instant::now();
    let (mut shard_ms, mut gather_ms) = (Vec::new(), Vec::new());
    for step in 0..warmup + steps {
        if step == warmup {
            start = Instant::now();
        }
        let batches = rx
            .recv()
            .map_err(|_| TrainError::Config("the batch generator stopped".into()))?;
        let (_, timing) = t.outer_step_shards_timed(&batches)?;
        if step >= warmup {
            shard_ms.extend(timing.shard_ms);
            gather_ms.push(timing.gather_ms);
        }
    }
    let wall = elapsed(start);
    drop(rx);
    producer
        .join()
        .map_err(|_| TrainError::Config("the batch generator panicked".into()))?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let params: usize = t
        .params
        .tensors()
        .iter()
        .map(|p| p.dims()[0] * p.dims()[1])
        .sum();
    Ok(ShardBench {
        processes: size,
        shards,
        steps_per_s: steps as f64 / wall.max(1e-9),
        shard_ms: median(shard_ms),
        gathered_bytes: shards * (4 * params + 8),
        gather_ms: median(gather_ms),
    })
}
