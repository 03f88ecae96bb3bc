//! Streaming updates: examples folded into a Gauss-Newton session one at a time
//! (recursive least squares), with forgetting.

use alloc::format;
use alloc::vec::Vec;

use super::Session;
use super::loss::standardised;
use crate::error::{DataError, DivergedError, Error, ShapeError};
use crate::realtime::denormals::FlushDenormals;
use crate::spec::Loss;

impl Session {
    pub(super) fn end_stream(&mut self) {
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
                        crate::realtime::kernels::dot(row, v)
                    };
                    *out = dot + bias.map_or(0.0, |b| b[o]);
                }
            }
            gn.step.fill(0.0);
            if block {
                gn.block_begin();
            }
            let mut t = core::mem::take(&mut self.targets);
            let ye = &y[e * fo..(e + 1) * fo];
            let targets = standardised(self.model.output_stats(), ye, &mut t);
            for (o, &target) in targets.iter().enumerate() {
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
            self.targets = t;
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

    /// Whether the last layer's `W = reshape(U v)` is certainly finite without
    /// materialising it: `|W_i| <= max|U| * sum_j |v_j|`, times `1 + 2 k eps` for the
    /// rounding of a k-term f32 sum, with a factor 2 to spare; for k so large that the
    /// rounding bound is loose (k eps >= 1/4), not conclusive (W is materialised instead).
    pub(super) fn head_bounded(&self) -> bool {
        let last = self.model.layers.len() - 1;
        let crate::realtime::Weights::Dense { umax, .. } = &self.model.layers[last].weights else {
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
}
