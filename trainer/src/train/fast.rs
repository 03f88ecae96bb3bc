//! Which engine computes the meta-gradient (`--engine`): the hand-written dense one
//! ([`crate::fastgrad`]) where it applies, burn's autodiff elsewhere and on request.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Tensor, TensorData};

use crate::fastgrad::{self, DenseNet, Tasks};
use crate::learner::Learner;
use crate::tasks::Batch;

use super::*;

/// The meta-gradient's engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradEngine {
    /// The hand-written exact meta-gradient of dense nets (CPU, f32, threads).
    Fast,
    /// burn's autodiff through the runtime's inner loop (every model, every device).
    Burn,
}

impl FromStr for GradEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fast" => Ok(GradEngine::Fast),
            "burn" => Ok(GradEngine::Burn),
            other => Err(format!("unknown engine '{other}' (available: fast, burn)")),
        }
    }
}

impl fmt::Display for GradEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GradEngine::Fast => "fast",
            GradEngine::Burn => "burn",
        })
    }
}

/// The fast engine of a run, with its host buffers.
pub(super) struct FastPath {
    pub(super) engine: fastgrad::Engine<f32>,
    /// The engine's net (a copy: the engine is borrowed while its gradient is read).
    pub(super) net: DenseNet,
    /// The run's parameters and Adam moments on the host, once a fast step has run: the
    /// truth while the fast engine runs (burn's parameters are refreshed after every
    /// step, its Adam moments on request), so that a step converts nothing but the
    /// updated parameters.
    pub(super) host: Option<Host>,
}

/// See [`FastPath::host`]. Vectors in [`msr_runtime::MetaParams::tensors`] order.
pub(super) struct Host {
    params: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    meta: fastgrad::Meta<f32>,
}

impl FastPath {
    /// The fast engine for `net` and `learner`, if they are what it computes: dense
    /// layers, MSE, SGD inner steps, on the CPU.
    pub(super) fn of(
        net: &msr_runtime::Net,
        learner: &Learner,
        on_cpu: bool,
        threads: usize,
    ) -> Option<Self> {
        let Learner::Adapts {
            inner: InnerKind::Sgd,
            steps,
            first_order,
            ..
        } = *learner
        else {
            return None;
        };
        let dense = DenseNet::of_spec(net.spec())?;
        on_cpu.then(|| FastPath {
            engine: fastgrad::Engine::new(dense.clone(), steps, first_order, threads),
            net: dense,
            host: None,
        })
    }
}

/// Threads a fast step uses by default: the cores this process may run on.
pub(super) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Trainer {
    /// Chooses the meta-gradient's engine. `Fast` is refused where it does not apply
    /// (convolutions, classification, Gauss-Newton inner loops, a GPU).
    pub fn set_engine(&mut self, engine: GradEngine) -> Result<(), TrainError> {
        match engine {
            GradEngine::Burn => {
                self.flush_adam();
                self.fast = None;
            }
            GradEngine::Fast => {
                if self.fast.is_none() {
                    self.fast = Some(self.fast_path().ok_or_else(|| {
                        TrainError::Config(
                            "--engine fast computes nets of dense layers with the MSE loss and SGD inner steps on the CPU; use --engine burn".into(),
                        )
                    })?);
                }
            }
        }
        Ok(())
    }

    /// The engine computing the meta-gradient.
    pub fn engine(&self) -> GradEngine {
        if self.fast.is_some() {
            GradEngine::Fast
        } else {
            GradEngine::Burn
        }
    }

    /// Sets the most threads a fast step uses (the result does not depend on it).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
        if let Some(f) = &mut self.fast {
            f.engine.set_threads(self.threads);
        }
    }

    /// The fast engine for this run, if it applies.
    pub(super) fn fast_path(&self) -> Option<FastPath> {
        let on_cpu = self.device == msr_runtime::device::cpu();
        FastPath::of(&self.net, &self.learner, on_cpu, self.threads)
    }

    /// `batch` standardised as the run standardises its data.
    pub(super) fn standardized(&self, batch: &Batch) -> Batch {
        let mut b = batch.clone();
        if let Some(n) = &self.normalizer {
            normalize::apply(n, &mut b);
        }
        b
    }

    /// The host copies of the parameters and Adam moments (downloaded at the first fast
    /// step).
    fn host(&mut self) -> &mut Host {
        let fast = self.fast.as_mut().expect("the fast engine is on");
        if fast.host.is_none() {
            let dl = |ts: &[Tensor<2>]| -> Vec<Vec<f32>> {
                ts.iter().map(msr_runtime::model::download).collect()
            };
            let params = dl(&self.params.tensors());
            fast.host = Some(Host {
                meta: fastgrad::Meta::from_flat(&fast.net, &params),
                grads: params.clone(),
                m: dl(&self.adam.m),
                v: dl(&self.adam.v),
                params,
            });
        }
        fast.host.as_mut().expect("just made")
    }

    /// The summed query loss of the (standardised) `batch` and each parameter's summed
    /// meta-gradient in [`msr_runtime::MetaParams::tensors`] order, by the fast engine.
    pub(super) fn fast_grads(&mut self, batch: &Batch) -> (f64, Vec<Vec<f32>>) {
        let loss = self.fast_grads_in_place(batch);
        let grads = self.host().grads.clone();
        (loss, grads)
    }

    /// [`Trainer::fast_grads`], the gradient left in the host's buffer.
    fn fast_grads_in_place(&mut self, batch: &Batch) -> f64 {
        self.host();
        let fast = self.fast.as_mut().expect("the fast engine is on");
        let host = fast.host.as_mut().expect("made above");
        let tasks = Tasks {
            xs: &batch.xs,
            ys: &batch.ys,
            xq: &batch.xq,
            yq: &batch.yq,
            tasks: batch.tasks,
            support: batch.support,
            query: batch.query,
        };
        let (loss, grad) = fast.engine.meta_grad(&host.meta, tasks);
        grad.write_flat(&fast.net, &mut host.grads);
        loss
    }

    /// One Adam step on the host (burn's [`Adam`]'s arithmetic, in f32) from the
    /// gradients in the host's buffer, or from `grads` if given; then burn's parameters
    /// are refreshed.
    pub(super) fn fast_apply(&mut self, grads: Option<&[Vec<f32>]>) {
        self.host();
        let adam = &mut self.adam;
        adam.t += 1;
        let bc1 = (1.0 - adam.beta1.powi(adam.t as i32)) as f32;
        let bc2 = (1.0 - adam.beta2.powi(adam.t as i32)) as f32;
        let (b1, b2, eps, lr) = (
            adam.beta1 as f32,
            adam.beta2 as f32,
            adam.eps as f32,
            adam.lr as f32,
        );
        let fast = self.fast.as_mut().expect("the fast engine is on");
        let host = fast.host.as_mut().expect("made above");
        let grads = grads.unwrap_or(&host.grads);
        for (i, g) in grads.iter().enumerate() {
            if adam.frozen[i] {
                continue;
            }
            let (p, m, v) = (&mut host.params[i], &mut host.m[i], &mut host.v[i]);
            for j in 0..g.len() {
                m[j] = m[j] * b1 + g[j] * (1.0 - b1);
                v[j] = v[j] * b2 + g[j] * g[j] * (1.0 - b2);
                p[j] -= (m[j] / bc1) / ((v[j] / bc2).sqrt() + eps) * lr;
            }
        }
        host.meta.read_flat(&fast.net, &host.params);
        let mut i = 0;
        // (The parameters live on the autodiff device.)
        let device = self.net.device().clone();
        self.params = self.params.map(|p| {
            let t = Tensor::from_data(
                TensorData::new(host.params[i].clone(), p.dims()),
                (&device, DType::F32),
            );
            i += 1;
            t.require_grad()
        });
    }

    /// Copies the host's Adam moments into burn's optimizer (before a checkpoint or a
    /// switch to burn's engine).
    pub(super) fn flush_adam(&mut self) {
        let Some(host) = self.fast.as_ref().and_then(|f| f.host.as_ref()) else {
            return;
        };
        let device = self.adam.m.first().map(|t| t.device());
        let Some(device) = device else { return };
        let up = |xs: &[Vec<f32>], like: &mut [Tensor<2>]| {
            for (x, t) in xs.iter().zip(like.iter_mut()) {
                *t = Tensor::from_data(TensorData::new(x.clone(), t.dims()), (&device, DType::F32));
            }
        };
        up(&host.m, &mut self.adam.m);
        up(&host.v, &mut self.adam.v);
    }

    /// Adam's moments as host vectors (the fast engine's if it holds them).
    pub(super) fn adam_moments(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        if let Some(host) = self.fast.as_ref().and_then(|f| f.host.as_ref()) {
            return (host.m.clone(), host.v.clone());
        }
        let dl = |ts: &[Tensor<2>]| ts.iter().map(msr_runtime::model::download).collect();
        (dl(&self.adam.m), dl(&self.adam.v))
    }

    /// Meta-gradient and Adam update on one host batch (not yet standardised) by the
    /// run's engine; returns the mean query loss.
    pub fn meta_step_host(&mut self, batch: &Batch) -> f64 {
        if self.fast.is_some() {
            let b = self.standardized(batch);
            let loss = self.fast_grads_in_place(&b);
            self.fast_apply(None);
            loss / b.tasks as f64
        } else {
            let b = self.upload(batch);
            self.meta_step(&b)
        }
    }
}
