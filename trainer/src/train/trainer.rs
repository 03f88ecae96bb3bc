//! A training run in memory: initialisation, the exact second-order outer step, export.

use burn::tensor::{DType, Device, Tensor, TensorData};
use msr_runtime::format::{LayerRecord, ModelRecord, Normalizer};
use msr_runtime::model::params_from_record;
use msr_runtime::{MetaParams, Model, Net, NetSpec};

use crate::learner::Learner;
use crate::models::{self, ModelKind};
use crate::rng::Rng;
use crate::tasks::{Batch, Family};

use super::shard::{Collective, Local};

use super::*;

/// Where a sharded step's time went (see [`Trainer::outer_step_shards_timed`]).
#[derive(Clone, Debug, Default)]
pub struct StepTiming {
    /// Milliseconds of each of this process's shards (upload, forward, inner loop, backward,
    /// download).
    pub shard_ms: Vec<f64>,
    /// Milliseconds in the gather (waiting for the slowest process included).
    pub gather_ms: f64,
}

/// A training run in memory.
pub struct Trainer {
    /// Its configuration.
    pub config: TrainConfig,
    /// Where it computes (without autodiff; the outer loop adds it).
    pub(super) device: Device,
    pub(super) family: Family,
    pub(super) net: Net,
    pub(super) params: MetaParams,
    pub(super) adam: Adam,
    pub(super) kind: ModelKind,
    /// Standardisation of the data (see [`normalize`]).
    pub(super) normalizer: Option<Normalizer>,
    /// Outer steps done.
    pub step: u64,
    /// Shards of each step's meta-gradient (1: one backward pass over all tasks).
    pub(super) shards: usize,
    /// The processes sharing the work (see [`shard`](super::shard)).
    pub(super) collective: Box<dyn Collective>,
    /// How the meta-learner goes from a support set to query outputs.
    pub(super) learner: Learner,
    /// The fast dense meta-gradient, when it computes this run's (see [`GradEngine`]).
    pub(super) fast: Option<super::fast::FastPath>,
    /// The most threads a fast step uses.
    pub(super) threads: usize,
}

impl Trainer {
    /// A fresh run on the CPU: parameters initialised from the seed.
    pub fn new(config: TrainConfig) -> Result<Self, TrainError> {
        Self::on_device(config, msr_runtime::device::cpu())
    }

    /// A fresh run on `device` (see `msr_runtime::device`).
    pub fn on_device(config: TrainConfig, device: Device) -> Result<Self, TrainError> {
        config.validate()?;
        let (family, spec, kind) = config.family_and_spec()?;
        if config.tasks_per_step == 0 || config.support == 0 || config.query == 0 {
            return Err(TrainError::Config(
                "tasks per step, support and query sizes must be positive".into(),
            ));
        }
        if config.support + config.query > family.examples_per_task() {
            return Err(TrainError::Config(format!(
                "{} support + {} query examples, but tasks have {}",
                config.support,
                config.query,
                family.examples_per_task()
            )));
        }
        if family.is_classification() && config.inner == InnerKind::SgdThenGaussNewton {
            return Err(TrainError::Config(
                "--inner sgd+gn is for regression (libmsr refines regression models)".into(),
            ));
        }
        // With Gauss-Newton a layer's lr slot holds its log-damping.
        let lr0 = match config.inner {
            InnerKind::Sgd | InnerKind::SgdThenGaussNewton => config.inner_lr,
            InnerKind::GaussNewton => config.damping.ln(),
        };
        let init = models::init(&spec, kind, lr0, &mut Rng::derive(&[config.seed, 0]))
            .map_err(msr_runtime::Error::from)?;
        Self::from_parts(config, family, spec, &init, None, 0, device)
    }

    /// A fresh run on `device` that starts from a trained model's parameters instead of
    /// the seed's initialisation (a fresh optimizer, step 0): e.g. a model meta-trained
    /// through SGD, fine-tuned through the SGD-then-Gauss-Newton adaptation it will be
    /// used with. The model must have the configuration's architecture and data
    /// standardisation and adapt the same way: by SGD (no solver record) for an `sgd` or
    /// `sgd+gn` run, by Gauss-Newton for a `gn` run (its log-dampings go back into the
    /// learning-rate slots).
    pub fn warm_start(
        config: TrainConfig,
        model: &ModelRecord,
        device: Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let (family, spec, _) = config.family_and_spec()?;
        let bad = |why: String| TrainError::Config(format!("--init: {why}"));
        if model.net != spec {
            return Err(bad(
                "the model's architecture is not the one these options build".into(),
            ));
        }
        // maml-mlp and anil-mlp (maml-conv and anil) build the same net: what adapts differs.
        if let Some(trained) = trained_config(model)
            && trained.model != config.model
        {
            return Err(bad(format!(
                "the model is a {}, not a {}",
                trained.model, config.model
            )));
        }
        let mut layers = model.layers.clone();
        // Layers this kind of model does not adapt keep a learning rate of 0 (as a fresh
        // run's do), whatever the file says.
        let n = layers.len();
        for (l, layer) in layers.iter_mut().enumerate() {
            if !config.model.adapts(l, n) {
                layer.lr = 0.0;
            }
        }
        match (&model.ext.solver, config.inner) {
            (None, InnerKind::Sgd | InnerKind::SgdThenGaussNewton) => {}
            (Some(sv), InnerKind::GaussNewton) => {
                for (l, d) in layers.iter_mut().zip(&sv.log_damping) {
                    if l.lr != 0.0 {
                        l.lr = *d;
                    }
                }
            }
            (Some(_), _) => {
                return Err(bad(
                    "the model adapts by Gauss-Newton; it can start only a --inner gn run".into(),
                ));
            }
            (None, _) => {
                return Err(bad(
                    "the model adapts by SGD; it can start only a --inner sgd or sgd+gn run".into(),
                ));
            }
        }
        if family.is_classification() && config.inner == InnerKind::SgdThenGaussNewton {
            return Err(TrainError::Config(
                "--inner sgd+gn is for regression (libmsr refines regression models)".into(),
            ));
        }
        let t = Self::from_parts(config, family, spec, &layers, None, 0, device)?;
        if t.normalizer != model.ext.normalizer {
            return Err(bad(
                "the model standardises its data differently (another --problem, --seed or --normalize)"
                    .into(),
            ));
        }
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn from_parts(
        config: TrainConfig,
        family: Family,
        spec: NetSpec,
        layers: &[LayerRecord],
        adam_state: Option<AdamState>,
        step: u64,
        plain: Device,
    ) -> Result<Self, TrainError> {
        let device = plain.clone().autodiff();
        let net = Net::new(spec, &device).map_err(msr_runtime::Error::from)?;
        let params = params_from_record(&net, layers, DType::F32).map(|t| t.require_grad());
        let kind = config.model;
        let n = params.layers.len();
        let frozen = params
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, lp)| {
                let group = lp.shared.len() + lp.adapted0.len();
                std::iter::repeat_n(false, group).chain([!kind.adapts(l, n)])
            })
            .collect();
        let mut adam = Adam::new(config.outer_lr, &params, frozen);
        if let Some((t, m, v)) = adam_state {
            let shapes: Vec<[usize; 2]> = params.tensors().iter().map(|p| p.dims()).collect();
            if m.len() != shapes.len() || v.len() != shapes.len() {
                return Err(TrainError::Config(
                    "optimizer state does not match the model".into(),
                ));
            }
            let up = |xs: &Vec<f32>, s: [usize; 2]| {
                Tensor::from_data(TensorData::new(xs.clone(), s), (&plain, DType::F32))
            };
            for (i, s) in shapes.iter().enumerate() {
                if m[i].len() != s[0] * s[1] || v[i].len() != s[0] * s[1] {
                    return Err(TrainError::Config("optimizer state has wrong sizes".into()));
                }
                adam.m[i] = up(&m[i], *s);
                adam.v[i] = up(&v[i], *s);
            }
            adam.t = t;
        }
        let normalizer = normalize::statistics(&family, &config);
        let learner = Learner::of_config(&config);
        let mut t = Trainer {
            normalizer,
            family,
            device: plain,
            config,
            net,
            params,
            adam,
            kind,
            step,
            shards: 1,
            collective: Box::new(Local),
            learner,
            fast: None,
            threads: super::fast::default_threads(),
        };
        // The fast engine by default, where it applies.
        t.fast = t.fast_path();
        Ok(t)
    }

    /// Defines each step's meta-gradient as a sum of `shards` shards (see
    /// [`shard`](super::shard)): part of the run's definition, stored in checkpoints. 1 (the
    /// default) is one backward pass over all the step's tasks.
    pub fn set_shards(&mut self, shards: usize) -> Result<(), TrainError> {
        if shards == 0 || shards > self.config.tasks_per_step {
            return Err(TrainError::Config(format!(
                "--shards is {shards}; it must be in [1, tasks per step = {}]",
                self.config.tasks_per_step
            )));
        }
        self.shards = shards;
        Ok(())
    }

    /// How the meta-learner goes from a support set to query outputs.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// Continues the run at another outer (Adam) learning rate, e.g. a tenth of it for the
    /// last steps: the optimizer's moments are kept; the checkpointed configuration records
    /// the new rate.
    pub fn set_outer_lr(&mut self, lr: f64) -> Result<(), TrainError> {
        if !lr.is_finite() || lr <= 0.0 {
            return Err(TrainError::Config(format!(
                "outer_lr is {lr}; it must be finite and > 0"
            )));
        }
        self.config.outer_lr = lr;
        self.adam.lr = lr;
        Ok(())
    }

    /// The shards of each step's meta-gradient.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Shares the work with other processes (see [`shard`](super::shard)).
    pub fn set_collective(&mut self, c: Box<dyn Collective>) {
        self.collective = c;
    }

    /// The processes sharing the work.
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Whether steps go through [`Trainer::outer_step_shards`] (several shards or
    /// processes) rather than [`Trainer::outer_step_on`].
    pub fn is_sharded(&self) -> bool {
        self.shards > 1 || self.collective.size() > 1
    }

    /// The device it computes on (without autodiff).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The task family.
    pub fn family(&self) -> &Family {
        &self.family
    }

    /// One outer step on a fresh batch of training tasks; returns the mean query loss.
    pub fn outer_step(&mut self) -> f64 {
        let batch = train_batch(&self.family, &self.config, self.step);
        self.outer_step_on(&batch)
    }

    /// One outer step on `batch`, which must be [`train_batch`] of the current step (the
    /// caller may have generated it ahead, on another thread).
    pub fn outer_step_on(&mut self, batch: &Batch) -> f64 {
        let loss = self.meta_step_host(batch);
        self.step += 1;
        loss
    }

    /// Meta-gradient and Adam update on one uploaded batch; returns the mean query loss.
    pub fn meta_step(&mut self, b: &DeviceBatch) -> f64 {
        // burn's Adam goes on from the fast engine's moments, which forgets its copies.
        self.flush_adam();
        if let Some(f) = &mut self.fast {
            f.host = None;
        }
        let (total, tasks) = self.summed_loss(b);
        let grads = total.backward();
        let g = self.gradients(&grads);
        self.params = self.adam.step(&self.params, &g);
        total.into_scalar::<f64>() / tasks
    }

    /// One outer step from this process's shards of the current step's tasks
    /// ([`train_shards`], in shard order): one backward pass per shard, every process's
    /// shard gradients gathered and added in shard order, the same Adam update on every
    /// process. Returns the mean query loss of the step's tasks.
    pub fn outer_step_shards(&mut self, shards: &[Batch]) -> Result<f64, TrainError> {
        self.outer_step_shards_timed(shards).map(|(loss, _)| loss)
    }

    /// [`Trainer::outer_step_shards`], with where the time went.
    pub fn outer_step_shards_timed(
        &mut self,
        shards: &[Batch],
    ) -> Result<(f64, StepTiming), TrainError> {
        let mut timing = StepTiming::default();
        let (rank, size) = (self.collective.rank(), self.collective.size());
        let mine = super::shard::owned(self.shards, rank, size).count();
        if shards.len() != mine {
            return Err(TrainError::Config(format!(
                "{} shard batches for rank {rank} of {size}, which owns {mine}",
                shards.len()
            )));
        }
        let shapes: Vec<[usize; 2]> = self.params.tensors().iter().map(|p| p.dims()).collect();
        let len: usize = shapes.iter().map(|s| s[0] * s[1]).sum();
        let mut local = Vec::with_capacity(shards.len() * (4 * len + 8));
        for batch in shards {
            let started = std::time::Instant::now();
            if self.fast.is_some() {
                let b = self.standardized(batch);
                let (total, grads) = self.fast_grads(&b);
                for v in grads.iter().flatten() {
                    local.extend_from_slice(&v.to_le_bytes());
                }
                local.extend_from_slice(&total.to_le_bytes());
            } else {
                let b = self.upload(batch);
                let (total, _) = self.summed_loss(&b);
                let grads = total.backward();
                for g in self.gradients(&grads) {
                    for v in msr_runtime::model::download(&g) {
                        local.extend_from_slice(&v.to_le_bytes());
                    }
                }
                local.extend_from_slice(&total.into_scalar::<f64>().to_le_bytes());
            }
            timing.shard_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let started = std::time::Instant::now();
        let lens: Vec<usize> = (0..size)
            .map(|r| super::shard::owned(self.shards, r, size).count() * (4 * len + 8))
            .collect();
        let gathered = self
            .collective
            .all_gather(&local, &lens)
            .map_err(TrainError::Distributed)?;
        timing.gather_ms = started.elapsed().as_secs_f64() * 1e3;
        let (sum, loss) = super::shard::reduce_in_shard_order(&gathered, self.shards, len)
            .map_err(TrainError::Distributed)?;
        if self.fast.is_some() {
            let mut at = 0;
            let g: Vec<Vec<f32>> = shapes
                .iter()
                .map(|s| {
                    at += s[0] * s[1];
                    sum[at - s[0] * s[1]..at].to_vec()
                })
                .collect();
            self.fast_apply(Some(&g));
            self.step += 1;
            return Ok((loss / self.config.tasks_per_step as f64, timing));
        }
        let mut at = 0;
        let g: Vec<Tensor<2>> = shapes
            .iter()
            .map(|s| {
                let n = s[0] * s[1];
                at += n;
                Tensor::from_data(
                    TensorData::new(sum[at - n..at].to_vec(), *s),
                    (&self.device, DType::F32),
                )
            })
            .collect();
        self.params = self.adam.step(&self.params, &g);
        self.step += 1;
        Ok((loss / self.config.tasks_per_step as f64, timing))
    }

    /// `batch` standardised (if the run standardises) and uploaded to the run's device.
    pub(super) fn upload(&self, batch: &Batch) -> DeviceBatch {
        let standardized;
        let batch = match &self.normalizer {
            Some(n) => {
                let mut b = batch.clone();
                normalize::apply(n, &mut b);
                standardized = b;
                &standardized
            }
            None => batch,
        };
        DeviceBatch::new(
            batch,
            self.family.input_len(),
            self.family.output_len(),
            self.net.device(),
        )
    }

    /// The summed query loss of the tasks of `b` (with its autodiff graph), and how many
    /// tasks there are.
    pub(super) fn summed_loss(&self, b: &DeviceBatch) -> (Tensor<1>, f64) {
        let out = self
            .learner
            .train_outputs(&self.net, &self.params, b, &self.moved());
        // The meta-gradient is the SUM of the per-task gradients, as the reference code's
        // per-task backward() accumulates (Adam is nearly scale-free: only its epsilon sees
        // the difference from the mean; rank2 curves were the same within 0.001).
        let per_task = self.net.loss(out, b.yq.clone());
        let tasks = per_task.dims()[0] as f64;
        (per_task.sum(), tasks)
    }

    /// Every parameter's gradient (zeros for those the loss does not reach).
    pub(super) fn gradients(&self, grads: &burn::tensor::Gradients) -> Vec<Tensor<2>> {
        self.params
            .tensors()
            .iter()
            .map(|p| {
                p.grad(grads)
                    .unwrap_or_else(|| p.clone().detach().zeros_like())
            })
            .collect()
    }

    /// Evaluates the current model through the runtime on `tasks` test tasks, as a device
    /// would (plain device, the run's support/query sizes and inner steps).
    pub fn evaluate(&self, tasks: usize) -> Result<EvalResult, msr_runtime::Error> {
        if self.config.inner == InnerKind::SgdThenGaussNewton {
            // The refinement runs on the real-time engine, as a device does it: the model
            // file's refine record makes it the sessions' default.
            return super::eval::evaluate_realtime(
                &self.record(),
                &self.family,
                &self.family.val_ids(tasks),
                self.config.support,
                self.config.query,
                self.config.inner_steps,
            );
        }
        let model = Model::from_record(&self.record(), &self.device, DType::F32)?;
        evaluate_on(
            &model,
            &self.family,
            &self.family.val_ids(tasks),
            self.config.support,
            self.config.query,
            self.config.inner_steps,
        )
    }
}
