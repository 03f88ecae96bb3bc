//! The tasks of each outer step, and their upload to a device.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::tasks::{Batch, Family};

use super::*;

/// The training tasks of outer step `step`: a pure function of the family, the seed and the
/// step, so a resumed run sees the same tasks as an uninterrupted one.
pub fn train_batch(family: &Family, config: &TrainConfig, step: u64) -> Batch {
    let ids = family.train_ids(config.seed, step, config.tasks_per_step);
    family.batch(&ids, config.support, config.query)
}

/// The tasks of the shards rank `rank` of `size` computes at outer step `step` (one batch
/// per shard, in shard order; see [`super::shard`]): each task is generated from its id,
/// so a shard's batch is the same whichever rank makes it.
pub fn train_shards(
    family: &Family,
    config: &TrainConfig,
    step: u64,
    shards: usize,
    rank: usize,
    size: usize,
) -> Vec<Batch> {
    let ids = family.train_ids(config.seed, step, config.tasks_per_step);
    super::shard::owned(shards, rank, size)
        .map(|s| {
            let r = super::shard::shard_range(ids.len(), shards, s);
            family.batch(&ids[r], config.support, config.query)
        })
        .collect()
}

/// A host copy of one batch, uploaded as `[T, N, F]` tensors.
pub struct DeviceBatch {
    /// Support inputs.
    pub xs: Tensor<3>,
    /// Support targets.
    pub ys: Tensor<3>,
    /// Query inputs.
    pub xq: Tensor<3>,
    /// Query targets.
    pub yq: Tensor<3>,
}

impl DeviceBatch {
    /// Uploads `b` to `device` in f32.
    pub fn new(b: &Batch, fin: usize, fout: usize, device: &Device) -> Self {
        let t = |v: &Vec<f32>, n: usize, f: usize| {
            Tensor::from_data(
                TensorData::new(v.clone(), [b.tasks, n, f]),
                (device, DType::F32),
            )
        };
        DeviceBatch {
            xs: t(&b.xs, b.support, fin),
            ys: t(&b.ys, b.support, fout),
            xq: t(&b.xq, b.query, fin),
            yq: t(&b.yq, b.query, fout),
        }
    }
}
