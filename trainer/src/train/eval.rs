//! Evaluation through the runtime, exactly as a device adapts.

use burn::tensor::Tensor;
use msr_runtime::{MetaParams, Model, Net};
use serde::Serialize;

use crate::models::{self};
use crate::stats::mean_ci95;
use crate::tasks::Family;

use super::*;

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
