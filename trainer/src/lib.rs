//! msr trainer: meta-learns MSR symmetry matrices (and the MAML baselines) on task
//! families, evaluates them through the runtime, exports `.msr` model files.

pub mod baselines;
pub mod fastgrad;
pub mod inspect;
pub mod learner;
pub mod models;
pub mod predict;
pub mod rng;
pub mod run;
pub mod stats;
pub mod tasks;
pub mod train;
