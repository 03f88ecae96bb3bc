//! A task's adapted state and the buffers to adapt and predict without allocating.
//!
//! In the order a prediction's data flows: this module holds the session's buffers,
//! predict (the forward pass), the loss and its gradient ([`loss`]), the backward pass and
//! SGD adaptation with its rollback, and the saved state; Gauss-Newton adaptation
//! ([`gauss_newton`]) takes the rows of the Jacobian ([`jacobian`]); streaming updates
//! ([`stream`]) fold examples into its system one at a time.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::activation::{activate, activation_backward};
use super::cost::{CallCosts, Cost};
use super::denormals::FlushDenormals;
use super::gn::{GnBuffers, Inner};
use super::kernels::all_finite;
use super::layers::{backward, forward};
use super::state::{check_state, encode_state, state_values};
use super::weights::{materialize, weights_backward};
use super::{
    MAX_CAPACITY, MAX_SESSION_BYTES, RtModel, check_len, copy_of, kron_scratch_len, zeros,
};
use crate::error::{DataError, DivergedError, Error, ShapeError};
use crate::spec::Activation;

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
    /// The last layer's `w` lags its adapted vector: [`Session::observe`] moved v and left
    /// re-materialising `W = reshape(U v)` to the next pass that reads W (a stream of
    /// observes needs only U).
    stale_last: bool,
    dw: Vec<Vec<f32>>,
    /// Activations at every layer boundary, `[capacity, len]` each.
    acts: Vec<Vec<f32>>,
    /// Per layer: the pre-activation output of GELU layers (empty for the others).
    pre: Vec<Vec<f32>>,
    /// Standardised targets of one chunk (empty unless the model standardises outputs).
    targets: Vec<f32>,
    /// Two gradient buffers, `[capacity, max len]`.
    da: Vec<f32>,
    db: Vec<f32>,
    /// One patch (`[C * K]`) and its gradient; Kronecker scratch.
    patch: Vec<f32>,
    dpatch: Vec<f32>,
    scratch: [Vec<f32>; 2],
    /// The adaptation algorithm ([`Session::set_inner`]).
    pub(crate) inner: Inner,
    /// Gauss-Newton buffers (allocated when Gauss-Newton is switched on) and which layers
    /// it moves.
    gn: Option<GnBuffers>,
    gn_layers: Vec<bool>,
    /// Forgetting factor of [`Session::observe`], in (0, 1].
    forgetting: f64,
    /// Inner steps per adaptation and the scale applied to every layer's lr.
    pub inner_steps: usize,
    /// Multiplies every layer's learned inner learning rate.
    pub lr_scale: f32,
    /// The algorithm and steps whose calls were last found within the compute limit
    /// ([`Session::check_budget`]).
    budget_checked: Option<(Inner, usize)>,
}

impl Session {
    /// A session at the meta-learned initialisation, with buffers for `capacity` examples per
    /// chunk (1 to [`MAX_CAPACITY`]). All allocation happens here, and fails with a status
    /// rather than an abort: a session over [`MAX_SESSION_BYTES`] is refused before anything
    /// is allocated, and a failed allocation is [`Error::OutOfMemory`].
    pub fn new(model: Arc<RtModel>, capacity: usize) -> Result<Self, Error> {
        let _flush = FlushDenormals::new();
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
        let pre = model
            .layers
            .iter()
            .map(|l| {
                let n = if l.activation == Activation::Gelu {
                    capacity * l.out_len
                } else {
                    0
                };
                zeros(n, "pre-activations")
            })
            .collect::<Result<_, _>>()?;
        let targets = if model.output_normalized() {
            zeros(capacity * model.output_len, "standardised targets")?
        } else {
            Vec::new()
        };
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
            pre,
            targets,
            da: zeros(capacity * max_act, "activation gradients")?,
            db: zeros(capacity * max_act, "activation gradients")?,
            patch: zeros(max_patch, "patches")?,
            dpatch: zeros(max_patch, "patches")?,
            scratch: [
                zeros(max_kron, "Kronecker scratch")?,
                zeros(max_kron, "Kronecker scratch")?,
            ],
            stale_last: false,
            inner: Inner::Sgd,
            gn: None,
            gn_layers: Vec::new(),
            forgetting: 1.0,
            inner_steps: model.inner_steps,
            lr_scale: 1.0,
            budget_checked: None,
            model,
        };
        s.materialize_all();
        if s.model.gauss_newton {
            s.set_inner(Inner::GaussNewton { damping: 1.0 })?;
        } else if let Some((steps, damping)) = s.model.refine {
            s.set_inner(Inner::SgdThenGaussNewton { damping, steps })?;
        }
        s.check_budget()?;
        Ok(s)
    }

    /// The bound of every call with the session's current algorithm, steps and capacity, in
    /// work units ([`super::cost`]): a call on `n` examples does at most `cost.at(n)`.
    pub fn costs(&self) -> CallCosts {
        let unbounded = Cost {
            fixed: u128::MAX,
            per_example: u128::MAX,
        };
        // `None` only for an algorithm `set_inner` refuses, which a session never holds.
        self.model
            .call_costs(self.capacity, self.inner, self.inner_steps)
            .unwrap_or(CallCosts {
                predict: unbounded,
                adapt: unbounded,
                observe: None,
                state: unbounded,
            })
    }

    /// The bound of an adaptation on exactly `n` examples, in work units: at most
    /// `costs().adapt.at(n)`, tighter for Gauss-Newton (the form those `n` take).
    pub fn adapt_cost_at(&self, n: usize) -> u128 {
        self.model
            .adapt_cost_at(self.capacity, self.inner, self.inner_steps, n)
            .unwrap_or(u128::MAX)
    }

    /// Checks that every call with the session's algorithm and `inner_steps` stays within
    /// [`crate::spec::limits::MAX_CALL_WORK`] ([`Session::costs`]); adapting, refining and
    /// observing check it first (when the steps or the algorithm changed since), so no call
    /// runs past the bound, whatever `inner_steps` was set to. Allocation-free.
    pub fn check_budget(&mut self) -> Result<(), Error> {
        let key = (self.inner, self.inner_steps);
        if self.budget_checked != Some(key) {
            self.costs().check().map_err(DataError::Shape)?;
            self.budget_checked = Some(key);
        }
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &Arc<RtModel> {
        &self.model
    }

    /// Back to the meta-learned initialisation (and the end of any stream of
    /// [`Session::observe`]).
    pub fn reset(&mut self) {
        self.end_stream();
        for (l, layer) in self.adapted.iter_mut().zip(&self.model.layers) {
            for (v, v0) in l.iter_mut().zip(&layer.adapted0) {
                v.copy_from_slice(v0);
            }
        }
        // The initial weights, materialised once when the model was loaded.
        self.stale_last = false;
        for (w, layer) in self.w.iter_mut().zip(&self.model.layers) {
            if !layer.w0.is_empty() {
                w.copy_from_slice(&layer.w0);
            }
        }
    }

    fn materialize_all(&mut self) {
        self.stale_last = false;
        for i in 0..self.model.layers.len() {
            self.materialize_layer(i);
        }
    }

    fn materialize_layer(&mut self, i: usize) {
        let layer = &self.model.layers[i];
        let Some(v) = self.adapted[i].first() else {
            return;
        };
        let [s0, s1] = &mut self.scratch;
        materialize(&layer.weights, v, &mut self.w[i], s0, s1);
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
        let _flush = FlushDenormals::new();
        self.check("inputs", x, n, self.model.input_len)?;
        let fo = self.model.output_len;
        check_len("output buffer", out.len(), n, fo)?;
        let fi = self.model.input_len;
        let mut start = 0;
        while start < n {
            let m = (n - start).min(self.capacity);
            self.forward_chunk(&x[start * fi..(start + m) * fi], m);
            let last = self.acts.last().expect("non-empty");
            let chunk = &mut out[start * fo..(start + m) * fo];
            chunk.copy_from_slice(&last[..m * fo]);
            if let Some(s) = self
                .model
                .normalizer
                .as_ref()
                .and_then(|n| n.output.as_ref())
            {
                s.invert(chunk);
            }
            start += m;
        }
        if !all_finite(out) {
            return Err(Error::NonFiniteOutput);
        }
        Ok(())
    }

    fn forward_chunk(&mut self, x: &[f32], m: usize) {
        if self.stale_last {
            // Only the last layer moved since W was last materialised.
            self.materialize_layer(self.model.layers.len() - 1);
            self.stale_last = false;
        }
        self.forward_layers(x, m, self.model.layers.len());
    }

    /// The forward pass through the first `upto` layers: `acts[upto]` holds their output.
    fn forward_layers(&mut self, x: &[f32], m: usize, upto: usize) {
        self.acts[0][..x.len()].copy_from_slice(x);
        if let Some(s) = self
            .model
            .normalizer
            .as_ref()
            .and_then(|n| n.input.as_ref())
        {
            s.apply(&mut self.acts[0][..x.len()]);
        }
        for (i, layer) in self.model.layers.iter().enumerate().take(upto) {
            let (before, after) = self.acts.split_at_mut(i + 1);
            let input = &before[i][..m * layer.in_len];
            let out = &mut after[0][..m * layer.out_len];
            let bias = self.adapted[i].get(1).map(Vec::as_slice);
            forward(layer, &self.w[i], bias, input, out, m, &mut self.patch);
            let pre = self.pre[i].get_mut(..m * layer.out_len).unwrap_or(&mut []);
            activate(layer.activation, out, pre);
        }
    }

    /// Mean support loss of the current parameters. Allocation-free.
    pub fn loss(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        let _flush = FlushDenormals::new();
        self.check("inputs", x, n, self.model.input_len)?;
        self.check("targets", y, n, self.model.output_len)?;
        Ok(self.pass(x, y, n, false))
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
            let mut t = core::mem::take(&mut self.targets);
            total += self.loss_chunk(
                standardised(self.model.output_stats(), yc, &mut t),
                m,
                n,
                grad,
            );
            self.targets = t;
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

    fn backward_chunk(&mut self, m: usize) {
        // self.da holds dL/d(output of the last layer).
        let first_param = self.adapted.iter().position(|a| !a.is_empty()).unwrap_or(0);
        for i in (0..self.model.layers.len()).rev() {
            let layer = &self.model.layers[i];
            let dz = &mut self.da[..m * layer.out_len];
            activation_backward(layer.activation, dz, &self.acts[i + 1], &self.pre[i]);
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
            core::mem::swap(&mut self.da, &mut self.db);
        }
    }

    /// Adapts the meta-learned initialisation to a support set (as at meta-training time):
    /// `x` `[n, input_len]`, `y` `[n, output_len]` (for cross-entropy models, one-hot rows),
    /// `inner_steps` SGD steps (or Gauss-Newton steps, [`Session::set_inner`]). Returns the
    /// support loss after adapting (the objective adaptation minimises: in standardised
    /// units when the model standardises its targets). If the loss turns
    /// non-finite or explodes, the previous parameters are restored and
    /// [`Error::Diverged`] says so. Allocation-free.
    pub fn adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        self.adapt_impl(x, y, n, true)
    }

    /// Like [`Session::adapt`], but continues from the current parameters (with the whole
    /// algorithm: for SGD then Gauss-Newton, both stages).
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
        let _flush = FlushDenormals::new();
        self.check("inputs", x, n, self.model.input_len)?;
        self.check("targets", y, n, self.model.output_len)?;
        self.check_budget()?;
        if self.inner.gauss_newton_damping().is_some() {
            self.gn_form(n)?;
        }
        self.save_backup();
        if from_init {
            self.reset();
        }
        self.end_stream();
        match self.inner {
            Inner::Sgd => self.sgd_adapt(x, y, n),
            Inner::GaussNewton { damping } => {
                let loss = self.current_loss(x, y, n)?;
                self.gn_adapt(x, y, n, damping as f64, self.inner_steps, loss)
            }
            Inner::SgdThenGaussNewton { damping, steps } => {
                // SGD's last pass measured its loss over the whole support set at the
                // parameters it ends with: Gauss-Newton starts from that.
                let loss = self.sgd_adapt(x, y, n)?;
                self.gn_adapt(x, y, n, damping as f64, steps, loss)
            }
        }
    }

    /// `inner_steps` SGD steps from the current parameters (the backup taken); returns the
    /// support loss at the end, after a pass over the whole support set.
    fn sgd_adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        if self.model.adapted_len() == 0 {
            return self.current_loss(x, y, n); // nothing moves
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
            // NaN propagates through every op (ReLU included), but an infinite weight can
            // meet only inputs that a ReLU zeroes; the final check of the parameters and
            // the weights themselves guarantees that no NaN or infinity is ever kept (and so
            // ever saved or predicted with).
            let nonfinite_params = step == self.inner_steps && !self.params_finite();
            if super::exploded(initial, loss) || !before.is_finite() || nonfinite_params {
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
        // Zero inner steps: report the loss of the parameters as they are.
        self.current_loss(x, y, n)
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

    /// The support loss of the parameters as they are; a non-finite one is reported as a
    /// divergence at step 0, and the adaptation's reset undone.
    fn current_loss(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
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

    /// Whether every adapted parameter and every materialised weight `W = reshape(U v)` is
    /// finite (finite v can overflow f32 in U v).
    /// (A stale last layer is covered by [`Session::head_bounded`], checked by
    /// `observe`.)
    fn params_finite(&self) -> bool {
        let last = self.w.len() - 1;
        self.adapted.iter().flatten().all(|v| all_finite(v))
            && self
                .w
                .iter()
                .enumerate()
                .all(|(i, w)| (self.stale_last && i == last) || all_finite(w))
    }

    /// Saves the adapted parameters, for [`Session::restore_backup`].
    fn save_backup(&mut self) {
        for (b, a) in self.backup.iter_mut().zip(&self.adapted) {
            for (bv, av) in b.iter_mut().zip(a) {
                bv.copy_from_slice(av);
            }
        }
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

    /// The adaptation algorithm.
    pub fn inner(&self) -> Inner {
        self.inner
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
        let _flush = FlushDenormals::new();
        check_state(self.model.fingerprint, self.model.adapted_len(), buf)?;
        self.save_backup();
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
        if !self.params_finite() {
            self.restore_backup();
            return Err(crate::error::StateError::WeightsOverflow.into());
        }
        self.end_stream();
        Ok(())
    }

    /// The adapted vectors of layer `i` (v or W, then the bias).
    pub fn adapted(&self, i: usize) -> &[Vec<f32>] {
        &self.adapted[i]
    }
}

mod gauss_newton;
mod jacobian;
mod loss;

use loss::standardised;
mod stream;

#[cfg(test)]
#[path = "jacobian_tests.rs"]
mod jacobian_tests;
