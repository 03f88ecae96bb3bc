//! A network on a device: forward pass, loss, the hand-written gradient with respect to the
//! adapted parameters, and the inner loop (`adapt`).
//!
//! The same code runs on a plain device (the runtime: fast, no tape) and on an autodiff
//! device with the meta-parameters tracked (the trainer: burn differentiates through the
//! hand-written gradient, which gives the exact second-order meta-gradient).

use burn::tensor::{Device, Tensor, activation};

use crate::error::{DataError, ShapeError};
use crate::layer::{self, ApplyCache, Plan};
use crate::spec::{Activation, Loss, NetShapes, NetSpec};

/// Meta-learned parameters of one layer.
#[derive(Clone, Debug)]
pub struct LayerParams {
    /// The frozen symmetry matrices (U, or the Kronecker factors A, B, C), each 2-D.
    pub shared: Vec<Tensor<2>>,
    /// Initial values of the adapted vectors (v or W, then the bias), each `[1, len]`.
    pub adapted0: Vec<Tensor<2>>,
    /// The layer's inner-loop learning rate, shape `[1, 1]`.
    pub lr: Tensor<2>,
}

/// Meta-learned parameters of a whole network, one entry per layer.
#[derive(Clone, Debug)]
pub struct MetaParams {
    /// Per-layer parameters (empty vectors for parameter-free layers).
    pub layers: Vec<LayerParams>,
}

impl MetaParams {
    /// Every tensor, in a fixed order: per layer, shared, then adapted0, then lr.
    /// The trainer's optimizer and the model file walk parameters in this order.
    pub fn tensors(&self) -> Vec<Tensor<2>> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend(l.shared.iter().cloned());
            out.extend(l.adapted0.iter().cloned());
            out.push(l.lr.clone());
        }
        out
    }

    /// Applies `f` to every tensor (same order as [`MetaParams::tensors`]).
    pub fn map(&self, mut f: impl FnMut(Tensor<2>) -> Tensor<2>) -> MetaParams {
        let layers = self
            .layers
            .iter()
            .map(|l| LayerParams {
                shared: l.shared.iter().map(|t| f(t.clone())).collect(),
                adapted0: l.adapted0.iter().map(|t| f(t.clone())).collect(),
                lr: f(l.lr.clone()),
            })
            .collect();
        MetaParams { layers }
    }
}

/// Per-task adapted parameters: for each layer, each adapted vector as `[tasks, len]`.
#[derive(Clone, Debug)]
pub struct TaskParams {
    /// `layers[l][j]`: adapted vector j of layer l, one row per task.
    pub layers: Vec<Vec<Tensor<2>>>,
}

impl TaskParams {
    /// Number of tasks (rows).
    pub fn tasks(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.first())
            .map(|t| t.dims()[0])
            .next()
            .unwrap_or(0)
    }
}

/// A [`NetSpec`] prepared for one device: shapes checked, gather indices uploaded.
#[derive(Clone, Debug)]
pub struct Net {
    spec: NetSpec,
    shapes: NetShapes,
    plans: Vec<Plan>,
    device: Device,
}

/// What the backward pass keeps from the forward pass of one layer.
pub(crate) struct LayerCache {
    pub(crate) input_dims: [usize; 4],
    pub(crate) weight: Option<Tensor<2>>,
    pub(crate) apply: Option<ApplyCache>,
    /// What the activation's derivative needs: the pre-activation output (ReLU, GELU) or
    /// the output (tanh).
    pub(crate) act: Option<Tensor<4>>,
}

impl Net {
    /// Checks `spec` and prepares it for `device`.
    pub fn new(spec: NetSpec, device: &Device) -> Result<Self, ShapeError> {
        let shapes = spec.shapes()?;
        let plans = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Plan::new(
                    &l.op,
                    &shapes.activations[i],
                    &shapes.activations[i + 1],
                    device,
                )
            })
            .collect();
        Ok(Self {
            spec,
            shapes,
            plans,
            device: device.clone(),
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }
    /// All shapes of the architecture.
    pub fn shapes(&self) -> &NetShapes {
        &self.shapes
    }
    /// The device the net runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Scalars per input example.
    pub fn input_len(&self) -> usize {
        self.shapes.activations[0].numel()
    }
    /// Scalars per output example.
    pub fn output_len(&self) -> usize {
        self.shapes.activations.last().expect("non-empty").numel()
    }

    /// Checks that `params` has the layout the architecture needs.
    pub fn check_params(&self, params: &MetaParams) -> Result<(), ShapeError> {
        if params.layers.len() != self.spec.layers.len() {
            return Err(ShapeError::Mismatch {
                what: "number of parameter layers".into(),
                expected: self.spec.layers.len().to_string(),
                got: params.layers.len().to_string(),
            });
        }
        for (i, (p, layout)) in params.layers.iter().zip(&self.shapes.params).enumerate() {
            let shared: Vec<[usize; 2]> = p.shared.iter().map(|t| t.dims()).collect();
            let adapted: Vec<usize> = p.adapted0.iter().map(|t| t.dims()[1]).collect();
            let rows_ok = p.adapted0.iter().all(|t| t.dims()[0] == 1);
            if shared != layout.shared
                || adapted != layout.adapted
                || !rows_ok
                || p.lr.dims() != [1, 1]
            {
                return Err(ShapeError::Mismatch {
                    what: format!("parameters of {}", self.spec.layers[i].op.kind_name()),
                    expected: format!("shared {:?}, adapted {:?}", layout.shared, layout.adapted),
                    got: format!("shared {shared:?}, adapted {adapted:?}"),
                }
                .in_layer(i));
            }
        }
        Ok(())
    }

    /// Checks a data tensor `[T, N, features]` against the expected feature count.
    pub fn check_data(
        &self,
        what: &'static str,
        dims: [usize; 3],
        features: usize,
    ) -> Result<(), DataError> {
        if dims[0] == 0 || dims[1] == 0 {
            return Err(DataError::Empty(what));
        }
        if dims[2] != features {
            return Err(ShapeError::Mismatch {
                what: format!("{what} features per example"),
                expected: features.to_string(),
                got: dims[2].to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// The meta-learned initial adapted parameters, broadcast to `tasks` rows.
    pub fn initial(&self, params: &MetaParams, tasks: usize) -> TaskParams {
        let layers = params
            .layers
            .iter()
            .map(|l| {
                l.adapted0
                    .iter()
                    .map(|v| {
                        if tasks == 1 {
                            v.clone()
                        } else {
                            v.clone().repeat_dim(0, tasks)
                        }
                    })
                    .collect()
            })
            .collect();
        TaskParams { layers }
    }

    fn to_act(&self, x: Tensor<3>) -> Tensor<4> {
        let [t, n, _] = x.dims();
        let input = &self.shapes.activations[0];
        x.reshape([t, n, input.channels(), input.spatial_numel()])
    }

    pub(crate) fn run(
        &self,
        params: &MetaParams,
        task: &TaskParams,
        x: Tensor<3>,
        keep: bool,
    ) -> (Tensor<4>, Vec<LayerCache>) {
        let mut act = self.to_act(x);
        let mut caches = Vec::with_capacity(if keep { self.plans.len() } else { 0 });
        for (i, (spec, plan)) in self.spec.layers.iter().zip(&self.plans).enumerate() {
            let input_dims = act.dims();
            let adapted = &task.layers[i];
            let weight = adapted
                .first()
                .map(|main| layer::weights(&spec.op, &params.layers[i].shared, main.clone()));
            let (z, apply) = layer::apply(
                plan,
                weight.as_ref().unwrap_or(&adapted_placeholder(&act)),
                adapted.get(1),
                act,
                &self.shapes.activations[i + 1],
            );
            let (out, act_cache) = match spec.activation {
                Activation::Identity => (z, None),
                Activation::Relu => {
                    let out = activation::relu(z.clone());
                    (out, keep.then_some(z))
                }
                Activation::Tanh => {
                    let out = z.tanh();
                    let cache = keep.then(|| out.clone());
                    (out, cache)
                }
                Activation::Gelu => {
                    let out = gelu(z.clone());
                    (out, keep.then_some(z))
                }
            };
            if keep {
                caches.push(LayerCache {
                    input_dims,
                    weight,
                    apply,
                    act: act_cache,
                });
            }
            act = out;
        }
        (act, caches)
    }

    /// Forward pass: `x` `[T, N, input_len]` to outputs `[T, N, output_len]`.
    pub fn forward(&self, params: &MetaParams, task: &TaskParams, x: Tensor<3>) -> Tensor<3> {
        let [t, n, _] = x.dims();
        let (out, _) = self.run(params, task, x, false);
        out.reshape([t, n, self.output_len()])
    }

    /// Per-task loss `[T]` of outputs `[T, N, F]` against targets `[T, N, F]`.
    pub fn loss(&self, out: Tensor<3>, y: Tensor<3>) -> Tensor<1> {
        loss_and_grad(self.spec.loss, out, y, false).0
    }

    /// Per-task support loss `[T]` and its gradient with respect to every adapted parameter,
    /// computed by hand (no autodiff): `grads.layers[l][j]` matches `task.layers[l][j]`.
    pub fn loss_and_grad(
        &self,
        params: &MetaParams,
        task: &TaskParams,
        x: Tensor<3>,
        y: Tensor<3>,
    ) -> (Tensor<1>, TaskParams) {
        let [t, n, _] = x.dims();
        let (out, caches) = self.run(params, task, x, true);
        let [_, _, c, s] = out.dims();
        let (loss, dout) = loss_and_grad(self.spec.loss, out.reshape([t, n, c * s]), y, true);
        let dy = dout.expect("asked for the gradient").reshape([t, n, c, s]);
        (loss, self.backward(params, task, &caches, dy))
    }

    /// The hand-written backward pass: from `dy`, d(something)/d(outputs) `[T, N, c, s]`,
    /// to d(something)/d(every adapted parameter), with the forward pass's `caches`.
    pub(crate) fn backward(
        &self,
        params: &MetaParams,
        task: &TaskParams,
        caches: &[LayerCache],
        mut dy: Tensor<4>,
    ) -> TaskParams {
        let mut grads: Vec<Vec<Tensor<2>>> = vec![Vec::new(); self.plans.len()];
        // The first layer with parameters does not need the gradient of its input.
        let first_param = task.layers.iter().position(|l| !l.is_empty()).unwrap_or(0);
        for i in (0..self.plans.len()).rev() {
            let spec = &self.spec.layers[i];
            let cache = &caches[i];
            if let Some(a) = &cache.act {
                dy = match spec.activation {
                    Activation::Relu => dy.mask_fill(a.clone().lower_equal_elem(0.0), 0.0),
                    // d tanh = 1 - tanh^2, from the output.
                    Activation::Tanh => dy * a.clone().square().neg().add_scalar(1.0),
                    Activation::Gelu => dy * gelu_grad(a.clone()),
                    Activation::Identity => dy,
                };
            }
            let g = layer::apply_backward(
                &self.plans[i],
                cache.weight.as_ref(),
                cache.apply.as_ref(),
                task.layers[i].len() > 1,
                dy,
                cache.input_dims,
                i > first_param,
            );
            if let Some(dw) = g.dw {
                grads[i].push(layer::weights_backward(
                    &spec.op,
                    &params.layers[i].shared,
                    dw,
                ));
            }
            grads[i].extend(g.db);
            match g.dx {
                Some(dx) => dy = dx,
                None => break,
            }
        }
        TaskParams { layers: grads }
    }

    /// `steps` inner SGD steps: `v <- v - lr_layer * grad_v L(support)` for every adapted
    /// parameter, starting from `task`. `x` `[T, N, in]`, `y` `[T, N, out]`.
    ///
    /// On an autodiff device the result is differentiable with respect to the
    /// meta-parameters through the inner gradient itself (second order), unless
    /// `first_order` detaches that gradient (first-order MAML, for comparison).
    pub fn adapt_from(
        &self,
        params: &MetaParams,
        mut task: TaskParams,
        x: Tensor<3>,
        y: Tensor<3>,
        steps: usize,
        first_order: bool,
    ) -> TaskParams {
        for _ in 0..steps {
            let (_, mut grads) = self.loss_and_grad(params, &task, x.clone(), y.clone());
            if first_order {
                for g in grads.layers.iter_mut().flatten() {
                    *g = g.clone().detach();
                }
            }
            task = self.sgd_step(params, task, grads, 1.0);
        }
        task
    }

    /// `task - lr_scale * lr_layer * grads`, per layer.
    pub fn sgd_step(
        &self,
        params: &MetaParams,
        task: TaskParams,
        grads: TaskParams,
        lr_scale: f64,
    ) -> TaskParams {
        let layers = task
            .layers
            .into_iter()
            .zip(grads.layers)
            .zip(&params.layers)
            .map(|((vs, gs), p)| {
                let lr = p.lr.clone().mul_scalar(lr_scale);
                vs.into_iter()
                    .zip(gs)
                    .map(|(v, g)| v - g * lr.clone())
                    .collect()
            })
            .collect();
        TaskParams { layers }
    }

    /// Adapts from the meta-learned initialisation: [`Net::initial`] then
    /// [`Net::adapt_from`].
    pub fn adapt(
        &self,
        params: &MetaParams,
        x: Tensor<3>,
        y: Tensor<3>,
        steps: usize,
    ) -> TaskParams {
        let tasks = x.dims()[0];
        let task = self.initial(params, tasks);
        self.adapt_from(params, task, x, y, steps, false)
    }
}

/// GELU, `x Phi(x)` with the exact (erf) normal CDF, as the real-time engine computes it.
fn gelu(z: Tensor<4>) -> Tensor<4> {
    let phi = z
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    z * phi
}

/// d GELU / dz = Phi(z) + z phi(z), phi the standard normal density.
pub(crate) fn gelu_grad(z: Tensor<4>) -> Tensor<4> {
    let cdf = z
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    let density = z
        .clone()
        .square()
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    cdf + z * density
}

/// Parameter-free layers are applied with a dummy weight that is never read.
fn adapted_placeholder(act: &Tensor<4>) -> Tensor<2> {
    Tensor::zeros([1, 1], (&act.device(), act.dtype()))
}

/// Per-task loss `[T]` and, if asked, its gradient with respect to `out`.
///
/// The task losses are independent, so the gradient of their *sum* is each task's own
/// gradient: adapting T tasks as one batch equals adapting each alone.
fn loss_and_grad(
    loss: Loss,
    out: Tensor<3>,
    y: Tensor<3>,
    grad: bool,
) -> (Tensor<1>, Option<Tensor<3>>) {
    let [t, n, f] = out.dims();
    match loss {
        Loss::Mse => {
            let diff = out - y;
            let l = diff
                .clone()
                .square()
                .reshape([t, n * f])
                .mean_dim(1)
                .reshape([t]);
            let g = grad.then(|| diff.mul_scalar(2.0 / (n * f) as f64));
            (l, g)
        }
        Loss::CrossEntropy => {
            let logp = activation::log_softmax(out, 2);
            let l = (logp.clone() * y.clone())
                .sum_dim(2)
                .mean_dim(1)
                .neg()
                .reshape([t]);
            let g = grad.then(|| {
                // d/dz of -sum_c y_c log softmax(z)_c = softmax(z) * sum_c y_c - y.
                let mass = y.clone().sum_dim(2);
                (logp.exp() * mass - y).div_scalar(n as f64)
            });
            (l, g)
        }
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
