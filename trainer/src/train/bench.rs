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
/// the meta-gradient and the update are timed.
pub fn bench_outer_step(
    config: TrainConfig,
    device: Device,
    reps: usize,
) -> Result<BenchResult, TrainError> {
    let mut t = Trainer::on_device(config, device)?;
    let fam = t.family().clone();
    let batches: Vec<DeviceBatch> = (0..8u64)
        .map(|s| {
            let ids = fam.train_ids(t.config.seed, s, t.config.tasks_per_step);
            let mut b = fam.batch(&ids, t.config.support, t.config.query);
            if let Some(n) = &t.normalizer {
                super::normalize::apply(n, &mut b);
            }
            DeviceBatch::new(&b, fam.input_len(), fam.output_len(), t.net.device())
        })
        .collect();
    for i in 0..20 {
        t.meta_step(&batches[i % batches.len()]);
    }
    let mut ms: Vec<f64> = (0..reps.max(1))
        .map(|i| {
            let start = Instant::now();
            t.meta_step(&batches[i % batches.len()]);
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
