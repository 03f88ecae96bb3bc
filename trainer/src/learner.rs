//! One interface for every meta-learner: how a learner turns a task's support set into
//! outputs for its queries, while meta-training (through the autodiff graph) and when a
//! trained model is evaluated (through the runtime). Gradient-based learners (MSR, MAML,
//! ANIL, the MLPs and msr-head; SGD or Gauss-Newton inner loops) adapt on the support set
//! and predict the queries; prototypical networks embed both and score each query by its
//! distance to the class means of the support embeddings.

use burn::tensor::Tensor;
use msr_runtime::{LayerParams, MetaParams, Model, Net, NetSpec};

use crate::models::{self, ModelKind};
use crate::train::{DeviceBatch, InnerKind, TrainConfig};

/// A meta-learner's way from a support set to query outputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Learner {
    /// Adapts the adapted parameters on the support set, then predicts the queries.
    Adapts {
        /// The inner loop meta-trained through.
        inner: InnerKind,
        /// Its steps.
        steps: usize,
        /// Whether the inner gradient is detached (first-order MAML; SGD only).
        first_order: bool,
        /// The fixed damping of `SgdThenGaussNewton`'s Gauss-Newton step.
        damping: f64,
    },
    /// Prototypical networks: no inner loop; logits are minus squared distances to the
    /// support set's class means in embedding space.
    Prototypes,
}

impl Learner {
    /// The learner a training configuration meta-trains.
    pub fn of_config(c: &TrainConfig) -> Self {
        if c.model == ModelKind::ProtoNet {
            Learner::Prototypes
        } else {
            Learner::Adapts {
                inner: c.inner,
                steps: c.inner_steps,
                first_order: c.first_order,
                damping: c.damping as f64,
            }
        }
    }

    /// The learner of a trained model's architecture (a classifier whose net ends in an
    /// embedding is a prototypical network); `steps` inner steps (SGD, or Gauss-Newton for
    /// a model with a solver record: the runtime chooses).
    pub fn of_spec(spec: &NetSpec, steps: usize) -> Self {
        if models::embeds(spec) {
            Learner::Prototypes
        } else {
            Learner::Adapts {
                inner: InnerKind::Sgd,
                steps,
                first_order: false,
                damping: 1.0,
            }
        }
    }

    /// Whether it adapts (has an inner loop).
    pub fn adapts(&self) -> bool {
        matches!(self, Learner::Adapts { .. })
    }

    /// The query outputs `[tasks, query, outputs]` of the tasks of `b` while meta-training:
    /// on an autodiff device, the graph runs through the inner loop. `moved` says which
    /// layers a Gauss-Newton inner loop moves.
    pub fn train_outputs(
        &self,
        net: &Net,
        params: &MetaParams,
        b: &DeviceBatch,
        moved: &[bool],
    ) -> Tensor<3> {
        match *self {
            Learner::Prototypes => proto_logits(net, params, b),
            Learner::Adapts {
                inner,
                steps,
                first_order,
                damping,
            } => {
                let task = net.initial(params, b.xs.dims()[0]);
                let task = match inner {
                    InnerKind::Sgd => {
                        net.adapt_from(params, task, b.xs.clone(), b.ys.clone(), steps, first_order)
                    }
                    InnerKind::GaussNewton => {
                        net.adapt_gn(params, task, b.xs.clone(), b.ys.clone(), steps, moved)
                    }
                    InnerKind::SgdThenGaussNewton => {
                        let sgd =
                            net.adapt_from(params, task, b.xs.clone(), b.ys.clone(), steps, false);
                        // The Gauss-Newton step reads its log-dampings from the lr slots.
                        let fixed = MetaParams {
                            layers: params
                                .layers
                                .iter()
                                .map(|l| LayerParams {
                                    lr: l.lr.zeros_like().add_scalar(damping.ln()),
                                    ..l.clone()
                                })
                                .collect(),
                        };
                        net.adapt_gn(&fixed, sgd, b.xs.clone(), b.ys.clone(), 1, moved)
                    }
                };
                net.forward(params, &task, b.xq.clone())
            }
        }
    }

    /// The query outputs of a trained model through the runtime, as a device would compute
    /// them (its checks included).
    pub fn eval_outputs(
        &self,
        model: &Model,
        b: &DeviceBatch,
    ) -> Result<Tensor<3>, msr_runtime::Error> {
        match *self {
            Learner::Prototypes => {
                model.check_set(&b.xs, None)?;
                model.check_set(&b.xq, None)?;
                Ok(proto_logits(model.net(), model.params(), b))
            }
            Learner::Adapts { steps, .. } => {
                let task = model.adapt(b.xs.clone(), b.ys.clone(), steps)?;
                model.predict(&task, b.xq.clone())
            }
        }
    }

    /// For logs: "1 inner step(s), exact second order", "no inner loop".
    pub fn describe(&self) -> String {
        match self {
            Learner::Prototypes => "no inner loop".into(),
            Learner::Adapts {
                inner,
                steps,
                first_order,
                damping,
            } => format!(
                "{steps} inner step(s){}, {}",
                if *inner == InnerKind::SgdThenGaussNewton {
                    format!(" then one Gauss-Newton step (damping {damping})")
                } else {
                    String::new()
                },
                if *first_order {
                    "first order"
                } else {
                    "exact second order"
                }
            ),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::Problem;

    /// Every model kind has its learner, from its configuration and from its file's
    /// architecture alike; only prototypical networks skip the inner loop.
    #[test]
    fn every_model_kind_has_one_learner() {
        for kind in [
            ModelKind::MsrConv,
            ModelKind::MamlConv,
            ModelKind::Anil,
            ModelKind::ProtoNet,
        ] {
            let mut c = TrainConfig::new(Problem::Glyphs, kind);
            c.inner_steps = 3;
            let from_config = Learner::of_config(&c);
            let spec = models::glyph_spec(kind, 5, 4).unwrap();
            let from_spec = Learner::of_spec(&spec, 3);
            assert_eq!(from_config.adapts(), kind != ModelKind::ProtoNet, "{kind}");
            assert_eq!(from_spec.adapts(), from_config.adapts(), "{kind}");
        }
        let mut c = TrainConfig::new(Problem::Rank1, ModelKind::MsrFc);
        c.first_order = true;
        assert_eq!(
            Learner::of_config(&c).describe(),
            "1 inner step(s), first order"
        );
        assert_eq!(Learner::Prototypes.describe(), "no inner loop");
    }
}
