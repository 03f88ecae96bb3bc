//! A task's adapted state and the buffers to adapt and predict without allocating.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::cost::{CallCosts, Cost};
use super::denormals::FlushDenormals;
use super::gn::{CONVERGED, GnBuffers, Inner, MAX_GN_PARAMS, MAX_TRIALS};
use super::kernels::{all_finite, tanh_in_place};
use super::layers::{backward, forward};
use super::state::{check_state, encode_state, state_values};
use super::weights::{materialize, weights_backward};
use super::{
    MAX_CAPACITY, MAX_SESSION_BYTES, RtModel, check_len, copy_of, kron_scratch_len, zeros,
};
use crate::error::{DataError, DivergedError, Error, ShapeError};
use crate::math::{exp, gelu, gelu_grad, ln};
use crate::spec::{Activation, Loss};

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

    /// Mean support loss of the current parameters. Allocation-free.
    pub fn loss(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        let _flush = FlushDenormals::new();
        self.check("inputs", x, n, self.model.input_len)?;
        self.check("targets", y, n, self.model.output_len)?;
        Ok(self.pass(x, y, n, false))
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

    /// The adaptation algorithm.
    pub fn inner(&self) -> Inner {
        self.inner
    }

    /// Chooses the adaptation algorithm. Switching Gauss-Newton on (alone or after SGD)
    /// allocates its buffers (once; the `P x P` matrix of the adapted parameters, see
    /// [`super::gn`]): a model with more than [`MAX_GN_PARAMS`] adapted parameters is
    /// refused, and a damping that is not finite and positive is refused; SGD then
    /// Gauss-Newton is refused with 0 or over [`crate::spec::limits::MAX_INNER_STEPS`]
    /// Gauss-Newton steps, and for a model that adapts by Gauss-Newton alone (its
    /// learning-rate slots are on/off switches, not SGD rates). Never allocates otherwise; adapting afterwards
    /// allocates nothing.
    pub fn set_inner(&mut self, inner: Inner) -> Result<(), Error> {
        if let Inner::SgdThenGaussNewton { steps, .. } = inner {
            if steps == 0 || steps as u64 > crate::spec::limits::MAX_INNER_STEPS {
                return Err(DataError::Shape(ShapeError::InvalidLayer(format!(
                    "{steps} Gauss-Newton steps after SGD: 1 to {}",
                    crate::spec::limits::MAX_INNER_STEPS
                )))
                .into());
            }
            if self.model.gauss_newton {
                return Err(DataError::Shape(ShapeError::InvalidLayer(
                    "this model adapts by Gauss-Newton alone (its learning-rate slots are switches, not SGD rates)".into(),
                ))
                .into());
            }
        }
        if let Some(costs) = self
            .model
            .call_costs(self.capacity, inner, self.inner_steps)
        {
            costs.check().map_err(DataError::Shape)?;
        }
        if let Some(damping) = inner.gauss_newton_damping() {
            if !(damping.is_finite() && damping > 0.0) {
                return Err(DataError::Shape(ShapeError::InvalidLayer(format!(
                    "Gauss-Newton damping {damping}: it must be finite and positive"
                )))
                .into());
            }
            if self.gn.is_none() {
                let layers: Vec<bool> = self
                    .model
                    .layers
                    .iter()
                    .map(|l| l.lr != 0.0 && !l.adapted0.is_empty())
                    .collect();
                let p: usize = self
                    .model
                    .layers
                    .iter()
                    .zip(&layers)
                    .filter(|(_, on)| **on)
                    .flat_map(|(l, _)| l.adapted0.iter().map(Vec::len))
                    .sum();
                let (primal, dual_rows) = super::gn::forms(p, self.capacity, self.model.output_len);
                if !primal && dual_rows == 0 {
                    return Err(DataError::Shape(ShapeError::OverLimit {
                        what: format!(
                            "adapted parameters for Gauss-Newton adaptation ({} outputs per chunk of {}: use SGD, or a smaller capacity for the dual form)",
                            self.capacity * self.model.output_len,
                            self.capacity
                        ),
                        value: Some(p as u128),
                        limit: MAX_GN_PARAMS as u64,
                    })
                    .into());
                }
                // Each parameter's base damping: its layer's.
                let mut diag = Vec::new();
                diag.try_reserve_exact(p).map_err(|_| Error::OutOfMemory {
                    what: "Gauss-Newton dampings",
                    bytes: p as u128 * 8,
                })?;
                for ((l, on), d) in self
                    .model
                    .layers
                    .iter()
                    .zip(&layers)
                    .zip(&self.model.damping)
                {
                    if *on {
                        let n: usize = l.adapted0.iter().map(Vec::len).sum();
                        diag.extend(core::iter::repeat_n(*d as f64, n));
                    }
                }
                let plan = self.model.dense_jacobian(self.capacity, &layers);
                self.gn = Some(GnBuffers::new(
                    p,
                    self.model.output_len,
                    diag,
                    primal,
                    dual_rows,
                    plan,
                )?);
                self.gn_layers = layers;
            }
        }
        self.inner = inner;
        self.end_stream();
        Ok(())
    }

    /// `steps` damped Gauss-Newton steps from the current parameters (see [`super::gn`]),
    /// whose support loss `loss` the last pass (over the whole support set) measured; the
    /// support loss never rises. Returns it.
    fn gn_adapt(
        &mut self,
        x: &[f32],
        y: &[f32],
        n: usize,
        base: f64,
        steps: usize,
        mut loss: f32,
    ) -> Result<f32, Error> {
        if self.gn.as_ref().is_some_and(|g| g.p == 0) {
            return Ok(loss); // no parameter moves: no Jacobian, no solve
        }
        let c = n * self.model.output_len;
        let dual = self.gn_form(n)?;
        // The objective is the support loss plus the prior 1/2 |v - v_start|^2_Lambda that
        // keeps the estimate near where adaptation started (the meta-learned
        // initialisation): its minimiser, not the support set's interpolant, is what more
        // steps converge to. `nu` is Levenberg-Marquardt's extra damping, 0 while full
        // steps succeed.
        self.gn_anchor();
        let mut objective = loss as f64;
        let mut nu = 0.0f64;
        // Whether the activations hold the support set's at the current parameters (the
        // last pass over it was at them).
        let mut fresh = true;
        for _ in 0..steps {
            if dual {
                self.gn_accumulate_dual(x, y, n, fresh);
            } else {
                self.gn_accumulate(x, y, n);
            }
            self.gn_prior_gradient(base);
            let (mut accepted, mut converged) = (false, false);
            for trial in 0..MAX_TRIALS {
                let gn = self.gn.as_mut().expect("allocated by set_inner");
                let lambda = base * (1.0 + nu);
                let solved = if dual {
                    gn.solve_dual(lambda, c)
                } else {
                    gn.solve(lambda)
                };
                if solved && trial == 0 {
                    // The quadratic model's decrease at this damping, -g.step / 2, bounds
                    // the undamped (nu = 0) model's from below by a factor 1 + nu: if even
                    // (1 + nu) times it is negligible, the adaptation has converged. (A
                    // small decrease under heavy damping does not stop it.)
                    let pred: f64 = -0.5
                        * gn.grad
                            .iter()
                            .zip(&gn.step)
                            .map(|(g, s)| g * s)
                            .sum::<f64>();
                    if (1.0 + nu) * pred <= CONVERGED * objective.abs() {
                        converged = true;
                        break;
                    }
                }
                if solved {
                    self.gn_apply(true);
                    let trial = self.pass(x, y, n, false);
                    fresh = true;
                    let total = trial as f64 + self.gn_prior(base);
                    if trial.is_finite() && total <= objective && self.params_finite() {
                        (loss, objective) = (trial, total);
                        nu /= 10.0;
                        accepted = true;
                        break;
                    }
                    self.gn_apply(false);
                    fresh = false;
                }
                nu = if nu == 0.0 { 1.0 } else { nu * 10.0 };
            }
            if converged || !accepted {
                break; // converged, or no damped step lowers the objective from here
            }
        }
        Ok(loss)
    }

    fn end_stream(&mut self) {
        if let Some(gn) = self.gn.as_mut() {
            gn.streaming = false;
        }
    }

    /// Sets the forgetting factor `gamma` of [`Session::observe`], in (0, 1]: each new
    /// example divides the weight of everything observed before it by `gamma`, so an
    /// example `m` observations old counts `gamma^m` (1: nothing is forgotten, the
    /// estimate equals a batch solve; 0.99: a memory of about 100 examples, to track a
    /// payload or a wind that changes).
    pub fn set_forgetting(&mut self, gamma: f32) -> Result<(), Error> {
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(DataError::Shape(ShapeError::InvalidLayer(format!(
                "forgetting factor {gamma}: it must be in (0, 1]"
            )))
            .into());
        }
        self.forgetting = gamma as f64;
        Ok(())
    }

    /// Folds `n` new examples into the adapted parameters without re-solving from scratch:
    /// a recursive least-squares (information-form) update of the Gauss-Newton system,
    /// linearised at the current parameters (exact for layers linear in v, an extended
    /// Kalman-style update otherwise). The first call after `reset`, `adapt` or
    /// `load_state` starts from the current parameters with the prior precision of the
    /// Gauss-Newton dampings (per parameter, its layer's damping times the session's
    /// scale, in units of squared residual per output: the estimate after observing
    /// examples 1..n minimises `sum ||y - f||^2 + (v - v_start)^T Lambda (v - v_start)`,
    /// for a model linear in v exactly). `predict` uses the current estimate.
    ///
    /// Needs Gauss-Newton switched on ([`Session::set_inner`]). Cost per example: one
    /// forward pass, one backward pass per output (or, for a linear last layer, its rows
    /// straight from U and the layer's input, and W left to be re-materialised by the next
    /// call that reads it), `O(P^2)` per output for the update (or, with at least twice as
    /// many outputs as parameters, all outputs at once in the information form,
    /// `O(F P^2 / 2 + 2 P^3)`). Allocation-free. If a parameter turns non-finite the call
    /// is undone and the stream restarts.
    pub fn observe(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<(), Error> {
        let _flush = FlushDenormals::new();
        let Some(damping) = self.inner.gauss_newton_damping() else {
            return Err(DataError::NotConfigured(
                "observe folds examples into the Gauss-Newton system: switch Gauss-Newton on first (set_inner / msr_session_set_inner)",
            )
            .into());
        };
        if self.model.loss != Loss::Mse {
            return Err(DataError::NotConfigured(
                "observe is for regression (mean squared error) models",
            )
            .into());
        }
        self.check("inputs", x, n, self.model.input_len)?;
        self.check("targets", y, n, self.model.output_len)?;
        self.check_budget()?;
        if self.gn.as_ref().is_some_and(|g| g.p == 0) {
            return Ok(()); // no parameter moves: nothing to fold in
        }
        self.save_backup();
        let (fi, fo) = (self.model.input_len, self.model.output_len);
        if !self.gn.as_ref().is_some_and(|g| g.primal) {
            return Err(DataError::NotConfigured(
                "streaming updates keep the P x P covariance: at most 2048 adapted parameters",
            )
            .into());
        }
        let mut gn = self.gn.take().expect("Gauss-Newton is on");
        if !gn.streaming {
            // The prior of `adapt` on one example (whose loss is the mean over its F
            // outputs, `2/F` times the sum of squares the stream accumulates).
            gn.start_stream(damping as f64 * fo as f64 / 2.0);
        }
        let p = gn.p;
        let head = self.linear_head();
        let block = gn.block_update(fo);
        let last = self.model.layers.len() - 1;
        let mut usable = true;
        for e in 0..n {
            if self.forgetting < 1.0 {
                gn.forget(self.forgetting);
            }
            let xe = &x[e * fi..(e + 1) * fi];
            self.jacobian_input(xe, head.is_some());
            self.jacobian_rows(&mut gn);
            if let Some(k) = head {
                // The output is linear in the moved parameters: J (v, b), from the rows
                // just computed, without W.
                let bias = self.adapted[last].get(1).map(Vec::as_slice);
                let v = &self.adapted[last][0];
                let out = &mut self.acts[last + 1][..fo];
                for (o, out) in out.iter_mut().enumerate() {
                    let row = &gn.jac[o * p..o * p + k];
                    let dot = if k <= 16 {
                        row.iter().zip(v).map(|(a, b)| a * b).sum() // no dispatch for a few
                    } else {
                        super::kernels::dot(row, v)
                    };
                    *out = dot + bias.map_or(0.0, |b| b[o]);
                }
            }
            gn.step.fill(0.0);
            if block {
                gn.block_begin();
            }
            let norm = self
                .model
                .normalizer
                .as_ref()
                .and_then(|s| s.output.as_ref());
            for o in 0..fo {
                let mut target = y[e * fo + o];
                if let Some(s) = norm {
                    target = (target - s.mean[o]) / s.scale[o];
                }
                let out = self.acts.last().expect("non-empty")[o];
                if block {
                    gn.block_add(o, (target - out) as f64);
                    continue;
                }
                let row = &gn.jac[o * p..(o + 1) * p];
                // The residual at the parameters updated by this example's earlier rows.
                let moved: f64 = row.iter().zip(&gn.step).map(|(j, s)| *j as f64 * s).sum();
                let r = (target - out) as f64 - moved;
                usable &= gn.rls_update(o, r);
            }
            if block {
                usable &= gn.rls_block();
            }
            self.gn = Some(gn);
            if head.is_some() {
                self.gn_move(true);
                self.stale_last = true;
            } else {
                self.gn_apply(true);
            }
            gn = self.gn.take().expect("put back above");
            if !usable {
                break; // undone below: the rest of the call would be wasted work
            }
        }
        self.gn = Some(gn);
        if self.stale_last && !self.head_bounded() {
            self.materialize_all(); // W may overflow: look at it
        }
        if !usable || !self.params_finite() {
            self.restore_backup();
            self.end_stream();
            return Err(DivergedError {
                step: n,
                loss: f64::NAN,
                initial: f64::NAN,
                nonfinite_params: true,
            }
            .into());
        }
        Ok(())
    }

    /// Whether Gauss-Newton moves the last layer's parameters and no other layer's.
    fn moves_only_last(&self) -> bool {
        let last = self.model.layers.len() - 1;
        self.gn_layers
            .iter()
            .enumerate()
            .all(|(i, on)| *on == (i == last))
    }

    /// `Some(k)` when Gauss-Newton moves only the last layer, a dense identity layer with
    /// `W = reshape(U v)` (`k = len(v)`): its outputs are `J (v, b)` from Jacobian rows
    /// that need U and the layer's input, not W.
    fn linear_head(&self) -> Option<usize> {
        let last = self.model.layers.len() - 1;
        let layer = &self.model.layers[last];
        let only_last = self.moves_only_last();
        match (only_last, layer.activation, &layer.kind, &layer.weights) {
            (
                true,
                Activation::Identity,
                super::Kind::Dense { .. },
                super::Weights::Dense { .. },
            ) => Some(self.adapted[last][0].len()),
            _ => None,
        }
    }

    /// The forward pass that the Jacobian rows need for one example: up to the last
    /// layer's input for a [`Session::linear_head`] (`head`), else all of it.
    fn jacobian_input(&mut self, x: &[f32], head: bool) {
        if head {
            self.forward_layers(x, 1, self.model.layers.len() - 1);
        } else {
            self.forward_chunk(x, 1);
        }
    }

    /// Whether a Gauss-Newton step on `n` examples takes the dual form (else the primal),
    /// or why it cannot be taken at all (checked before anything changes).
    fn gn_form(&self, n: usize) -> Result<bool, Error> {
        let gn = self.gn.as_ref().expect("allocated by set_inner");
        let c = n.saturating_mul(self.model.output_len);
        let dual = gn.dual_rows >= c && c < gn.p;
        if !dual && !gn.primal {
            return Err(DataError::Shape(ShapeError::OverLimit {
                what: "examples for a Gauss-Newton step of this model (the session's capacity: its dual form holds that many)".into(),
                value: Some(n as u128),
                limit: self.capacity as u64,
            })
            .into());
        }
        Ok(dual)
    }

    /// Records the moved parameters as the prior's centre.
    fn gn_anchor(&mut self) {
        let gn = self.gn.as_mut().expect("allocated by set_inner");
        let mut at = 0;
        for (layer, on) in self.adapted.iter().zip(&self.gn_layers) {
            if *on {
                for v in layer {
                    gn.anchor[at..at + v.len()].copy_from_slice(v);
                    at += v.len();
                }
            }
        }
    }

    /// Adds the prior's gradient `Lambda (v - v_start)` to the accumulated gradient.
    fn gn_prior_gradient(&mut self, scale: f64) {
        let gn = self.gn.as_mut().expect("allocated by set_inner");
        let mut at = 0;
        for (layer, on) in self.adapted.iter().zip(&self.gn_layers) {
            if *on {
                for v in layer {
                    for (i, vi) in v.iter().enumerate() {
                        let k = at + i;
                        gn.grad[k] += scale * gn.diag[k] * (*vi - gn.anchor[k]) as f64;
                    }
                    at += v.len();
                }
            }
        }
    }

    /// The prior `1/2 |v - v_start|^2_Lambda` at the current parameters.
    fn gn_prior(&self, scale: f64) -> f64 {
        let gn = self.gn.as_ref().expect("allocated by set_inner");
        let mut at = 0;
        let mut sum = 0.0;
        for (layer, on) in self.adapted.iter().zip(&self.gn_layers) {
            if *on {
                for v in layer {
                    for (i, vi) in v.iter().enumerate() {
                        let d = (*vi - gn.anchor[at + i]) as f64;
                        sum += 0.5 * scale * gn.diag[at + i] * d * d;
                    }
                    at += v.len();
                }
            }
        }
        sum
    }

    /// With `forward`, saves the moved parameters and adds the solved step to them; else
    /// restores the saved ones. Re-materialises the weights.
    fn gn_apply(&mut self, forward: bool) {
        self.gn_move(forward);
        self.materialize_all();
    }

    /// [`Session::gn_apply`] without re-materialising the weights.
    fn gn_move(&mut self, forward: bool) {
        let gn = self.gn.as_mut().expect("allocated by set_inner");
        let mut at = 0;
        for (layer, on) in self.adapted.iter_mut().zip(&self.gn_layers) {
            if !on {
                continue;
            }
            for v in layer.iter_mut() {
                let len = v.len();
                if forward {
                    gn.saved[at..at + len].copy_from_slice(v);
                    for (vj, sj) in v.iter_mut().zip(&gn.step[at..at + len]) {
                        *vj += *sj as f32;
                    }
                } else {
                    v.copy_from_slice(&gn.saved[at..at + len]);
                }
                at += len;
            }
        }
    }

    /// Accumulates the gradient and the Gauss-Newton matrix (lower triangle) of the
    /// support loss at the current parameters: per example, one forward pass and one
    /// backward pass per output give the rows of `J`.
    fn gn_accumulate(&mut self, x: &[f32], y: &[f32], n: usize) {
        let (fi, fo) = (self.model.input_len, self.model.output_len);
        let mut gn = self.gn.take().expect("allocated by set_inner");
        let p = gn.p;
        gn.g_mat.fill(0.0);
        gn.grad.fill(0.0);
        for e in 0..n {
            self.forward_chunk(&x[e * fi..(e + 1) * fi], 1);
            let mut t = core::mem::take(&mut self.targets);
            if t.len() < fo {
                // No output standardisation: the targets are used as they are.
                t = Vec::new();
            }
            let target: &[f32] = match self
                .model
                .normalizer
                .as_ref()
                .and_then(|s| s.output.as_ref())
            {
                Some(s) => {
                    t[..fo].copy_from_slice(&y[e * fo..(e + 1) * fo]);
                    s.apply(&mut t[..fo]);
                    &t[..fo]
                }
                None => &y[e * fo..(e + 1) * fo],
            };
            self.jacobian_rows(&mut gn);
            let out = &self.acts.last().expect("non-empty")[..fo];
            match self.model.loss {
                Loss::Mse => {
                    let s = 2.0 / (n * fo) as f64;
                    for o in 0..fo {
                        let row = &gn.jac[o * p..(o + 1) * p];
                        let r = (out[o] - target[o]) as f64;
                        for (g, j) in gn.grad.iter_mut().zip(row) {
                            *g += s * r * *j as f64;
                        }
                        for a in 0..p {
                            let ja = s * row[a] as f64;
                            if ja == 0.0 {
                                continue;
                            }
                            let dst = &mut gn.g_mat[a * p..a * p + a + 1];
                            for (d, jb) in dst.iter_mut().zip(&row[..=a]) {
                                *d += ja * *jb as f64;
                            }
                        }
                    }
                }
                Loss::CrossEntropy => {
                    let max = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f64 = out.iter().map(|v| exp(v - max) as f64).sum();
                    let mass: f64 = target.iter().map(|&v| v as f64).sum();
                    let scale = 1.0 / n as f64;
                    // q = sum_o p_o J_o, in `step` (free until the solve).
                    gn.step.fill(0.0);
                    for o in 0..fo {
                        let pr = exp(out[o] - max) as f64 / sum;
                        let row = &gn.jac[o * p..(o + 1) * p];
                        let r = pr * mass - target[o] as f64;
                        for ((g, q), j) in gn.grad.iter_mut().zip(gn.step.iter_mut()).zip(row) {
                            *g += scale * r * *j as f64;
                            *q += pr * *j as f64;
                        }
                        let w = scale * mass * pr;
                        for a in 0..p {
                            let ja = w * row[a] as f64;
                            if ja == 0.0 {
                                continue;
                            }
                            let dst = &mut gn.g_mat[a * p..a * p + a + 1];
                            for (d, jb) in dst.iter_mut().zip(&row[..=a]) {
                                *d += ja * *jb as f64;
                            }
                        }
                    }
                    let w = scale * mass;
                    for a in 0..p {
                        let qa = w * gn.step[a];
                        for b in 0..=a {
                            gn.g_mat[a * p + b] -= qa * gn.step[b];
                        }
                    }
                }
            }
            if !t.is_empty() {
                self.targets = t;
            }
        }
        self.gn = Some(gn);
    }

    /// All rows of `J` for the example in the activations (a chunk of one), `[outputs, p]`.
    /// When the solver moves only the last layer and it has no activation, its outputs
    /// are linear in its parameters and the rows come from its input: a dense layer with
    /// `W = reshape(U v)` gives d out_o / d v_j = (U_j a)_o directly; any other (a
    /// convolution, Kronecker-factored U) with fewer parameters than outputs gives column
    /// `j` as the layer's output for `W = reshape(U e_j)` without bias (forward mode: `k`
    /// layer passes instead of one backward pass per output: rot8's 21,600 outputs, k of a
    /// few dozen); d out_o / d b_o = 1. Otherwise one backward pass per output.
    fn jacobian_rows(&mut self, gn: &mut GnBuffers) {
        let GnBuffers {
            jac,
            jz,
            deltas,
            batch,
            ..
        } = gn;
        let fo = self.model.output_len;
        let p = jac.len() / fo.max(1);
        let last = self.model.layers.len() - 1;
        let layer = &self.model.layers[last];
        let only_last = self.moves_only_last();
        if only_last && layer.activation == Activation::Identity {
            let a = &self.acts[last][..layer.in_len];
            let k = self.adapted[last][0].len();
            let main = match (&layer.kind, &layer.weights) {
                (super::Kind::Dense { .. }, super::Weights::Dense { ut, rows, .. }) => {
                    // Column j of the rows is W_j a, W_j = reshape(U e_j): one
                    // matrix-vector product each (the kernel of the forward pass).
                    use super::gemm::{Mat, MatMut, gemm};
                    jac.fill(0.0);
                    let col_out = &mut self.db[..fo];
                    let inputs = a.len();
                    for (j, col) in ut.chunks_exact(*rows).enumerate() {
                        gemm(
                            Mat::rows(a, 1, inputs),
                            Mat::rows(col, fo, inputs).t(),
                            MatMut::rows(col_out, 1, fo),
                            None,
                            false,
                        );
                        for (o, v) in col_out.iter().enumerate() {
                            jac[o * p + j] = *v;
                        }
                    }
                    true
                }
                (super::Kind::Dense { inputs, .. }, super::Weights::Plain) => {
                    jac.fill(0.0);
                    for o in 0..fo {
                        jac[o * p + o * inputs..o * p + (o + 1) * inputs].copy_from_slice(a);
                    }
                    true
                }
                (_, weights) if k < fo => {
                    jac.fill(0.0);
                    let e = &mut self.grads[last][0];
                    e.fill(0.0);
                    let col_out = &mut self.db[..fo];
                    for j in 0..k {
                        e[j] = 1.0;
                        let [s0, s1] = &mut self.scratch;
                        materialize(weights, e, &mut self.dw[last], s0, s1);
                        e[j] = 0.0;
                        forward(layer, &self.dw[last], None, a, col_out, 1, &mut self.patch);
                        for (o, v) in col_out.iter().enumerate() {
                            jac[o * p + j] = *v;
                        }
                    }
                    true
                }
                _ => false,
            };
            if main {
                if let Some(b) = self.adapted[last].get(1) {
                    // One bias per output channel: each covers `fo / len` outputs.
                    let per = fo / b.len();
                    for o in 0..fo {
                        jac[o * p + k + o / per] = 1.0;
                    }
                }
                return;
            }
        }
        if *batch > 0 {
            self.dense_rows(0, 1, jac, p, jz, deltas);
            return;
        }
        for o in 0..fo {
            self.jacobian_row(o, &mut jac[o * p..(o + 1) * p]);
        }
    }

    /// Rows of `J` for examples `first..first + count` of the chunk in the activations,
    /// for a net of dense layers ([`RtModel::dense_jacobian`]): row `e F + o` of `rows`
    /// (rows `p` apart) is output `o` of example `first + e`. Per moved `U` layer, the
    /// `z_j = reshape(U e_j) h` of every example of the batch in one product (`U` read once
    /// per batch, not once per example); the outputs' gradients go backward through the
    /// layers for all `count F` rows at once, and `d out_o / d v_j = delta_o . z_j` (the
    /// burn path's `delta (h U)`). One backward pass per output would form
    /// `U^T vec(delta_o h^T)` for every output: `F` times the `out x in x k` work.
    fn dense_rows(
        &self,
        first: usize,
        count: usize,
        rows: &mut [f32],
        p: usize,
        jz: &mut [f32],
        deltas: &mut [f32],
    ) {
        use super::gemm::{Mat, MatMut, gemm};
        let model = &*self.model;
        let fo = model.output_len;
        let lowest = self
            .gn_layers
            .iter()
            .position(|m| *m)
            .expect("a dense plan moves some layer");
        let r = count * fo;
        // z_j for every moved U layer, in layer order: [count, k, out] each.
        let mut zat = 0;
        for (i, layer) in model.layers.iter().enumerate() {
            if let (true, super::Weights::Dense { ut, rows: len, .. }) =
                (self.gn_layers[i], &layer.weights)
            {
                let (inputs, out) = (layer.in_len, layer.out_len);
                let k = ut.len() / len;
                let h = &self.acts[i][first * inputs..(first + count) * inputs];
                gemm(
                    Mat::rows(h, count, inputs),
                    Mat::rows(ut, k * out, inputs).t(),
                    MatMut::rows(&mut jz[zat..zat + count * k * out], count, k * out),
                    None,
                    false,
                );
                zat += count * k * out;
            }
        }
        let half = deltas.len() / 2;
        let (mut da, mut db) = deltas.split_at_mut(half);
        da[..r * fo].fill(0.0);
        for q in 0..r {
            da[q * fo + q % fo] = 1.0;
        }
        // Moved layers' blocks and z's, walked from the end.
        let (mut at, mut zend) = (p, zat);
        for i in (lowest..model.layers.len()).rev() {
            let layer = &model.layers[i];
            let (inputs, out) = (layer.in_len, layer.out_len);
            for e in 0..count {
                let ex = first + e;
                let act = &self.acts[i + 1][ex * out..(ex + 1) * out];
                let pre = self.pre[i].get(ex * out..(ex + 1) * out).unwrap_or(&[]);
                for d in da[e * fo * out..(e + 1) * fo * out].chunks_exact_mut(out) {
                    activation_backward(layer.activation, d, act, pre);
                }
            }
            if self.gn_layers[i] {
                let len: usize = self.adapted[i].iter().map(Vec::len).sum();
                at -= len;
                let main = self.adapted[i][0].len();
                match &layer.weights {
                    super::Weights::Dense { .. } => {
                        zend -= count * main * out;
                        for e in 0..count {
                            let z = &jz[zend + e * main * out..zend + (e + 1) * main * out];
                            gemm(
                                Mat::rows(&da[e * fo * out..(e + 1) * fo * out], fo, out),
                                Mat::rows(z, main, out).t(),
                                MatMut::strided(&mut rows[e * fo * p + at..], fo, main, p),
                                None,
                                false,
                            );
                        }
                    }
                    _ => {
                        // Plain: d out / d W[a, b] = delta_a h_b.
                        for q in 0..r {
                            let ex = first + q / fo;
                            let h = &self.acts[i][ex * inputs..(ex + 1) * inputs];
                            let block = &mut rows[q * p + at..q * p + at + main];
                            for (a, d) in da[q * out..(q + 1) * out].iter().enumerate() {
                                for (b, x) in block[a * inputs..(a + 1) * inputs].iter_mut().zip(h)
                                {
                                    *b = d * x;
                                }
                            }
                        }
                    }
                }
                if len > main {
                    for q in 0..r {
                        rows[q * p + at + main..q * p + at + len]
                            .copy_from_slice(&da[q * out..(q + 1) * out]);
                    }
                }
            }
            if i > lowest {
                gemm(
                    Mat::rows(&da[..r * out], r, out),
                    Mat::rows(&self.w[i], out, inputs),
                    MatMut::rows(&mut db[..r * inputs], r, inputs),
                    None,
                    false,
                );
                core::mem::swap(&mut da, &mut db);
            }
        }
    }

    /// The dual form's accumulation: the gradient, and the rows of `K` with `G = K^T K`
    /// (`sqrt(s) J` for the mean squared error; for cross-entropy, per example,
    /// `sqrt(mass p_o / n) (J_o - sum_o' p_o' J_o')`). A dense net's rows come in batches
    /// straight into `K` ([`Session::dense_rows`]); with `fresh`, the activations already
    /// hold the whole support set at the current parameters (the pass that measured its
    /// loss) and are not computed again.
    fn gn_accumulate_dual(&mut self, x: &[f32], y: &[f32], n: usize, fresh: bool) {
        let (fi, fo) = (self.model.input_len, self.model.output_len);
        let mut gn = self.gn.take().expect("allocated by set_inner");
        let p = gn.p;
        gn.grad.fill(0.0);
        gn.gram_ready = false;
        if gn.batch > 0 {
            let mut start = 0;
            while start < n {
                let m = (n - start).min(self.capacity);
                if !(fresh && n <= self.capacity) {
                    self.forward_chunk(&x[start * fi..(start + m) * fi], m);
                }
                let mut e = 0;
                while e < m {
                    let count = (m - e).min(gn.batch);
                    let GnBuffers {
                        kmat, jz, deltas, ..
                    } = &mut gn;
                    let rows = &mut kmat[(start + e) * fo * p..(start + e + count) * fo * p];
                    self.dense_rows(e, count, rows, p, jz, deltas);
                    e += count;
                }
                for e in 0..m {
                    let out = &self.acts.last().expect("non-empty")[e * fo..(e + 1) * fo];
                    dual_rows(&self.model, out, &mut gn, start + e, y, n);
                }
                start += m;
            }
        } else {
            for e in 0..n {
                self.forward_chunk(&x[e * fi..(e + 1) * fi], 1);
                self.jacobian_rows(&mut gn);
                gn.kmat[e * fo * p..(e + 1) * fo * p].copy_from_slice(&gn.jac[..fo * p]);
                let out = &self.acts.last().expect("non-empty")[..fo];
                dual_rows(&self.model, out, &mut gn, e, y, n);
            }
        }
        self.gn = Some(gn);
    }

    /// Row `o` of `J` for the example in the activations (a chunk of one): the gradient of
    /// output `o` with respect to every parameter the solver moves, into `row`.
    fn jacobian_row(&mut self, o: usize, row: &mut [f32]) {
        for g in self.grads.iter_mut().flatten() {
            g.fill(0.0);
        }
        for d in &mut self.dw {
            d.fill(0.0);
        }
        let fo = self.model.output_len;
        self.da[..fo].fill(0.0);
        self.da[o] = 1.0;
        self.backward_chunk(1);
        let mut at = 0;
        for i in 0..self.model.layers.len() {
            if !self.gn_layers[i] {
                continue;
            }
            let layer = &self.model.layers[i];
            let [s0, s1] = &mut self.scratch;
            let (g_main, _) = self.grads[i].split_first_mut().expect("non-empty");
            weights_backward(&layer.weights, &self.dw[i], g_main, s0, s1);
            for v in &self.grads[i] {
                row[at..at + v.len()].copy_from_slice(v);
                at += v.len();
            }
        }
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

    /// Whether the last layer's `W = reshape(U v)` is certainly finite without
    /// materialising it: `|W_i| <= max|U| * sum_j |v_j|`, times `1 + 2 k eps` for the
    /// rounding of a k-term f32 sum, with a factor 2 to spare; for k so large that the
    /// rounding bound is loose (k eps >= 1/4), not conclusive (W is materialised instead).
    fn head_bounded(&self) -> bool {
        let last = self.model.layers.len() - 1;
        let super::Weights::Dense { umax, .. } = &self.model.layers[last].weights else {
            return false;
        };
        let v = &self.adapted[last][0];
        let k_eps = v.len() as f64 * f32::EPSILON as f64;
        if k_eps >= 0.25 {
            return false;
        }
        let bound = *umax as f64 * v.iter().map(|x| x.abs() as f64).sum::<f64>();
        bound * (1.0 + 2.0 * k_eps) < f32::MAX as f64 / 2.0
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
            total += match self
                .model
                .normalizer
                .as_ref()
                .and_then(|n| n.output.as_ref())
            {
                Some(s) => {
                    let mut t = core::mem::take(&mut self.targets);
                    t[..m * fo].copy_from_slice(yc);
                    s.apply(&mut t[..m * fo]);
                    let l = self.loss_chunk(&t[..m * fo], m, n, grad);
                    self.targets = t;
                    l
                }
                None => self.loss_chunk(yc, m, n, grad),
            };
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
                    let sum: f32 = z.iter().map(|v| exp(v - max)).sum();
                    let log_sum = max + ln(sum);
                    let mass: f32 = t.iter().sum();
                    total += z
                        .iter()
                        .zip(t)
                        .map(|(zi, ti)| (ti * (log_sum - zi)) as f64)
                        .sum::<f64>();
                    if grad {
                        for c in 0..fo {
                            let p = exp(z[c] - log_sum);
                            self.da[r * fo + c] = (p * mass - t[c]) / n as f32;
                        }
                    }
                }
            }
        }
        total
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
            match layer.activation {
                Activation::Identity => {}
                // Not `max(0)`: that turns NaN into 0 and hides a divergence. A select with
                // an unconditional store, so that it vectorises (a conditional store does not).
                Activation::Relu => {
                    for v in out.iter_mut() {
                        *v = if *v < 0.0 { 0.0 } else { *v };
                    }
                }
                Activation::Tanh => tanh_in_place(out),
                Activation::Gelu => {
                    let pre = &mut self.pre[i][..m * layer.out_len];
                    pre.copy_from_slice(out);
                    for v in out.iter_mut() {
                        *v = gelu(*v);
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

/// Example `e`'s rows of `K`, which hold its rows of `J` on entry, made the dual form's
/// (stored as `K D^-1/2`, see `GnBuffers::solve_dual`), and its share of the gradient
/// added; `out` is its output.
fn dual_rows(model: &RtModel, out: &[f32], gn: &mut GnBuffers, e: usize, y: &[f32], n: usize) {
    let (fo, p) = (model.output_len, gn.p);
    let stats = model.normalizer.as_ref().and_then(|s| s.output.as_ref());
    let target = |o: usize| match stats {
        Some(s) => (y[e * fo + o] - s.mean[o]) / s.scale[o],
        None => y[e * fo + o],
    };
    let rows = &mut gn.kmat[e * fo * p..(e + 1) * fo * p];
    match model.loss {
        Loss::Mse => {
            let s = 2.0 / (n * fo) as f64;
            let root = crate::math::sqrt64(s) as f32;
            for o in 0..fo {
                let row = &mut rows[o * p..(o + 1) * p];
                let r = (out[o] - target(o)) as f64;
                for (g, ji) in gn.grad.iter_mut().zip(row.iter()) {
                    *g += s * r * *ji as f64;
                }
                for (k, d) in row.iter_mut().zip(&gn.inv_root_diag) {
                    *k = (root as f64 * *k as f64 * d) as f32;
                }
            }
        }
        Loss::CrossEntropy => {
            let max = out.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = out.iter().map(|v| exp(v - max) as f64).sum();
            let pr = |o: usize| exp(out[o] - max) as f64 / sum;
            let mass: f64 = (0..fo).map(|o| target(o) as f64).sum();
            // u = sum_o p_o J_o, in `step` (free until the solve).
            gn.step.fill(0.0);
            for o in 0..fo {
                let (po, j) = (pr(o), &rows[o * p..(o + 1) * p]);
                let q = (po * mass - target(o) as f64) / n as f64;
                for ((g, u), ji) in gn.grad.iter_mut().zip(gn.step.iter_mut()).zip(j) {
                    *g += q * *ji as f64;
                    *u += po * *ji as f64;
                }
            }
            for o in 0..fo {
                let w = crate::math::sqrt64(mass.max(0.0) * pr(o) / n as f64);
                for ((k, u), d) in rows[o * p..(o + 1) * p]
                    .iter_mut()
                    .zip(&gn.step)
                    .zip(&gn.inv_root_diag)
                {
                    *k = (w * (*k as f64 - u) * d) as f32;
                }
            }
        }
    }
}

/// `d *= activation'` elementwise, for the `d.len()` leading values: from the layer's
/// output `out` (ReLU, tanh) or its pre-activation `pre` (GELU; empty for other layers).
fn activation_backward(activation: Activation, d: &mut [f32], out: &[f32], pre: &[f32]) {
    match activation {
        Activation::Identity => {}
        Activation::Relu => {
            for (d, o) in d.iter_mut().zip(out) {
                if *o <= 0.0 {
                    *d = 0.0;
                }
            }
        }
        Activation::Tanh => {
            for (d, o) in d.iter_mut().zip(out) {
                *d *= 1.0 - o * o;
            }
        }
        Activation::Gelu => {
            for (d, z) in d.iter_mut().zip(pre) {
                *d *= gelu_grad(*z);
            }
        }
    }
}

#[cfg(test)]
#[path = "jacobian_tests.rs"]
mod jacobian_tests;
