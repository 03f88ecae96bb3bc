//! The outer loop: exact second-order meta-gradients through the runtime's `adapt`, Adam,
//! evaluation through the runtime, checkpoints that survive a kill.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor, TensorData};
use msr_runtime::format::{LayerRecord, ModelInfo, ModelRecord};
use msr_runtime::model::{params_from_record, record_from_params};
use msr_runtime::{MetaParams, Model, Net, NetSpec};
use serde::{Deserialize, Serialize};

use crate::models::{self, ModelKind};
use crate::rng::Rng;
use crate::stats::mean_ci95;
use crate::tasks::{Batch, Family, Problem};

/// Everything that defines a training run. Stored in checkpoints: a resumed run must
/// use the same configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Task family.
    pub problem: String,
    /// Meta-learner.
    pub model: String,
    /// MSR latent size.
    pub k: usize,
    /// Outer steps in total.
    pub steps: u64,
    /// Seed of initialisation and task sampling.
    pub seed: u64,
    /// Tasks per outer step (processed as one batch).
    pub tasks_per_step: usize,
    /// Inner SGD steps.
    pub inner_steps: usize,
    /// Initial inner learning rate (meta-learned per layer).
    pub inner_lr: f32,
    /// Adam learning rate of the outer loop.
    pub outer_lr: f64,
    /// Support examples per task.
    pub support: usize,
    /// Query examples per task.
    pub query: usize,
    /// Detach the inner gradient (first-order MAML) instead of the exact meta-gradient.
    pub first_order: bool,
    /// Classes per episode (classification families; 0 for regression).
    pub ways: usize,
    /// Augment the query examples of training episodes (Algorithm 2).
    pub augment_query: bool,
    /// Filters per conv block of the glyph nets.
    pub channels: usize,
}

impl TrainConfig {
    /// The paper's defaults for `problem` and `model`.
    pub fn new(problem: Problem, model: ModelKind) -> Self {
        TrainConfig {
            problem: problem.to_string(),
            model: model.to_string(),
            k: models::default_k(problem),
            steps: 1000,
            seed: 0,
            tasks_per_step: 32,
            inner_steps: 1,
            inner_lr: 0.1,
            outer_lr: 1e-3,
            support: 1,
            query: 19,
            first_order: false,
            ways: 0,
            augment_query: false,
            channels: 32,
        }
    }

    /// Checks every numeric field against its range (a configuration from the command line
    /// or from a checkpoint file): one line naming the field, its value and the range.
    pub fn validate(&self) -> Result<(), String> {
        let limit = |name: &str, value: u128, lo: u128, hi: u128| {
            if value < lo || value > hi {
                Err(format!("{name} is {value}; it must be in [{lo}, {hi}]"))
            } else {
                Ok(())
            }
        };
        let inner_max = msr_runtime::spec::limits::MAX_INNER_STEPS as u128;
        limit("k", self.k as u128, 0, 1 << 20)?;
        limit("steps", self.steps as u128, 0, 1 << 40)?;
        limit("tasks_per_step", self.tasks_per_step as u128, 1, 1 << 16)?;
        limit("inner_steps", self.inner_steps as u128, 0, inner_max)?;
        limit("support", self.support as u128, 1, 1 << 20)?;
        limit("query", self.query as u128, 1, 1 << 20)?;
        limit("ways", self.ways as u128, 0, 1 << 12)?;
        limit("channels", self.channels as u128, 1, 1 << 12)?;
        if !self.inner_lr.is_finite() || self.inner_lr < 0.0 {
            return Err(format!(
                "inner_lr is {}; it must be finite and >= 0",
                self.inner_lr
            ));
        }
        if !self.outer_lr.is_finite() || self.outer_lr <= 0.0 {
            return Err(format!(
                "outer_lr is {}; it must be finite and > 0",
                self.outer_lr
            ));
        }
        Ok(())
    }

    /// The fields in which `other` differs from this configuration, as
    /// `name (this value vs other value)`.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).expect("a config serialises"),
            serde_json::to_value(other).expect("a config serialises"),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec![];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} ({v} vs {})", b.get(k).cloned().unwrap_or_default()))
            .collect()
    }

    /// The family (with its episode shape) and the network this configuration trains.
    pub fn family_and_spec(&self) -> Result<(Family, NetSpec, ModelKind), String> {
        let (_, kind) = self.kinds()?;
        let family = Family::open(&self.problem)?.with_episodes(self.ways, self.augment_query)?;
        let spec = if family.is_classification() {
            models::glyph_spec(kind, self.ways, self.channels)?
        } else {
            models::spec(kind, &family, self.k)?
        };
        Ok((family, spec, kind))
    }

    /// Parsed problem and model.
    pub fn kinds(&self) -> Result<(Problem, ModelKind), String> {
        Ok((self.problem.parse()?, self.model.parse()?))
    }
}

/// Adam over a flat list of tensors (in [`MetaParams::tensors`] order).
#[derive(Clone, Debug)]
struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: u64,
    m: Vec<Tensor<2>>,
    v: Vec<Tensor<2>>,
    /// Tensors the outer loop leaves alone (the zero learning rates of layers that do not
    /// adapt: ANIL's body, ProtoNets).
    frozen: Vec<bool>,
}

impl Adam {
    fn new(lr: f64, params: &MetaParams, frozen: Vec<bool>) -> Self {
        let zeros: Vec<Tensor<2>> = params
            .tensors()
            .iter()
            .map(|p| p.clone().detach().zeros_like())
            .collect();
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: zeros.clone(),
            v: zeros,
            frozen,
        }
    }

    /// One update; returns fresh leaves (on the same device as `params`).
    fn step(&mut self, params: &MetaParams, grads: &[Tensor<2>]) -> MetaParams {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let mut i = 0;
        params.map(|p| {
            if self.frozen[i] {
                i += 1;
                return p;
            }
            let g = grads[i].clone();
            let m =
                self.m[i].clone().mul_scalar(self.beta1) + g.clone().mul_scalar(1.0 - self.beta1);
            let v =
                self.v[i].clone().mul_scalar(self.beta2) + g.square().mul_scalar(1.0 - self.beta2);
            let update =
                m.clone().div_scalar(bc1) / (v.clone().div_scalar(bc2).sqrt().add_scalar(self.eps));
            self.m[i] = m;
            self.v[i] = v;
            i += 1;
            (p.detach() - update.mul_scalar(self.lr))
                .detach()
                .require_grad()
        })
    }
}

/// The training tasks of outer step `step`: a pure function of the family, the seed and the
/// step, so a resumed run sees the same tasks as an uninterrupted one.
pub fn train_batch(family: &Family, config: &TrainConfig, step: u64) -> Batch {
    let ids = family.train_ids(config.seed, step, config.tasks_per_step);
    family.batch(&ids, config.support, config.query)
}

/// A host copy of one batch, uploaded as `[T, N, F]` tensors.
pub struct DeviceBatch {
    /// Support inputs.
    pub xs: Tensor<3>,
    /// Support targets.
    pub ys: Tensor<3>,
    /// Query inputs.
    pub xq: Tensor<3>,
    /// Query targets.
    pub yq: Tensor<3>,
}

impl DeviceBatch {
    /// Uploads `b` to `device` in f32.
    pub fn new(b: &Batch, fin: usize, fout: usize, device: &Device) -> Self {
        let t = |v: &Vec<f32>, n: usize, f: usize| {
            Tensor::from_data(
                TensorData::new(v.clone(), [b.tasks, n, f]),
                (device, DType::F32),
            )
        };
        DeviceBatch {
            xs: t(&b.xs, b.support, fin),
            ys: t(&b.ys, b.support, fout),
            xq: t(&b.xq, b.query, fin),
            yq: t(&b.yq, b.query, fout),
        }
    }
}

/// A training run in memory.
pub struct Trainer {
    /// Its configuration.
    pub config: TrainConfig,
    /// Where it computes (without autodiff; the outer loop adds it).
    device: Device,
    family: Family,
    net: Net,
    params: MetaParams,
    adam: Adam,
    kind: ModelKind,
    /// Outer steps done.
    pub step: u64,
}

/// What a checkpoint file holds.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    config: TrainConfig,
    step: u64,
    adam_t: u64,
    params: Vec<LayerRecord>,
    adam_m: Vec<Vec<f32>>,
    adam_v: Vec<Vec<f32>>,
}

/// Adam's step count and first and second moments, as stored in a checkpoint.
type AdamState = (u64, Vec<Vec<f32>>, Vec<Vec<f32>>);

const CHECKPOINT_MAGIC: &[u8; 8] = b"MSRCKPT2";

/// Errors of the training loop's files.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// A checkpoint could not be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// From the runtime.
    #[error(transparent)]
    Runtime(#[from] msr_runtime::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Trainer {
    /// A fresh run on the CPU: parameters initialised from the seed.
    pub fn new(config: TrainConfig) -> Result<Self, TrainError> {
        Self::on_device(config, msr_runtime::device::cpu())
    }

    /// A fresh run on `device` (see `msr_runtime::device`).
    pub fn on_device(config: TrainConfig, device: Device) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        let (family, spec, kind) = config.family_and_spec().map_err(TrainError::Config)?;
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
        let layers = spec.layers.len();
        let init = models::init(
            &spec,
            config.inner_lr,
            |l| kind.adapts(l, layers),
            &mut Rng::derive(&[config.seed, 0]),
        )
        .map_err(msr_runtime::Error::from)?;
        Self::from_parts(config, family, spec, &init, None, 0, device)
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
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
        let (_, kind) = config.kinds().map_err(TrainError::Config)?;
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
        Ok(Trainer {
            family,
            device: plain,
            config,
            net,
            params,
            adam,
            kind,
            step,
        })
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
        let b = DeviceBatch::new(
            batch,
            self.family.input_len(),
            self.family.output_len(),
            self.net.device(),
        );
        let loss = self.meta_step(&b);
        self.step += 1;
        loss
    }

    /// Meta-gradient and Adam update on one uploaded batch; returns the mean query loss.
    pub fn meta_step(&mut self, b: &DeviceBatch) -> f64 {
        let out = if self.kind == ModelKind::ProtoNet {
            proto_logits(&self.net, &self.params, b)
        } else {
            let task = self.net.initial(&self.params, b.xs.dims()[0]);
            let task = self.net.adapt_from(
                &self.params,
                task,
                b.xs.clone(),
                b.ys.clone(),
                self.config.inner_steps,
                self.config.first_order,
            );
            self.net.forward(&self.params, &task, b.xq.clone())
        };
        // The meta-gradient is the SUM of the per-task gradients, as the reference code's
        // per-task backward() accumulates (Adam is nearly scale-free: only its epsilon sees
        // the difference from the mean; rank2 curves were the same within 0.001).
        let per_task = self.net.loss(out, b.yq.clone());
        let tasks = per_task.dims()[0] as f64;
        let total = per_task.sum();
        let grads = total.backward();
        let g: Vec<Tensor<2>> = self
            .params
            .tensors()
            .iter()
            .map(|p| {
                p.grad(&grads)
                    .unwrap_or_else(|| p.clone().detach().zeros_like())
            })
            .collect();
        self.params = self.adam.step(&self.params, &g);
        total.into_scalar::<f64>() / tasks
    }

    /// Evaluates the current model through the runtime on `tasks` test tasks, as a device
    /// would (plain device, the run's support/query sizes and inner steps).
    pub fn evaluate(&self, tasks: usize) -> Result<EvalResult, msr_runtime::Error> {
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

    /// The current model, as a record ready to save.
    pub fn record(&self) -> ModelRecord {
        ModelRecord {
            info: ModelInfo {
                name: format!("{}-{}", self.config.problem, self.config.model),
                task_family: self.config.problem.clone(),
                inner_steps: self.config.inner_steps as u32,
                trainer_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            net: self.net.spec().clone(),
            layers: record_from_params(&self.params),
        }
    }

    /// Writes a checkpoint atomically (temporary file, then rename).
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), TrainError> {
        let dl = |ts: &[Tensor<2>]| ts.iter().map(msr_runtime::model::download).collect();
        let ck = Checkpoint {
            config: self.config.clone(),
            step: self.step,
            adam_t: self.adam.t,
            params: record_from_params(&self.params),
            adam_m: dl(&self.adam.m),
            adam_v: dl(&self.adam.v),
        };
        let body = postcard::to_allocvec(&ck).expect("encoding into a Vec cannot fail");
        let mut bytes = Vec::with_capacity(body.len() + 12);
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Resumes from a checkpoint on the CPU; see [`Trainer::resume_on`].
    pub fn resume(path: &Path, expected: Option<&TrainConfig>) -> Result<Self, TrainError> {
        Self::resume_on(path, expected, msr_runtime::device::cpu())
    }

    /// Resumes from a checkpoint; refuses a corrupt one or one of another configuration
    /// (`expected`, when given, must match except for the total number of steps).
    pub fn resume_on(
        path: &Path,
        expected: Option<&TrainConfig>,
        device: Device,
    ) -> Result<Self, TrainError> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(io(path))?;
        if bytes.len() < 12 || &bytes[..8] != CHECKPOINT_MAGIC {
            return Err(bad("not an msr checkpoint (bad magic or too short)".into()));
        }
        let body = &bytes[8..bytes.len() - 4];
        let stored = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err(bad("checksum mismatch: the file is corrupt".into()));
        }
        let ck: Checkpoint =
            postcard::from_bytes(body).map_err(|e| bad(format!("malformed: {e}")))?;
        ck.config
            .validate()
            .map_err(|e| bad(format!("out-of-range field: {e}")))?;
        let mut config = ck.config.clone();
        if let Some(exp) = expected {
            let mut a = exp.clone();
            a.steps = config.steps;
            if a != config {
                return Err(bad(format!(
                    "it was made with another configuration; these fields differ (checkpoint vs requested): {}",
                    config.differences(&a).join(", ")
                )));
            }
            config.steps = exp.steps;
        }
        let (family, spec, _) = config.family_and_spec().map_err(&bad)?;
        let record = ModelRecord {
            info: ModelInfo {
                name: String::new(),
                task_family: String::new(),
                inner_steps: 0,
                trainer_version: String::new(),
            },
            net: spec.clone(),
            layers: ck.params.clone(),
        };
        record.validate().map_err(|e| bad(e.to_string()))?;
        Self::from_parts(
            config,
            family,
            spec,
            &ck.params,
            Some((ck.adam_t, ck.adam_m, ck.adam_v)),
            ck.step,
            device,
        )
    }
}

/// Result of evaluating a model on test tasks.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Mean query loss over tasks (MSE for regression, cross-entropy for classification).
    pub mse: f64,
    /// 95% confidence half-width of the mean.
    pub ci95: f64,
    /// Mean query accuracy over tasks (classification only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Its 95% confidence half-width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_ci95: Option<f64>,
    /// Number of test tasks.
    pub tasks: usize,
    /// Inner steps used.
    pub inner_steps: usize,
}

/// Adapts `model` through the runtime, exactly as a device would (plain device; the
/// runtime never augments: a family with query augmentation generates augmented queries),
/// on the first `n` test tasks of `family`, and reports the query loss (and accuracy).
pub fn evaluate(
    model: &Model,
    family: &Family,
    n: usize,
    support: usize,
    query: usize,
    inner_steps: usize,
) -> Result<EvalResult, msr_runtime::Error> {
    evaluate_on(
        model,
        family,
        &family.test_ids(n),
        support,
        query,
        inner_steps,
    )
}

/// [`evaluate`] on the tasks `ids`.
pub fn evaluate_on(
    model: &Model,
    family: &Family,
    ids: &[u64],
    support: usize,
    query: usize,
    inner_steps: usize,
) -> Result<EvalResult, msr_runtime::Error> {
    let mut losses = Vec::with_capacity(ids.len());
    let mut accuracies = Vec::new();
    let proto = family.is_classification() && models::embeds(model.spec());
    // Chunks bound memory; tasks are independent, so chunking does not change results.
    for ids in ids.chunks(if family.is_classification() { 20 } else { 100 }) {
        let batch = family.batch(ids, support, query);
        let b = DeviceBatch::new(
            &batch,
            family.input_len(),
            family.output_len(),
            model.net().device(),
        );
        let out = if proto {
            model.check_set(&b.xs, None)?;
            model.check_set(&b.xq, None)?;
            proto_logits(model.net(), model.params(), &b)
        } else {
            let task = model.adapt(b.xs, b.ys, inner_steps)?;
            model.predict(&task, b.xq)?
        };
        if family.is_classification() {
            let hit = out
                .clone()
                .argmax(2)
                .equal(b.yq.clone().argmax(2))
                .float()
                .mean_dim(1);
            accuracies.extend(hit.to_data().convert::<f64>().iter::<f64>());
        }
        let l = model.net().loss(out, b.yq);
        losses.extend(l.to_data().convert::<f64>().iter::<f64>());
    }
    let (mse, ci95) = mean_ci95(&losses);
    let acc = (!accuracies.is_empty()).then(|| mean_ci95(&accuracies));
    Ok(EvalResult {
        mse,
        ci95,
        accuracy: acc.map(|a| a.0),
        accuracy_ci95: acc.map(|a| a.1),
        tasks: losses.len(),
        inner_steps,
    })
}

/// Prototypical networks' logits: `net` embeds support and query examples; each class's
/// prototype is the mean of its support embeddings; a query's logit for a class is minus
/// its squared Euclidean distance to the prototype. `[tasks, query, ways]`.
pub fn proto_logits(net: &Net, params: &MetaParams, b: &DeviceBatch) -> Tensor<3> {
    let task = net.initial(params, b.xs.dims()[0]);
    let es = net.forward(params, &task, b.xs.clone()); // [T, S, D]
    let eq = net.forward(params, &task, b.xq.clone()); // [T, Q, D]
    let counts = b.ys.clone().sum_dim(1).swap_dims(1, 2); // [T, N, 1]
    let protos = b.ys.clone().swap_dims(1, 2).matmul(es) / counts; // [T, N, D]
    let qq = eq.clone().square().sum_dim(2); // [T, Q, 1]
    let pp = protos.clone().square().sum_dim(2).swap_dims(1, 2); // [T, 1, N]
    let cross = eq.matmul(protos.swap_dims(1, 2)); // [T, Q, N]
    cross.mul_scalar(2.0) - qq - pp
}

/// Seconds since `start`.
pub fn elapsed(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Timing of one outer step.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Median milliseconds per outer step.
    pub median_ms: f64,
    /// 10th percentile.
    pub p10_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
}

/// Times `reps` outer steps (after 20 warm-up steps) on pre-generated batches, so that only
/// the meta-gradient and the update are timed.
pub fn bench_outer_step(
    config: TrainConfig,
    device: Device,
    reps: usize,
) -> Result<BenchResult, TrainError> {
    let mut t = Trainer::on_device(config, device)?;
    let fam = t.family().clone();
    let batches: Vec<DeviceBatch> = (0..8u64)
        .map(|s| {
            let ids = fam.train_ids(t.config.seed, s, t.config.tasks_per_step);
            let b = fam.batch(&ids, t.config.support, t.config.query);
            DeviceBatch::new(&b, fam.input_len(), fam.output_len(), t.net.device())
        })
        .collect();
    for i in 0..20 {
        t.meta_step(&batches[i % batches.len()]);
    }
    let mut ms: Vec<f64> = (0..reps.max(1))
        .map(|i| {
            let start = Instant::now();
            t.meta_step(&batches[i % batches.len()]);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    Ok(BenchResult {
        median_ms: q(0.5),
        p10_ms: q(0.1),
        p90_ms: q(0.9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(model: ModelKind) -> TrainConfig {
        let mut c = TrainConfig::new(Problem::Rank1, model);
        c.steps = 6;
        c.tasks_per_step = 4;
        c
    }

    fn flat(t: &Trainer) -> Vec<u32> {
        t.record()
            .layers
            .iter()
            .flat_map(|l| {
                l.shared
                    .iter()
                    .chain(&l.adapted0)
                    .flatten()
                    .copied()
                    .chain([l.lr])
                    .map(f32::to_bits)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn same_seed_same_result_and_resume_is_exact() {
        let dir = std::env::temp_dir().join(format!("msr-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = dir.join("checkpoint.bin");

        let mut a = Trainer::new(small(ModelKind::MsrFc)).unwrap();
        let mut b = Trainer::new(small(ModelKind::MsrFc)).unwrap();
        for _ in 0..6 {
            a.outer_step();
        }
        for _ in 0..3 {
            b.outer_step();
        }
        assert_ne!(flat(&a), flat(&b), "training must change the parameters");
        b.save_checkpoint(&ck).unwrap();
        drop(b);
        let mut c = Trainer::resume(&ck, Some(&small(ModelKind::MsrFc))).unwrap();
        assert_eq!(c.step, 3);
        for _ in 0..3 {
            c.outer_step();
        }
        assert_eq!(
            flat(&a),
            flat(&c),
            "resumed run must equal the uninterrupted one"
        );

        let mut other = small(ModelKind::MsrFc);
        other.seed = 9;
        let e = Trainer::resume(&ck, Some(&other))
            .err()
            .expect("config mismatch");
        assert!(e.to_string().contains("another configuration"), "{e}");
        assert!(e.to_string().contains("seed (0 vs 9)"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");

        // A CRC-valid checkpoint with an out-of-range field is refused by name.
        let mut bad = small(ModelKind::MsrFc);
        bad.inner_steps = usize::MAX;
        let mut t = Trainer::new(small(ModelKind::MsrFc)).unwrap();
        t.config = bad;
        t.save_checkpoint(&ck).unwrap();
        let e = Trainer::resume(&ck, None)
            .err()
            .expect("out-of-range checkpoint");
        assert!(e.to_string().contains("inner_steps"), "{e}");
        Trainer::new(small(ModelKind::MsrFc))
            .unwrap()
            .save_checkpoint(&ck)
            .unwrap();

        let mut bytes = std::fs::read(&ck).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&ck, &bytes).unwrap();
        let e = Trainer::resume(&ck, None)
            .err()
            .expect("corrupt checkpoint");
        assert!(e.to_string().contains("corrupt"), "{e}");
        std::fs::write(&ck, b"hello").unwrap();
        assert!(Trainer::resume(&ck, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_model_trains_and_first_order_differs_from_exact() {
        for kind in [
            ModelKind::MsrFc,
            ModelKind::MamlFc,
            ModelKind::MamlLc,
            ModelKind::MamlConv,
        ] {
            let mut t = Trainer::new(small(kind)).unwrap();
            let l = t.outer_step();
            assert!(l.is_finite() && l > 0.0, "{kind}: {l}");
        }
        let mut exact = Trainer::new(small(ModelKind::MsrFc)).unwrap();
        let mut cfg = small(ModelKind::MsrFc);
        cfg.first_order = true;
        let mut first = Trainer::new(cfg).unwrap();
        exact.outer_step();
        first.outer_step();
        assert_ne!(flat(&exact), flat(&first));
    }

    #[test]
    fn evaluation_through_the_runtime_matches_the_trained_model() {
        let mut t = Trainer::new(small(ModelKind::MsrFc)).unwrap();
        t.outer_step();
        let bytes = t.record().to_bytes();
        let model = Model::from_bytes(&bytes, &msr_runtime::device::cpu()).unwrap();
        let a = evaluate(&model, t.family(), 20, 1, 19, 1).unwrap();
        let b = evaluate(&model, t.family(), 20, 1, 19, 1).unwrap();
        assert_eq!(a.mse, b.mse);
        assert!(a.mse.is_finite() && a.ci95 > 0.0);
    }

    fn glyph_config(model: ModelKind) -> TrainConfig {
        let mut c = TrainConfig::new(Problem::Glyphs, model);
        c.problem = "glyphs-mini".into();
        (c.ways, c.support, c.query) = (5, 5, 10);
        (c.channels, c.tasks_per_step, c.steps) = (4, 2, 3);
        c.augment_query = true;
        c
    }

    #[test]
    fn every_classifier_trains_and_anil_and_protonets_keep_their_inner_loop_off() {
        for kind in [
            ModelKind::MsrConv,
            ModelKind::MamlConv,
            ModelKind::Anil,
            ModelKind::ProtoNet,
        ] {
            let mut t = Trainer::new(glyph_config(kind)).unwrap();
            let before = t.record();
            for _ in 0..3 {
                let l = t.outer_step();
                assert!(l.is_finite() && l > 0.0, "{kind}: {l}");
            }
            let after = t.record();
            let n = after.layers.len();
            for (l, (a, b)) in before.layers.iter().zip(&after.layers).enumerate() {
                let adapts = kind.adapts(l, n) && !b.adapted0.is_empty();
                // Layers that do not adapt keep a zero learning rate, untouched by Adam;
                // their weights are still meta-learned.
                assert_eq!(b.lr == 0.0, !adapts, "{kind} layer {l}: lr {}", b.lr);
                if !adapts {
                    assert_eq!(a.lr, b.lr, "{kind} layer {l}");
                }
                if !b.adapted0.is_empty() {
                    assert_ne!(
                        a.adapted0, b.adapted0,
                        "{kind} layer {l} must be meta-learned"
                    );
                }
            }
            let e = t.evaluate(6).unwrap();
            let acc = e.accuracy.expect("classification reports accuracy");
            assert!((0.0..=1.0).contains(&acc) && e.accuracy_ci95.is_some());
        }
        // MSR-Conv's Kronecker factors start at the identity and are meta-learned.
        let mut t = Trainer::new(glyph_config(ModelKind::MsrConv)).unwrap();
        let a0 = t.record().layers[1].shared.clone();
        t.outer_step();
        assert_ne!(a0, t.record().layers[1].shared);
        assert!(Trainer::new(glyph_config(ModelKind::MsrFc)).is_err());
    }

    #[test]
    fn prototype_logits_are_minus_squared_distances_to_class_means() {
        let device = msr_runtime::device::cpu();
        let t = Trainer::new(glyph_config(ModelKind::ProtoNet)).unwrap();
        let model = Model::from_record(&t.record(), &device, DType::F32).unwrap();
        let fam = t.family();
        let batch = fam.batch(&fam.test_ids(1), 5, 10);
        let b = DeviceBatch::new(&batch, fam.input_len(), fam.output_len(), &device);
        let logits = proto_logits(model.net(), model.params(), &b);
        assert_eq!(logits.dims(), [1, 10, 5]);
        let got: Vec<f64> = logits.to_data().convert::<f64>().iter::<f64>().collect();
        // Independent computation on the host from the embeddings.
        let task = model.initial(1);
        let emb = |x: Tensor<3>| -> Vec<Vec<f64>> {
            let e = model.predict(&task, x).unwrap();
            let d = e.dims()[2];
            let v: Vec<f64> = e.to_data().convert::<f64>().iter::<f64>().collect();
            v.chunks(d).map(|c| c.to_vec()).collect()
        };
        let (es, eq) = (emb(b.xs.clone()), emb(b.xq.clone()));
        let label = |y: &[f32]| y.iter().position(|&v| v == 1.0).unwrap();
        let d = es[0].len();
        let mut protos = vec![vec![0.0; d]; 5];
        for (i, e) in es.iter().enumerate() {
            let c = label(&batch.ys[i * 5..i * 5 + 5]);
            for (p, v) in protos[c].iter_mut().zip(e) {
                *p += v; // one shot: the mean is the example
            }
        }
        for (q, e) in eq.iter().enumerate() {
            for (c, p) in protos.iter().enumerate() {
                let want: f64 = -e.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
                let g = got[q * 5 + c];
                assert!(
                    (g - want).abs() <= 1e-3 * want.abs().max(1.0),
                    "{g} vs {want}"
                );
            }
        }
    }
}
