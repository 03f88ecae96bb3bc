//! Sessions on burn (the GPU, or burn-ndarray as a reference path): the same
//! [`Engine`] contract as the real-time engine, through [`Model`]. Not allocation-free:
//! tensors are created per call, so the real-time guarantees are the CPU engine's only.

use msr_core::realtime::{
    Engine, RtModel, check_len, check_state, encode_state, exploded, state_values,
};

use crate::tensor::{DType, Device, Tensor, TensorData};
use crate::{DivergedError, Error, Model, ModelRecord, TaskParams};

/// One task's adapted parameters on a burn device.
pub struct BurnSession {
    model: Model,
    task: TaskParams,
    fingerprint: u32,
    adapted_len: usize,
    /// Whether Gauss-Newton moves any parameter (some layer adapts with a non-zero rate).
    gauss_newton_moves: bool,
    /// Inner SGD steps per adaptation.
    pub inner_steps: usize,
    /// Multiplies every layer's learned inner learning rate.
    pub lr_scale: f64,
}

fn tensor(values: &[f32], n: usize, f: usize, device: &Device) -> Tensor<3> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [1, n, f]),
        (device, DType::F32),
    )
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

impl BurnSession {
    /// A session at the model's initialisation on `device`, for `record` and the real-time
    /// model `rt` prepared from it (whose fingerprint and layout it takes, so saved states
    /// move between the two engines).
    pub fn new(record: &ModelRecord, rt: &RtModel, device: &Device) -> Result<Self, Error> {
        let model = Model::from_record(record, device, DType::F32)?;
        if let Some(r) = &record.ext.refine {
            log::warn!(
                "model {}: its refine record asks for {} Gauss-Newton step(s) after SGD; this backend runs the SGD steps only (the CPU real-time engine runs both)",
                record.info.name,
                r.steps
            );
        }
        let task = model.initial(1);
        Ok(BurnSession {
            inner_steps: record.info.inner_steps as usize,
            lr_scale: 1.0,
            model,
            task,
            fingerprint: rt.fingerprint(),
            adapted_len: rt.adapted_len(),
            gauss_newton_moves: rt.gauss_newton_len() > 0,
        })
    }

    fn values(&self) -> Vec<f32> {
        self.task
            .layers
            .iter()
            .flatten()
            .flat_map(crate::model::download)
            .collect()
    }
}

impl Engine for BurnSession {
    fn input_len(&self) -> usize {
        self.model.net().input_len()
    }

    fn reset(&mut self) {
        self.task = self.model.initial(1);
    }

    fn adapt(&mut self, x: &[f32], y: &[f32], n: usize) -> Result<f32, Error> {
        let net = self.model.net();
        let (fi, fo) = (net.input_len(), net.output_len());
        check_len("inputs", x.len(), n, fi)?;
        check_len("targets", y.len(), n, fo)?;
        let device = net.device().clone();
        let (xt, yt) = (tensor(x, n, fi, &device), tensor(y, n, fo, &device));
        self.model.check_set(&xt, Some(&yt))?;
        let (xt, yt) = (
            self.model.standardize_inputs(xt),
            self.model.standardize_targets(yt),
        );
        let params = self.model.params();
        let mut initial = f32::NAN;
        let task = if self.model.gauss_newton() {
            crate::gn::check_rows(n, fo)?;
            if self.inner_steps > 0 {
                let out = net.forward(params, &self.model.initial(1), xt.clone());
                initial = net.loss(out, yt.clone()).into_scalar::<f32>();
            }
            if !self.gauss_newton_moves {
                // Nothing moves (and an empty Jacobian has no columns to join).
                self.model.initial(1)
            } else {
                self.model
                    .adapt_standardized(xt.clone(), yt.clone(), self.inner_steps)
            }
        } else {
            let mut task = self.model.initial(1);
            for step in 1..=self.inner_steps {
                let (loss, grads) = net.loss_and_grad(params, &task, xt.clone(), yt.clone());
                if step == 1 {
                    initial = loss.clone().into_scalar::<f32>();
                }
                task = net.sgd_step(params, task, grads, self.lr_scale);
            }
            task
        };
        let out = net.forward(params, &task, xt);
        let loss = net.loss(out, yt).into_scalar::<f32>();
        let nonfinite_params = !task
            .layers
            .iter()
            .flatten()
            .all(|t| crate::model::download(t).iter().all(|v| v.is_finite()));
        // The real-time engine's policy (with zero steps `initial` is NaN: finiteness only).
        if exploded(initial, loss) || nonfinite_params {
            return Err(DivergedError {
                step: self.inner_steps,
                loss: loss as f64,
                initial: initial as f64,
                nonfinite_params,
            }
            .into());
        }
        self.task = task;
        Ok(loss)
    }

    fn predict(&mut self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), Error> {
        let net = self.model.net();
        let (fi, fo) = (net.input_len(), net.output_len());
        check_len("inputs", x.len(), n, fi)?;
        check_len("output buffer", out.len(), n, fo)?;
        let pred = self
            .model
            .predict(&self.task, tensor(x, n, fi, net.device()))?;
        out.copy_from_slice(&host(pred));
        if out.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFiniteOutput);
        }
        Ok(())
    }

    fn save_state(&self, buf: &mut [u8]) -> Result<usize, Error> {
        encode_state(
            self.fingerprint,
            self.values().into_iter(),
            self.adapted_len,
            buf,
        )
    }

    fn load_state(&mut self, buf: &[u8]) -> Result<(), Error> {
        check_state(self.fingerprint, self.adapted_len, buf)?;
        let mut values = state_values(buf);
        let device = self.model.net().device().clone();
        let layers = self
            .task
            .layers
            .iter()
            .map(|l| {
                l.iter()
                    .map(|t| {
                        let n = t.dims()[1];
                        let v: Vec<f32> = values.by_ref().take(n).collect();
                        Tensor::from_data(TensorData::new(v, [1, n]), (&device, DType::F32))
                    })
                    .collect()
            })
            .collect();
        self.task = TaskParams { layers };
        Ok(())
    }
}
