//! Damped Gauss-Newton adaptation as burn tensor ops: the same step the real-time engine
//! takes (`msr_core::realtime::gn`), written so that autodiff differentiates through it.
//! The trainer meta-learns through it (exact second-order meta-gradients, the per-layer
//! dampings included); the runtime's burn sessions adapt with it.
//!
//! A step solves `(G + Lambda) dv = -g` for every task of a batch at once, `G` the
//! (generalised) Gauss-Newton matrix of the support loss, `g` its gradient, `Lambda` the
//! per-layer dampings on the diagonal. `J` (d outputs / d v, `[T, N F, P]`) comes, for a
//! fully connected net, from one pass that carries every output direction back through
//! each task's weights ([`Net::jacobian_dense`]); for any other net from the hand-written
//! backward pass run once per (example, output) pair, each replica holding its one example
//! ([`Net::jacobian_replicas`]).
//! The solve is [`spd_solve`] (an inverse computed off the tape, then one refinement step
//! on it); with fewer support outputs than parameters (`N F < P`) it solves
//! the equivalent `N F x N F` system instead (`G = K^T K`, Woodbury's identity), for the
//! mean squared error (`K = sqrt(s) J`) and for cross-entropy (`K` the softmax-weighted,
//! centred rows of `J`), as the real-time engine's dual form does.
//!
//! Every step minimises the support loss plus the prior `1/2 |v - v_start|^2_Lambda`
//! (centred where adaptation started), as the real-time engine's do. Unlike the real-time
//! engine, a step here is always taken (no trial and retry: the path must be one
//! differentiable function); the steps the runtime takes are the same whenever they lower
//! that objective.

use burn::tensor::{Tensor, TensorData, activation};

use crate::layer::ApplyCache;
use crate::net::{MetaParams, Net, TaskParams};
use crate::spec::{Activation, Loss, Op};

/// The most support outputs (examples x outputs) a burn Gauss-Newton step takes: `J` holds
/// one row per (example, output) pair (for nets other than fully connected ones, each
/// computed by its own replica of the network), so its memory grows with this times the
/// network's activations or parameters. Larger sets are refused with an error (the real-time engine takes any number,
/// in chunks).
pub const MAX_BURN_GN_ROWS: usize = 2048;

/// Checks a support set of `n` examples of `outputs` against [`MAX_BURN_GN_ROWS`].
pub fn check_rows(n: usize, outputs: usize) -> Result<(), crate::error::Error> {
    let rows = n as u128 * outputs as u128;
    if rows > MAX_BURN_GN_ROWS as u128 {
        return Err(crate::error::DataError::Shape(crate::error::ShapeError::OverLimit {
            what: "support outputs (examples x outputs) for a Gauss-Newton step on burn; use the real-time engine".into(),
            value: Some(rows),
            limit: MAX_BURN_GN_ROWS as u64,
        })
        .into());
    }
    Ok(())
}

/// Which layers' adapted parameters Gauss-Newton moves (the others, like ANIL's frozen
/// body, stay as they are): one flag per layer.
pub type Moved = [bool];

fn constant<const D: usize>(values: Vec<f32>, shape: [usize; D], like: &Tensor<3>) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values, shape),
        (&like.device(), like.dtype()),
    )
}

/// The identity `[1, n, n]`, with `like`'s device and dtype.
fn identity(n: usize, like: &Tensor<3>) -> Tensor<3> {
    let eye: Vec<f32> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    constant(eye, [1, n, n], like)
}

/// Solves `a x = b` for symmetric positive definite `a` `[T, M, M]`, `b` `[T, M, 1]`,
/// differentiably and in `O(1)` tensor ops: `X0 = a^-1` is computed off the tape (an f64
/// Cholesky factorisation on the host, per task), then one step of iterative refinement,
/// `x = X0 b + X0 (b - a X0 b)`, runs on it. With `X0 = a^-1` its derivatives are the
/// solve's, `dx = X0 db - X0 da X0 b = d(a^-1 b)`; in f32, X0 is `a^-1` rounded to f32, so
/// value and derivatives carry a relative error of about `eps cond(a)`, as any f32 solve's
/// do (the f64 tests see them equal the tensor Cholesky's to 1e-9). (The tensor Cholesky,
/// [`cholesky_solve`], costs `O(M)` ops whose backward materialises a full `[T, M, M]` per
/// slice: most of a Gauss-Newton meta-training step.) The inverse is computed on the host:
/// on a GPU each call synchronises and copies `a`. A matrix that is not positive definite
/// (or not finite) gives NaN, as the tensor factorisation's square root of a negative
/// pivot does.
pub fn spd_solve(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    let [t, m, _] = a.dims();
    if m == 0 || t == 0 {
        return b;
    }
    let host = a
        .clone()
        .detach()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_else(|_| vec![f64::NAN; t * m * m]);
    let mut inv = vec![0.0f64; t * m * m];
    let mut col = vec![0.0f64; m];
    for (l, out) in host.chunks_exact(m * m).zip(inv.chunks_exact_mut(m * m)) {
        let mut l = l.to_vec();
        if !msr_core::realtime::gn::cholesky(&mut l, m) {
            out.fill(f64::NAN);
            continue;
        }
        for j in 0..m {
            col.fill(0.0);
            col[j] = 1.0;
            msr_core::realtime::gn::cholesky_solve(&l, m, &mut col);
            for (i, c) in col.iter().enumerate() {
                out[i * m + j] = *c;
            }
        }
    }
    let x0: Tensor<3> =
        Tensor::from_data(TensorData::new(inv, [t, m, m]), (&a.device(), a.dtype()));
    let y = x0.clone().matmul(b.clone());
    let r = b - a.matmul(y.clone());
    y + x0.matmul(r)
}

/// Solves `a x = b` for symmetric positive definite `a` `[T, M, M]`, `b` `[T, M, 1]`, by a
/// Cholesky factorisation written as tensor ops (differentiable; the reference that
/// [`spd_solve`] is tested against).
pub fn cholesky_solve(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    let [t, m, _] = a.dims();
    // Columns of L, each [T, M, 1].
    let mut cols: Vec<Tensor<3>> = Vec::with_capacity(m);
    let rows_from = |j: usize| -> Tensor<3> {
        let mask: Vec<f32> = (0..m).map(|i| if i >= j { 1.0 } else { 0.0 }).collect();
        constant(mask, [1, m, 1], &b)
    };
    for j in 0..m {
        let mut v = a.clone().slice([0..t, 0..m, j..j + 1]);
        if j > 0 {
            let l = Tensor::cat(cols.clone(), 2); // [T, M, j]
            let lj = l.clone().slice([0..t, j..j + 1, 0..j]); // [T, 1, j]
            v = v - l.matmul(lj.swap_dims(1, 2));
        }
        let d = v.clone().slice([0..t, j..j + 1, 0..1]).sqrt(); // [T, 1, 1]
        cols.push(v.div(d) * rows_from(j));
    }
    let l = Tensor::cat(cols, 2); // [T, M, M], lower triangular
    // L z = b, forward.
    let mut z: Vec<Tensor<3>> = Vec::with_capacity(m);
    for i in 0..m {
        let mut s = b.clone().slice([0..t, i..i + 1, 0..1]);
        if i > 0 {
            let zp = Tensor::cat(z.clone(), 1); // [T, i, 1]
            s = s - l.clone().slice([0..t, i..i + 1, 0..i]).matmul(zp);
        }
        z.push(s / l.clone().slice([0..t, i..i + 1, i..i + 1]));
    }
    // L^T x = z, backward.
    let mut x: Vec<Tensor<3>> = vec![z[m - 1].clone(); m];
    for i in (0..m).rev() {
        let mut s = z[i].clone();
        if i + 1 < m {
            let xn = Tensor::cat(x[i + 1..].to_vec(), 1); // [T, M-i-1, 1]
            // Row i of L^T from i+1 on: column i of L below the diagonal.
            let col = l.clone().slice([0..t, i + 1..m, i..i + 1]).swap_dims(1, 2);
            s = s - col.matmul(xn);
        }
        x[i] = s / l.clone().slice([0..t, i..i + 1, i..i + 1]);
    }
    Tensor::cat(x, 1)
}

impl Net {
    /// Outputs `[T, N, F]` and `J` `[T, N F, P]`: the derivative of every output of every
    /// support example with respect to the moved adapted parameters (flattened per layer,
    /// per vector: v or W, then the bias). A fully connected net takes
    /// [`Net::jacobian_dense`], any other [`Net::jacobian_replicas`].
    pub fn jacobian(
        &self,
        params: &MetaParams,
        task: &TaskParams,
        x: Tensor<3>,
        moved: &Moved,
    ) -> (Tensor<3>, Tensor<3>) {
        let dense = self
            .spec()
            .layers
            .iter()
            .all(|l| matches!(l.op, Op::Linear { .. } | Op::ShareLinear { .. }));
        if dense {
            self.jacobian_dense(params, task, x, moved)
        } else {
            self.jacobian_replicas(params, task, x, moved)
        }
    }

    /// [`Net::jacobian`] of a fully connected net (every layer `Linear` or `ShareLinear`)
    /// from one forward pass over the support set: the `F` output directions of every
    /// example are carried back together through each task's own weights (`delta`,
    /// `[T, N, F, width]`), and a layer's rows are contracted with its input and `U`
    /// directly: `J_v[e, o, j] = sum_ab delta[e, o, a] h[e, b] U[a b, j]`, computed as
    /// `delta (h U)`, so neither the weights nor the per-row weight gradients
    /// (`[T N F, out in]`) are ever materialised. Plain tensor ops, as the replicas' way
    /// (autodiff differentiates through it). A Gauss-Newton meta-training step of a
    /// 128-128-128 msr-mlp at K = 20 (16 tasks) took 3.3 s with the replicas (which copy
    /// every weight once per row), 0.9 s with this (and 0.16 s with [`spd_solve`] too).
    pub fn jacobian_dense(
        &self,
        params: &MetaParams,
        task: &TaskParams,
        x: Tensor<3>,
        moved: &Moved,
    ) -> (Tensor<3>, Tensor<3>) {
        let [t, n, _] = x.dims();
        let fo = self.output_len();
        let (out, caches) = self.run(params, task, x.clone(), true);
        let out = out.reshape([t, n, fo]);
        // The lowest layer whose parameters move: nothing below it is needed.
        let lowest = (0..moved.len())
            .find(|&i| moved[i] && !task.layers[i].is_empty())
            .unwrap_or(0);
        // d output o of example e / d (the current layer's output), [T, N, F, width].
        let mut delta = identity(fo, &x)
            .repeat_dim(0, t * n)
            .reshape([t, n, fo, fo]);
        let mut blocks: Vec<Vec<Tensor<3>>> = Vec::new();
        for i in (lowest..self.spec().layers.len()).rev() {
            let spec = &self.spec().layers[i];
            let cache = &caches[i];
            let (inputs, outputs) = match spec.op {
                Op::Linear {
                    inputs, outputs, ..
                }
                | Op::ShareLinear {
                    inputs, outputs, ..
                } => (inputs, outputs),
                _ => unreachable!("jacobian_dense takes fully connected nets"),
            };
            if let Some(a) = &cache.act {
                let a = a.clone().reshape([t, n, 1, outputs]);
                delta = match spec.activation {
                    Activation::Relu => {
                        let off = a.clone().lower_equal_elem(0.0);
                        delta * a.ones_like().mask_fill(off, 0.0)
                    }
                    Activation::Tanh => delta * a.square().neg().add_scalar(1.0),
                    Activation::Gelu => delta * crate::net::gelu_grad(a),
                    Activation::Identity => delta,
                };
            }
            let rows = |w: Tensor<2>| {
                if w.dims()[0] == t {
                    w
                } else {
                    w.repeat_dim(0, t)
                }
            };
            if moved[i] && !task.layers[i].is_empty() {
                let Some(ApplyCache::Input(h)) = &cache.apply else {
                    unreachable!("dense layers keep their input")
                };
                let d = delta.clone().reshape([t * n, fo, outputs]);
                let h = h.clone().reshape([t * n, inputs]);
                let main = match spec.op {
                    Op::ShareLinear { .. } => {
                        let u = params.layers[i].shared[0].clone(); // [out in, k]
                        let k = u.dims()[1];
                        let u = u
                            .reshape([outputs, inputs, k])
                            .swap_dims(0, 1)
                            .reshape([inputs, outputs * k]);
                        let hu = h.matmul(u).reshape([t * n, outputs, k]);
                        d.clone().matmul(hu).reshape([t, n * fo, k])
                    }
                    _ => (d.clone().reshape([t * n, fo, outputs, 1])
                        * h.reshape([t * n, 1, 1, inputs]))
                    .reshape([t, n * fo, outputs * inputs]),
                };
                let mut block = vec![main];
                if task.layers[i].len() > 1 {
                    block.push(d.reshape([t, n * fo, outputs]));
                }
                blocks.push(block);
            }
            if i > lowest {
                let w = rows(
                    cache
                        .weight
                        .clone()
                        .expect("dense layers keep their weight"),
                );
                delta = delta
                    .reshape([t, n * fo, outputs])
                    .matmul(w.reshape([t, outputs, inputs]))
                    .reshape([t, n, fo, inputs]);
            }
        }
        let cols: Vec<Tensor<3>> = blocks.into_iter().rev().flatten().collect();
        (out, Tensor::cat(cols, 2))
    }

    /// [`Net::jacobian`] for any net: one replica of the network per (example, output)
    /// pair, each holding its one example, and one hand-written backward pass.
    pub fn jacobian_replicas(
        &self,
        params: &MetaParams,
        task: &TaskParams,
        x: Tensor<3>,
        moved: &Moved,
    ) -> (Tensor<3>, Tensor<3>) {
        let [t, n, fi] = x.dims();
        let fo = self.output_len();
        let c = n * fo;
        let rep = |v: &Tensor<2>| {
            let [rows, len] = v.dims();
            let v = if rows == t {
                v.clone()
            } else {
                v.clone().repeat_dim(0, t)
            };
            v.reshape([t, 1, len])
                .repeat_dim(1, c)
                .reshape([t * c, len])
        };
        let task_r = TaskParams {
            layers: task
                .layers
                .iter()
                .map(|l| l.iter().map(rep).collect())
                .collect(),
        };
        // Replica (e, o) holds example e alone: one backward per (example, output) pair,
        // each through one example (not the whole support set: n times less work).
        let xr = x
            .clone()
            .reshape([t, n, 1, fi])
            .repeat_dim(2, fo)
            .reshape([t * c, 1, fi]);
        let (out_r, caches) = self.run(params, &task_r, xr, true);
        let [_, _, ch, sp] = out_r.dims();
        let out = out_r
            .reshape([t, n, fo, fo])
            .slice([0..t, 0..n, 0..1, 0..fo])
            .reshape([t, n, fo]);
        // Replica (e, o)'s cotangent: output o of its example.
        let dy = identity(fo, &x)
            .repeat_dim(0, t * n)
            .reshape([t * c, 1, ch, sp]);
        let grads = self.backward(params, &task_r, &caches, dy);
        let cols: Vec<Tensor<2>> = grads
            .layers
            .into_iter()
            .zip(moved)
            .filter(|(_, m)| **m)
            .flat_map(|(l, _)| l)
            .collect();
        let j = Tensor::cat(cols, 1);
        let p = j.dims()[1];
        (out, j.reshape([t, c, p]))
    }

    /// The per-parameter dampings `[1, P]` of the moved layers: each layer's
    /// `exp(params.lr)` (in Gauss-Newton mode a layer's `lr` slot holds its log-damping).
    fn dampings(&self, params: &MetaParams, task: &TaskParams, moved: &Moved) -> Tensor<2> {
        // Log-dampings are kept within the model file's +-30 (training could drift past).
        let parts: Vec<Tensor<2>> = params
            .layers
            .iter()
            .zip(&task.layers)
            .zip(moved)
            .filter(|(_, m)| **m)
            .map(|((p, vs), _)| {
                let len: usize = vs.iter().map(|v| v.dims()[1]).sum();
                p.lr.clone().clamp(-30.0, 30.0).exp().repeat_dim(1, len)
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// One damped Gauss-Newton step for every task on the support loss plus the prior
    /// `1/2 |v - anchor|^2_Lambda`: `x` `[T, N, in]`, `y` `[T, N, out]`; the moved layers'
    /// log-dampings are in `params`' `lr` slots. From `task == anchor` it is the plain
    /// damped step.
    pub fn gn_step(
        &self,
        params: &MetaParams,
        task: TaskParams,
        x: Tensor<3>,
        y: Tensor<3>,
        moved: &Moved,
        anchor: &TaskParams,
    ) -> TaskParams {
        let [t, n, _] = x.dims();
        let fo = self.output_len();
        let c = n * fo;
        let (out, j) = self.jacobian(params, &task, x, moved);
        let p = j.dims()[2];
        let lam = self.dampings(params, &task, moved).reshape([1, 1, p]); // [1, 1, P]
        let lam_col = lam.clone().reshape([1, p, 1]);
        // The prior's gradient, Lambda (v - anchor), [T, P, 1].
        let flat = |tp: &TaskParams| -> Tensor<2> {
            let parts: Vec<Tensor<2>> = tp
                .layers
                .iter()
                .zip(moved)
                .filter(|(_, m)| **m)
                .flat_map(|(l, _)| {
                    l.iter().map(|v| {
                        if v.dims()[0] == t {
                            v.clone()
                        } else {
                            v.clone().repeat_dim(0, t)
                        }
                    })
                })
                .collect();
            Tensor::cat(parts, 1)
        };
        let prior = (flat(&task) - flat(anchor)).reshape([t, p, 1]) * lam_col.clone();
        let jt = j.clone().swap_dims(1, 2); // [T, P, C]
        let step = match self.spec().loss {
            Loss::Mse if c < p => {
                // G = K^T K with K = sqrt(s) J.
                let s = 2.0 / c as f64;
                let r = (out - y).reshape([t, c, 1]);
                let g = jt.matmul(r).mul_scalar(s) + prior;
                push_through(j.mul_scalar(s.sqrt()), g, lam, lam_col)
            }
            Loss::CrossEntropy if c < p => {
                // G = K^T K with K's rows, per example e and output o,
                // sqrt(mass_e p_eo / N) (J_eo - sum_o' p_eo' J_eo'): a C x C solve instead
                // of P x P (a glyph MSR-Conv: 25 rows against 1997 parameters). sqrt(p) as
                // exp(log_softmax / 2), whose derivative stays finite where p underflows.
                let pr = activation::softmax(out.clone(), 2); // [T, N, F]
                let mass = y.clone().sum_dim(2); // [T, N, 1]
                let q = (pr.clone() * mass.clone() - y).div_scalar(n as f64);
                let g = jt.matmul(q.reshape([t, c, 1])) + prior;
                let j4 = j.reshape([t, n, fo, p]);
                let u = (j4.clone() * pr.reshape([t, n, fo, 1])).sum_dim(2); // [T, N, 1, P]
                let root_p = activation::log_softmax(out, 2).mul_scalar(0.5).exp();
                let scale = root_p * mass.div_scalar(n as f64).sqrt(); // [T, N, F]
                let k = (j4 - u) * scale.reshape([t, n, fo, 1]);
                push_through(k.reshape([t, c, p]), g, lam, lam_col)
            }
            Loss::Mse => {
                let s = 2.0 / c as f64;
                let r = (out - y).reshape([t, c, 1]);
                let g = jt.clone().matmul(r).mul_scalar(s) + prior;
                let gmat = jt.matmul(j).mul_scalar(s);
                self.damped_solve(gmat, g, lam, p)
            }
            Loss::CrossEntropy => {
                // G = 1/N sum_e mass_e J_e^T (diag p_e - p_e p_e^T) J_e, g = J^T q.
                let pr = activation::softmax(out, 2); // [T, N, F]
                let mass = y.clone().sum_dim(2); // [T, N, 1]
                let q = (pr.clone() * mass.clone() - y).div_scalar(n as f64);
                let g = jt.clone().matmul(q.reshape([t, c, 1])) + prior;
                let w = (pr.clone() * mass.clone())
                    .div_scalar(n as f64)
                    .reshape([t, c, 1]);
                let term1 = jt.matmul(j.clone() * w);
                let u = (j.reshape([t, n, fo, p]) * pr.reshape([t, n, fo, 1]))
                    .sum_dim(2)
                    .reshape([t, n, p]); // J_e^T p_e
                let um = u.clone() * mass.div_scalar(n as f64);
                let term2 = u.swap_dims(1, 2).matmul(um);
                self.damped_solve(term1 - term2, g, lam, p)
            }
        };
        // Split the step [T, P, 1] back into the moved layers' vectors.
        let step = step.reshape([t, p]);
        let mut at = 0;
        let layers = task
            .layers
            .into_iter()
            .zip(moved)
            .map(|(vs, m)| {
                if !*m {
                    return vs;
                }
                vs.into_iter()
                    .map(|v| {
                        let len = v.dims()[1];
                        let d = step.clone().slice([0..t, at..at + len]);
                        at += len;
                        let v = if v.dims()[0] == t {
                            v
                        } else {
                            v.repeat_dim(0, t)
                        };
                        v + d
                    })
                    .collect()
            })
            .collect();
        TaskParams { layers }
    }

    /// `-(G + diag(lam)) \ g`, `G` `[T, P, P]`, `g` `[T, P, 1]`, `lam` `[1, 1, P]`.
    fn damped_solve(&self, gmat: Tensor<3>, g: Tensor<3>, lam: Tensor<3>, p: usize) -> Tensor<3> {
        let d = identity(p, &g) * lam;
        spd_solve(gmat + d, g).neg()
    }

    /// `steps` damped Gauss-Newton steps from `task`, the prior centred there (see
    /// [`Net::gn_step`]).
    pub fn adapt_gn(
        &self,
        params: &MetaParams,
        mut task: TaskParams,
        x: Tensor<3>,
        y: Tensor<3>,
        steps: usize,
        moved: &Moved,
    ) -> TaskParams {
        let anchor = task.clone();
        for _ in 0..steps {
            task = self.gn_step(params, task, x.clone(), y.clone(), moved, &anchor);
        }
        task
    }
}

/// `-(K^T K + Lambda)^-1 g` through a `C x C` system, `K` `[T, C, P]` with `C < P`
/// (Woodbury): `Lambda^-1 (g - K^T z)` with `(I + K Lambda^-1 K^T) z = K Lambda^-1 g`.
/// `g` `[T, P, 1]`, `lam` `[1, 1, P]`, `lam_col` `[1, P, 1]`.
fn push_through(k: Tensor<3>, g: Tensor<3>, lam: Tensor<3>, lam_col: Tensor<3>) -> Tensor<3> {
    let c = k.dims()[1];
    let m = (k.clone() / lam).matmul(k.clone().swap_dims(1, 2)) + identity(c, &g);
    let rhs = k.clone().matmul(g.clone() / lam_col.clone());
    let z = spd_solve(m, rhs);
    (g - k.swap_dims(1, 2).matmul(z)).div(lam_col).neg() // [T, P, 1]
}

#[cfg(test)]
#[path = "gn_tests.rs"]
mod tests;
