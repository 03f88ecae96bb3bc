//! The configuration of a training run: everything that defines it, checked ranges.

use msr_runtime::NetSpec;
use serde::{Deserialize, Serialize};

use crate::models::{self, ModelKind};
use crate::tasks::{Family, TaskSource};

/// Everything that defines a training run. Stored in checkpoints: a resumed run must
/// use the same configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Task family.
    pub problem: TaskSource,
    /// Meta-learner.
    pub model: ModelKind,
    /// MSR latent size.
    pub k: usize,
    /// Outer steps in total.
    pub steps: u64,
    /// Seed of initialisation and task sampling.
    pub seed: u64,
    /// Tasks per outer step (processed as one batch).
    pub tasks_per_step: usize,
    /// Inner SGD steps.
    pub inner_steps: usize,
    /// Initial inner learning rate (meta-learned per layer).
    pub inner_lr: f32,
    /// Adam learning rate of the outer loop.
    pub outer_lr: f64,
    /// Support examples per task.
    pub support: usize,
    /// Query examples per task.
    pub query: usize,
    /// Detach the inner gradient (first-order MAML) instead of the exact meta-gradient.
    pub first_order: bool,
    /// Classes per episode (classification families; 0 for regression).
    pub ways: usize,
    /// Augment the query examples of training episodes (Algorithm 2).
    pub augment_query: bool,
    /// Filters per conv block of the glyph nets.
    pub channels: usize,
}

impl TrainConfig {
    /// The paper's defaults for the family `problem` (a [`crate::tasks::Problem`] or a [`TaskSource`])
    /// and `model`.
    pub fn new(problem: impl Into<TaskSource>, model: ModelKind) -> Self {
        let problem = problem.into();
        TrainConfig {
            k: models::default_k(problem.problem()),
            problem,
            model,
            steps: 1000,
            seed: 0,
            tasks_per_step: 32,
            inner_steps: 1,
            inner_lr: 0.1,
            outer_lr: 1e-3,
            support: 1,
            query: 19,
            first_order: false,
            ways: 0,
            augment_query: false,
            channels: 32,
        }
    }

    /// Checks every numeric field against its range (a configuration from the command line
    /// or from a checkpoint file): one line naming the field, its value and the range.
    pub fn validate(&self) -> Result<(), String> {
        let limit = |name: &str, value: u128, lo: u128, hi: u128| {
            if value < lo || value > hi {
                Err(format!("{name} is {value}; it must be in [{lo}, {hi}]"))
            } else {
                Ok(())
            }
        };
        let inner_max = msr_runtime::spec::limits::MAX_INNER_STEPS as u128;
        limit("k", self.k as u128, 0, 1 << 20)?;
        limit("steps", self.steps as u128, 0, 1 << 40)?;
        limit("tasks_per_step", self.tasks_per_step as u128, 1, 1 << 16)?;
        limit("inner_steps", self.inner_steps as u128, 0, inner_max)?;
        limit("support", self.support as u128, 1, 1 << 20)?;
        limit("query", self.query as u128, 1, 1 << 20)?;
        limit("ways", self.ways as u128, 0, 1 << 12)?;
        limit("channels", self.channels as u128, 1, 1 << 12)?;
        if !self.inner_lr.is_finite() || self.inner_lr < 0.0 {
            return Err(format!(
                "inner_lr is {}; it must be finite and >= 0",
                self.inner_lr
            ));
        }
        if !self.outer_lr.is_finite() || self.outer_lr <= 0.0 {
            return Err(format!(
                "outer_lr is {}; it must be finite and > 0",
                self.outer_lr
            ));
        }
        Ok(())
    }

    /// The fields in which `other` differs from this configuration, as
    /// `name (this value vs other value)`.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).expect("a config serialises"),
            serde_json::to_value(other).expect("a config serialises"),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec![];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} ({v} vs {})", b.get(k).cloned().unwrap_or_default()))
            .collect()
    }

    /// The family (with its episode shape) and the network this configuration trains.
    pub fn family_and_spec(&self) -> Result<(Family, NetSpec, ModelKind), String> {
        let kind = self.model;
        let family =
            Family::from_source(&self.problem)?.with_episodes(self.ways, self.augment_query)?;
        let spec = if family.is_classification() {
            models::glyph_spec(kind, self.ways, self.channels)?
        } else {
            models::spec(kind, &family, self.k)?
        };
        Ok((family, spec, kind))
    }
}
