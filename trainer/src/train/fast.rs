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
            GradEngine::Burn => self.fast = None,
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

    /// The summed query loss of the (standardised) `batch` and each parameter's summed
    /// meta-gradient in [`msr_runtime::MetaParams::tensors`] order, by the fast engine.
    pub(super) fn fast_grads(&mut self, batch: &Batch) -> (f64, Vec<Vec<f32>>) {
        let fast = self.fast.as_mut().expect("the fast engine is on");
        let meta = fastgrad::meta_of_params(&fast.net, &self.params);
        let tasks = Tasks {
            xs: &batch.xs,
            ys: &batch.ys,
            xq: &batch.xq,
            yq: &batch.yq,
            tasks: batch.tasks,
            support: batch.support,
            query: batch.query,
        };
        let (loss, grad) = fast.engine.meta_grad(&meta, tasks);
        (loss, grad.flat(&fast.net))
    }

    /// One Adam step from gradients in [`msr_runtime::MetaParams::tensors`] order.
    pub(super) fn apply_grads(&mut self, grads: &[Vec<f32>]) {
        let g: Vec<Tensor<2>> = self
            .params
            .tensors()
            .iter()
            .zip(grads)
            .map(|(p, g)| {
                Tensor::from_data(
                    TensorData::new(g.clone(), p.dims()),
                    (&self.device, DType::F32),
                )
            })
            .collect();
        self.params = self.adam.step(&self.params, &g);
    }

    /// Meta-gradient and Adam update on one host batch (not yet standardised) by the
    /// run's engine; returns the mean query loss.
    pub fn meta_step_host(&mut self, batch: &Batch) -> f64 {
        if self.fast.is_some() {
            let b = self.standardized(batch);
            let (loss, g) = self.fast_grads(&b);
            self.apply_grads(&g);
            loss / b.tasks as f64
        } else {
            let b = self.upload(batch);
            self.meta_step(&b)
        }
    }
}
