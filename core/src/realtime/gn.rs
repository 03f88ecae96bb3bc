//! Damped Gauss-Newton (Levenberg-Marquardt) adaptation in the space of all adapted
//! parameters: each step solves `(G + lambda I) dv = -g`, with `g` the support loss's
//! gradient and `G` its Gauss-Newton matrix: `2/(n F) J^T J` for the mean squared error
//! (`J` = d outputs / d v over the support set, `F` outputs per example), the generalised
//! Gauss-Newton `1/n sum J^T (diag p - p p^T) J` (times the target mass) for softmax
//! cross-entropy. For a model linear in its adapted parameters one step is the exact ridge
//! solution centred at the current parameters.
//!
//! The steps minimise the support loss plus a prior, `1/2 |v - v_start|^2_Lambda` (the
//! dampings, centred where the adaptation started: the meta-learned initialisation): the
//! first step is the damped step above, later ones converge to the prior's minimiser
//! (for a model linear in v the first step is already there), not to an interpolant of the
//! support set. A step is kept only if it lowers that objective; otherwise it is undone
//! and retried with more damping (Levenberg-Marquardt: `(1 + nu) Lambda`, nu = 1, 10,
//! 100...; nu shrinks tenfold after each kept step), so more steps or more data never
//! make an adaptation diverge. When the undamped model predicts a decrease of at most
//! [`CONVERGED`] of the objective, the adaptation ends early (converged).
//!
//! Cost per step: one forward pass and `F` backward passes per support example (the
//! rows of `J`), `F P^2` multiply-adds to accumulate `G`, `P^3 / 3` to factorise it (in
//! f64), plus one forward pass over the support set per trial. All buffers are allocated
//! when Gauss-Newton is switched on ([`super::Session::set_inner`]); a step allocates
//! nothing.

use alloc::vec::Vec;

/// The most adapted parameters for the `P x P` (primal) form of a Gauss-Newton step, and
/// for streaming updates (three `P x P` f64 matrices: 96 MiB at this limit).
pub const MAX_GN_PARAMS: usize = 2048;
/// The most entries of the stored Jacobian of the dual form (`capacity x outputs` rows of
/// `P`), used when a support set has fewer outputs than the model has parameters: 64 MiB
/// of f32.
pub const MAX_DUAL_ENTRIES: usize = 1 << 24;

/// Which forms of the solve a session with `p` parameters, chunks of `capacity` examples
/// and `outputs` per example gets: the primal `P x P` form when `p` is at most
/// [`MAX_GN_PARAMS`]; the dual form, for up to `capacity x outputs` rows, when that is
/// fewer than `p` and the stored rows fit [`MAX_DUAL_ENTRIES`] (0 rows: none).
pub(crate) fn forms(p: usize, capacity: usize, outputs: usize) -> (bool, usize) {
    let rows = capacity.saturating_mul(outputs);
    let dual = if rows < p && rows.saturating_mul(p) <= MAX_DUAL_ENTRIES {
        rows
    } else {
        0
    };
    (p <= MAX_GN_PARAMS, dual)
}

/// How many times a step is retried with more damping before the adaptation stops early
/// (the loss can no longer be lowered from where it is).
pub(crate) const MAX_TRIALS: usize = 8;

/// When the undamped Gauss-Newton model of the objective predicts a decrease of at most
/// this fraction of it (`g^T (G + Lambda)^-1 g / 2`, bounded through the damped solve), the
/// adaptation has converged and stops: further steps, each a full accumulation of `G`,
/// would only move it by rounding (the f32 loss resolves about 6e-8). (Without it a model
/// linear in v spent every remaining step re-solving at its minimiser: rot8's S = 100
/// cost 100 accumulations of a 21,600-row Jacobian for the answer of the first.)
pub(crate) const CONVERGED: f64 = 1e-6;

/// The adaptation algorithm of a session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inner {
    /// `inner_steps` SGD steps with the meta-learned per-layer learning rates.
    Sgd,
    /// `inner_steps` damped Gauss-Newton steps.
    GaussNewton {
        /// Multiplies the model's per-layer dampings (its `solver` record, meta-learned;
        /// 1 for every layer without one): each layer's lambda is added to the diagonal of
        /// the Gauss-Newton matrix for its parameters (in the loss's units: larger keeps
        /// them closer to where they start).
        damping: f32,
    },
    /// `inner_steps` SGD steps, then `steps` damped Gauss-Newton steps from where they
    /// ended (the prior centred there): what `trainer train --inner sgd+gn` meta-trains
    /// through, and the default of a model whose file has a `refine` record.
    SgdThenGaussNewton {
        /// The Gauss-Newton steps' damping, as for [`Inner::GaussNewton`].
        damping: f32,
        /// Gauss-Newton steps after the SGD ones (at least 1).
        steps: usize,
    },
}

impl Inner {
    /// The Gauss-Newton damping, if this algorithm takes Gauss-Newton steps.
    pub fn gauss_newton_damping(&self) -> Option<f32> {
        match *self {
            Inner::Sgd => None,
            Inner::GaussNewton { damping } | Inner::SgdThenGaussNewton { damping, .. } => {
                Some(damping)
            }
        }
    }
}

/// Buffers of the Gauss-Newton solver, allocated once.
#[derive(Debug)]
pub(crate) struct GnBuffers {
    /// Adapted parameters the solver moves (layers whose learning rate is 0, such as
    /// ANIL's frozen body, stay fixed).
    pub(crate) p: usize,
    /// `G` accumulated, `[p, p]` row-major, and its Cholesky factor.
    pub(crate) g_mat: Vec<f64>,
    pub(crate) chol: Vec<f64>,
    /// The gradient, then the step.
    pub(crate) grad: Vec<f64>,
    pub(crate) step: Vec<f64>,
    /// The rows of `J` for one example, `[outputs, p]`.
    pub(crate) jac: Vec<f32>,
    /// The parameters before a trial step.
    pub(crate) saved: Vec<f32>,
    /// Where the adaptation started: the centre of the prior.
    pub(crate) anchor: Vec<f32>,
    /// Each parameter's base damping (its layer's).
    pub(crate) diag: Vec<f64>,
    /// Streaming updates ([`super::Session::observe`]): the inverse information matrix
    /// `[p, p]` (the estimate's covariance, up to the noise scale), valid while `streaming`.
    pub(crate) cov: Vec<f64>,
    pub(crate) streaming: bool,
    /// The prior's scale of the current stream.
    pub(crate) prior_scale: f64,
    /// Whether the `P x P` buffers (`g_mat`, `chol`, `cov`) exist.
    pub(crate) primal: bool,
    /// The dual form: rows `K` (`G = K^T K`) of up to `dual_rows` outputs, `[dual_rows, p]`,
    /// the `[dual_rows, dual_rows]` system and its right-hand side. `dual_rows` is 0 when
    /// the form is not available.
    pub(crate) dual_rows: usize,
    pub(crate) kmat: Vec<f32>,
    pub(crate) mmat: Vec<f64>,
    pub(crate) tvec: Vec<f64>,
    /// The dual form's `1 / sqrt(D_i)`, `[p]`: its rows are stored as `K D^-1/2`.
    pub(crate) inv_root_diag: Vec<f64>,
    /// For a net of dense layers ([`super::RtModel::dense_jacobian`]), per batch of
    /// examples: each moved `W = reshape(U v)` layer's `W_j h = reshape(U e_j) h` for every
    /// j (`[batch, k, out]` per layer), and two buffers of the outputs' gradients
    /// (`[batch, outputs, widest]`). `batch` is 0 for any other net.
    pub(crate) jz: Vec<f32>,
    pub(crate) deltas: Vec<f32>,
    pub(crate) batch: usize,
    /// The dual form's Gram matrix `Kd Kd^T` (lower triangle, `[dual_rows, dual_rows]`),
    /// computed once per accumulation (`gram_ready`) for every damping tried; `gram_exact`
    /// when its entries are f64 sums (else f32 products, see [`GnBuffers::solve_dual`]).
    pub(crate) gram: Vec<f64>,
    pub(crate) gram_ready: bool,
    gram_exact: bool,
    /// A block of rows of the f32 Gram matrix, `[GRAM_BLOCK, dual_rows]`.
    gram_block: Vec<f32>,
    /// `Kd D^-1/2 g` (`[dual_rows]`), the refinement's residual (`[dual_rows]`), and
    /// `Kd^T z` (`[p]`).
    tbase: Vec<f64>,
    resid: Vec<f64>,
    ktz: Vec<f64>,
}

/// Rows of the f32 Gram matrix computed per product.
const GRAM_BLOCK: usize = 16;
/// Refinement steps of the dual solve against the f32 Gram matrix before falling back to
/// the f64 one.
const MAX_REFINE: usize = 4;

impl GnBuffers {
    /// Buffers for `p` parameters, `outputs` per example, the primal form if `primal`, the
    /// dual form for up to `dual_rows` outputs (0: none), batches of Jacobian rows as
    /// `plan` says (a dense net).
    pub(crate) fn new(
        p: usize,
        outputs: usize,
        diag: Vec<f64>,
        primal: bool,
        dual_rows: usize,
        plan: Option<super::JacobianPlan>,
    ) -> Result<Self, crate::error::Error> {
        let f64s = |n: usize| -> Result<Vec<f64>, crate::error::Error> {
            let mut v = Vec::new();
            v.try_reserve_exact(n)
                .map_err(|_| crate::error::Error::OutOfMemory {
                    what: "the Gauss-Newton matrix",
                    bytes: n as u128 * 8,
                })?;
            v.resize(n, 0.0);
            Ok(v)
        };
        let pp = if primal { p * p } else { 0 };
        let c = dual_rows;
        let mut inv_root_diag = f64s(if c > 0 { p } else { 0 })?;
        for (r, d) in inv_root_diag.iter_mut().zip(&diag) {
            *r = 1.0 / crate::math::sqrt64(*d);
        }
        let (batch, z, delta) = plan.map_or((0, 0, 0), |j| (j.batch, j.z, j.delta));
        Ok(GnBuffers {
            p,
            g_mat: f64s(pp)?,
            chol: f64s(pp)?,
            grad: f64s(p)?,
            step: f64s(p)?,
            jac: super::zeros(outputs * p, "Jacobian rows")?,
            saved: super::zeros(p, "Gauss-Newton parameters")?,
            anchor: super::zeros(p, "Gauss-Newton parameters")?,
            diag,
            cov: f64s(pp)?,
            streaming: false,
            prior_scale: 1.0,
            primal,
            dual_rows,
            kmat: super::zeros(c * p, "Jacobian rows")?,
            mmat: f64s(c * c)?,
            tvec: f64s(c)?,
            inv_root_diag,
            jz: super::zeros(batch * z, "Jacobian scratch")?,
            deltas: super::zeros(2 * batch * delta, "Jacobian scratch")?,
            batch,
            gram: f64s(c * c)?,
            gram_ready: false,
            gram_exact: false,
            gram_block: super::zeros(if c > 0 { GRAM_BLOCK * c } else { 0 }, "Gram matrix")?,
            tbase: f64s(c)?,
            resid: f64s(c)?,
            ktz: f64s(if c > 0 { p } else { 0 })?,
        })
    }

    /// Bytes [`GnBuffers::new`] allocates for the same arguments.
    pub(crate) fn bytes(
        p: usize,
        outputs: usize,
        primal: bool,
        dual_rows: usize,
        plan: Option<super::JacobianPlan>,
    ) -> u128 {
        let (p, f, c) = (p as u128, outputs as u128, dual_rows as u128);
        let pp = if primal { p * p } else { 0 };
        let (roots, block, ktz) = if c > 0 {
            (p, GRAM_BLOCK as u128 * c, p)
        } else {
            (0, 0, 0)
        };
        let scratch = plan.map_or(0, |j| j.batch as u128 * (j.z as u128 + 2 * j.delta as u128));
        8 * (3 * pp + 3 * p + 2 * c * c + 3 * c + roots + ktz)
            + 4 * (f * p + 2 * p + c * p + scratch + block)
    }

    /// The dual form of the damped solve for `c` rows of `K` (`G = K^T K`):
    /// `(K^T K + lambda D)^-1 g = (lambda D)^-1 (g - K^T z)`, with
    /// `(I + K (lambda D)^-1 K^T) z = K (lambda D)^-1 g` (Woodbury): a `c x c` system.
    /// The rows are stored as `Kd = K D^-1/2` (scaled when accumulated), so the system is
    /// `I + Kd Kd^T / lambda`.
    ///
    /// Its Gram matrix `Kd Kd^T` is formed once per accumulation, for every damping tried,
    /// as f32 products (the blocked kernel: `c^2 p / 2` multiply-adds, the step's largest
    /// term with the rows themselves), factorised in f64, and the solution refined against
    /// residuals computed in f64 from the rows (mixed-precision iterative refinement: each
    /// pass shrinks the error by the f32 Gram's relative error, ~1e-6, times the system's
    /// condition). If the f32 Gram cannot be factorised or the refinement does not reach
    /// f64 accuracy in [`MAX_REFINE`] passes, the Gram is formed again with f64 sums and
    /// the system solved directly, as before. Writes `-` that into `step`. False if the
    /// system could not be factorised.
    pub(crate) fn solve_dual(&mut self, lambda: f64, c: usize) -> bool {
        let p = self.p;
        if !self.gram_ready {
            self.gram_f32(c);
            for a in 0..c {
                // K (lambda D)^-1 g = Kd D^-1/2 g / lambda.
                let ka = &self.kmat[a * p..(a + 1) * p];
                self.tbase[a] = ka
                    .iter()
                    .zip(&self.grad)
                    .zip(&self.inv_root_diag)
                    .map(|((k, g), r)| *k as f64 * g * r)
                    .sum::<f64>();
            }
            self.gram_ready = true;
            self.gram_exact = false;
        }
        loop {
            for a in 0..c {
                for b in 0..=a {
                    let m = self.gram[a * c + b] / lambda;
                    self.mmat[a * c + b] = m + if a == b { 1.0 } else { 0.0 };
                }
            }
            if cholesky(&mut self.mmat[..c * c], c) && self.solve_refined(lambda, c) {
                break;
            }
            if self.gram_exact {
                return false;
            }
            self.gram_f64(c);
            self.gram_exact = true;
        }
        for i in 0..p {
            // K^T z = D^1/2 Kd^T z.
            let ktz = self.ktz[i] / self.inv_root_diag[i];
            self.step[i] = -(self.grad[i] - ktz) / (lambda * self.diag[i]);
        }
        self.step.iter().all(|s| s.is_finite())
    }

    /// `z` (in `tvec`) from the factorised system, and `Kd^T z` (in `ktz`): with an f32
    /// Gram, refined until the f64 residual `b - z - Kd (Kd^T z) / lambda` is at rounding
    /// level. False if it does not get there.
    fn solve_refined(&mut self, lambda: f64, c: usize) -> bool {
        let p = self.p;
        for a in 0..c {
            self.tvec[a] = self.tbase[a] / lambda;
        }
        cholesky_solve(&self.mmat[..c * c], c, &mut self.tvec[..c]);
        for pass in 0..=MAX_REFINE {
            self.ktz.fill(0.0);
            for a in 0..c {
                super::kernels::axpy_f64(
                    self.tvec[a],
                    &self.kmat[a * p..(a + 1) * p],
                    &mut self.ktz,
                );
            }
            if self.gram_exact {
                return true;
            }
            // Done when every residual is at the rounding level of the terms it is the
            // difference of.
            let (mut worst, mut size) = (0.0f64, 0.0f64);
            for a in 0..c {
                let b = self.tbase[a] / lambda;
                let kk =
                    super::kernels::dot_mixed(&self.kmat[a * p..(a + 1) * p], &self.ktz) / lambda;
                let r = b - self.tvec[a] - kk;
                self.resid[a] = r;
                worst = worst.max(r.abs());
                size = size.max(b.abs() + self.tvec[a].abs() + kk.abs());
            }
            if !worst.is_finite() {
                return false;
            }
            if worst <= 1e-12 * size {
                return true;
            }
            if pass == MAX_REFINE {
                return false;
            }
            cholesky_solve(&self.mmat[..c * c], c, &mut self.resid[..c]);
            for (z, d) in self.tvec[..c].iter_mut().zip(&self.resid) {
                *z += d;
            }
        }
        false
    }

    /// The lower triangle of `Kd Kd^T` from f32 products, in blocks of rows.
    fn gram_f32(&mut self, c: usize) {
        use super::gemm::{Mat, MatMut, gemm};
        let p = self.p;
        let mut i0 = 0;
        while i0 < c {
            let rows = GRAM_BLOCK.min(c - i0);
            let cols = i0 + rows;
            let a = Mat::rows(&self.kmat[i0 * p..(i0 + rows) * p], rows, p);
            let b = Mat::rows(&self.kmat[..cols * p], cols, p).t();
            gemm(
                a,
                b,
                MatMut::rows(&mut self.gram_block[..rows * cols], rows, cols),
                None,
                false,
            );
            for r in 0..rows {
                let a = i0 + r;
                for (g, v) in self.gram[a * c..a * c + a + 1]
                    .iter_mut()
                    .zip(&self.gram_block[r * cols..r * cols + a + 1])
                {
                    *g = *v as f64;
                }
            }
            i0 += rows;
        }
    }

    /// The lower triangle of `Kd Kd^T` with the products and sums in f64.
    fn gram_f64(&mut self, c: usize) {
        let p = self.p;
        for a in 0..c {
            let ka = &self.kmat[a * p..(a + 1) * p];
            for b in 0..=a {
                let kb = &self.kmat[b * p..(b + 1) * p];
                self.gram[a * c + b] = super::kernels::dot_f64(ka, kb);
            }
        }
    }

    /// Solves `(G + lambda D) step = -grad` into `step`, `D` the per-parameter base
    /// dampings. False if the damped matrix is not
    /// positive definite (it always is for lambda > 0 and finite G, unless rounding
    /// destroyed it).
    pub(crate) fn solve(&mut self, lambda: f64) -> bool {
        let p = self.p;
        self.chol.copy_from_slice(&self.g_mat);
        for i in 0..p {
            self.chol[i * p + i] += lambda * self.diag[i];
        }
        if !cholesky(&mut self.chol, p) {
            return false;
        }
        for (s, g) in self.step.iter_mut().zip(&self.grad) {
            *s = -g;
        }
        cholesky_solve(&self.chol, p, &mut self.step);
        self.step.iter().all(|s| s.is_finite())
    }
}

impl GnBuffers {
    /// Starts a stream: the covariance is the prior's, `diag(1 / (scale * damping))`.
    pub(crate) fn start_stream(&mut self, scale: f64) {
        let p = self.p;
        self.cov.fill(0.0);
        for i in 0..p {
            self.cov[i * p + i] = 1.0 / (scale * self.diag[i]);
        }
        self.prior_scale = scale;
        self.streaming = true;
    }

    /// Forgetting: divides the covariance by `gamma`, then caps every parameter's variance
    /// at the prior's (scaling its row and column, which keeps the matrix positive
    /// definite), so directions the data never excites do not wind up without bound.
    pub(crate) fn forget(&mut self, gamma: f64) {
        let p = self.p;
        self.cov.iter_mut().for_each(|c| *c /= gamma);
        for i in 0..p {
            let cap = 1.0 / (self.prior_scale * self.diag[i]);
            let v = self.cov[i * p + i];
            if v > cap {
                let f = crate::math::sqrt64(cap / v);
                for k in 0..p {
                    self.cov[i * p + k] *= f;
                    self.cov[k * p + i] *= f;
                }
            }
        }
    }

    /// One recursive least-squares update with row `o` of `jac` and the residual `r`
    /// (target minus output) of that output: Sherman-Morrison on the covariance,
    /// `O(p^2)`. The parameter change goes to `step` (accumulated). False (nothing
    /// changed) if the update is numerically unusable (a covariance that rounding made
    /// indefinite, or non-finite values).
    pub(crate) fn rls_update(&mut self, o: usize, r: f64) -> bool {
        let p = self.p;
        let j = &self.jac[o * p..(o + 1) * p];
        // u = C j^T (C symmetric), in `grad` (free while streaming).
        for a in 0..p {
            let row = &self.cov[a * p..(a + 1) * p];
            self.grad[a] = row.iter().zip(j).map(|(c, jb)| c * *jb as f64).sum();
        }
        let denom = 1.0
            + j.iter()
                .zip(&self.grad)
                .map(|(jb, u)| *jb as f64 * u)
                .sum::<f64>();
        if !(denom.is_finite() && denom >= 1.0 - 1e-9 && r.is_finite()) {
            return false;
        }
        let gain = r / denom;
        for (s, u) in self.step.iter_mut().zip(&self.grad) {
            *s += gain * u;
        }
        // The lower triangle, mirrored: the covariance stays exactly symmetric. (Updated
        // independently, rounding makes C and C^T drift apart, and with forgetting the
        // antisymmetric part grows by 1/gamma per example until C is indefinite: a 1 kHz
        // stream with gamma = 0.995 broke down every ~6000 examples.)
        for a in 0..p {
            let ua = self.grad[a] / denom;
            for b in 0..=a {
                let c = self.cov[a * p + b] - ua * self.grad[b];
                self.cov[a * p + b] = c;
                self.cov[b * p + a] = c;
            }
        }
        true
    }
}

impl GnBuffers {
    /// Whether [`super::Session::observe`] folds one example's `outputs` rows in at once
    /// ([`GnBuffers::rls_block`], `O(F P^2 / 2 + 2 P^3)`) rather than one row at a time
    /// (`O(F P^2)`, with a constant three times larger): with at least twice as many outputs
    /// as parameters (rank1: 68 outputs, P = 3).
    pub(crate) fn block_update(&self, outputs: usize) -> bool {
        self.primal && outputs >= 2 * self.p
    }

    /// Starts accumulating one example's rows for [`GnBuffers::rls_block`]: `A = J^T J`
    /// (lower triangle, in `g_mat`, free while streaming) and `b = J^T r` (in `grad`).
    pub(crate) fn block_begin(&mut self) {
        self.g_mat.fill(0.0);
        self.grad.fill(0.0);
    }

    /// Adds row `o` of `jac`, whose residual (target minus output) is `r`.
    pub(crate) fn block_add(&mut self, o: usize, r: f64) {
        let p = self.p;
        let j = &self.jac[o * p..(o + 1) * p];
        for a in 0..p {
            let ja = j[a] as f64;
            self.grad[a] += r * ja;
            for (g, jb) in self.g_mat[a * p..=a * p + a].iter_mut().zip(j) {
                *g += ja * *jb as f64;
            }
        }
    }

    /// Folds the accumulated rows into the covariance at once, the information form of
    /// the row-at-a-time updates (which share one linearisation point, so the two agree
    /// up to rounding): with `C = L L^T`, `C' = (C^-1 + A)^-1 = L (I + L^T A L)^-1 L^T`,
    /// computed as `Z Z^T` with `Z = L R^-T`, `R R^T = I + L^T A L`; the step is `C' b`.
    /// Symmetric by construction. False if a factorisation fails or a value is not
    /// finite: the caller then ends the stream (the covariance is not kept).
    pub(crate) fn rls_block(&mut self) -> bool {
        let p = self.p;
        // L (lower triangle of `chol`).
        self.chol.copy_from_slice(&self.cov);
        if !cholesky(&mut self.chol, p) {
            return false;
        }
        let (a_mat, l, t) = (&self.g_mat, &self.chol, &mut self.cov);
        // T = A L into `cov` (C = L L^T is kept as L from here on).
        for r in 0..p {
            for c in 0..p {
                let mut sum = 0.0;
                for k in c..p {
                    let ark = if r >= k {
                        a_mat[r * p + k]
                    } else {
                        a_mat[k * p + r]
                    };
                    sum += ark * l[k * p + c];
                }
                t[r * p + c] = sum;
            }
        }
        // S = I + L^T T (lower triangle) into `g_mat`, then R.
        for i in 0..p {
            for j in 0..=i {
                let sum: f64 = (i..p).map(|k| l[k * p + i] * t[k * p + j]).sum();
                self.g_mat[i * p + j] = sum + if i == j { 1.0 } else { 0.0 };
            }
        }
        if !cholesky(&mut self.g_mat, p) {
            return false;
        }
        // Z = L R^-T into `cov`: row i solves R z^T = (row i of L)^T.
        let (r_mat, l, z) = (&self.g_mat, &self.chol, &mut self.cov);
        for i in 0..p {
            for j in 0..p {
                let lij = if j <= i { l[i * p + j] } else { 0.0 };
                let s: f64 = (0..j).map(|k| z[i * p + k] * r_mat[j * p + k]).sum();
                z[i * p + j] = (lij - s) / r_mat[j * p + j];
            }
        }
        // C' = Z Z^T into `chol`, then swapped into `cov`.
        for i in 0..p {
            for j in 0..=i {
                let c: f64 = (0..p)
                    .map(|k| self.cov[i * p + k] * self.cov[j * p + k])
                    .sum();
                self.chol[i * p + j] = c;
                self.chol[j * p + i] = c;
            }
        }
        core::mem::swap(&mut self.cov, &mut self.chol);
        for a in 0..p {
            let row = &self.cov[a * p..(a + 1) * p];
            self.step[a] = row.iter().zip(&self.grad).map(|(c, b)| c * b).sum();
        }
        self.step.iter().all(|s| s.is_finite()) && self.cov.iter().all(|c| c.is_finite())
    }
}

/// In-place Cholesky factorisation `A = L L^T` of a symmetric `n x n` row-major matrix
/// (the lower triangle is read and overwritten with `L`). False if `A` is not positive
/// definite.
///
/// Column by column, each column's entries are dot products of rows of `L` with the
/// column's own row, four rows at a time (the row's chunks loaded once for four), in one
/// vectorised function (one CPU-feature dispatch per factorisation: a dispatched dot
/// product per entry spent most of its time outside the arithmetic at 140 x 140).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
pub fn cholesky(a: &mut [f64], n: usize) -> bool {
    assert!(a.len() >= n * n, "cholesky shape");
    for j in 0..n {
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let rj = &mut head[j * n..j * n + n];
        let d = rj[j] - dot4(&rj[..j], [&rj[..j]; 4])[0];
        if d.is_nan() || d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = crate::math::sqrt64(d);
        rj[j] = d;
        let rj = &rj[..j];
        let mut rows = tail.chunks_exact_mut(n).take(n - j - 1);
        loop {
            let mut group: [Option<&mut [f64]>; 4] = [None, None, None, None];
            for g in group.iter_mut() {
                *g = rows.next();
            }
            if group[0].is_none() {
                break;
            }
            let refs: [&[f64]; 4] =
                core::array::from_fn(|q| group[q].as_deref().map_or(rj, |r| &r[..j]));
            let dots = dot4(rj, refs);
            for (g, dot) in group.iter_mut().zip(dots) {
                if let Some(row) = g {
                    row[j] = (row[j] - dot) / d;
                }
            }
        }
    }
    true
}

/// `[x . ys[0], .., x . ys[3]]`, the four sharing each chunk of `x`: written to vectorise
/// inside [`cholesky`] (inlined into its CPU-feature versions).
#[inline(always)]
fn dot4(x: &[f64], ys: [&[f64]; 4]) -> [f64; 4] {
    let mut acc = [[0.0f64; 4]; 4];
    let n = x.len() / 4 * 4;
    for t in (0..n).step_by(4) {
        for (q, y) in ys.iter().enumerate() {
            for l in 0..4 {
                acc[q][l] += y[t + l] * x[t + l];
            }
        }
    }
    let mut out = [0.0; 4];
    for (q, y) in ys.iter().enumerate() {
        out[q] = acc[q].iter().sum::<f64>()
            + x[n..].iter().zip(&y[n..]).map(|(a, b)| a * b).sum::<f64>();
    }
    out
}

/// Solves `L L^T x = b` in place of `b`, `L` from [`cholesky`].
pub fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_refuses_indefinite() {
        // A = M M^T + I for a fixed M.
        let n = 4;
        let m: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7 % 5) as f64 - 2.0) / 3.0)
            .collect();
        let mut a = alloc::vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let x = [1.0, -2.0, 0.5, 3.0];
        let b: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| a[i * n + j] * x[j]).sum())
            .collect();
        let mut l = a.clone();
        assert!(cholesky(&mut l, n));
        let mut got = b.clone();
        cholesky_solve(&l, n, &mut got);
        for (g, e) in got.iter().zip(x) {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
        let mut bad = a;
        bad[0] = -1.0;
        assert!(!cholesky(&mut bad, n));
    }

    /// The dual solve with the f32 Gram and f64 refinement gives the step of the direct
    /// solve with the f64 Gram (the form before it), and that step solves the primal
    /// equations `(K^T K + lambda D) step = -g` to the accuracy the dual form has (its
    /// `g - K^T z` cancels as `|K|^2 / lambda` grows); where the f32 Gram's rounding swamps
    /// the damping (nearly equal rows), the solve falls back to the f64 Gram.
    #[test]
    fn dual_solve_with_an_f32_gram_matches_the_f64_gram() {
        let mut rng = crate::test_rng::Rng::new(5);
        let (c, p) = (30, 50);
        // (row scale, lambda, nearly equal rows, bound on the primal residual, f64 path)
        for (scale, lambda, near, residual, exact) in [
            (1.0f64, 0.5, false, 1e-11, false),
            (1e2, 1e-1, false, 1e-7, false),
            (1e3, 1e-3, true, f64::INFINITY, true),
        ] {
            let diag: Vec<f64> = (0..p).map(|i| 0.5 + (i % 3) as f64).collect();
            let mut gn = GnBuffers::new(p, 1, diag.clone(), true, c, None).unwrap();
            let base: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
            for (i, kd) in gn.kmat.iter_mut().enumerate() {
                let k = if near {
                    scale * (base[i % p] + 1e-4 * rng.normal())
                } else {
                    rng.normal() * if i / p % 2 == 0 { scale } else { 1.0 }
                };
                *kd = (k * gn.inv_root_diag[i % p]) as f32; // stored as K D^-1/2
            }
            for g in gn.grad.iter_mut() {
                *g = rng.normal();
            }
            assert!(gn.solve_dual(lambda, c), "scale {scale}: solved");
            assert_eq!(gn.gram_exact, exact, "scale {scale}: which Gram");
            let step = gn.step.clone();
            // The direct solve with the f64 Gram.
            gn.gram_f64(c);
            gn.gram_exact = true;
            assert!(gn.solve_dual(lambda, c));
            let size = gn.step.iter().fold(0.0f64, |m, s| m.max(s.abs()));
            for (a, b) in step.iter().zip(&gn.step) {
                assert!((a - b).abs() <= 1e-9 * size, "scale {scale}: {a} vs {b}");
            }
            // r = K^T (K step) + lambda D step + g, against the size of its terms, with
            // the K the solve saw (its f32 rows, unscaled in f64).
            let k: Vec<f64> = (0..c * p)
                .map(|i| gn.kmat[i] as f64 / gn.inv_root_diag[i % p])
                .collect();
            let ks: Vec<f64> = (0..c)
                .map(|r| (0..p).map(|i| k[r * p + i] * step[i]).sum())
                .collect();
            for i in 0..p {
                let ktks: f64 = (0..c).map(|r| k[r * p + i] * ks[r]).sum();
                let terms: f64 = (0..c).map(|r| (k[r * p + i] * ks[r]).abs()).sum::<f64>()
                    + (lambda * diag[i] * step[i]).abs()
                    + gn.grad[i].abs();
                let r = ktks + lambda * diag[i] * step[i] + gn.grad[i];
                assert!(
                    r.abs() <= residual * terms,
                    "scale {scale}: residual {r} of {terms}"
                );
            }
        }
    }
}
