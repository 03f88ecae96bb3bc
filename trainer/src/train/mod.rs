//! The outer loop: exact second-order meta-gradients through the runtime's `adapt`, Adam,
//! evaluation through the runtime, checkpoints that survive a kill. One file per seam:
//! configuration, optimiser, batches, the trainer, the model file it writes, checkpoints,
//! evaluation, the bench.

mod adam;
mod batch;
mod bench;
mod checkpoint;
mod config;
mod error;
mod eval;
mod export;
mod fast;
#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod gn_run_tests;
pub mod normalize;
pub mod shard;
#[cfg(test)]
mod shard_tests;
#[cfg(test)]
mod tests;
mod trainer;

use adam::Adam;
use checkpoint::AdamState;
use error::io;

pub use batch::{DeviceBatch, train_batch, train_shards};
pub use bench::{BenchResult, ShardBench, bench_outer_step, bench_sharded, elapsed};
pub use config::{InnerKind, Normalize, TrainConfig};
pub use error::TrainError;
pub use eval::{
    EvalResult, PerOutput, evaluate, evaluate_on, evaluate_realtime, evaluate_realtime_refined,
    evaluate_references,
};
pub use export::{TRAINER_CONFIG, trained_config};
pub use fast::GradEngine;
pub use trainer::{StepTiming, Trainer};
