//! msr-core: what a robot needs to run a meta-learned MSR model, and nothing else.
//!
//! - [`spec`]: architectures and shapes, and the documented [`spec::limits`];
//! - [`format`]: the `.msr` model file (a fixed header, a postcard body, a CRC-32), every
//!   field validated before anything is allocated from it;
//! - [`realtime`]: the allocation-free, lock-free CPU engine: sessions that adapt the
//!   filter parameters v (`W = reshape(U v)`, U frozen) to a few examples and predict;
//! - [`engine`]: the contract every session backend implements;
//! - [`error`]: typed errors.
//!
//! `#![no_std]` with `alloc`: memory is allocated when a model is loaded and when a session
//! is created, never by adapt or predict. The `std` feature (default) adds reading model
//! files from disk and run-time selection of AVX2+FMA kernels. The burn-based path (the
//! trainer's differentiable network and GPU sessions) lives in `msr-runtime`, above this
//! crate.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod engine;
pub mod error;
pub mod format;
pub mod frame;
mod math;
pub mod realtime;
pub mod spec;
#[cfg(test)]
mod test_models;
#[cfg(test)]
mod test_rng;

pub use error::{DataError, DivergedError, Error, FormatError, ShapeError, StateError};
pub use format::{ModelInfo, ModelRecord};
pub use spec::{Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op};
