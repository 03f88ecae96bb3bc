//! Damped Gauss-Newton adaptation of a session: switching it on (its buffers), the steps
//! with their Levenberg-Marquardt trials, and the accumulation of the gradient and the
//! Gauss-Newton matrix (primal) or the rows of the dual form (see [`crate::realtime::gn`]).

use alloc::format;
use alloc::vec::Vec;

use super::Session;
use super::loss::standardised;
use crate::error::{DataError, Error, ShapeError};
use crate::math::exp;
use crate::realtime::RtModel;
use crate::realtime::gn::{CONVERGED, GnBuffers, Inner, MAX_GN_PARAMS, MAX_TRIALS};
use crate::spec::Loss;

impl Session {
    /// Chooses the adaptation algorithm. Switching Gauss-Newton on (alone or after SGD)
    /// allocates its buffers (once; the `P x P` matrix of the adapted parameters, see
    /// [`crate::realtime::gn`]): a model with more than [`MAX_GN_PARAMS`] adapted parameters is
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
                let (primal, dual_rows) =
                    crate::realtime::gn::forms(p, self.capacity, self.model.output_len);
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

    /// `steps` damped Gauss-Newton steps from the current parameters (see [`crate::realtime::gn`]),
    /// whose support loss `loss` the last pass (over the whole support set) measured; the
    /// support loss never rises. Returns it.
    pub(super) fn gn_adapt(
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

    /// Whether a Gauss-Newton step on `n` examples takes the dual form (else the primal),
    /// or why it cannot be taken at all (checked before anything changes).
    pub(super) fn gn_form(&self, n: usize) -> Result<bool, Error> {
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
    pub(super) fn gn_anchor(&mut self) {
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
    pub(super) fn gn_prior_gradient(&mut self, scale: f64) {
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
    pub(super) fn gn_prior(&self, scale: f64) -> f64 {
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
    pub(super) fn gn_apply(&mut self, forward: bool) {
        self.gn_move(forward);
        self.materialize_all();
    }

    /// [`Session::gn_apply`] without re-materialising the weights.
    pub(super) fn gn_move(&mut self, forward: bool) {
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
    pub(super) fn gn_accumulate(&mut self, x: &[f32], y: &[f32], n: usize) {
        let (fi, fo) = (self.model.input_len, self.model.output_len);
        let mut gn = self.gn.take().expect("allocated by set_inner");
        let p = gn.p;
        gn.g_mat.fill(0.0);
        gn.grad.fill(0.0);
        for e in 0..n {
            self.forward_chunk(&x[e * fi..(e + 1) * fi], 1);
            let mut t = core::mem::take(&mut self.targets);
            let target = standardised(self.model.output_stats(), &y[e * fo..(e + 1) * fo], &mut t);
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
            self.targets = t;
        }
        self.gn = Some(gn);
    }

    /// The dual form's accumulation: the gradient, and the rows of `K` with `G = K^T K`
    /// (`sqrt(s) J` for the mean squared error; for cross-entropy, per example,
    /// `sqrt(mass p_o / n) (J_o - sum_o' p_o' J_o')`). A dense net's rows come in batches
    /// straight into `K` ([`Session::dense_rows`]); with `fresh`, the activations already
    /// hold the whole support set at the current parameters (the pass that measured its
    /// loss) and are not computed again.
    pub(super) fn gn_accumulate_dual(&mut self, x: &[f32], y: &[f32], n: usize, fresh: bool) {
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
                let mut t = core::mem::take(&mut self.targets);
                for e in 0..m {
                    let out = &self.acts.last().expect("non-empty")[e * fo..(e + 1) * fo];
                    let ye = &y[(start + e) * fo..(start + e + 1) * fo];
                    let target = standardised(self.model.output_stats(), ye, &mut t);
                    dual_rows(&self.model, out, &mut gn, start + e, target, n);
                }
                self.targets = t;
                start += m;
            }
        } else {
            for e in 0..n {
                self.forward_chunk(&x[e * fi..(e + 1) * fi], 1);
                self.jacobian_rows(&mut gn);
                gn.kmat[e * fo * p..(e + 1) * fo * p].copy_from_slice(&gn.jac[..fo * p]);
                let out = &self.acts.last().expect("non-empty")[..fo];
                let mut t = core::mem::take(&mut self.targets);
                let ye = &y[e * fo..(e + 1) * fo];
                let target = standardised(self.model.output_stats(), ye, &mut t);
                dual_rows(&self.model, out, &mut gn, e, target, n);
                self.targets = t;
            }
        }
        self.gn = Some(gn);
    }
}

/// Example `e`'s rows of `K`, which hold its rows of `J` on entry, made the dual form's
/// (stored as `K D^-1/2`, see `GnBuffers::solve_dual`), and its share of the gradient
/// added; `out` is its output and `targets` its (standardised) targets.
fn dual_rows(
    model: &RtModel,
    out: &[f32],
    gn: &mut GnBuffers,
    e: usize,
    targets: &[f32],
    n: usize,
) {
    let (fo, p) = (model.output_len, gn.p);
    let target = |o: usize| targets[o];
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
