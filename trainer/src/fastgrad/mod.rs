//! The fast exact meta-gradient of nets of dense layers (msr-fc, maml-fc, msr-mlp,
//! maml-mlp, anil-mlp, msr-head; every activation, biases on or off, frozen layers, any
//! number of SGD inner steps, MSE loss), without burn's tape: the reverse pass through the
//! inner steps is written by hand ([`task`]), products go through the real-time engine's
//! kernel. burn's autodiff path stays the reference (tests check the two agree), and
//! keeps convolutions, Gauss-Newton inner loops, classification and the GPU.
//!
//! Tasks are independent: a step's tasks are cut into [`GROUPS`] contiguous groups, each
//! summed in task order into its own buffer, the groups then added in group order; threads
//! take whole groups, so the result is bit-identical whatever the number of threads.

pub mod real;
pub mod task;
#[cfg(test)]
mod tests;

use msr_runtime::{Activation, Loss, MetaParams, NetSpec, Op};

pub use real::{Real, View};
pub use task::{Workspace, task_grad};

/// Fixed number of task groups of a step (at most): the sum's order, and the most threads
/// a step uses.
pub const GROUPS: usize = 4;

/// One dense layer: `z = h W^T + b`, `W` `[outputs, inputs]` (`reshape(U v)` with U
/// `[outputs * inputs, k]` when `k` is set), then the activation.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLayer {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// MSR latent size, or `None` for a plain weight.
    pub k: Option<usize>,
    /// Whether the layer has an (adapted) bias.
    pub bias: bool,
    /// Activation after the layer.
    pub activation: Activation,
}

impl DenseLayer {
    /// Length of the adapted weight vector (`v`, or `vec(W)`).
    pub fn adapted_len(&self) -> usize {
        self.k.unwrap_or(self.outputs * self.inputs)
    }
}

/// A net of dense layers with the MSE loss.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseNet {
    /// The layers, input first.
    pub layers: Vec<DenseLayer>,
}

impl DenseNet {
    /// The dense net of `spec`, or `None` if it has other layers or another loss (burn's
    /// path computes those).
    pub fn of_spec(spec: &NetSpec) -> Option<Self> {
        if spec.loss != Loss::Mse || spec.layers.is_empty() {
            return None;
        }
        let layers = spec
            .layers
            .iter()
            .map(|l| match l.op {
                Op::Linear {
                    inputs,
                    outputs,
                    bias,
                } => Some(DenseLayer {
                    inputs,
                    outputs,
                    k: None,
                    bias,
                    activation: l.activation,
                }),
                Op::ShareLinear {
                    inputs,
                    outputs,
                    k,
                    bias,
                } => Some(DenseLayer {
                    inputs,
                    outputs,
                    k: Some(k),
                    bias,
                    activation: l.activation,
                }),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let chained = layers.windows(2).all(|w| w[0].outputs == w[1].inputs);
        (chained && layers.iter().all(|l| l.k != Some(0))).then_some(DenseNet { layers })
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.layers[self.layers.len() - 1].outputs
    }
}

/// One layer's meta-parameters (or their gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerMeta<R> {
    /// `U^T` `[k, outputs * inputs]` row-major (empty for a plain layer): transposed, so
    /// that `W = v^T U^T` reads contiguous rows.
    pub ut: Vec<R>,
    /// Initial adapted weight vector (`v0`, or `vec(W0)`).
    pub a0: Vec<R>,
    /// Initial bias (empty without one).
    pub b0: Vec<R>,
    /// Inner learning rate.
    pub lr: R,
}

/// A net's meta-parameters (or their gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct Meta<R> {
    /// Per layer.
    pub layers: Vec<LayerMeta<R>>,
}

impl<R: Real> Meta<R> {
    /// Zeros of `net`'s shapes.
    pub fn zeros(net: &DenseNet) -> Self {
        Meta {
            layers: net
                .layers
                .iter()
                .map(|l| LayerMeta {
                    ut: vec![R::default(); l.k.map_or(0, |k| k * l.outputs * l.inputs)],
                    a0: vec![R::default(); l.adapted_len()],
                    b0: vec![R::default(); if l.bias { l.outputs } else { 0 }],
                    lr: R::default(),
                })
                .collect(),
        }
    }

    /// Writes every value into `out` (shaped as [`Meta::flat`]'s result) without
    /// allocating.
    pub fn write_flat(&self, net: &DenseNet, out: &mut [Vec<R>]) {
        let mut i = 0;
        for (l, m) in net.layers.iter().zip(&self.layers) {
            if let Some(k) = l.k {
                transpose_into(&m.ut, k, l.outputs * l.inputs, &mut out[i]);
                i += 1;
            }
            out[i].copy_from_slice(&m.a0);
            i += 1;
            if l.bias {
                out[i].copy_from_slice(&m.b0);
                i += 1;
            }
            out[i][0] = m.lr;
            i += 1;
        }
    }

    /// Reads every value from `flat` ([`Meta::flat`]'s layout) without allocating.
    pub fn read_flat(&mut self, net: &DenseNet, flat: &[Vec<R>]) {
        let mut i = 0;
        for (l, m) in net.layers.iter().zip(&mut self.layers) {
            if let Some(k) = l.k {
                transpose_into(&flat[i], l.outputs * l.inputs, k, &mut m.ut);
                i += 1;
            }
            m.a0.copy_from_slice(&flat[i]);
            i += 1;
            if l.bias {
                m.b0.copy_from_slice(&flat[i]);
                i += 1;
            }
            m.lr = flat[i][0];
            i += 1;
        }
    }

    /// Every value in [`MetaParams::tensors`] order, `U` in its `[outputs * inputs, k]`
    /// layout.
    pub fn flat(&self, net: &DenseNet) -> Vec<Vec<R>> {
        let mut out = Vec::new();
        for (l, m) in net.layers.iter().zip(&self.layers) {
            if let Some(k) = l.k {
                let p = l.outputs * l.inputs;
                out.push(transpose(&m.ut, k, p));
            }
            out.push(m.a0.clone());
            if l.bias {
                out.push(m.b0.clone());
            }
            out.push(vec![m.lr]);
        }
        out
    }

    /// The inverse of [`Meta::flat`].
    pub fn from_flat(net: &DenseNet, flat: &[Vec<R>]) -> Self {
        let mut it = flat.iter();
        let mut next = || it.next().expect("one vector per tensor").clone();
        Meta {
            layers: net
                .layers
                .iter()
                .map(|l| {
                    let ut = match l.k {
                        Some(k) => transpose(&next(), l.outputs * l.inputs, k),
                        None => Vec::new(),
                    };
                    let a0 = next();
                    let b0 = if l.bias { next() } else { Vec::new() };
                    LayerMeta {
                        ut,
                        a0,
                        b0,
                        lr: next()[0],
                    }
                })
                .collect(),
        }
    }

    /// Copies `other` (same shapes) without allocating.
    fn assign(&mut self, other: &Meta<R>) {
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            a.ut.copy_from_slice(&b.ut);
            a.a0.copy_from_slice(&b.a0);
            a.b0.copy_from_slice(&b.b0);
            a.lr = b.lr;
        }
    }

    /// Adds `other` element by element.
    fn add(&mut self, other: &Meta<R>) {
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            for (x, y) in
                a.ut.iter_mut()
                    .chain(&mut a.a0)
                    .chain(&mut a.b0)
                    .zip(b.ut.iter().chain(&b.a0).chain(&b.b0))
            {
                *x += *y;
            }
            a.lr += b.lr;
        }
    }
}

/// `m` `[rows, cols]` row-major, transposed.
fn transpose<R: Real>(m: &[R], rows: usize, cols: usize) -> Vec<R> {
    let mut t = vec![R::default(); m.len()];
    transpose_into(m, rows, cols, &mut t);
    t
}

/// `m` `[rows, cols]` row-major, transposed into `t`.
fn transpose_into<R: Real>(m: &[R], rows: usize, cols: usize, t: &mut [R]) {
    assert_eq!(t.len(), rows * cols, "transpose sizes");
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, x) in row.iter().enumerate() {
            t[c * rows + r] = *x;
        }
    }
}

/// The meta-parameters of a burn [`MetaParams`] (downloaded, f32).
pub fn meta_of_params(net: &DenseNet, params: &MetaParams) -> Meta<f32> {
    let flat: Vec<Vec<f32>> = params
        .tensors()
        .iter()
        .map(msr_runtime::model::download)
        .collect();
    Meta::from_flat(net, &flat)
}

/// A step's tasks, `[tasks, examples, features]` row-major each.
#[derive(Clone, Copy, Debug)]
pub struct Tasks<'a, R> {
    /// Support inputs.
    pub xs: &'a [R],
    /// Support targets.
    pub ys: &'a [R],
    /// Query inputs.
    pub xq: &'a [R],
    /// Query targets.
    pub yq: &'a [R],
    /// Tasks.
    pub tasks: usize,
    /// Support examples per task.
    pub support: usize,
    /// Query examples per task.
    pub query: usize,
}

/// Computes meta-gradients of one configuration, with its buffers kept between steps.
pub struct Engine<R> {
    net: DenseNet,
    steps: usize,
    first_order: bool,
    /// Per group: its workspace and its gradient sum.
    groups: Vec<(Option<Workspace<R>>, Meta<R>)>,
    shape: (usize, usize),
    losses: Vec<R>,
    total: Meta<R>,
    threads: usize,
}

impl<R: Real> Engine<R> {
    /// An engine for `net` with `steps` inner SGD steps (exact second order, or first
    /// order), on up to `threads` threads.
    pub fn new(net: DenseNet, steps: usize, first_order: bool, threads: usize) -> Self {
        Engine {
            total: Meta::zeros(&net),
            net,
            steps,
            first_order,
            groups: Vec::new(),
            shape: (0, 0),
            losses: Vec::new(),
            threads: threads.max(1),
        }
    }

    /// The net.
    pub fn net(&self) -> &DenseNet {
        &self.net
    }

    /// Sets the most threads a step uses (at most [`GROUPS`] run; the result does not
    /// depend on it).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The sum over `t`'s tasks of their query losses (f64), and the sum of their
    /// meta-gradients (valid until the next call).
    pub fn meta_grad(&mut self, meta: &Meta<R>, t: Tasks<R>) -> (f64, &Meta<R>) {
        let (din, dout) = (self.net.inputs(), self.net.outputs());
        assert!(t.tasks > 0, "a step has tasks");
        assert_eq!(t.xs.len(), t.tasks * t.support * din, "support inputs");
        assert_eq!(t.ys.len(), t.tasks * t.support * dout, "support targets");
        assert_eq!(t.xq.len(), t.tasks * t.query * din, "query inputs");
        assert_eq!(t.yq.len(), t.tasks * t.query * dout, "query targets");
        let groups = t.tasks.min(GROUPS);
        if self.shape != (t.support, t.query) {
            self.groups.clear();
            self.shape = (t.support, t.query);
        }
        while self.groups.len() < groups {
            self.groups.push((None, Meta::zeros(&self.net)));
        }
        self.losses.resize(t.tasks, R::default());
        let (net, steps, fo) = (&self.net, self.steps, self.first_order);
        let work = |g: usize, slot: &mut (Option<Workspace<R>>, Meta<R>), losses: &mut [R]| {
            let (lo, hi) = (g * t.tasks / groups, (g + 1) * t.tasks / groups);
            let (ws, sum) = slot;
            let ws = ws.get_or_insert_with(|| Workspace::new(net, t.support, t.query, steps));
            for (i, task) in (lo..hi).enumerate() {
                let (s, q) = (t.support, t.query);
                losses[i] = task_grad(
                    net,
                    meta,
                    ws,
                    (
                        &t.xs[task * s * din..(task + 1) * s * din],
                        &t.ys[task * s * dout..(task + 1) * s * dout],
                    ),
                    (
                        &t.xq[task * q * din..(task + 1) * q * din],
                        &t.yq[task * q * dout..(task + 1) * q * dout],
                    ),
                    fo,
                    sum,
                    i == 0,
                );
            }
        };
        // Each group's slice of the per-task losses.
        let mut loss_parts: Vec<&mut [R]> = Vec::with_capacity(groups);
        let mut rest = &mut self.losses[..];
        for g in 0..groups {
            let n = (g + 1) * t.tasks / groups - g * t.tasks / groups;
            let (mine, r) = rest.split_at_mut(n);
            loss_parts.push(mine);
            rest = r;
        }
        let mut jobs: Vec<_> = self.groups[..groups]
            .iter_mut()
            .zip(loss_parts)
            .enumerate()
            .collect();
        let threads = self.threads.min(groups);
        if threads == 1 {
            for (g, (slot, losses)) in jobs {
                work(g, slot, losses);
            }
        } else {
            // Thread i takes groups i, i + threads, ...
            let mut per: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
            for (i, job) in jobs.drain(..).enumerate() {
                per[i % threads].push(job);
            }
            std::thread::scope(|sc| {
                for mine in per {
                    let work = &work;
                    sc.spawn(move || {
                        for (g, (slot, losses)) in mine {
                            work(g, slot, losses);
                        }
                    });
                }
            });
        }
        self.total.assign(&self.groups[0].1);
        for (_, sum) in &self.groups[1..groups] {
            self.total.add(sum);
        }
        let loss = self.losses.iter().map(|l| l.f64()).sum();
        (loss, &self.total)
    }
}
