//! The model file a run writes: its record (the learned parameters, the solver or refine
//! record the inner loop asks for, the standardisation, the run's configuration), and the
//! configuration read back from a file.

use msr_runtime::format::{
    Extension, Extensions, ModelInfo, ModelRecord, Normalizer, Refine, Solver,
};
use msr_runtime::model::record_from_params;

use super::*;

impl Trainer {
    /// Which layers the inner loop moves.
    pub(super) fn moved(&self) -> Vec<bool> {
        let n = self.params.layers.len();
        self.params
            .layers
            .iter()
            .enumerate()
            .map(|(l, lp)| !lp.adapted0.is_empty() && self.kind.adapts(l, n))
            .collect()
    }

    /// The current model, as a record ready to save.
    pub fn record(&self) -> ModelRecord {
        let mut layers = record_from_params(&self.params);
        let solver = (self.config.inner == InnerKind::GaussNewton).then(|| {
            let moved = self.moved();
            // Clamped to the file's +-30, as the steps use them.
            let log_damping = layers
                .iter()
                .zip(&moved)
                .map(|(l, m)| if *m { l.lr.clamp(-30.0, 30.0) } else { 0.0 })
                .collect();
            for (l, m) in layers.iter_mut().zip(&moved) {
                l.lr = if *m { 1.0 } else { 0.0 };
            }
            Solver { log_damping }
        });
        ModelRecord {
            info: ModelInfo {
                name: format!("{}-{}", self.source_name(), self.config.model),
                task_family: self.config.problem.to_string(),
                inner_steps: self.config.inner_steps as u32,
                trainer_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            net: self.net.spec().clone(),
            layers,
            ext: Extensions {
                normalizer: self.normalizer.clone(),
                solver,
                // Meta-trained through one fixed-damping Gauss-Newton step after SGD: every
                // reader's sessions adapt so by default.
                refine: (self.config.inner == InnerKind::SgdThenGaussNewton).then_some(Refine {
                    steps: 1,
                    damping: self.config.damping,
                }),
                unknown: vec![Extension {
                    name: TRAINER_CONFIG.into(),
                    required: false,
                    body: serde_json::to_vec(&self.config).expect("a config serialises"),
                }],
            },
        }
    }

    /// A short name of the task source: a task file's stem (`npz:logs/flights.npz` is
    /// `flights`), else the family's name.
    fn source_name(&self) -> String {
        match &self.config.problem {
            crate::tasks::TaskSource::Npz(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "npz".into()),
            other => other.to_string(),
        }
    }

    /// The standardisation of the data, if the run has one.
    pub fn normalizer(&self) -> Option<&Normalizer> {
        self.normalizer.as_ref()
    }
}

/// The name of the optional extension record holding the run's configuration (JSON), so
/// that `trainer eval` can report what a model was trained with. Readers other than the
/// trainer skip it.
pub const TRAINER_CONFIG: &str = "trainer-config";

/// The configuration a model was trained with, if its file records it.
pub fn trained_config(record: &ModelRecord) -> Option<TrainConfig> {
    record
        .ext
        .unknown
        .iter()
        .find(|e| e.name == TRAINER_CONFIG)
        .and_then(|e| serde_json::from_slice(&e.body).ok())
}
