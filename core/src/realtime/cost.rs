//! What each call of a session costs, derived once from the model and the session's
//! options, in *work units*: multiply-adds, with an element-wise transcendental (tanh,
//! GELU's erf, a softmax's exp) counted as [`TRANSCENDENTAL`] and a per-layer dispatch as
//! [`LAYER_OVERHEAD`]. Every term follows the path the engine takes (the Jacobian rows of a
//! linear head, batched dense rows or one backward pass per output; the primal or dual
//! solve; the Levenberg-Marquardt trials), so that a call on `n` examples does at most
//! [`Cost::at`]`(n)` work. A session whose worst call is over
//! [`limits::MAX_CALL_WORK`](crate::spec::limits::MAX_CALL_WORK) is refused when it is
//! created, and a model whose default session would be is refused at load
//! (docs/model-format.md, "Limits").

use alloc::format;

use super::gn::{self, Inner, MAX_TRIALS};
use super::{Kind, Layer, RtModel, Weights};
use crate::error::ShapeError;
use crate::spec::limits::MAX_CALL_WORK;
use crate::spec::{Activation, Loss};

/// Work units of one element-wise transcendental function (tanh, erf, exp).
pub const TRANSCENDENTAL: u128 = 32;
/// Work units charged per layer and example for the dispatch of a layer's kernels.
pub const LAYER_OVERHEAD: u128 = 64;
/// Work units charged per dot product of a convolution's output (one per output position
/// and channel, each as short as the filter: its set-up costs as much as a few
/// multiply-adds), and per output of a streaming update.
pub const DOT_OVERHEAD: u128 = 16;
/// Work units charged once per call (argument checks, dispatch).
pub const CALL_OVERHEAD: u128 = 1 << 12;
/// Refinement passes of the dual solve ([`gn`]'s mixed-precision refinement).
const DUAL_REFINE: u128 = 4;
/// Work units per multiply-add of a Kronecker factor's mode product: its loops run over
/// rows as short as one float and read a transposed factor with a stride (measured at up
/// to 4.7 ns per multiply-add, against 1 for the matrix products).
const KRON_WEIGHT: u128 = 4;

/// The work of one call on `n` examples: at most `fixed + n * per_example` work units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Work that does not grow with the number of examples (solves, materialising W).
    pub fixed: u128,
    /// Work per example of the call.
    pub per_example: u128,
}

impl Cost {
    /// The bound for a call on `n` examples.
    pub fn at(&self, n: usize) -> u128 {
        self.fixed
            .saturating_add(self.per_example.saturating_mul(n as u128))
    }

    fn plus(self, other: Cost) -> Cost {
        Cost {
            fixed: self.fixed.saturating_add(other.fixed),
            per_example: self.per_example.saturating_add(other.per_example),
        }
    }

    fn times(self, k: u128) -> Cost {
        Cost {
            fixed: self.fixed.saturating_mul(k),
            per_example: self.per_example.saturating_mul(k),
        }
    }

    /// A bound on both: component by component, the larger.
    fn max(self, other: Cost) -> Cost {
        Cost {
            fixed: self.fixed.max(other.fixed),
            per_example: self.per_example.max(other.per_example),
        }
    }

    /// Refuses a call whose fixed or per-example work is over [`MAX_CALL_WORK`], naming the
    /// call.
    pub fn check(&self, call: &str) -> Result<(), ShapeError> {
        for (part, value) in [("per example", self.per_example), ("fixed", self.fixed)] {
            if value > MAX_CALL_WORK as u128 {
                return Err(ShapeError::OverLimit {
                    what: format!("work of {call} ({part}, in multiply-adds)"),
                    value: Some(value),
                    limit: MAX_CALL_WORK,
                });
            }
        }
        Ok(())
    }
}

/// The bound of every call of a session ([`super::Session::costs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallCosts {
    /// `predict`.
    pub predict: Cost,
    /// `adapt` (and `refine` with the session's own steps), with the session's algorithm.
    pub adapt: Cost,
    /// `observe`, when Gauss-Newton is on (`None` otherwise: the call is refused).
    pub observe: Option<Cost>,
    /// `save_state` and `load_state`.
    pub state: Cost,
}

impl CallCosts {
    /// Refuses a session whose worst call is over [`MAX_CALL_WORK`].
    pub fn check(&self) -> Result<(), ShapeError> {
        self.predict.check("predict")?;
        self.adapt.check("adapt")?;
        if let Some(o) = &self.observe {
            o.check("observe")?;
        }
        self.state.check("save_state / load_state")
    }
}

fn activation_work(a: Activation) -> u128 {
    match a {
        Activation::Identity | Activation::Relu => 2,
        Activation::Tanh | Activation::Gelu => TRANSCENDENTAL,
    }
}

fn layer_macs(l: &Layer) -> u128 {
    match &l.kind {
        Kind::Reshape => 0,
        Kind::Dense { inputs, outputs } => *inputs as u128 * *outputs as u128,
        Kind::Patches {
            in_channels,
            out_channels,
            positions,
            taps,
            ..
        } => {
            let dots = (*out_channels * *positions) as u128;
            (*in_channels * *taps) as u128 * dots + DOT_OVERHEAD * dots
        }
    }
}

/// Multiply-adds of `W = reshape(U v)` for one layer (and as many for its backward).
fn materialise_work(l: &Layer) -> u128 {
    match &l.weights {
        Weights::Plain => l.weight_len as u128,
        Weights::Dense { ut, .. } => ut.len() as u128,
        Weights::Kron {
            dims: [o, i, s, ka, kb, kc],
            ..
        } => {
            let [o, i, s, ka, kb, kc] = [*o, *i, *s, *ka, *kb, *kc].map(|d| d as u128);
            KRON_WEIGHT
                * (ka * kb * kc * s
                    + ka * kb * s * i
                    + ka * i * s * o
                    + o * i * s * kc
                    + o * i * kb * kc
                    + o * ka * kb * kc)
        }
    }
}

/// The pieces every call is made of, per example or once.
struct Pieces {
    /// One example's forward pass (with its checks and standardisation).
    forward: u128,
    /// One example's backward pass.
    backward: u128,
    /// Materialising every layer's W (and, as much again, its backward).
    materialise: u128,
    /// Adapted scalars and weight scalars: copies, checks, fills.
    params: u128,
    weights: u128,
}

impl RtModel {
    fn pieces(&self) -> Pieces {
        let mut forward = 2 * self.input_len as u128 + 4 * self.output_len as u128;
        let mut backward = 2 * self.output_len as u128;
        if self.loss == Loss::CrossEntropy {
            forward += TRANSCENDENTAL * self.output_len as u128;
        }
        for l in &self.layers {
            let act = activation_work(l.activation) * l.out_len as u128;
            forward += layer_macs(l) + act + 2 * l.out_len as u128 + LAYER_OVERHEAD;
            backward += 2 * layer_macs(l) + act + 2 * l.in_len as u128 + LAYER_OVERHEAD;
        }
        Pieces {
            forward,
            backward,
            materialise: self.layers.iter().map(materialise_work).sum(),
            params: self.adapted_len() as u128,
            weights: self.layers.iter().map(|l| l.weight_len as u128).sum(),
        }
    }

    /// `steps` SGD steps on `n` examples, from a reset and with the rollback's copies.
    fn sgd_cost(&self, pc: &Pieces, steps: usize) -> Cost {
        let fixed = CALL_OVERHEAD + 3 * pc.params + 2 * pc.weights;
        if steps == 0 || pc.params == 0 {
            // Nothing moves: one pass measures the loss.
            return Cost {
                fixed,
                per_example: pc.forward,
            };
        }
        let step = Cost {
            fixed: 2 * pc.materialise + 3 * pc.params + 2 * pc.weights,
            per_example: pc.forward + pc.backward,
        };
        Cost {
            fixed,
            per_example: pc.forward,
        }
        .plus(step.times(steps as u128))
    }

    /// The layers Gauss-Newton moves and their parameter count (allocation-free).
    pub(crate) fn gn_moved(&self) -> (&[bool], usize) {
        let p = self
            .layers
            .iter()
            .zip(&self.gn_moved)
            .filter(|(_, m)| **m)
            .flat_map(|(l, _)| l.adapted0.iter().map(alloc::vec::Vec::len))
            .sum();
        (&self.gn_moved, p)
    }

    /// The rows of `J` for one example, by the path `Session::jacobian_rows` takes.
    fn jacobian_work(&self, pc: &Pieces, moved: &[bool], p: usize, capacity: usize) -> u128 {
        let (p, fo) = (p as u128, self.output_len as u128);
        let last = self.layers.len() - 1;
        let layer = &self.layers[last];
        let only_last = moved.iter().enumerate().all(|(i, m)| *m == (i == last));
        let fill = fo * p;
        if only_last && layer.activation == Activation::Identity {
            let k = layer.adapted0.first().map_or(0, alloc::vec::Vec::len) as u128;
            let inputs = layer.in_len as u128;
            match (&layer.kind, &layer.weights) {
                (Kind::Dense { .. }, Weights::Dense { .. }) => {
                    return fill + k * (inputs * fo + LAYER_OVERHEAD + fo);
                }
                (Kind::Dense { .. }, Weights::Plain) => return fill + fo * inputs,
                (_, _) if k < fo => {
                    return fill
                        + k * (materialise_work(layer)
                            + layer_macs(layer)
                            + LAYER_OVERHEAD
                            + 2 * fo
                            + layer.weight_len as u128);
                }
                _ => {}
            }
        }
        if self.dense_jacobian(capacity, moved).is_some() {
            let lowest = moved.iter().position(|m| *m).unwrap_or(0);
            let mut work = fill;
            for (i, l) in self.layers.iter().enumerate().skip(lowest) {
                let (inputs, out) = (l.in_len as u128, l.out_len as u128);
                work += fo * out * activation_work(l.activation) + LAYER_OVERHEAD;
                if moved[i] {
                    let k = l.adapted0[0].len() as u128;
                    work += match &l.weights {
                        Weights::Dense { .. } => k * out * inputs + fo * k * out,
                        _ => fo * out * inputs,
                    } + fo * out;
                }
                if i > lowest {
                    work += fo * out * inputs;
                }
            }
            return work;
        }
        // One backward pass per output, each with the weights' backward of the moved layers
        // and the gradients cleared.
        let moved_materialise: u128 = self
            .layers
            .iter()
            .zip(moved)
            .filter(|(_, m)| **m)
            .map(|(l, _)| materialise_work(l))
            .sum();
        fill + fo * (pc.backward + moved_materialise + pc.params + pc.weights + fo)
    }

    /// One Gauss-Newton step on `n` examples in a session of `capacity`, by the forms the
    /// session can take (the larger of the two where both are possible); `None` when
    /// Gauss-Newton cannot be switched on. Zero work with no adapted parameters: the step
    /// is skipped.
    ///
    /// With `n`, the step on exactly `n` examples: the form the session takes for them (the
    /// dual one when its `n F` rows are fewer than the parameters and fit), its Gram and
    /// factorisation at `c = n F` rows; without, a bound for every `n`.
    fn gn_step_cost(&self, pc: &Pieces, capacity: usize, n: Option<usize>) -> Option<Cost> {
        let (moved, p) = self.gn_moved();
        let (primal, dual_rows) = gn::forms(p, capacity, self.output_len);
        if !primal && dual_rows == 0 {
            return None;
        }
        if p == 0 {
            return Some(Cost::default());
        }
        let jac = self.jacobian_work(pc, moved, p, capacity);
        let (pw, fo, c) = (p as u128, self.output_len as u128, dual_rows as u128);
        // The form a call on `n` examples takes (`Session::gn_form`), if `n` is known.
        let takes_dual = n.map(|n| {
            let rows = n.saturating_mul(self.output_len);
            dual_rows >= rows && rows < p
        });
        let trials = MAX_TRIALS as u128;
        // Each trial moves, re-materialises and measures the loss, and may undo the move.
        let trial = Cost {
            fixed: 2 * pc.materialise + 4 * pw + pc.params + pc.weights,
            per_example: pc.forward,
        };
        let mut step: Option<Cost> = None;
        if primal && takes_dual != Some(true) {
            let accumulate = pc.forward + jac + fo * (pw * pw / 2 + 3 * pw) + pw * pw;
            // A Cholesky factorisation (P^3 / 6), its solves and the matrix's copy.
            let solve = pw * pw * pw / 6 + 8 * pw * pw;
            step = Some(
                Cost {
                    fixed: pw * pw + 2 * pw,
                    per_example: accumulate,
                }
                .plus(
                    trial
                        .plus(Cost {
                            fixed: solve,
                            per_example: 0,
                        })
                        .times(trials),
                ),
            );
        }
        if c > 0 && takes_dual != Some(false) {
            // With `c = n F <= dual_rows` rows, the Gram (f32, and f64 if refinement
            // fails) is `c^2 p` per step and the factorisation `c^3 / 3` per trial: for an
            // unknown `n`, bounded per example by `dual_rows` times a row's share.
            let c = match n {
                Some(n) => (n as u128 * fo).min(c),
                None => c,
            };
            let accumulate = pc.forward + jac + 4 * fo * pw;
            let gram = c * fo * pw + 4 * fo * pw;
            let solve = c * c * fo / 3 + DUAL_REFINE * (4 * fo * pw + 2 * c * fo) + 4 * fo * pw;
            let dual = Cost {
                fixed: 4 * pw,
                per_example: accumulate + gram,
            }
            .plus(
                trial
                    .plus(Cost {
                        fixed: 4 * pw,
                        per_example: solve,
                    })
                    .times(trials),
            );
            step = Some(step.map_or(dual, |s| s.max(dual)));
        }
        step
    }

    /// The bound of adapting on exactly `n` examples with `inner` and `inner_steps` (SGD
    /// steps, or Gauss-Newton steps for Gauss-Newton alone) in a session of `capacity`:
    /// tighter than [`RtModel::call_costs`]' for Gauss-Newton (the form `n` takes, and its
    /// solve at `n` rows). `None` when the algorithm cannot run in such a session.
    pub fn adapt_cost_at(
        &self,
        capacity: usize,
        inner: Inner,
        inner_steps: usize,
        n: usize,
    ) -> Option<u128> {
        let pc = self.pieces();
        self.adapt_cost_with(&pc, capacity, inner, inner_steps, Some(n))
            .map(|c| c.at(n))
    }

    fn adapt_cost_with(
        &self,
        pc: &Pieces,
        capacity: usize,
        inner: Inner,
        inner_steps: usize,
        n: Option<usize>,
    ) -> Option<Cost> {
        match inner {
            Inner::Sgd => Some(self.sgd_cost(pc, inner_steps)),
            Inner::GaussNewton { .. } => {
                let step = self.gn_step_cost(pc, capacity, n)?;
                Some(self.sgd_cost(pc, 0).plus(step.times(inner_steps as u128)))
            }
            Inner::SgdThenGaussNewton { steps, .. } => {
                let step = self.gn_step_cost(pc, capacity, n)?;
                Some(
                    self.sgd_cost(pc, inner_steps)
                        .plus(step.times(steps as u128)),
                )
            }
        }
    }

    /// The bound of every call of a session of `capacity` that adapts with `inner` and
    /// `inner_steps`. `None` when the algorithm cannot run in such a session (see
    /// [`super::Session::set_inner`]).
    pub fn call_costs(
        &self,
        capacity: usize,
        inner: Inner,
        inner_steps: usize,
    ) -> Option<CallCosts> {
        let pc = self.pieces();
        let adapt = self.adapt_cost_with(&pc, capacity, inner, inner_steps, None)?;
        let predict = Cost {
            fixed: CALL_OVERHEAD,
            per_example: pc.forward + 2 * self.output_len as u128,
        };
        let observe = match inner.gauss_newton_damping() {
            Some(_) => {
                let (moved, p) = self.gn_moved();
                let (primal, _) = gn::forms(p, capacity, self.output_len);
                let (pw, fo) = (p as u128, self.output_len as u128);
                let per_example = if p == 0 || !primal {
                    0 // refused, or nothing to fold in
                } else {
                    // Forgetting, the rows, then the update the session takes: all outputs at
                    // once with at least twice as many outputs as parameters (`A = J^T J`,
                    // then factorisations and products of P x P matrices), else one
                    // rank-one update per output; and the move.
                    let update = if fo >= 2 * pw {
                        fo * (pw * pw / 2 + 2 * pw + DOT_OVERHEAD) + 3 * pw * pw * pw
                    } else {
                        fo * (4 * pw * pw + 4 * pw + DOT_OVERHEAD)
                    };
                    pc.forward
                        + self.jacobian_work(&pc, moved, p, capacity)
                        + 3 * pw * pw
                        + update
                        + pc.materialise
                        + 2 * pw
                };
                Some(Cost {
                    fixed: CALL_OVERHEAD + 2 * pc.params + pc.materialise + pc.weights,
                    per_example,
                })
            }
            None => None,
        };
        let state = Cost {
            fixed: CALL_OVERHEAD + 4 * pc.params + pc.materialise,
            per_example: 0,
        };
        Some(CallCosts {
            predict,
            adapt,
            observe,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    use alloc::sync::Arc;

    use super::super::Session;
    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::format::{ModelRecord, Solver};
    use crate::spec::{FeatureShape, LayerSpec, NetSpec, Op};

    fn dense(inputs: usize, outputs: usize, activation: Activation) -> LayerSpec {
        LayerSpec {
            op: Op::Linear {
                inputs,
                outputs,
                bias: true,
            },
            activation,
        }
    }

    /// A model of `layers` on inputs of `input` floats, small deterministic parameters,
    /// learning rate `lrs[i]` per layer, a `solver` record when `gauss_newton`.
    fn model(input: usize, layers: Vec<LayerSpec>, lrs: &[f32], gauss_newton: bool) -> ModelRecord {
        let net = NetSpec {
            input: FeatureShape(vec![input]),
            layers,
            loss: Loss::Mse,
        };
        let small = |n: usize| (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let mut rec = crate::test_models::record(net, small, 0.0);
        for (l, &lr) in rec.layers.iter_mut().zip(lrs) {
            l.lr = lr;
        }
        if gauss_newton {
            rec.ext.solver = Some(Solver {
                log_damping: vec![0.0; lrs.len()],
            });
        }
        rec
    }

    fn flatten_gelu() -> LayerSpec {
        LayerSpec {
            op: Op::Flatten,
            activation: Activation::Gelu,
        }
    }

    #[test]
    fn gauss_newton_with_nothing_to_move_costs_a_forward_pass() {
        // The shape of shared/reliability's 57-byte file: a wide GELU, no parameters, a
        // solver record (it took 18-29 s: one backward pass per output for empty rows).
        let rec = model(16_384, vec![flatten_gelu()], &[0.0], true);
        let rt = RtModel::new(&rec).unwrap();
        let mut s = Session::new(rt.clone(), 4).unwrap();
        let costs = s.costs();
        let forward = rt.pieces().forward;
        assert!(costs.adapt.per_example <= 2 * forward, "{costs:?}");
        let x: Vec<f32> = (0..3 * 16_384).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..3 * 16_384).map(|i| (i as f32 * 0.11).cos()).collect();
        let before = s.loss(&x, &y, 3).unwrap();
        assert_eq!(s.adapt(&x, &y, 3).unwrap(), before);
        s.observe(&x, &y, 3).unwrap();
        assert_eq!(s.loss(&x, &y, 3).unwrap(), before);
    }

    #[test]
    fn a_wide_gauss_newton_model_is_refused_at_load_naming_the_call() {
        // Adapted first layer, a frozen 16 -> 20 000 GELU layer: its Jacobian rows take
        // 20 000 rows through a 20 000 x 16 layer per example (tens of seconds).
        let layers = || {
            vec![
                dense(4, 16, Activation::Gelu),
                dense(16, 20_000, Activation::Gelu),
            ]
        };
        let rec = model(4, layers(), &[0.1, 0.0], true);
        let e = RtModel::new(&rec).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Format);
        let msg = e.to_string();
        for w in [
            "work of adapt",
            "per example",
            "over the limit of 17179869184",
        ] {
            assert!(msg.contains(w), "'{w}' not in: {msg}");
        }
        // The same net adapting by SGD costs a few passes: it loads, and switching it to
        // Gauss-Newton is refused, leaving SGD on.
        let rec = model(4, layers(), &[0.1, 0.0], false);
        let rt = RtModel::new(&rec).unwrap();
        let mut s = Session::new(rt, 4).unwrap();
        let e = s
            .set_inner(Inner::GaussNewton { damping: 1.0 })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("work of adapt"), "{e}");
        assert_eq!(s.inner(), Inner::Sgd);
    }

    #[test]
    fn steps_over_the_budget_are_refused_and_change_nothing() {
        // Two 2048-wide layers: about 25 M work units per example and SGD step.
        let layers = vec![
            dense(2048, 2048, Activation::Tanh),
            dense(2048, 2048, Activation::Identity),
        ];
        let rec = model(2048, layers, &[0.01, 0.01], false);
        let rt = RtModel::new(&rec).unwrap();
        let mut s = Session::new(rt.clone(), 2).unwrap();
        let x: Vec<f32> = (0..2 * 2048).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..2 * 2048).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut before = vec![0.0; 2 * 2048];
        s.predict(&x, 2, &mut before).unwrap();
        s.inner_steps = 1000;
        let costs = s.costs();
        assert!(costs.adapt.per_example > MAX_CALL_WORK as u128, "{costs:?}");
        let e = s.adapt(&x, &y, 2).unwrap_err();
        assert!(matches!(e, Error::Data(_)), "{e:?}");
        assert!(e.to_string().contains("work of adapt (per example"), "{e}");
        let mut after = vec![0.0; 2 * 2048];
        s.predict(&x, 2, &mut after).unwrap();
        assert_eq!(before, after);
        // Within the budget it adapts, and the bound grows with steps and examples.
        s.inner_steps = 3;
        s.adapt(&x, &y, 2).unwrap();
        let three = s.costs().adapt;
        assert!(three.at(2) < three.at(3));
        s.inner_steps = 4;
        assert!(three.at(2) < s.costs().adapt.at(2));
    }

    /// A head of `k` shared directions on 8 inputs and 8 outputs (with biases: `k + 8`
    /// adapted parameters), adapting by Gauss-Newton.
    fn share_head(k: usize) -> Arc<RtModel> {
        let layers = vec![LayerSpec {
            op: Op::ShareLinear {
                inputs: 8,
                outputs: 8,
                k,
                bias: true,
            },
            activation: Activation::Identity,
        }];
        RtModel::new(&model(8, layers, &[1.0], true)).unwrap()
    }

    #[test]
    fn gauss_newton_up_to_its_parameter_limit_is_accepted() {
        // 2048 adapted parameters, the primal form's limit, fewer outputs than 2 P: the
        // row-by-row observe (not the block update's P^3) and one Cholesky per trial.
        let rt = share_head(2040);
        let s = Session::new(rt, 32).unwrap();
        let c = s.costs();
        c.check().unwrap();
        assert!(c.observe.is_some());
    }

    #[test]
    fn the_bound_for_n_examples_takes_the_form_they_take() {
        // 1032 parameters, 8 outputs: 4 examples take the dual form (32 rows), a bound for
        // every n must allow the primal one.
        let s = Session::new(share_head(1024), 32).unwrap();
        let exact = s.adapt_cost_at(4);
        let any = s.costs().adapt.at(4);
        assert!(exact <= any && 10 * exact < any, "{exact} {any}");
        // More rows than parameters: the primal form, the same bound.
        assert_eq!(
            s.adapt_cost_at(200),
            s.costs().adapt.at(200).min(s.adapt_cost_at(200))
        );
        assert!(s.adapt_cost_at(200) > s.adapt_cost_at(4));
    }

    #[test]
    fn every_call_of_a_robot_sized_model_is_within_the_limit() {
        // 28 -> 128 -> 128 -> 128 -> 7, SGD then Gauss-Newton on the last layer's v: the
        // Panda body's shape.
        let layers = vec![
            dense(28, 128, Activation::Tanh),
            dense(128, 128, Activation::Tanh),
            dense(128, 128, Activation::Tanh),
            dense(128, 7, Activation::Identity),
        ];
        let rec = model(28, layers, &[0.1; 4], false);
        let rt = RtModel::new(&rec).unwrap();
        let mut s = Session::new(rt, 32).unwrap();
        for inner in [
            Inner::Sgd,
            Inner::GaussNewton { damping: 1.0 },
            Inner::SgdThenGaussNewton {
                damping: 1.0,
                steps: 1,
            },
        ] {
            s.set_inner(inner).unwrap();
            let c = s.costs();
            c.check().unwrap();
            assert!(c.predict.per_example > 28 * 128 + 2 * 128 * 128 + 128 * 7);
            assert!(c.adapt.per_example > c.predict.per_example);
            assert_eq!(c.observe.is_some(), inner != Inner::Sgd);
        }
    }
}
