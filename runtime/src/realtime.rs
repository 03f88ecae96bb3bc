//! The real-time CPU engine: adapt and predict with no heap allocation and no lock.
//!
//! burn's per-op dispatch costs tens of microseconds (DESIGN.md section 6), more than a
//! whole rank1 adaptation should take, so a robot's control loop runs this engine instead:
//! plain f32 loops over buffers allocated once, when a [`Session`] is created. Weights are
//! materialised (`W = reshape(U v)`) once after each adaptation, so `predict` is a plain
//! forward pass. The math is the same as [`crate::Net`]'s (tested against it in f32).
//!
//! Examples are processed in chunks of the session's capacity, so any number of examples
//! works without allocating; gradients are summed over chunks.

use std::sync::Arc;

use multiversion::multiversion;

use crate::error::{DataError, DivergedError, Error, ShapeError, StateError};
use crate::format::ModelRecord;
use crate::spec::{Activation, ConvSharing, Loss, Op};

/// Default number of examples processed per chunk.
pub const DEFAULT_CAPACITY: usize = 32;
/// The largest chunk capacity a session may be created with.
pub const MAX_CAPACITY: usize = 1 << 16;
/// The most memory one session may allocate ([`RtModel::session_bytes`]): 1 GiB.
pub const MAX_SESSION_BYTES: u64 = 1 << 30;

/// A zeroed buffer of `n` floats, or [`Error::OutOfMemory`] instead of an abort.
fn zeros(n: usize, what: &'static str) -> Result<Vec<f32>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what,
        bytes: n as u128 * 4,
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// A copy of `src`, or [`Error::OutOfMemory`] instead of an abort.
fn copy_of(src: &[f32], what: &'static str) -> Result<Vec<f32>, Error> {
    let mut v = zeros(src.len(), what)?;
    v.copy_from_slice(src);
    Ok(v)
}

/// Whether every value is finite. Branch-free so that it vectorises: `x * 0` is 0 for a
/// finite x and NaN for NaN or infinity, and NaN survives the sum.
#[multiversion(targets("x86_64+avx2+fma"))]
fn all_finite(xs: &[f32]) -> bool {
    let mut acc = [0.0f32; 8];
    let (chunks, rest) = xs.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l] * 0.0;
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for x in rest {
        s += x * 0.0;
    }
    s == 0.0
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

/// An adaptation whose final support loss exceeds `EXPLODE_FACTOR` times the initial loss
/// (plus `EXPLODE_SLACK`) is treated as diverged and rolled back.
pub const EXPLODE_FACTOR: f32 = 1e3;
const EXPLODE_SLACK: f32 = 1.0;

#[derive(Debug)]
enum Kind {
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
enum Weights {
    /// W = adapted vector.
    Plain,
    /// W = U v, stored transposed: `ut` row-major `[k, rows]`, so that materialising
    /// (sum of k scaled columns) and its backward (k dot products) run over long,
    /// contiguous, vectorisable rows even when k is tiny.
    Dense { ut: Vec<f32>, rows: usize },
    /// W = (A ⊗ B ⊗ C) v.
    Kron {
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
        dims: [usize; 6], // o, i, s, ka, kb, kc
    },
}

#[derive(Debug)]
struct Layer {
    kind: Kind,
    weights: Weights,
    relu: bool,
    weight_len: usize,
    in_len: usize,
    out_len: usize,
    adapted0: Vec<Vec<f32>>,
    lr: f32,
}

/// A frozen model prepared for the real-time engine. Immutable; share it across threads
/// (it is `Send + Sync`) and create one [`Session`] per task or thread.
#[derive(Debug)]
pub struct RtModel {
    layers: Vec<Layer>,
    loss: Loss,
    input_len: usize,
    output_len: usize,
    inner_steps: usize,
    /// CRC-32 of the model record, to tie saved session states to their model.
    fingerprint: u32,
}

impl RtModel {
    /// Prepares a validated model record.
    pub fn new(record: &ModelRecord) -> Result<Arc<Self>, Error> {
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
                    gather: {
                        let positions = output.spatial_numel();
                        let taps = geom.kernel_area();
                        let mut g = Vec::new();
                        g.try_reserve_exact(positions * taps)
                            .map_err(|_| Error::OutOfMemory {
                                what: "a convolution's gather index",
                                bytes: positions as u128 * taps as u128 * 4,
                            })?;
                        g.extend(geom.gather_index(input.spatial(), output.spatial()));
                        g
                    },
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
                    Weights::Dense { ut, rows }
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
                relu: spec.activation == Activation::Relu,
                weight_len,
                in_len: input.numel(),
                out_len: output.numel(),
                adapted0: rec.adapted0.clone(),
                lr: rec.lr,
            });
        }
        // The initial weights W = reshape(U v0) must be finite: finite U and v0 can still
        // overflow f32 in the product, and a model that predicts infinity is no model.
        let max_kron = kron_scratch_len(&layers);
        let (mut s0, mut s1) = (
            zeros(max_kron, "materialisation scratch")?,
            zeros(max_kron, "materialisation scratch")?,
        );
        for (i, layer) in layers.iter().enumerate() {
            if let Some(v0) = layer.adapted0.first() {
                let mut w = zeros(layer.weight_len, "an initial weight")?;
                materialize(&layer.weights, v0, &mut w, &mut s0, &mut s1);
                if !all_finite(&w) {
                    return Err(crate::error::FormatError::NonFinite(format!(
                        "layer {i} initial weight reshape(U v0) (it overflows f32)"
                    ))
                    .into());
                }
            }
        }
        Ok(Arc::new(RtModel {
            layers,
            loss: record.net.loss,
            input_len: shapes.activations[0].numel(),
            output_len: shapes.activations.last().expect("non-empty").numel(),
            inner_steps: record.info.inner_steps as usize,
            // The model file's own CRC (not a CRC over the file, trailer included: that is
            // the same constant for every file).
            fingerprint: {
                let bytes = record.to_bytes();
                u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"))
            },
        }))
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
    /// Number of adapted scalars per task (v and biases of every layer).
    pub fn adapted_len(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.adapted0.iter().map(Vec::len))
            .sum()
    }
    /// Bytes of a saved session state ([`Session::save_state`]).
    pub fn state_len(&self) -> usize {
        STATE_HEADER + 4 * self.adapted_len() + 4
    }
}

/// Floats of the Kronecker scratch buffers a model's layers need (0 without Kronecker layers).
fn kron_scratch_len(layers: &[Layer]) -> usize {
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
        let floats = 3 * adapted
            + 2 * weights
            + cap.checked_mul(acts)?
            + 2 * cap.checked_mul(max_act)?
            + 2 * self.max_patch() as u128
            + 2 * kron_scratch_len(&self.layers) as u128;
        floats.checked_mul(4)
    }

    fn max_patch(&self) -> usize {
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

/// One task's adapted state and the buffers to adapt and predict without allocating.
/// Use from one thread at a time (it is `Send`, not shared).
#[derive(Debug)]
pub struct Session {
    model: Arc<RtModel>,
    capacity: usize,
    /// Per layer: adapted vectors (v or W, then bias).
    adapted: Vec<Vec<Vec<f32>>>,
    /// Copy taken before an adaptation, for rollback.
    backup: Vec<Vec<Vec<f32>>>,
    /// Per layer: gradients of the adapted vectors.
    grads: Vec<Vec<Vec<f32>>>,
    /// Per layer: the materialised weight, and the gradient with respect to it.
    w: Vec<Vec<f32>>,
    dw: Vec<Vec<f32>>,
    /// Activations at every layer boundary, `[capacity, len]` each.
    acts: Vec<Vec<f32>>,
    /// Two gradient buffers, `[capacity, max len]`.
    da: Vec<f32>,
    db: Vec<f32>,
    /// One patch (`[C * K]`) and its gradient; Kronecker scratch.
    patch: Vec<f32>,
    dpatch: Vec<f32>,
    scratch: [Vec<f32>; 2],
    /// Inner steps per adaptation and the scale applied to every layer's lr.
    pub inner_steps: usize,
    /// Multiplies every layer's learned inner learning rate.
    pub lr_scale: f32,
}

impl Session {
    /// A session at the meta-learned initialisation, with buffers for `capacity` examples per
    /// chunk (1 to [`MAX_CAPACITY`]). All allocation happens here, and fails with a status
    /// rather than an abort: a session over [`MAX_SESSION_BYTES`] is refused before anything
    /// is allocated, and a failed allocation is [`Error::OutOfMemory`].
    pub fn new(model: Arc<RtModel>, capacity: usize) -> Result<Self, Error> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(DataError::Shape(ShapeError::OverLimit {
                what: format!("session capacity {capacity} (examples per chunk; at least 1)"),
                value: Some(capacity as u128),
                limit: MAX_CAPACITY as u64,
            })
            .into());
        }
        let bytes = model.session_bytes(capacity);
        if bytes.is_none_or(|b| b > MAX_SESSION_BYTES as u128) {
            return Err(DataError::Shape(ShapeError::OverLimit {
                what: format!(
                    "memory of a session with capacity {capacity} (bytes; try a smaller capacity)"
                ),
                value: bytes,
                limit: MAX_SESSION_BYTES,
            })
            .into());
        }
        let vectors = |what| -> Result<Vec<Vec<Vec<f32>>>, Error> {
            model
                .layers
                .iter()
                .map(|l| l.adapted0.iter().map(|v| copy_of(v, what)).collect())
                .collect()
        };
        let adapted = vectors("adapted parameters")?;
        let backup = vectors("adapted parameters")?;
        let grads = vectors("gradients")?;
        let weights = |what| -> Result<Vec<Vec<f32>>, Error> {
            model
                .layers
                .iter()
                .map(|l| zeros(l.weight_len, what))
                .collect()
        };
        let w = weights("weights")?;
        let dw = weights("weight gradients")?;
        let mut acts = vec![zeros(capacity * model.input_len, "activations")?];
        for l in &model.layers {
            acts.push(zeros(capacity * l.out_len, "activations")?);
        }
        let max_act = model
            .layers
            .iter()
            .map(|l| l.in_len.max(l.out_len))
            .max()
            .unwrap_or(1);
        let max_patch = model.max_patch();
        let max_kron = kron_scratch_len(&model.layers);
        let mut s = Session {
            capacity,
            backup,
            adapted,
            grads,
            w,
            dw,
            acts,
            da: zeros(capacity * max_act, "activation gradients")?,
            db: zeros(capacity * max_act, "activation gradients")?,
            patch: zeros(max_patch, "patches")?,
            dpatch: zeros(max_patch, "patches")?,
            scratch: [
                zeros(max_kron, "Kronecker scratch")?,
                zeros(max_kron, "Kronecker scratch")?,
            ],
            inner_steps: model.inner_steps,
            lr_scale: 1.0,
            model,
        };
        s.materialize_all();
        Ok(s)
    }

    /// The model.
    pub fn model(&self) -> &Arc<RtModel> {
        &self.model
    }

    /// Back to the meta-learned initialisation.
    pub fn reset(&mut self) {
        for (l, layer) in self.adapted.iter_mut().zip(&self.model.layers) {
            for (v, v0) in l.iter_mut().zip(&layer.adapted0) {
                v.copy_from_slice(v0);
            }
        }
        self.materialize_all();
    }

    fn materialize_all(&mut self) {
        for i in 0..self.model.layers.len() {
            let layer = &self.model.layers[i];
            let Some(v) = self.adapted[i].first() else {
                continue;
            };
            let [s0, s1] = &mut self.scratch;
            materialize(&layer.weights, v, &mut self.w[i], s0, s1);
        }
    }

    fn check(&self, what: &'static str, data: &[f32], n: usize, per: usize) -> Result<(), Error> {
        check_len(what, data.len(), n, per)?;
        if !all_finite(data) {
            return Err(DataError::NonFinite(what).into());
        }
        Ok(())
    }

    /// Predicts `out` `[n, output_len]` for `x` `[n, input_len]`. Allocation-free.
    pub fn predict(&mut self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), Error> {
        self.check("inputs", x, n, self.model.input_len)?;
        let fo = self.model.output_len;
        check_len("output buffer", out.len(), n, fo)?;
        let fi = self.model.input_len;
        let mut start = 0;
        while start < n {
            let m = (n - start).min(self.capacity);
            self.forward_chunk(&x[start * fi..(start + m) * fi], m);
            let last = self.acts.last().expect("non-empty");
            out[start * fo..(start + m) * fo].copy_from_slice(&last[..m * fo]);
            start += m;
        }
        if !all_finite(out) {
            return Err(Error::NonFiniteOutput);
        }
        Ok(())
    }

    /// Mean support loss of the current parameters. Allocation-free.
    pub fn loss(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        self.check("inputs", x, n, self.model.input_len)?;
        self.check("targets", y, n, self.model.output_len)?;
        Ok(self.pass(x, y, n, false))
    }

    /// Adapts the meta-learned initialisation to a support set (as at meta-training time):
    /// `x` `[n, input_len]`, `y` `[n, output_len]` (for cross-entropy models, one-hot rows),
    /// `inner_steps` SGD steps. Returns the support loss after adapting. If the loss turns
    /// non-finite or explodes, the previous parameters are restored and
    /// [`Error::Diverged`] says so. Allocation-free.
    pub fn adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        self.adapt_impl(x, y, n, true)
    }

    /// Like [`Session::adapt`], but continues from the current parameters.
    pub fn refine(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        self.adapt_impl(x, y, n, false)
    }

    fn adapt_impl(
        &mut self,
        x: &[f32],
        y: &[f32],
        n: usize,
        from_init: bool,
    ) -> Result<f32, Error> {
        self.check("inputs", x, n, self.model.input_len)?;
        self.check("targets", y, n, self.model.output_len)?;
        for (b, a) in self.backup.iter_mut().zip(&self.adapted) {
            for (bv, av) in b.iter_mut().zip(a) {
                bv.copy_from_slice(av);
            }
        }
        if from_init {
            self.reset();
        }
        // Each gradient pass also yields the loss at the current parameters, so a check
        // costs one extra forward pass in all: after the last step.
        let mut initial = f32::NAN;
        for step in 1..=self.inner_steps {
            let before = self.pass(x, y, n, true);
            if step == 1 {
                initial = before;
            }
            self.sgd_step();
            let loss = if step == self.inner_steps {
                self.pass(x, y, n, false)
            } else {
                before
            };
            // NaN propagates through every op (ReLU included), so a non-finite parameter
            // shows in the loss; the final check of the parameters themselves is a cheap
            // guarantee that no NaN is ever kept (and so ever saved).
            let nonfinite_params =
                step == self.inner_steps && !self.adapted.iter().flatten().all(|v| all_finite(v));
            if !loss.is_finite()
                || !before.is_finite()
                || loss > initial * EXPLODE_FACTOR + EXPLODE_SLACK
                || nonfinite_params
            {
                self.restore_backup();
                return Err(DivergedError {
                    step,
                    loss: loss as f64,
                    initial: initial as f64,
                    nonfinite_params,
                }
                .into());
            }
            if step == self.inner_steps {
                return Ok(loss);
            }
        }
        // Zero inner steps: report the loss of the parameters as they are; a non-finite
        // one is reported (and the reset undone) like any other.
        let loss = self.pass(x, y, n, false);
        if !loss.is_finite() {
            self.restore_backup();
            return Err(DivergedError {
                step: 0,
                loss: loss as f64,
                initial: loss as f64,
                nonfinite_params: false,
            }
            .into());
        }
        Ok(loss)
    }

    /// Back to the parameters saved at the start of the adaptation.
    fn restore_backup(&mut self) {
        for (a, b) in self.adapted.iter_mut().zip(&self.backup) {
            for (av, bv) in a.iter_mut().zip(b) {
                av.copy_from_slice(bv);
            }
        }
        self.materialize_all();
    }

    fn sgd_step(&mut self) {
        for (i, layer) in self.model.layers.iter().enumerate() {
            let lr = layer.lr * self.lr_scale;
            for (v, g) in self.adapted[i].iter_mut().zip(&self.grads[i]) {
                for (vj, gj) in v.iter_mut().zip(g) {
                    *vj -= lr * gj;
                }
            }
        }
        self.materialize_all();
    }

    /// Forward over all chunks; returns the mean loss. With `grad`, also accumulates the
    /// gradients of the adapted parameters into `self.grads`.
    fn pass(&mut self, x: &[f32], y: &[f32], n: usize, grad: bool) -> f32 {
        if grad {
            for g in self.grads.iter_mut().flatten() {
                g.fill(0.0);
            }
            for d in &mut self.dw {
                d.fill(0.0);
            }
        }
        let (fi, fo) = (self.model.input_len, self.model.output_len);
        let mut total = 0.0f64;
        let mut start = 0;
        while start < n {
            let m = (n - start).min(self.capacity);
            self.forward_chunk(&x[start * fi..(start + m) * fi], m);
            let yc = &y[start * fo..(start + m) * fo];
            total += self.loss_chunk(yc, m, n, grad);
            if grad {
                self.backward_chunk(m);
            }
            start += m;
        }
        if grad {
            for i in 0..self.model.layers.len() {
                if self.adapted[i].is_empty() {
                    continue;
                }
                let layer = &self.model.layers[i];
                let [s0, s1] = &mut self.scratch;
                let (g_main, _) = self.grads[i].split_first_mut().expect("non-empty");
                weights_backward(&layer.weights, &self.dw[i], g_main, s0, s1);
            }
        }
        (total / n as f64) as f32
    }

    /// Sum over the chunk of per-example losses; with `grad`, writes dL/d(output) (for the
    /// mean over all `n` examples) into `self.da`.
    fn loss_chunk(&mut self, y: &[f32], m: usize, n: usize, grad: bool) -> f64 {
        let fo = self.model.output_len;
        let out = &self.acts.last().expect("non-empty")[..m * fo];
        let mut total = 0.0f64;
        match self.model.loss {
            Loss::Mse => {
                let scale = 2.0 / (n * fo) as f32;
                for (j, (o, t)) in out.iter().zip(y).enumerate() {
                    let d = o - t;
                    total += (d * d) as f64 / fo as f64;
                    if grad {
                        self.da[j] = d * scale;
                    }
                }
            }
            Loss::CrossEntropy => {
                for r in 0..m {
                    let z = &out[r * fo..(r + 1) * fo];
                    let t = &y[r * fo..(r + 1) * fo];
                    let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = z.iter().map(|v| (v - max).exp()).sum();
                    let log_sum = max + sum.ln();
                    let mass: f32 = t.iter().sum();
                    total += z
                        .iter()
                        .zip(t)
                        .map(|(zi, ti)| (ti * (log_sum - zi)) as f64)
                        .sum::<f64>();
                    if grad {
                        for c in 0..fo {
                            let p = (z[c] - log_sum).exp();
                            self.da[r * fo + c] = (p * mass - t[c]) / n as f32;
                        }
                    }
                }
            }
        }
        total
    }

    fn forward_chunk(&mut self, x: &[f32], m: usize) {
        self.acts[0][..x.len()].copy_from_slice(x);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (before, after) = self.acts.split_at_mut(i + 1);
            let input = &before[i][..m * layer.in_len];
            let out = &mut after[0][..m * layer.out_len];
            let bias = self.adapted[i].get(1).map(Vec::as_slice);
            forward(layer, &self.w[i], bias, input, out, m, &mut self.patch);
            if layer.relu {
                // Not `max(0)`: that turns NaN into 0 and hides a divergence.
                for v in out.iter_mut() {
                    if *v < 0.0 {
                        *v = 0.0;
                    }
                }
            }
        }
    }

    fn backward_chunk(&mut self, m: usize) {
        // self.da holds dL/d(output of the last layer).
        let first_param = self.adapted.iter().position(|a| !a.is_empty()).unwrap_or(0);
        for i in (0..self.model.layers.len()).rev() {
            let layer = &self.model.layers[i];
            let out = &self.acts[i + 1][..m * layer.out_len];
            let dz = &mut self.da[..m * layer.out_len];
            if layer.relu {
                for (d, o) in dz.iter_mut().zip(out) {
                    if *o <= 0.0 {
                        *d = 0.0;
                    }
                }
            }
            let need_dx = i > first_param;
            let input = &self.acts[i][..m * layer.in_len];
            let dx = &mut self.db[..m * layer.in_len];
            // The weight gradient goes to dw (then through weights_backward); the bias
            // gradient straight to its slot.
            let dbias = self.grads[i].get_mut(1);
            backward(
                layer,
                &self.w[i],
                input,
                dz,
                &mut self.dw[i],
                dbias.map(|b| b.as_mut_slice()),
                need_dx.then_some(dx),
                m,
                &mut self.patch,
                &mut self.dpatch,
            );
            if !need_dx {
                break;
            }
            std::mem::swap(&mut self.da, &mut self.db);
        }
    }

    /// Writes the adapted parameters to `buf` (at least [`RtModel::state_len`] bytes); see
    /// [`encode_state`]. Returns the bytes written.
    pub fn save_state(&self, buf: &mut [u8]) -> Result<usize, Error> {
        encode_state(
            self.model.fingerprint,
            self.adapted.iter().flatten().flatten().copied(),
            self.model.adapted_len(),
            buf,
        )
    }

    /// Restores parameters saved by [`Session::save_state`] for the same model. On any error
    /// the session is left as it was. Allocation-free.
    pub fn load_state(&mut self, buf: &[u8]) -> Result<(), Error> {
        check_state(self.model.fingerprint, self.model.adapted_len(), buf)?;
        for (dst, v) in self
            .adapted
            .iter_mut()
            .flatten()
            .flatten()
            .zip(state_values(buf))
        {
            *dst = v;
        }
        self.materialize_all();
        Ok(())
    }

    /// The adapted vectors of layer `i` (v or W, then the bias).
    pub fn adapted(&self, i: usize) -> &[Vec<f32>] {
        &self.adapted[i]
    }
}

const STATE_MAGIC: &[u8; 4] = b"MSRS";
const STATE_VERSION: u16 = 1;
const STATE_HEADER: usize = 12;

impl RtModel {
    /// The model file's CRC: saved states carry it, so a state is never loaded into
    /// another model.
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }
}

/// Encodes a session state: `"MSRS"`, u16 version, u16 reserved, u32 model fingerprint,
/// `count` f32 values (little-endian), u32 CRC-32 of everything before it. A non-finite
/// value is refused ([`StateError::NonFinite`]): no state is written that
/// [`check_state`] would refuse. On error the contents of `buf` are unspecified.
pub fn encode_state(
    fingerprint: u32,
    values: impl Iterator<Item = f32>,
    count: usize,
    buf: &mut [u8],
) -> Result<usize, Error> {
    let len = STATE_HEADER + 4 * count + 4;
    if buf.len() < len {
        return Err(DataError::Shape(ShapeError::Mismatch {
            what: "state buffer length".into(),
            expected: format!("at least {len}"),
            got: buf.len().to_string(),
        })
        .into());
    }
    buf[0..4].copy_from_slice(STATE_MAGIC);
    buf[4..6].copy_from_slice(&STATE_VERSION.to_le_bytes());
    buf[6..8].copy_from_slice(&0u16.to_le_bytes());
    buf[8..12].copy_from_slice(&fingerprint.to_le_bytes());
    let mut at = STATE_HEADER;
    for (index, v) in values.take(count).enumerate() {
        if !v.is_finite() {
            return Err(StateError::NonFinite { index }.into());
        }
        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
        at += 4;
    }
    debug_assert_eq!(at, len - 4);
    let crc = crc32fast::hash(&buf[..at]);
    buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// Checks a state for a model with `fingerprint` and `count` adapted values.
pub fn check_state(fingerprint: u32, count: usize, buf: &[u8]) -> Result<(), Error> {
    let len = STATE_HEADER + 4 * count + 4;
    if buf.len() != len {
        return Err(StateError::Length {
            needed: len,
            got: buf.len(),
        }
        .into());
    }
    let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    if &magic != STATE_MAGIC {
        return Err(StateError::BadMagic { found: magic }.into());
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != STATE_VERSION {
        return Err(StateError::UnsupportedVersion {
            found: version,
            supported: STATE_VERSION,
        }
        .into());
    }
    let stored = u32::from_le_bytes(buf[len - 4..].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&buf[..len - 4]);
    if stored != computed {
        return Err(StateError::Checksum { stored, computed }.into());
    }
    let fp = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if fp != fingerprint {
        return Err(StateError::OtherModel {
            found: fp,
            expected: fingerprint,
        }
        .into());
    }
    if let Some(index) = state_values(buf).position(|v| !v.is_finite()) {
        return Err(StateError::NonFinite { index }.into());
    }
    Ok(())
}

/// The values of a state that passed [`check_state`].
pub fn state_values(buf: &[u8]) -> impl Iterator<Item = f32> + '_ {
    buf[STATE_HEADER..buf.len() - 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
}

// The kernels below are plain Rust written so the compiler can vectorise them; each is
// compiled twice (baseline x86-64 and AVX2+FMA) and the best is picked at run time.
// (No `mul_add`: without FMA at compile time it becomes a slow libm call.)

/// Dot product with eight independent accumulators.
#[multiversion(targets("x86_64+avx2+fma"))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += alpha * x`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `out[r] = dot(w[r], x) (+ bias[r])` for a row-major `w` `[out.len(), x.len()]`.
///
/// The hottest loop of predict. Portable code left LLVM at 128-bit vectors here (checked
/// in the disassembly), so on x86-64 with AVX2+FMA it runs an explicit 256-bit kernel,
/// four rows at a time; elsewhere the portable per-row dot product.
fn matvec(w: &[f32], x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(w.len(), out.len() * x.len(), "matvec shapes");
    if let Some(b) = bias {
        assert_eq!(b.len(), out.len(), "matvec bias");
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above); shapes asserted.
        unsafe { matvec_avx2(w, x, bias, out) };
        return;
    }
    let cols = x.len();
    for (r, slot) in out.iter_mut().enumerate() {
        *slot = dot(&w[r * cols..(r + 1) * cols], x) + bias.map_or(0.0, |b| b[r]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matvec_avx2(w: &[f32], x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
    let cols = x.len();
    let full = cols / 8 * 8;
    let rows = out.len();
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let lanes: [i32; 8] = std::array::from_fn(|l| if l < cols - full { -1 } else { 0 });
    // SAFETY: reads 8 i32 from a local array.
    let mask = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
    let mut r = 0;
    while r + 4 <= rows {
        // SAFETY: rows r..r+4 lie inside `w` (w.len() == rows * cols); every load reads
        // 8 floats at column c < full <= cols.
        unsafe {
            let (p0, p1, p2, p3) = (
                wp.add(r * cols),
                wp.add((r + 1) * cols),
                wp.add((r + 2) * cols),
                wp.add((r + 3) * cols),
            );
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            let mut c = 0;
            while c < full {
                let xv = _mm256_loadu_ps(xp.add(c));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(c)), xv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(c)), xv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(c)), xv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p3.add(c)), xv, a3);
                c += 8;
            }
            if full < cols {
                // The last cols % 8 columns with a masked load: lanes past the row read
                // nothing (maskload does not touch masked-off memory).
                let xv = _mm256_maskload_ps(xp.add(full), mask);
                a0 = _mm256_fmadd_ps(_mm256_maskload_ps(p0.add(full), mask), xv, a0);
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(p1.add(full), mask), xv, a1);
                a2 = _mm256_fmadd_ps(_mm256_maskload_ps(p2.add(full), mask), xv, a2);
                a3 = _mm256_fmadd_ps(_mm256_maskload_ps(p3.add(full), mask), xv, a3);
            }
            let sums = [hsum(a0), hsum(a1), hsum(a2), hsum(a3)];
            for (k, s) in sums.iter().enumerate() {
                out[r + k] = s + bias.map_or(0.0, |b| b[r + k]);
            }
        }
        r += 4;
    }
    for (k, slot) in out.iter_mut().enumerate().skip(r) {
        *slot = dot(&w[k * cols..(k + 1) * cols], x) + bias.map_or(0.0, |b| b[k]);
    }
}

fn materialize(weights: &Weights, v: &[f32], w: &mut [f32], s0: &mut [f32], s1: &mut [f32]) {
    match weights {
        Weights::Plain => w.copy_from_slice(v),
        Weights::Dense { ut, rows } => {
            w.fill(0.0);
            for (vj, col) in v.iter().zip(ut.chunks_exact(*rows)) {
                axpy(*vj, col, w);
            }
        }
        Weights::Kron { a, b, c, dims } => {
            let [o, i, s, ka, kb, kc] = *dims;
            kron3(v, [ka, kb, kc], (c, s), (b, i), (a, o), false, w, s0, s1);
        }
    }
}

fn weights_backward(weights: &Weights, dw: &[f32], dv: &mut [f32], s0: &mut [f32], s1: &mut [f32]) {
    match weights {
        Weights::Plain => dv.copy_from_slice(dw),
        Weights::Dense { ut, rows } => {
            for (dj, col) in dv.iter_mut().zip(ut.chunks_exact(*rows)) {
                *dj = dot(col, dw);
            }
        }
        Weights::Kron { a, b, c, dims } => {
            let [o, i, s, ka, kb, kc] = *dims;
            kron3(dw, [o, i, s], (c, kc), (b, kb), (a, ka), true, dv, s0, s1);
        }
    }
}

/// Applies the three factors to `x` `[n1, n2, n3]`, last mode first. Each factor is
/// `(matrix, rows_out)`; with `transpose`, the matrices (row-major `[big, small]`) are used
/// transposed. Writes `[m1, m2, m3]` to `out`.
#[allow(clippy::too_many_arguments)]
fn kron3(
    x: &[f32],
    [n1, n2, n3]: [usize; 3],
    (f3, m3): (&[f32], usize),
    (f2, m2): (&[f32], usize),
    (f1, m1): (&[f32], usize),
    transpose: bool,
    out: &mut [f32],
    s0: &mut [f32],
    s1: &mut [f32],
) {
    // Element (r, c) of a factor used as an m x n map.
    let at = |f: &[f32], r: usize, c: usize, m: usize, n: usize| {
        if transpose {
            f[c * m + r]
        } else {
            f[r * n + c]
        }
    };
    // Mode 3: s0[i1, i2, r3] = sum_j f3[r3, j] x[i1, i2, j]
    for p in 0..n1 * n2 {
        for r in 0..m3 {
            let mut acc = 0.0;
            for j in 0..n3 {
                acc += at(f3, r, j, m3, n3) * x[p * n3 + j];
            }
            s0[p * m3 + r] = acc;
        }
    }
    // Mode 2: s1[i1, r2, r3] = sum_j f2[r2, j] s0[i1, j, r3], accumulated over j in
    // order along contiguous r3 rows (the strided scalar loop was the adaptation hotspot).
    for i1 in 0..n1 {
        let src = &s0[i1 * n2 * m3..(i1 + 1) * n2 * m3];
        let dst = &mut s1[i1 * m2 * m3..(i1 + 1) * m2 * m3];
        for (r2, row) in dst.chunks_exact_mut(m3).enumerate() {
            row.fill(0.0);
            for (j, s) in src.chunks_exact(m3).enumerate() {
                let f = at(f2, r2, j, m2, n2);
                for (o, v) in row.iter_mut().zip(s) {
                    *o += f * v;
                }
            }
        }
    }
    // Mode 1: out[r1, r2, r3] = sum_j f1[r1, j] s1[j, r2, r3]
    let plane = m2 * m3;
    for r1 in 0..m1 {
        let o = &mut out[r1 * plane..(r1 + 1) * plane];
        o.fill(0.0);
        for j in 0..n1 {
            axpy(at(f1, r1, j, m1, n1), &s1[j * plane..(j + 1) * plane], o);
        }
    }
}

fn gather_patch(x: &[f32], gather: &[u32], c_in: usize, s: usize, taps: usize, patch: &mut [f32]) {
    for c in 0..c_in {
        let xc = &x[c * s..(c + 1) * s];
        for (q, &g) in gather.iter().enumerate() {
            patch[c * taps + q] = if (g as usize) < s {
                xc[g as usize]
            } else {
                0.0
            };
        }
    }
}

fn forward(
    layer: &Layer,
    w: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    out: &mut [f32],
    m: usize,
    patch: &mut [f32],
) {
    match &layer.kind {
        Kind::Reshape => out.copy_from_slice(x),
        Kind::Dense { inputs, outputs } => {
            for n in 0..m {
                let xn = &x[n * inputs..(n + 1) * inputs];
                matvec(w, xn, bias, &mut out[n * outputs..(n + 1) * outputs]);
            }
        }
        Kind::Patches {
            gather,
            in_channels: c,
            out_channels: o_n,
            in_positions: s,
            positions: p_n,
            taps: k,
            local,
        } => {
            let (c, s, o_n, p_n, k) = (*c, *s, *o_n, *p_n, *k);
            let j = c * k;
            let patch = &mut patch[..j];
            for n in 0..m {
                let xn = &x[n * c * s..(n + 1) * c * s];
                let on = &mut out[n * o_n * p_n..(n + 1) * o_n * p_n];
                for p in 0..p_n {
                    gather_patch(xn, &gather[p * k..(p + 1) * k], c, s, k, patch);
                    for o in 0..o_n {
                        let wo = if *local {
                            &w[(p * o_n + o) * j..(p * o_n + o + 1) * j]
                        } else {
                            &w[o * j..(o + 1) * j]
                        };
                        let b = match bias {
                            Some(b) if *local => b[o * p_n + p],
                            Some(b) => b[o],
                            None => 0.0,
                        };
                        on[o * p_n + p] = dot(wo, patch) + b;
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backward(
    layer: &Layer,
    w: &[f32],
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    mut dx: Option<&mut [f32]>,
    m: usize,
    patch: &mut [f32],
    dpatch: &mut [f32],
) {
    match &layer.kind {
        Kind::Reshape => {
            if let Some(dx) = dx {
                dx.copy_from_slice(dz);
            }
        }
        Kind::Dense { inputs, outputs } => {
            for n in 0..m {
                let xn = &x[n * inputs..(n + 1) * inputs];
                let dzn = &dz[n * outputs..(n + 1) * outputs];
                for (o, g) in dzn.iter().enumerate() {
                    axpy(*g, xn, &mut dw[o * inputs..(o + 1) * inputs]);
                }
                if let Some(db) = dbias.as_deref_mut() {
                    axpy(1.0, dzn, db);
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let dxn = &mut dx[n * inputs..(n + 1) * inputs];
                    dxn.fill(0.0);
                    for (o, g) in dzn.iter().enumerate() {
                        axpy(*g, &w[o * inputs..(o + 1) * inputs], dxn);
                    }
                }
            }
        }
        Kind::Patches {
            gather,
            in_channels: c,
            out_channels: o_n,
            in_positions: s,
            positions: p_n,
            taps: k,
            local,
        } => {
            let (c, s, o_n, p_n, k) = (*c, *s, *o_n, *p_n, *k);
            let j = c * k;
            let patch = &mut patch[..j];
            let dpatch = &mut dpatch[..j];
            if let Some(dx) = dx.as_deref_mut() {
                dx.fill(0.0);
            }
            for n in 0..m {
                let xn = &x[n * c * s..(n + 1) * c * s];
                let dzn = &dz[n * o_n * p_n..(n + 1) * o_n * p_n];
                for p in 0..p_n {
                    let g = &gather[p * k..(p + 1) * k];
                    gather_patch(xn, g, c, s, k, patch);
                    dpatch.fill(0.0);
                    for o in 0..o_n {
                        let d = dzn[o * p_n + p];
                        let range = if *local {
                            (p * o_n + o) * j..(p * o_n + o + 1) * j
                        } else {
                            o * j..(o + 1) * j
                        };
                        axpy(d, patch, &mut dw[range.clone()]);
                        if dx.is_some() {
                            axpy(d, &w[range], dpatch);
                        }
                        if let Some(db) = dbias.as_deref_mut() {
                            if *local {
                                db[o * p_n + p] += d;
                            } else {
                                db[o] += d;
                            }
                        }
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        let dxn = &mut dx[n * c * s..(n + 1) * c * s];
                        for ch in 0..c {
                            for (q, &gi) in g.iter().enumerate() {
                                if (gi as usize) < s {
                                    dxn[ch * s + gi as usize] += dpatch[ch * k + q];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ModelInfo;
    use crate::net::Net;
    use crate::test_support::{HostParams, Rng, layer_records, nets, rel_err, targets};
    use crate::{DType, Model, Tensor, TensorData};

    fn record(spec: crate::NetSpec, seed: u64) -> ModelRecord {
        let dev = crate::device::cpu();
        let net = Net::new(spec.clone(), &dev).unwrap();
        let host = HostParams::random(&net, &mut Rng::new(seed));
        let layers = layer_records(&host, &net);
        ModelRecord {
            info: ModelInfo {
                name: "t".into(),
                task_family: "test".into(),
                inner_steps: 2,
                trainer_version: "test".into(),
            },
            net: spec,
            layers,
        }
    }

    fn f32s(v: Vec<f64>) -> Vec<f32> {
        v.into_iter().map(|x| x as f32).collect()
    }

    /// The real-time engine computes what the burn path computes, for every layer kind and
    /// both losses, whether examples fit in one chunk or not.
    #[test]
    fn matches_the_burn_path() {
        let dev = crate::device::cpu();
        for loss in [Loss::Mse, Loss::CrossEntropy] {
            for (name, spec) in nets(loss) {
                let rec = record(spec, 21);
                let model = Model::from_record(&rec, &dev, DType::F32).unwrap();
                let rt = RtModel::new(&rec).unwrap();
                let (fi, fo) = (rt.input_len(), rt.output_len());
                let mut rng = Rng::new(22);
                let (ns, nq) = (5, 7);
                let xs = f32s(rng.normals(ns * fi, 1.0));
                let ys = f32s(targets(loss, 1, ns, fo, &mut rng));
                let xq = f32s(rng.normals(nq * fi, 1.0));
                let t = |v: &Vec<f32>, n: usize, f: usize| {
                    Tensor::<3>::from_data(
                        TensorData::new(v.clone(), [1, n, f]),
                        (&dev, DType::F32),
                    )
                };
                let task = model.adapt(t(&xs, ns, fi), t(&ys, ns, fo), 2).unwrap();
                let reference: Vec<f64> = model
                    .predict(&task, t(&xq, nq, fi))
                    .unwrap()
                    .to_data()
                    .convert::<f64>()
                    .iter::<f64>()
                    .collect();
                for capacity in [32, 2] {
                    let mut s = Session::new(rt.clone(), capacity).unwrap();
                    s.inner_steps = 2;
                    s.adapt(&xs, &ys, ns).unwrap();
                    let mut out = vec![0.0; nq * fo];
                    s.predict(&xq, nq, &mut out).unwrap();
                    let got: Vec<f64> = out.iter().map(|&x| x as f64).collect();
                    let err = rel_err(&got, &reference);
                    assert!(
                        err < 1e-4,
                        "{name} {loss:?} capacity {capacity}: rel err {err:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn divergence_rolls_back_and_bad_input_changes_nothing() {
        // A linear model: a huge step must explode the loss (no ReLU can go dead).
        let spec = crate::NetSpec {
            input: crate::FeatureShape(vec![6]),
            layers: vec![crate::test_support::layer(
                Op::ShareLinear {
                    inputs: 6,
                    outputs: 4,
                    k: 3,
                    bias: true,
                },
                Activation::Identity,
            )],
            loss: Loss::Mse,
        };
        let rt = RtModel::new(&record(spec, 5)).unwrap();
        let (fi, fo) = (rt.input_len(), rt.output_len());
        let mut rng = Rng::new(6);
        let xs = f32s(rng.normals(4 * fi, 1.0));
        let ys = f32s(rng.normals(4 * fo, 1.0));
        let mut s = Session::new(rt.clone(), 8).unwrap();
        s.adapt(&xs, &ys, 4).unwrap();
        let mut before = vec![0.0; 4 * fo];
        s.predict(&xs, 4, &mut before).unwrap();

        s.lr_scale = 1e8;
        let e = s.adapt(&xs, &ys, 4).unwrap_err();
        assert!(matches!(e, Error::Diverged(_)), "{e}");
        let mut after = vec![0.0; 4 * fo];
        s.predict(&xs, 4, &mut after).unwrap();
        assert_eq!(
            before, after,
            "a diverged adaptation must leave the session as it was"
        );
        s.lr_scale = 1.0;

        let mut nan = xs.clone();
        nan[3] = f32::NAN;
        assert!(matches!(
            s.adapt(&nan, &ys, 4),
            Err(Error::Data(DataError::NonFinite(_)))
        ));
        assert!(matches!(
            s.adapt(&xs, &ys[1..], 4),
            Err(Error::Data(DataError::Shape(_)))
        ));
        assert!(matches!(
            s.adapt(&[], &[], 0),
            Err(Error::Data(DataError::Empty(_)))
        ));
        assert!(matches!(
            s.predict(&xs, 4, &mut after[1..]),
            Err(Error::Data(DataError::Shape(_)))
        ));
        s.predict(&xs, 4, &mut after).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn state_round_trips_and_is_refused_elsewhere() {
        let spec = nets(Loss::Mse).remove(2).1;
        let rt = RtModel::new(&record(spec.clone(), 7)).unwrap();
        let (fi, fo) = (rt.input_len(), rt.output_len());
        let mut rng = Rng::new(8);
        let xs = f32s(rng.normals(3 * fi, 1.0));
        let ys = f32s(rng.normals(3 * fo, 1.0));
        let mut a = Session::new(rt.clone(), 4).unwrap();
        a.lr_scale = 0.01; // random parameters: keep the steps small
        a.adapt(&xs, &ys, 3).unwrap();
        let mut buf = vec![0u8; rt.state_len()];
        assert_eq!(a.save_state(&mut buf).unwrap(), rt.state_len());
        let mut b = Session::new(rt.clone(), 4).unwrap();
        b.load_state(&buf).unwrap();
        let (mut pa, mut pb) = (vec![0.0; 3 * fo], vec![0.0; 3 * fo]);
        a.predict(&xs, 3, &mut pa).unwrap();
        b.predict(&xs, 3, &mut pb).unwrap();
        assert_eq!(pa, pb);

        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(b.load_state(&bad).is_err());
        assert!(b.load_state(&buf[..buf.len() - 1]).is_err());
        let other = RtModel::new(&record(spec, 99)).unwrap();
        let mut c = Session::new(other, 4).unwrap();
        let e = c.load_state(&buf).unwrap_err();
        assert!(e.to_string().contains("another model"), "{e}");
        // b unchanged by the failed loads.
        b.predict(&xs, 3, &mut pb).unwrap();
        assert_eq!(pa, pb);
    }
}
