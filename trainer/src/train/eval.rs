//! Evaluation through the runtime, exactly as a device adapts.

use msr_runtime::Model;
use serde::Serialize;

use crate::learner::Learner;
use crate::stats::mean_ci95;
use crate::tasks::Family;

use super::*;

/// Result of evaluating a model on test tasks.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Mean query loss over tasks: the MSE for regression, the cross-entropy for
    /// classification.
    pub loss: f64,
    /// The same number, named for what it is, for regression only (`None` for
    /// classification): the JSON says `mse` only where the loss is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mse: Option<f64>,
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
    /// Regression: the MSE of each output over every task's queries (e.g. per joint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_output_mse: Option<Vec<f64>>,
    /// Adaptations the engine refused as diverged (rolled back, as a device would be: their
    /// tasks count with the unadapted model's predictions). Always 0 on the burn path,
    /// which has no rollback.
    pub refused: usize,
}

impl EvalResult {
    /// Means and 95% CIs of per-task losses and (classification) accuracies.
    pub fn of(losses: &[f64], accuracies: &[f64], inner_steps: usize) -> Self {
        let (loss, ci95) = mean_ci95(losses);
        let acc = (!accuracies.is_empty()).then(|| mean_ci95(accuracies));
        EvalResult {
            loss,
            mse: acc.is_none().then_some(loss),
            ci95,
            accuracy: acc.map(|a| a.0),
            accuracy_ci95: acc.map(|a| a.1),
            tasks: losses.len(),
            inner_steps,
            per_output_mse: None,
            refused: 0,
        }
    }

    /// The same result with the per-output MSE of `errors`.
    pub fn with_per_output(mut self, errors: PerOutput) -> Self {
        self.per_output_mse = errors.mse();
        self
    }
}

/// Squared errors summed per output, for [`EvalResult::per_output_mse`].
#[derive(Clone, Debug, Default)]
pub struct PerOutput {
    sum: Vec<f64>,
    rows: usize,
}

impl PerOutput {
    /// Adds the squared errors of predictions `p` against targets `y` (rows of `outputs`).
    pub fn add<P: Copy + Into<f64>>(&mut self, p: &[P], y: &[f32], outputs: usize) {
        if self.sum.len() != outputs {
            self.sum = vec![0.0; outputs];
        }
        for (pr, yr) in p.chunks_exact(outputs).zip(y.chunks_exact(outputs)) {
            for ((s, p), y) in self.sum.iter_mut().zip(pr).zip(yr) {
                *s += ((*p).into() - *y as f64).powi(2);
            }
            self.rows += 1;
        }
    }

    /// The mean squared error of each output (`None` if nothing was added).
    pub fn mse(&self) -> Option<Vec<f64>> {
        (self.rows > 0).then(|| self.sum.iter().map(|s| s / self.rows as f64).collect())
    }
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
    let mut errors = PerOutput::default();
    let learner = Learner::of_spec(model.spec(), inner_steps);
    // Chunks bound memory; tasks are independent, so chunking does not change results.
    for ids in ids.chunks(if family.is_classification() { 20 } else { 100 }) {
        let batch = family.batch(ids, support, query);
        let b = DeviceBatch::new(
            &batch,
            family.input_len(),
            family.output_len(),
            model.net().device(),
        );
        let out = learner.eval_outputs(model, &b)?;
        if family.is_classification() {
            let hit = out
                .clone()
                .argmax(2)
                .equal(b.yq.clone().argmax(2))
                .float()
                .mean_dim(1);
            accuracies.extend(hit.to_data().convert::<f64>().iter::<f64>());
        }
        if !family.is_classification() {
            let p = out.clone().into_data().convert::<f32>();
            errors.add(
                p.as_slice::<f32>().unwrap_or(&[]),
                &batch.yq,
                family.output_len(),
            );
        }
        let l = model.net().loss(out, b.yq);
        losses.extend(l.to_data().convert::<f64>().iter::<f64>());
    }
    Ok(EvalResult::of(&losses, &accuracies, inner_steps).with_per_output(errors))
}

/// The robot families' two references on the tasks `ids` (see
/// [`crate::tasks::robots::Robot::references`]): the query MSE of the nominal model and of
/// the oracle, in the units of the targets; `None` for the other families.
pub fn evaluate_references(
    family: &Family,
    ids: &[u64],
    support: usize,
    query: usize,
) -> Option<(EvalResult, EvalResult)> {
    let (mut nominal, mut oracle) = (Vec::new(), Vec::new());
    let (mut nominal_errors, mut oracle_errors) = (PerOutput::default(), PerOutput::default());
    let fo = family.output_len();
    for ids in ids.chunks(100) {
        let refs = family.references(ids, support, query)?;
        let batch = family.batch(ids, support, query);
        let per = query * fo;
        for (t, r) in refs.iter().enumerate() {
            let y = &batch.yq[t * per..(t + 1) * per];
            let mse = |p: &[f32]| {
                p.iter()
                    .zip(y)
                    .map(|(p, y)| (*p as f64 - *y as f64).powi(2))
                    .sum::<f64>()
                    / per as f64
            };
            nominal.push(mse(&r.nominal));
            oracle.push(mse(&r.oracle));
            nominal_errors.add(&r.nominal, y, fo);
            oracle_errors.add(&r.oracle, y, fo);
        }
    }
    Some((
        EvalResult::of(&nominal, &[], 0).with_per_output(nominal_errors),
        EvalResult::of(&oracle, &[], 0).with_per_output(oracle_errors),
    ))
}

/// [`evaluate_on`] through the real-time engine (`msr_core::realtime`, what libmsr runs):
/// one session adapts to each task in turn (Gauss-Newton for a model meta-trained with
/// it, with the engine's step-acceptance safeguard), then predicts its queries. An
/// adaptation the engine refuses as diverged counts with the unadapted model's
/// predictions, as a device would be left.
pub fn evaluate_realtime(
    record: &msr_runtime::ModelRecord,
    family: &Family,
    ids: &[u64],
    support: usize,
    query: usize,
    inner_steps: usize,
) -> Result<EvalResult, msr_runtime::Error> {
    evaluate_realtime_refined(record, family, ids, support, query, inner_steps, None, None)
}

/// [`evaluate_realtime`] with the adaptation algorithm chosen (`inner`; `None`: the model
/// file's), as a device overrides it (`msr_session_set_inner`): e.g. Gauss-Newton on a
/// model meta-trained through SGD, its dampings (1 per layer without a solver record)
/// scaled. Then, if `refine` is `Some((damping, steps))`, `steps` damped Gauss-Newton
/// steps on the same support set from where the adaptation ended (the prior centred there,
/// the model's dampings scaled by `damping`): what a device does with
/// `msr_session_adapt`, then `msr_session_set_inner` and `msr_session_refine` on the
/// support set.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_realtime_refined(
    record: &msr_runtime::ModelRecord,
    family: &Family,
    ids: &[u64],
    support: usize,
    query: usize,
    inner_steps: usize,
    inner: Option<msr_runtime::realtime::Inner>,
    refine: Option<(f32, usize)>,
) -> Result<EvalResult, msr_runtime::Error> {
    use msr_runtime::realtime::{Inner, MAX_CAPACITY, RtModel, Session};
    let rt = RtModel::new(record)?;
    let (fi, fo) = (rt.input_len(), rt.output_len());
    let mut s = Session::new(rt, support.max(query).clamp(1, MAX_CAPACITY))?;
    if let Some(inner) = inner {
        s.set_inner(inner)?;
    }
    let first = s.inner();
    s.inner_steps = inner_steps;
    let classification = family.is_classification();
    let (mut losses, mut accuracies) = (Vec::with_capacity(ids.len()), Vec::new());
    let mut errors = PerOutput::default();
    let mut refused = 0;
    let mut out = vec![0.0f32; query * fo];
    for chunk in ids.chunks(if classification { 20 } else { 100 }) {
        let b = family.batch(chunk, support, query);
        for t in 0..b.tasks {
            let xs = &b.xs[t * support * fi..(t + 1) * support * fi];
            let ys = &b.ys[t * support * fo..(t + 1) * support * fo];
            let xq = &b.xq[t * query * fi..(t + 1) * query * fi];
            let yq = &b.yq[t * query * fo..(t + 1) * query * fo];
            if let Err(e) = s.adapt(xs, ys, support) {
                if !matches!(e, msr_runtime::Error::Diverged(_)) {
                    return Err(e);
                }
                refused += 1;
                s.reset();
            }
            if let Some((damping, steps)) = refine {
                s.set_inner(Inner::GaussNewton { damping })?;
                s.inner_steps = steps;
                // Gauss-Newton steps never raise the objective; one the engine refuses
                // leaves the parameters where the first adaptation put them.
                if let Err(e) = s.refine(xs, ys, support)
                    && !matches!(e, msr_runtime::Error::Diverged(_))
                {
                    return Err(e);
                }
                s.set_inner(first)?;
                s.inner_steps = inner_steps;
            }
            s.predict(xq, query, &mut out)?;
            if classification {
                let (mut loss, mut hits) = (0.0f64, 0usize);
                for (z, y) in out.chunks(fo).zip(yq.chunks(fo)) {
                    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let lse = m + z.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
                    loss += z
                        .iter()
                        .zip(y)
                        .map(|(zi, yi)| *yi as f64 * (lse - *zi as f64))
                        .sum::<f64>();
                    let argmax = |v: &[f32]| {
                        (0..v.len())
                            .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                            .unwrap_or(0)
                    };
                    hits += (argmax(z) == argmax(y)) as usize;
                }
                losses.push(loss / query as f64);
                accuracies.push(hits as f64 / query as f64);
            } else {
                let mse = out
                    .iter()
                    .zip(yq)
                    .map(|(p, y)| ((p - y) as f64).powi(2))
                    .sum::<f64>()
                    / (query * fo) as f64;
                losses.push(mse);
                errors.add(&out, yq, fo);
            }
        }
    }
    let mut r = EvalResult::of(&losses, &accuracies, inner_steps).with_per_output(errors);
    r.refused = refused;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelKind, init};
    use msr_runtime::format::ModelInfo;
    use msr_runtime::{Activation, FeatureShape, LayerSpec, Loss, ModelRecord, NetSpec, Op};

    /// An MSR-FC model for rank1 (k = 4, no bias), at its initialisation.
    fn rank1_model(family: &Family) -> ModelRecord {
        let net = NetSpec {
            input: FeatureShape(vec![family.input_len()]),
            layers: vec![LayerSpec {
                op: Op::ShareLinear {
                    inputs: family.input_len(),
                    outputs: family.output_len(),
                    k: 4,
                    bias: false,
                },
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        };
        let layers = init(&net, ModelKind::MsrFc, 0.01, &mut crate::rng::Rng::new(3)).unwrap();
        ModelRecord {
            info: ModelInfo {
                name: "eval".into(),
                task_family: "rank1".into(),
                inner_steps: 1,
                trainer_version: "test".into(),
            },
            net,
            layers,
            ext: Default::default(),
        }
    }

    #[test]
    fn diverged_adaptations_are_rolled_back_and_counted() {
        let family = Family::new(crate::tasks::Problem::Rank1);
        let ids = family.test_ids(10);
        let mut rec = rank1_model(&family);
        let calm = evaluate_realtime(&rec, &family, &ids, 5, 10, 1).unwrap();
        assert_eq!((calm.refused, calm.tasks), (0, 10));
        // A learning rate that makes every adaptation explode: each is refused, and its
        // task counts with the unadapted model (the same error as no step at all).
        rec.layers[0].lr = 1e6;
        let wild = evaluate_realtime(&rec, &family, &ids, 5, 10, 10).unwrap();
        assert_eq!(wild.refused, 10);
        let unadapted = evaluate_realtime(&rec, &family, &ids, 5, 10, 0).unwrap();
        assert!(wild.loss.is_finite());
        assert_eq!(wild.loss, unadapted.loss);
        assert_eq!(unadapted.refused, 0);
    }
}
