//! The real-time CPU engine: adapt and predict with no heap allocation and no lock.
//!
//! burn's per-op dispatch costs tens of microseconds, more than a whole rank1 adaptation
//! should take, so a robot's control loop runs this engine instead:
//! plain f32 loops over buffers allocated once, when a [`Session`] is created. Weights are
//! materialised (`W = reshape(U v)`) once after each adaptation, so `predict` is a plain
//! forward pass. The math is the same as the burn path's in `msr-runtime` (`Net`), which
//! tests it against this engine for every layer kind, in f32.
//!
//! Examples are processed in chunks of the session's capacity, so any number of examples
//! works without allocating; gradients are summed over chunks.
//!
//! The parts, along the seams of the computation:
//! - this module: compiling a [`ModelRecord`] into an [`RtModel`] (validated, weights
//!   transposed for the kernels, convolution gather indices), the memory a session needs;
//! - [`session`]: a task's buffers, adapt (with rollback), predict;
//! - [`state`]: the saved-state encoding;
//! - `weights`: materialising `W = reshape(U v)` (dense and Kronecker) and its backward;
//! - `layers`: per-layer forward and backward;
//! - `kernels`: the vectorised inner loops.

use alloc::format;
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::error::{DataError, Error, ShapeError};
use crate::format::ModelRecord;
use crate::spec::{Activation, ConvSharing, Loss, Op};

mod activation;
pub mod cost;
mod denormals;
pub mod gemm;
pub mod gn;
mod kernels;
mod layers;
#[cfg(test)]
mod op_tests;
pub mod session;
pub mod state;
mod weights;

pub use crate::engine::Engine;
pub use cost::{CallCosts, Cost};
pub use gn::{Inner, MAX_GN_PARAMS};
pub use session::Session;
pub use state::{check_state, encode_state, state_values};

use kernels::all_finite;
use state::STATE_HEADER;
use weights::materialize;

/// Default number of examples processed per chunk.
pub const DEFAULT_CAPACITY: usize = 32;
/// The largest chunk capacity a session may be created with.
pub const MAX_CAPACITY: usize = 1 << 16;
/// Examples per batch of Jacobian rows of a dense net: each layer's `U` is read once per
/// batch (a support set of 20 in one).
const JACOBIAN_BATCH: usize = 32;
/// The most floats of a batch's scratch (`z_j` and backpropagated outputs): the batch
/// shrinks to fit.
const JACOBIAN_SCRATCH: usize = 1 << 20;

/// Batches of Jacobian rows of a dense net ([`RtModel::dense_jacobian`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct JacobianPlan {
    /// Examples per batch.
    pub(crate) batch: usize,
    /// Floats per example of `z_j = reshape(U e_j) h` for every moved `U` layer.
    pub(crate) z: usize,
    /// Floats per example of its outputs' gradients through the widest layer.
    pub(crate) delta: usize,
}

/// The most memory one session may allocate ([`RtModel::session_bytes`]): 1 GiB.
pub const MAX_SESSION_BYTES: u64 = 1 << 30;

/// A zeroed buffer of `n` floats, or [`Error::OutOfMemory`] instead of an abort.
pub(crate) fn zeros(n: usize, what: &'static str) -> Result<Vec<f32>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what,
        bytes: n as u128 * 4,
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// A copy of `src`, or [`Error::OutOfMemory`] instead of an abort.
pub(crate) fn copy_of(src: &[f32], what: &'static str) -> Result<Vec<f32>, Error> {
    let mut v = zeros(src.len(), what)?;
    v.copy_from_slice(src);
    Ok(v)
}

/// Checks that a buffer holds `n` (at least one) examples of `per` floats, with checked
/// arithmetic: an `n` whose product wraps is an overflow, not a 20-digit length.
pub fn check_len(what: &'static str, len: usize, n: usize, per: usize) -> Result<(), Error> {
    if n == 0 {
        return Err(DataError::Empty(what).into());
    }
    let Some(expected) = n.checked_mul(per) else {
        return Err(DataError::Shape(crate::error::overflow(what, n, per)).into());
    };
    if len != expected {
        return Err(DataError::Shape(ShapeError::Mismatch {
            what: format!("{what} length ({n} examples x {per})"),
            expected: expected.to_string(),
            got: len.to_string(),
        })
        .into());
    }
    Ok(())
}

/// An adaptation whose support loss exceeds `EXPLODE_FACTOR` times the initial loss (plus
/// `EXPLODE_SLACK`) is treated as diverged and rolled back (see [`exploded`]).
const EXPLODE_FACTOR: f32 = 1e3;
const EXPLODE_SLACK: f32 = 1.0;

/// The rollback policy every engine applies to an adaptation's support loss: `loss` is
/// non-finite, or exploded relative to `initial`, the loss before adapting (a NaN
/// `initial`, as with zero steps, checks finiteness only). An adaptation for which this is
/// true, or that leaves any parameter or weight non-finite, is rolled back and reported as
/// [`Error::Diverged`].
pub fn exploded(initial: f32, loss: f32) -> bool {
    !loss.is_finite() || loss > initial * EXPLODE_FACTOR + EXPLODE_SLACK
}

#[derive(Debug)]
pub(crate) enum Kind {
    Reshape,
    Dense {
        inputs: usize,
        outputs: usize,
    },
    Patches {
        gather: Vec<u32>,
        in_channels: usize,
        out_channels: usize,
        in_positions: usize,
        positions: usize,
        taps: usize,
        local: bool,
    },
}

/// How the weight is generated from the first adapted vector.
#[derive(Debug)]
pub(crate) enum Weights {
    /// W = adapted vector.
    Plain,
    /// W = U v, stored transposed: `ut` row-major `[k, rows]`, so that materialising
    /// (sum of k scaled columns) and its backward (k dot products) run over long,
    /// contiguous, vectorisable rows even when k is tiny.
    /// `umax` is the largest `|U_ij|`: it bounds `|W|` by `umax * sum |v_j|` without
    /// materialising W.
    Dense {
        ut: Vec<f32>,
        rows: usize,
        umax: f32,
    },
    /// W = (A ⊗ B ⊗ C) v.
    Kron {
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
        dims: [usize; 6], // o, i, s, ka, kb, kc
    },
}

#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) kind: Kind,
    pub(crate) weights: Weights,
    pub(crate) activation: Activation,
    pub(crate) weight_len: usize,
    pub(crate) in_len: usize,
    pub(crate) out_len: usize,
    pub(crate) adapted0: Vec<Vec<f32>>,
    pub(crate) lr: f32,
    /// The initial weight `W = reshape(U v0)` (empty for a layer without parameters):
    /// resetting a session copies it instead of reading U again.
    pub(crate) w0: Vec<f32>,
}

/// A frozen model prepared for the real-time engine. Immutable; share it across threads
/// (it is `Send + Sync`) and create one [`Session`] per task or thread.
#[derive(Debug)]
pub struct RtModel {
    pub(crate) layers: Vec<Layer>,
    pub(crate) loss: Loss,
    pub(crate) input_len: usize,
    pub(crate) output_len: usize,
    pub(crate) inner_steps: usize,
    /// Standardisation of inputs and outputs (the model's `normalize` record).
    pub(crate) normalizer: Option<crate::format::Normalizer>,
    /// Per-layer Gauss-Newton damping (the model's `solver` record; 1 without one), and
    /// whether sessions adapt by Gauss-Newton by default.
    pub(crate) damping: Vec<f32>,
    pub(crate) gauss_newton: bool,
    /// Gauss-Newton steps after the SGD ones and their damping (the model's `refine`
    /// record): how its sessions adapt by default.
    pub(crate) refine: Option<(usize, f32)>,
    /// CRC-32 of the model record, to tie saved session states to their model.
    pub(crate) fingerprint: u32,
    /// Per layer, whether Gauss-Newton moves it (it adapts, and its learning-rate slot is
    /// not 0).
    pub(crate) gn_moved: Vec<bool>,
}

impl RtModel {
    /// Prepares a validated model record. Its fingerprint is the CRC trailer
    /// [`ModelRecord::to_bytes`] writes; for a record read from a file, prefer
    /// [`RtModel::with_fingerprint`] with that file's own trailer.
    pub fn new(record: &ModelRecord) -> Result<Arc<Self>, Error> {
        Self::build(record, None)
    }

    /// Prepares a record decoded from a model file whose CRC trailer is `fingerprint`
    /// ([`crate::format::trailer`]): states saved for that file, whatever its format
    /// version, load into sessions of this model.
    pub fn with_fingerprint(record: &ModelRecord, fingerprint: u32) -> Result<Arc<Self>, Error> {
        Self::build(record, Some(fingerprint))
    }

    fn build(record: &ModelRecord, fingerprint: Option<u32>) -> Result<Arc<Self>, Error> {
        let _flush = denormals::FlushDenormals::new();
        record.validate()?;
        let shapes = record.net.shapes()?;
        let mut layers = Vec::with_capacity(record.net.layers.len());
        for (i, (spec, rec)) in record.net.layers.iter().zip(&record.layers).enumerate() {
            let input = &shapes.activations[i];
            let output = &shapes.activations[i + 1];
            let kind = match &spec.op {
                Op::ShareLinear {
                    inputs, outputs, ..
                }
                | Op::Linear {
                    inputs, outputs, ..
                } => Kind::Dense {
                    inputs: *inputs,
                    outputs: *outputs,
                },
                Op::ShareConv { geom, .. }
                | Op::Conv { geom, .. }
                | Op::LocallyConnected1d { geom, .. } => Kind::Patches {
                    gather: geom
                        .gather_index(input.spatial(), output.spatial())
                        .map_err(|_| Error::OutOfMemory {
                            what: "a convolution's gather index",
                            bytes: output.spatial_numel() as u128 * geom.kernel_area() as u128 * 4,
                        })?,
                    in_channels: geom.in_channels,
                    out_channels: geom.out_channels,
                    in_positions: input.spatial_numel(),
                    positions: output.spatial_numel(),
                    taps: geom.kernel_area(),
                    local: matches!(spec.op, Op::LocallyConnected1d { .. }),
                },
                Op::Flatten => Kind::Reshape,
            };
            let weights = match &spec.op {
                Op::ShareLinear { k, .. }
                | Op::ShareConv {
                    sharing: ConvSharing::Dense { k },
                    ..
                } => {
                    let u = &rec.shared[0];
                    let rows = u.len() / k;
                    let mut ut = zeros(u.len(), "a symmetry matrix")?;
                    for r in 0..rows {
                        for j in 0..*k {
                            ut[j * rows + r] = u[r * k + j];
                        }
                    }
                    let umax = u.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                    Weights::Dense { ut, rows, umax }
                }
                Op::ShareConv {
                    geom,
                    sharing: ConvSharing::Kronecker { ka, kb, kc },
                    ..
                } => Weights::Kron {
                    a: copy_of(&rec.shared[0], "a symmetry matrix")?,
                    b: copy_of(&rec.shared[1], "a symmetry matrix")?,
                    c: copy_of(&rec.shared[2], "a symmetry matrix")?,
                    dims: [
                        geom.out_channels,
                        geom.in_channels,
                        geom.kernel_area(),
                        *ka,
                        *kb,
                        *kc,
                    ],
                },
                _ => Weights::Plain,
            };
            let weight_len = match &weights {
                Weights::Plain => rec.adapted0.first().map_or(0, Vec::len),
                Weights::Dense { rows, .. } => *rows,
                Weights::Kron { dims, .. } => dims[0] * dims[1] * dims[2],
            };
            layers.push(Layer {
                kind,
                weights,
                activation: spec.activation,
                weight_len,
                in_len: input.numel(),
                out_len: output.numel(),
                adapted0: rec
                    .adapted0
                    .iter()
                    .map(|v| copy_of(v, "initial parameters"))
                    .collect::<Result<_, _>>()?,
                lr: rec.lr,
                w0: Vec::new(),
            });
        }
        let gn_moved = layers
            .iter()
            .map(|l| l.lr != 0.0 && !l.adapted0.is_empty())
            .collect();
        let mut model = RtModel {
            gn_moved,
            layers,
            loss: record.net.loss,
            input_len: shapes.activations[0].numel(),
            output_len: shapes.activations.last().expect("non-empty").numel(),
            inner_steps: record.info.inner_steps as usize,
            damping: match &record.ext.solver {
                Some(sv) => sv
                    .log_damping
                    .iter()
                    .map(|d| crate::math::exp(*d))
                    .collect(),
                None => alloc::vec![1.0; record.net.layers.len()],
            },
            gauss_newton: record.ext.solver.is_some(),
            refine: record
                .ext
                .refine
                .as_ref()
                .map(|r| (r.steps as usize, r.damping)),
            normalizer: match &record.ext.normalizer {
                Some(n) => Some(crate::format::Normalizer {
                    input: n.input.as_ref().map(copy_stats).transpose()?,
                    output: n.output.as_ref().map(copy_stats).transpose()?,
                }),
                None => None,
            },
            // The model file's own CRC (not a CRC over the file, trailer included: that is
            // the same constant for every file).
            fingerprint: fingerprint.unwrap_or_else(|| record.file_crc()),
        };
        // The session the file asks for (its algorithm and steps, the default capacity)
        // must keep every call within the compute limit; checked before the weights are
        // materialised, which costs as much as a state call (bounded by the same check).
        let inner = model.default_inner();
        // (Where Gauss-Newton cannot be switched on at all, sessions say so at creation;
        // the other calls are checked as SGD's.)
        let costs = model
            .call_costs(DEFAULT_CAPACITY, inner, model.inner_steps)
            .or_else(|| model.call_costs(DEFAULT_CAPACITY, Inner::Sgd, model.inner_steps));
        if let Some(costs) = costs {
            costs.check()?;
        }
        // The initial weights W = reshape(U v0) must be finite: finite U and v0 can still
        // overflow f32 in the product, and a model that predicts infinity is no model.
        let max_kron = kron_scratch_len(&model.layers);
        let (mut s0, mut s1) = (
            zeros(max_kron, "materialisation scratch")?,
            zeros(max_kron, "materialisation scratch")?,
        );
        for (i, layer) in model.layers.iter_mut().enumerate() {
            if let Some(v0) = layer.adapted0.first() {
                let mut w = zeros(layer.weight_len, "an initial weight")?;
                materialize(&layer.weights, v0, &mut w, &mut s0, &mut s1);
                if !all_finite(&w) {
                    return Err(crate::error::FormatError::NonFinite(format!(
                        "layer {i} initial weight reshape(U v0) (it overflows f32)"
                    ))
                    .into());
                }
                layer.w0 = w;
            }
        }
        Ok(Arc::new(model))
    }

    /// The algorithm a session of this model adapts with unless told otherwise.
    pub fn default_inner(&self) -> Inner {
        if self.gauss_newton {
            Inner::GaussNewton { damping: 1.0 }
        } else if let Some((steps, damping)) = self.refine {
            Inner::SgdThenGaussNewton { damping, steps }
        } else {
            Inner::Sgd
        }
    }

    /// Scalars per input example.
    pub fn input_len(&self) -> usize {
        self.input_len
    }
    /// Scalars per output example.
    pub fn output_len(&self) -> usize {
        self.output_len
    }
    /// The loss adaptation minimises.
    pub fn loss(&self) -> Loss {
        self.loss
    }
    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }
    /// Inner steps the model was meta-trained with.
    pub fn inner_steps(&self) -> usize {
        self.inner_steps
    }
    /// Whether the model was meta-trained to adapt by Gauss-Newton (its sessions then do by
    /// default).
    pub fn gauss_newton(&self) -> bool {
        self.gauss_newton
    }
    /// The Gauss-Newton steps after the SGD ones and their damping, if the model was
    /// meta-trained through them (its `refine` record; its sessions then adapt so by
    /// default: [`Inner::SgdThenGaussNewton`]).
    pub fn refine(&self) -> Option<(usize, f32)> {
        self.refine
    }
    /// Number of adapted scalars per task (v and biases of every layer).
    pub fn adapted_len(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.adapted0.iter().map(Vec::len))
            .sum()
    }
    /// Number of adapted scalars Gauss-Newton moves: those of the layers whose learning-rate
    /// slot is not 0.
    pub fn gauss_newton_len(&self) -> usize {
        self.gn_moved().1
    }
    /// Bytes of a saved session state ([`Session::save_state`]).
    pub fn state_len(&self) -> usize {
        STATE_HEADER + 4 * self.adapted_len() + 4
    }
}

fn copy_stats(s: &crate::format::Standardize) -> Result<crate::format::Standardize, Error> {
    Ok(crate::format::Standardize {
        mean: copy_of(&s.mean, "normalisation statistics")?,
        scale: copy_of(&s.scale, "normalisation statistics")?,
    })
}

/// Floats of the Kronecker scratch buffers a model's layers need (0 without Kronecker layers).
pub(crate) fn kron_scratch_len(layers: &[Layer]) -> usize {
    layers
        .iter()
        .map(|l| match l.weights {
            Weights::Kron {
                dims: [o, i, s, ka, kb, kc],
                ..
            } => (o.max(ka) * i.max(kb) * s.max(kc)).max(1),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

impl RtModel {
    /// Bytes a [`Session`] with this chunk `capacity` allocates, computed without
    /// allocating (so a robot can reserve it, and a session over [`MAX_SESSION_BYTES`] is
    /// refused before anything is allocated). `None` if the size overflows.
    pub fn session_bytes(&self, capacity: usize) -> Option<u128> {
        let cap = capacity as u128;
        let adapted = self.adapted_len() as u128;
        let weights: u128 = self.layers.iter().map(|l| l.weight_len as u128).sum();
        let acts: u128 =
            self.input_len as u128 + self.layers.iter().map(|l| l.out_len as u128).sum::<u128>();
        let max_act = self
            .layers
            .iter()
            .map(|l| l.in_len.max(l.out_len))
            .max()
            .unwrap_or(1) as u128;
        // GELU layers keep their pre-activations for the backward pass.
        let pre: u128 = self
            .layers
            .iter()
            .filter(|l| l.activation == Activation::Gelu)
            .map(|l| l.out_len as u128)
            .sum();
        let targets = if self.output_normalized() {
            self.output_len as u128
        } else {
            0
        };
        let floats = 3 * adapted
            + 2 * weights
            + cap.checked_mul(acts + pre + targets)?
            + 2 * cap.checked_mul(max_act)?
            + 2 * self.max_patch() as u128
            + 2 * kron_scratch_len(&self.layers) as u128;
        // A model meta-trained for Gauss-Newton (alone or after SGD) switches it on in
        // every session.
        let gn = if self.gauss_newton || self.refine.is_some() {
            self.gn_bytes(capacity)
        } else {
            0
        };
        floats.checked_mul(4).map(|b| b + gn)
    }

    /// Whether targets and predictions are standardised (the session then needs a buffer
    /// for standardised targets).
    pub(crate) fn output_normalized(&self) -> bool {
        self.normalizer.as_ref().is_some_and(|n| n.output.is_some())
    }

    /// The standardisation of the model's outputs (and targets), if it has one.
    pub(crate) fn output_stats(&self) -> Option<&crate::format::Standardize> {
        self.normalizer.as_ref().and_then(|n| n.output.as_ref())
    }

    /// The model's standardisation of inputs and outputs, if it has one.
    pub fn normalizer(&self) -> Option<&crate::format::Normalizer> {
        self.normalizer.as_ref()
    }

    /// Bytes [`Session::set_inner`] allocates to switch Gauss-Newton on in a session of
    /// this `capacity` (0 when it would refuse).
    pub fn gn_bytes(&self, capacity: usize) -> u128 {
        let p: usize = self
            .layers
            .iter()
            .filter(|l| l.lr != 0.0)
            .flat_map(|l| l.adapted0.iter().map(Vec::len))
            .sum();
        let (primal, dual_rows) = gn::forms(p, capacity, self.output_len);
        if !primal && dual_rows == 0 {
            0
        } else {
            let moved: Vec<bool> = self.layers.iter().map(|l| l.lr != 0.0).collect();
            let plan = self.dense_jacobian(capacity, &moved);
            gn::GnBuffers::bytes(p, self.output_len, primal, dual_rows, plan)
        }
    }

    /// How a net of dense layers gets the rows of its Jacobian, in batches of examples
    /// (`Session::dense_rows`): `None` unless every layer is dense, Gauss-Newton moves some
    /// layer, and every layer it moves has `W = reshape(U v)` or plain weights.
    pub(crate) fn dense_jacobian(&self, capacity: usize, moved: &[bool]) -> Option<JacobianPlan> {
        let dense = self.layers.iter().zip(moved).all(|(l, m)| {
            matches!(l.kind, Kind::Dense { .. })
                && (!m || matches!(l.weights, Weights::Dense { .. } | Weights::Plain))
        });
        if !dense || !moved.iter().any(|m| *m) {
            return None;
        }
        let z = self
            .layers
            .iter()
            .zip(moved)
            .filter(|(_, m)| **m)
            .map(|(l, _)| match &l.weights {
                Weights::Dense { ut, rows, .. } => ut.len() / rows.max(&1) * l.out_len,
                _ => 0,
            })
            .sum();
        let widest = self.layers.iter().map(|l| l.in_len.max(l.out_len)).max()?;
        let delta = self.output_len * widest;
        let mut batch = capacity.min(JACOBIAN_BATCH);
        while batch > 1 && batch * (z + 2 * delta) > JACOBIAN_SCRATCH {
            batch /= 2;
        }
        Some(JacobianPlan { batch, z, delta })
    }

    pub(crate) fn max_patch(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l.kind {
                Kind::Patches {
                    in_channels, taps, ..
                } => in_channels * taps,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

impl RtModel {
    /// The model file's CRC: saved states carry it, so a state is never loaded into
    /// another model.
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }
}

impl Engine for Session {
    fn input_len(&self) -> usize {
        self.model().input_len()
    }
    fn adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        Session::adapt(self, x, y, n)
    }
    fn predict(&mut self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), Error> {
        Session::predict(self, x, n, out)
    }
    fn reset(&mut self) {
        Session::reset(self)
    }
    fn save_state(&self, buf: &mut [u8]) -> Result<usize, Error> {
        Session::save_state(self, buf)
    }
    fn load_state(&mut self, buf: &[u8]) -> Result<(), Error> {
        Session::load_state(self, buf)
    }
    fn set_inner(&mut self, inner: Inner) -> Option<Result<(), Error>> {
        Some(Session::set_inner(self, inner))
    }
    fn observe(&mut self, x: &[f32], y: &[f32], n: usize) -> Option<Result<(), Error>> {
        Some(Session::observe(self, x, y, n))
    }
    fn set_forgetting(&mut self, gamma: f32) -> Option<Result<(), Error>> {
        Some(Session::set_forgetting(self, gamma))
    }
    fn costs(&self) -> Option<CallCosts> {
        Some(Session::costs(self))
    }
    fn adapt_cost_at(&self, n: usize) -> Option<u128> {
        Some(Session::adapt_cost_at(self, n))
    }
    /// `steps` steps of the session's algorithm from the current parameters; for SGD then
    /// Gauss-Newton, `steps` Gauss-Newton steps (the refinement alone).
    fn refine(
        &mut self,
        x: &[f32],
        y: &[f32],
        n: usize,
        steps: usize,
    ) -> Option<Result<f32, Error>> {
        let (kept, inner) = (self.inner_steps, self.inner);
        if let Inner::SgdThenGaussNewton { damping, .. } = inner {
            // The buffers exist (allocated when it was switched on): no allocation.
            self.inner = Inner::GaussNewton { damping };
        }
        self.inner_steps = steps;
        let result = Session::refine(self, x, y, n);
        (self.inner_steps, self.inner) = (kept, inner);
        Some(result)
    }
}
