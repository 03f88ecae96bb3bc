//! msr runtime: load a model meta-learned by *Meta-Learning Symmetries by
//! Reparameterization* (Zhou, Knowles, Finn, ICLR 2021), adapt its filter parameters v to a
//! new task from a few examples, predict.
//!
//! Each layer's weight is `W = reshape(U v)`: the symmetry matrix U (a weight-sharing
//! pattern) is frozen; only v (and biases) adapt. The whole inner loop is written as plain
//! burn tensor ops with a hand-written gradient ([`Net::loss_and_grad`]), so the trainer can
//! run the very same code on an autodiff device to get exact second-order meta-gradients.
//!
//! - [`spec`]: architectures and shapes (no tensors);
//! - [`Net`]: forward, loss, gradient, adapt on a device;
//! - [`format`]: the `.msr` model file;
//! - [`Model`]: a loaded model.

pub mod burn_session;
#[cfg(test)]
mod conformance;
pub mod device;
#[cfg(test)]
mod engine_tests;
pub mod gn;
mod layer;
pub mod model;
pub mod net;
#[cfg(test)]
mod test_support;

// The model file, the spec, the errors and the real-time engine live in msr-core (no burn,
// no_std); they are re-exported here so that `msr_runtime::spec::...` keeps working.
pub use msr_core::{error, format, frame, realtime, spec};

/// The burn types this crate's [`Model`] API takes and returns (tensors, devices, element
/// types): under a module of their own, not at the crate's root, so that what msr itself
/// defines stays apart from what a burn upgrade may change; use them from here to stay on
/// the burn msr was built with.
pub mod tensor {
    pub use burn::tensor::{DType, Device, Tensor, TensorData};
}
pub use error::{DataError, DivergedError, Error, FormatError, ShapeError, StateError};
pub use format::{ModelInfo, ModelRecord};
pub use model::Model;
pub use net::{LayerParams, MetaParams, Net, TaskParams};
pub use spec::{Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op};
