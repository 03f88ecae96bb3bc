//! Model records for the unit tests: a net with every parameter filled by the caller.

use alloc::vec::Vec;

use crate::format::{LayerRecord, ModelInfo, ModelRecord};
use crate::spec::NetSpec;

/// A record of `net` (valid shapes), every parameter vector `values(len)`, every layer's
/// learning rate `lr`, one inner step, no extension record.
pub fn record(net: NetSpec, mut values: impl FnMut(usize) -> Vec<f32>, lr: f32) -> ModelRecord {
    let shapes = net.shapes().unwrap();
    let layers = shapes
        .params
        .iter()
        .map(|l| LayerRecord {
            shared: l.shared.iter().map(|[r, c]| values(r * c)).collect(),
            adapted0: l.adapted.iter().map(|&n| values(n)).collect(),
            lr,
        })
        .collect();
    ModelRecord {
        info: ModelInfo {
            name: "test".into(),
            task_family: "test".into(),
            inner_steps: 1,
            trainer_version: "test".into(),
        },
        net,
        layers,
        ext: Default::default(),
    }
}
