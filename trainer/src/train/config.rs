//! The configuration of a training run: everything that defines it, checked ranges.

use msr_runtime::{Activation, NetSpec};
use serde::{Deserialize, Serialize};

use crate::models::{self, Arch, ModelKind};
use crate::tasks::{Family, TaskSource};

use super::TrainError;

/// Everything that defines a training run. Stored in checkpoints: a resumed run must
/// use the same configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Task family.
    pub problem: TaskSource,
    /// Meta-learner.
    pub model: ModelKind,
    /// MSR latent size (of every layer, unless `k_per_layer` is given).
    pub k: usize,
    /// MSR latent size of each layer (msr-mlp; empty: `k` everywhere).
    pub k_per_layer: Vec<usize>,
    /// Hidden widths of the multilayer perceptrons (msr-mlp, maml-mlp, anil-mlp, msr-head).
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer.
    pub activation: Activation,
    /// Adapted biases on every layer of a regression model.
    pub bias: bool,
    /// Standardise inputs and (regression) targets with statistics of the training tasks,
    /// stored in the model file.
    pub normalize: Normalize,
    /// Outer steps in total.
    pub steps: u64,
    /// Seed of initialisation and task sampling.
    pub seed: u64,
    /// Tasks per outer step (processed as one batch).
    pub tasks_per_step: usize,
    /// Inner steps (SGD or Gauss-Newton).
    pub inner_steps: usize,
    /// The inner-loop algorithm meta-trained through.
    pub inner: InnerKind,
    /// Initial damping of every layer (Gauss-Newton; meta-learned, as its log).
    pub damping: f32,
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
            k_per_layer: Vec::new(),
            hidden: if model.is_mlp() {
                vec![64, 64]
            } else {
                Vec::new()
            },
            activation: Activation::Relu,
            bias: true,
            normalize: Normalize::default_for(&problem),
            problem,
            model,
            steps: 1000,
            seed: 0,
            tasks_per_step: 32,
            inner_steps: 1,
            inner: InnerKind::Sgd,
            damping: 1.0,
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
    pub fn validate(&self) -> Result<(), TrainError> {
        self.check_ranges().map_err(TrainError::Config)
    }

    /// [`validate`]'s work, its errors as messages.
    fn check_ranges(&self) -> Result<(), String> {
        let limit = |name: &str, value: u128, lo: u128, hi: u128| {
            if value < lo || value > hi {
                Err(format!("{name} is {value}; it must be in [{lo}, {hi}]"))
            } else {
                Ok(())
            }
        };
        let inner_max = msr_runtime::spec::limits::MAX_INNER_STEPS as u128;
        limit("k", self.k as u128, 0, 1 << 20)?;
        for &k in &self.k_per_layer {
            limit("k (per layer)", k as u128, 1, 1 << 20)?;
        }
        limit("hidden layers", self.hidden.len() as u128, 0, 16)?;
        for &h in &self.hidden {
            limit("hidden width", h as u128, 1, 1 << 16)?;
        }
        limit("steps", self.steps as u128, 0, 1 << 40)?;
        limit("tasks_per_step", self.tasks_per_step as u128, 1, 1 << 16)?;
        limit("inner_steps", self.inner_steps as u128, 0, inner_max)?;
        limit("support", self.support as u128, 1, 1 << 20)?;
        limit("query", self.query as u128, 1, 1 << 20)?;
        limit("ways", self.ways as u128, 0, 1 << 12)?;
        limit("channels", self.channels as u128, 1, 1 << 12)?;
        if !(self.damping.is_finite() && self.damping > 0.0 && self.damping.ln().abs() <= 30.0) {
            return Err(format!(
                "damping is {}; it must be positive, between e^-30 and e^30",
                self.damping
            ));
        }
        if self.inner != InnerKind::Sgd && self.model == ModelKind::ProtoNet {
            return Err("prototypical networks have no inner loop (leave --inner at sgd)".into());
        }
        if self.inner != InnerKind::Sgd && self.first_order {
            return Err(
                "first-order meta-gradients are for SGD (the inner loop is Gauss-Newton)".into(),
            );
        }
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
    pub fn family_and_spec(&self) -> Result<(Family, NetSpec, ModelKind), TrainError> {
        let kind = self.model;
        let family =
            Family::from_source(&self.problem)?.with_episodes(self.ways, self.augment_query)?;
        let spec = if family.is_classification() {
            models::glyph_spec(kind, self.ways, self.channels)?
        } else {
            models::spec(kind, &family, &self.arch())?
        };
        Ok((family, spec, kind))
    }

    /// The architecture choices of a regression model.
    pub fn arch(&self) -> Arch {
        Arch {
            k: if self.k_per_layer.is_empty() {
                vec![self.k]
            } else {
                self.k_per_layer.clone()
            },
            hidden: self.hidden.clone(),
            activation: self.activation,
            bias: self.bias,
        }
    }
}

/// The inner-loop algorithm (`--inner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InnerKind {
    /// SGD with meta-learned per-layer learning rates.
    Sgd,
    /// Damped Gauss-Newton with meta-learned per-layer dampings.
    GaussNewton,
    /// SGD with meta-learned per-layer learning rates, then one damped Gauss-Newton step on
    /// the same support set from where SGD ended (the prior centred there), every moved
    /// parameter damped by the run's fixed `damping` (not meta-learned). The model file is
    /// an SGD model with a `refine` record saying so: every real-time session (libmsr's
    /// `msr_session_adapt`, `trainer eval`) adapts it so by default (docs/adaptation.md).
    SgdThenGaussNewton,
}

impl std::str::FromStr for InnerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(InnerKind::Sgd),
            "gn" => Ok(InnerKind::GaussNewton),
            "sgd+gn" => Ok(InnerKind::SgdThenGaussNewton),
            other => Err(format!(
                "unknown inner algorithm '{other}' (available: sgd, gn, sgd+gn)"
            )),
        }
    }
}

/// Whether a run standardises its data (`--normalize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalize {
    /// Raw values.
    None,
    /// Per-feature mean and standard deviation of the training tasks (regression: inputs
    /// and targets; classification: nothing, its inputs are images in [0, 1]).
    Standard,
}

impl Normalize {
    /// The default for a family: standard for data in raw units (task files, cartpole,
    /// the robots);
    /// none for the paper's synthetic families, whose inputs are N(0, 1) by construction
    /// and whose models are convolutional in structure (per-position statistics would
    /// break the very translation symmetry they are to learn), and for classification.
    pub fn default_for(source: &TaskSource) -> Self {
        match source.problem() {
            p if p.is_vector_regression() => Normalize::Standard,
            _ => Normalize::None,
        }
    }
}

impl std::str::FromStr for Normalize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Normalize::None),
            "standard" => Ok(Normalize::Standard),
            other => Err(format!(
                "unknown normalisation '{other}' (available: none, standard)"
            )),
        }
    }
}
