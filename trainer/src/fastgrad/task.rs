//! One task's exact meta-gradient, by hand: the inner SGD steps forward, the query loss,
//! then the reverse pass back through the inner steps. Reversing a step
//! `theta' = theta - lr * g(theta)` needs `H u` (the support loss's Hessian times
//! `u = lr * theta_bar'`) and `(dg/dU)^T u`: both are gradients of `phi = <g, u>`, the
//! support loss's derivative along `u`, computed forward-over-reverse (a tangent pushed
//! through the stored forward and backward passes). `W = reshape(U a)` is linear in `a`, so
//! the tangent in `a` is the tangent `U u_a` in `W`, and `d phi / dU = dot(D_W) a^T +
//! D_W u_a^T` (rank two per step): the rank-one terms of `U`'s gradient are collected per
//! task and added with one product.
//!
//! All buffers belong to a [`Workspace`] made once: a step allocates nothing.

use super::real::{Real, View};
use super::{DenseNet, Meta};
use msr_runtime::Activation;

/// The forward and backward pass at one parameter point on one set of examples.
struct Pass<R> {
    n: usize,
    /// Adapted weight vector (`v` or `vec(W)`) and bias per layer.
    a: Vec<Vec<R>>,
    b: Vec<Vec<R>>,
    /// The materialised weight `[out, in]`.
    w: Vec<Vec<R>>,
    /// Layer outputs `[n, out]`, the activation's first and second derivatives there.
    h: Vec<Vec<R>>,
    d1: Vec<Vec<R>>,
    d2: Vec<Vec<R>>,
    /// d loss / d layer output, d loss / d pre-activation `[n, out]`.
    e: Vec<Vec<R>>,
    dz: Vec<Vec<R>>,
    /// d loss / d W, d loss / d b, d loss / d a.
    dw: Vec<Vec<R>>,
    db: Vec<Vec<R>>,
    ga: Vec<Vec<R>>,
}

/// A tangent pushed through a pass (see the module documentation).
struct Tangent<R> {
    ua: Vec<Vec<R>>,
    ub: Vec<Vec<R>>,
    wt: Vec<Vec<R>>,
    zt: Vec<Vec<R>>,
    ht: Vec<Vec<R>>,
    et: Vec<Vec<R>>,
    dzt: Vec<Vec<R>>,
    dwt: Vec<Vec<R>>,
    /// `H u`: d phi / d a, d phi / d b.
    hua: Vec<Vec<R>>,
    hub: Vec<Vec<R>>,
}

/// Every buffer one task's meta-gradient needs, for fixed sizes.
pub struct Workspace<R> {
    steps: usize,
    support: Vec<Pass<R>>,
    query: Pass<R>,
    tan: Tangent<R>,
    /// Adjoints of the adapted parameters, and of the learning rates.
    abar: Vec<Vec<R>>,
    bbar: Vec<Vec<R>>,
    lrbar: Vec<R>,
    /// Per MSR layer, the rank-one factors of U's gradient: `fa` `[k, 2S+1]` (columns),
    /// `fb` `[2S+1, out*in]` (rows): row s < S is `D_W` of support step s (with
    /// `-u_a`), row S the query's `D_W` (with `a_S`), row S+1+s the tangent's `D_W` of
    /// step s (with `-a_s`).
    fa: Vec<Vec<R>>,
    fb: Vec<Vec<R>>,
}

fn zeros<R: Real>(n: usize) -> Vec<R> {
    vec![R::default(); n]
}

impl<R: Real> Pass<R> {
    fn new(net: &DenseNet, n: usize) -> Self {
        let per = |f: &dyn Fn(&super::DenseLayer) -> usize| -> Vec<Vec<R>> {
            net.layers.iter().map(|l| zeros(f(l))).collect()
        };
        Pass {
            n,
            a: per(&|l| l.adapted_len()),
            b: per(&|l| if l.bias { l.outputs } else { 0 }),
            w: per(&|l| l.outputs * l.inputs),
            h: per(&|l| n * l.outputs),
            d1: per(&|l| n * l.outputs),
            d2: per(&|l| n * l.outputs),
            e: per(&|l| n * l.outputs),
            dz: per(&|l| n * l.outputs),
            dw: per(&|l| l.outputs * l.inputs),
            db: per(&|l| if l.bias { l.outputs } else { 0 }),
            ga: per(&|l| l.adapted_len()),
        }
    }
}

impl<R: Real> Workspace<R> {
    /// Buffers for `net` with `support` and `query` examples per task and `steps` inner
    /// steps.
    pub fn new(net: &DenseNet, support: usize, query: usize, steps: usize) -> Self {
        let per = |f: &dyn Fn(&super::DenseLayer) -> usize| -> Vec<Vec<R>> {
            net.layers.iter().map(|l| zeros(f(l))).collect()
        };
        let n = support;
        let m = 2 * steps + 1;
        Workspace {
            steps,
            support: (0..steps).map(|_| Pass::new(net, support)).collect(),
            query: Pass::new(net, query),
            tan: Tangent {
                ua: per(&|l| l.adapted_len()),
                ub: per(&|l| if l.bias { l.outputs } else { 0 }),
                wt: per(&|l| l.outputs * l.inputs),
                zt: per(&|l| n * l.outputs),
                ht: per(&|l| n * l.outputs),
                et: per(&|l| n * l.outputs),
                dzt: per(&|l| n * l.outputs),
                dwt: per(&|l| l.outputs * l.inputs),
                hua: per(&|l| l.adapted_len()),
                hub: per(&|l| if l.bias { l.outputs } else { 0 }),
            },
            abar: per(&|l| l.adapted_len()),
            bbar: per(&|l| if l.bias { l.outputs } else { 0 }),
            lrbar: zeros(net.layers.len()),
            fa: per(&|l| l.k.map_or(0, |k| k * m)),
            fb: per(&|l| l.k.map_or(0, |_| m * l.outputs * l.inputs)),
        }
    }
}

/// The activation, its first and second derivatives at `z`.
fn act<R: Real>(a: Activation, z: R) -> (R, R, R) {
    let (zero, one) = (R::of(0.0), R::of(1.0));
    match a {
        Activation::Identity => (z, one, zero),
        Activation::Relu => {
            if z > zero {
                (z, one, zero)
            } else {
                (zero, zero, zero)
            }
        }
        Activation::Tanh => {
            let h = z.tanh();
            let d1 = one - h * h;
            (h, d1, R::of(-2.0) * h * d1)
        }
        Activation::Gelu => {
            let cdf = R::of(0.5) * (one + (z * R::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (R::of(-0.5) * z * z).exp() * R::of(0.398_942_280_401_432_7);
            (z * cdf, cdf + z * pdf, pdf * (R::of(2.0) - z * z))
        }
    }
}

/// `W = reshape(U a)` (MSR) or `a` itself (plain): `dst` `[out*in]`.
fn materialize<R: Real>(k: Option<usize>, ut: &[R], a: &[R], dst: &mut [R]) {
    match k {
        Some(k) => R::gemm(
            View::rows(a, 1, k),
            View::rows(ut, k, dst.len()),
            dst,
            false,
        ),
        None => dst.copy_from_slice(a),
    }
}

/// `M^T d`: `U^T vec(d)` (MSR) or `d` itself (plain).
fn pull_back<R: Real>(k: Option<usize>, ut: &[R], d: &[R], dst: &mut [R]) {
    match k {
        // As one row times U: the kernel's single-row path streams U's columns.
        Some(k) => R::gemm(
            View::rows(d, 1, d.len()),
            View::rows(ut, k, d.len()).t(),
            dst,
            false,
        ),
        None => dst.copy_from_slice(d),
    }
}

fn dot<R: Real>(a: &[R], b: &[R]) -> R {
    let mut s = R::default();
    for (x, y) in a.iter().zip(b) {
        s += *x * *y;
    }
    s
}

/// Adds `v` (one per column) to every row of `m`.
fn add_rows<R: Real>(m: &mut [R], v: &[R]) {
    if v.is_empty() {
        return;
    }
    for row in m.chunks_exact_mut(v.len()) {
        for (o, x) in row.iter_mut().zip(v) {
            *o += *x;
        }
    }
}

/// Column sums of `m` `[n, cols]` into `dst` `[cols]`.
fn col_sums<R: Real>(m: &[R], dst: &mut [R]) {
    if dst.is_empty() {
        return;
    }
    dst.fill(R::default());
    for row in m.chunks_exact(dst.len()) {
        for (o, x) in dst.iter_mut().zip(row) {
            *o += *x;
        }
    }
}

/// Forward pass, MSE loss and backward pass of `p` (its `a`, `b` set) on `x`, `y`;
/// returns the loss.
fn pass<R: Real>(net: &DenseNet, meta: &Meta<R>, p: &mut Pass<R>, x: &[R], y: &[R]) -> R {
    let (n, nl) = (p.n, net.layers.len());
    for (l, layer) in net.layers.iter().enumerate() {
        materialize(layer.k, &meta.layers[l].ut, &p.a[l], &mut p.w[l]);
        let (before, rest) = p.h.split_at_mut(l);
        let input = if l == 0 { x } else { &before[l - 1][..] };
        let z = &mut rest[0];
        R::gemm(
            View::rows(input, n, layer.inputs),
            View::rows(&p.w[l], layer.outputs, layer.inputs).t(),
            z,
            false,
        );
        add_rows(z, &p.b[l]);
        for ((zi, d1), d2) in z.iter_mut().zip(&mut p.d1[l]).zip(&mut p.d2[l]) {
            (*zi, *d1, *d2) = act(layer.activation, *zi);
        }
    }
    let out = &p.h[nl - 1];
    let scale = R::of(2.0 / (n * net.layers[nl - 1].outputs) as f64);
    let mut loss = R::default();
    for ((e, o), t) in p.e[nl - 1].iter_mut().zip(out).zip(y) {
        let d = *o - *t;
        loss += d * d;
        *e = scale * d;
    }
    for l in (0..nl).rev() {
        let layer = &net.layers[l];
        for ((dz, e), d1) in p.dz[l].iter_mut().zip(&p.e[l]).zip(&p.d1[l]) {
            *dz = *e * *d1;
        }
        let input = if l == 0 { x } else { &p.h[l - 1][..] };
        R::gemm(
            View::rows(&p.dz[l], n, layer.outputs).t(),
            View::rows(input, n, layer.inputs),
            &mut p.dw[l],
            false,
        );
        col_sums(&p.dz[l], &mut p.db[l]);
        if l > 0 {
            let (before, _) = p.e.split_at_mut(l);
            R::gemm(
                View::rows(&p.dz[l], n, layer.outputs),
                View::rows(&p.w[l], layer.outputs, layer.inputs),
                &mut before[l - 1],
                false,
            );
        }
        pull_back(layer.k, &meta.layers[l].ut, &p.dw[l], &mut p.ga[l]);
    }
    loss * R::of(1.0 / (n * net.layers[nl - 1].outputs) as f64)
}

/// Pushes the tangent `(t.ua, t.ub)` through the stored pass `p` on `x`: fills `t.hua`,
/// `t.hub` (`H u`) and `t.dwt` (the tangent of `D_W`). Layers before `live` have a zero
/// tangent (their learning rate is 0), so their forward tangent is skipped.
fn tangent<R: Real>(
    net: &DenseNet,
    meta: &Meta<R>,
    p: &Pass<R>,
    t: &mut Tangent<R>,
    x: &[R],
    live: usize,
) {
    let (n, nl) = (p.n, net.layers.len());
    for l in live..nl {
        let layer = &net.layers[l];
        materialize(layer.k, &meta.layers[l].ut, &t.ua[l], &mut t.wt[l]);
        let input = if l == 0 { x } else { &p.h[l - 1][..] };
        let zt = &mut t.zt[l];
        R::gemm(
            View::rows(input, n, layer.inputs),
            View::rows(&t.wt[l], layer.outputs, layer.inputs).t(),
            zt,
            false,
        );
        if l > live {
            R::gemm(
                View::rows(&t.ht[l - 1], n, layer.inputs),
                View::rows(&p.w[l], layer.outputs, layer.inputs).t(),
                zt,
                true,
            );
        }
        add_rows(zt, &t.ub[l]);
        for ((ht, z), d1) in t.ht[l].iter_mut().zip(zt.iter()).zip(&p.d1[l]) {
            *ht = *z * *d1;
        }
    }
    let scale = R::of(2.0 / (n * net.layers[nl - 1].outputs) as f64);
    for (et, ht) in t.et[nl - 1].iter_mut().zip(&t.ht[nl - 1]) {
        *et = scale * *ht;
    }
    for l in (0..nl).rev() {
        let layer = &net.layers[l];
        let dzt = &mut t.dzt[l];
        let terms = dzt.iter_mut().zip(&t.et[l]).zip(&p.d1[l]);
        if l >= live {
            let second = p.e[l].iter().zip(&p.d2[l]).zip(&t.zt[l]);
            for (((d, et), d1), ((e, d2), zt)) in terms.zip(second) {
                *d = *et * *d1 + *e * *d2 * *zt;
            }
        } else {
            for ((d, et), d1) in terms {
                *d = *et * *d1;
            }
        }
        let input = if l == 0 { x } else { &p.h[l - 1][..] };
        R::gemm(
            View::rows(dzt, n, layer.outputs).t(),
            View::rows(input, n, layer.inputs),
            &mut t.dwt[l],
            false,
        );
        if l > live {
            R::gemm(
                View::rows(&p.dz[l], n, layer.outputs).t(),
                View::rows(&t.ht[l - 1], n, layer.inputs),
                &mut t.dwt[l],
                true,
            );
        }
        col_sums(dzt, &mut t.hub[l]);
        if l > 0 {
            let (before, _) = t.et.split_at_mut(l);
            R::gemm(
                View::rows(dzt, n, layer.outputs),
                View::rows(&p.w[l], layer.outputs, layer.inputs),
                &mut before[l - 1],
                false,
            );
            if l >= live {
                R::gemm(
                    View::rows(&p.dz[l], n, layer.outputs),
                    View::rows(&t.wt[l], layer.outputs, layer.inputs),
                    &mut before[l - 1],
                    true,
                );
            }
        }
        pull_back(layer.k, &meta.layers[l].ut, &t.dwt[l], &mut t.hua[l]);
    }
}

/// One task's query loss, and its meta-gradient into `grad` (added, or written over when
/// `overwrite`). `xs` `[support, in]`, `ys` `[support, out]`, `xq`, `yq` likewise.
#[allow(clippy::too_many_arguments)]
pub fn task_grad<R: Real>(
    net: &DenseNet,
    meta: &Meta<R>,
    ws: &mut Workspace<R>,
    (xs, ys): (&[R], &[R]),
    (xq, yq): (&[R], &[R]),
    first_order: bool,
    grad: &mut Meta<R>,
    overwrite: bool,
) -> R {
    let (nl, steps) = (net.layers.len(), ws.steps);
    let m = 2 * steps + 1;
    // Forward through the inner steps.
    for l in 0..nl {
        let first = ws.support.first_mut().unwrap_or(&mut ws.query);
        first.a[l].copy_from_slice(&meta.layers[l].a0);
        first.b[l].copy_from_slice(&meta.layers[l].b0);
    }
    for s in 0..steps {
        let (done, rest) = ws.support.split_at_mut(s + 1);
        let p = &mut done[s];
        pass(net, meta, p, xs, ys);
        let next = rest.first_mut().unwrap_or(&mut ws.query);
        for l in 0..nl {
            let lr = meta.layers[l].lr;
            for ((n, a), g) in next.a[l].iter_mut().zip(&p.a[l]).zip(&p.ga[l]) {
                *n = *a - lr * *g;
            }
            for ((n, b), g) in next.b[l].iter_mut().zip(&p.b[l]).zip(&p.db[l]) {
                *n = *b - lr * *g;
            }
            if net.layers[l].k.is_some() {
                ws.fb[l][s * p.dw[l].len()..(s + 1) * p.dw[l].len()].copy_from_slice(&p.dw[l]);
            }
        }
    }
    let loss = pass(net, meta, &mut ws.query, xq, yq);
    // Reverse.
    for l in 0..nl {
        ws.abar[l].copy_from_slice(&ws.query.ga[l]);
        ws.bbar[l].copy_from_slice(&ws.query.db[l]);
        ws.lrbar[l] = R::default();
        if let Some(k) = net.layers[l].k {
            let len = ws.query.dw[l].len();
            ws.fb[l][steps * len..(steps + 1) * len].copy_from_slice(&ws.query.dw[l]);
            for j in 0..k {
                ws.fa[l][j * m + steps] = ws.query.a[l][j];
            }
        }
    }
    let live = (0..nl)
        .find(|&l| meta.layers[l].lr != R::default())
        .unwrap_or(nl);
    for s in (0..steps).rev() {
        let p = &ws.support[s];
        for l in 0..nl {
            ws.lrbar[l] -= dot(&ws.abar[l], &p.ga[l]) + dot(&ws.bbar[l], &p.db[l]);
        }
        if first_order || live == nl {
            continue;
        }
        for l in 0..nl {
            let lr = meta.layers[l].lr;
            for (u, a) in ws.tan.ua[l].iter_mut().zip(&ws.abar[l]) {
                *u = lr * *a;
            }
            for (u, b) in ws.tan.ub[l].iter_mut().zip(&ws.bbar[l]) {
                *u = lr * *b;
            }
        }
        tangent(net, meta, p, &mut ws.tan, xs, live);
        for l in 0..nl {
            for (a, h) in ws.abar[l].iter_mut().zip(&ws.tan.hua[l]) {
                *a -= *h;
            }
            for (b, h) in ws.bbar[l].iter_mut().zip(&ws.tan.hub[l]) {
                *b -= *h;
            }
            if let Some(k) = net.layers[l].k {
                let len = p.dw[l].len();
                let row = steps + 1 + s;
                ws.fb[l][row * len..(row + 1) * len].copy_from_slice(&ws.tan.dwt[l]);
                for j in 0..k {
                    ws.fa[l][j * m + s] = -ws.tan.ua[l][j];
                    ws.fa[l][j * m + row] = -p.a[l][j];
                }
            }
        }
    }
    for l in 0..nl {
        let g = &mut grad.layers[l];
        let put = |dst: &mut [R], src: &[R]| {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = if overwrite { *s } else { *d + *s };
            }
        };
        put(&mut g.a0, &ws.abar[l]);
        put(&mut g.b0, &ws.bbar[l]);
        g.lr = if overwrite {
            ws.lrbar[l]
        } else {
            g.lr + ws.lrbar[l]
        };
        if let Some(k) = net.layers[l].k {
            let len = net.layers[l].outputs * net.layers[l].inputs;
            // First order: only the query's term (column and row `steps`).
            let (fa, fb) = if first_order || live == nl {
                (
                    View {
                        data: &ws.fa[l][steps..],
                        rows: k,
                        cols: 1,
                        rs: m,
                        cs: 1,
                    },
                    View::rows(&ws.fb[l][steps * len..], 1, len),
                )
            } else {
                (View::rows(&ws.fa[l], k, m), View::rows(&ws.fb[l], m, len))
            };
            R::gemm(fa, fb, &mut g.ut, !overwrite);
        }
    }
    loss
}
