//! A loaded model: metadata, the network prepared on a device, and its meta-parameters.

use std::path::Path;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::{DataError, Error};
use crate::format::{Extensions, LayerRecord, ModelInfo, ModelRecord, Normalizer, Standardize};
use crate::net::{LayerParams, MetaParams, Net, TaskParams};
use crate::spec::NetSpec;

/// A frozen, meta-learned model on one device. Immutable: adapting produces
/// [`TaskParams`], it never changes the model.
#[derive(Clone, Debug)]
pub struct Model {
    info: ModelInfo,
    net: Net,
    params: MetaParams,
    ext: Extensions,
    /// Which layers adapt (a record's `lr` of 0 freezes a layer); with a `solver` record
    /// the `lr` slots of `params` hold the layers' log-dampings and adaptation is
    /// Gauss-Newton.
    moved: Vec<bool>,
    /// The normaliser's statistics on the device: (input, output), each (mean, scale)
    /// `[1, 1, features]`.
    stats: [Option<(Tensor<3>, Tensor<3>)>; 2],
}

fn device_stats(
    s: Option<&Standardize>,
    device: &Device,
    dtype: DType,
) -> Option<(Tensor<3>, Tensor<3>)> {
    s.map(|s| {
        let n = s.mean.len();
        (
            upload(&s.mean, [1, 1, n], device, dtype),
            upload(&s.scale, [1, 1, n], device, dtype),
        )
    })
}

impl Model {
    /// Builds a model from a validated record, with parameters in `dtype` on `device`.
    pub fn from_record(record: &ModelRecord, device: &Device, dtype: DType) -> Result<Self, Error> {
        record.validate()?;
        let net = Net::new(record.net.clone(), device)?;
        let mut params = params_from_record(&net, &record.layers, dtype);
        let moved: Vec<bool> = record
            .layers
            .iter()
            .map(|l| l.lr != 0.0 && !l.adapted0.is_empty())
            .collect();
        if let Some(sv) = &record.ext.solver {
            for (lp, d) in params.layers.iter_mut().zip(&sv.log_damping) {
                lp.lr = upload(&[*d], [1, 1], device, dtype);
            }
        }
        let n = record.ext.normalizer.as_ref();
        let stats = [
            device_stats(n.and_then(|n| n.input.as_ref()), device, dtype),
            device_stats(n.and_then(|n| n.output.as_ref()), device, dtype),
        ];
        Ok(Self {
            info: record.info.clone(),
            net,
            params,
            ext: record.ext.clone(),
            moved,
            stats,
        })
    }

    /// Assembles a model from parts (the trainer's export path); checks the parameters.
    pub fn from_parts(info: ModelInfo, net: Net, params: MetaParams) -> Result<Self, Error> {
        net.check_params(&params)?;
        let moved = net
            .shapes()
            .params
            .iter()
            .map(|l| !l.adapted.is_empty())
            .collect();
        Ok(Self {
            info,
            net,
            params,
            ext: Extensions::default(),
            moved,
            stats: [None, None],
        })
    }

    /// Whether the model adapts by damped Gauss-Newton (it was meta-trained so: its file
    /// has a `solver` record).
    pub fn gauss_newton(&self) -> bool {
        self.ext.solver.is_some()
    }

    /// Which layers adaptation moves.
    pub fn moved(&self) -> &[bool] {
        &self.moved
    }

    /// Adapts the initialisation to standardised data: Gauss-Newton or SGD, as the model
    /// was meta-trained.
    pub(crate) fn adapt_standardized(
        &self,
        x: Tensor<3>,
        y: Tensor<3>,
        steps: usize,
    ) -> TaskParams {
        let task = self.net.initial(&self.params, x.dims()[0]);
        if self.gauss_newton() {
            self.net
                .adapt_gn(&self.params, task, x, y, steps, &self.moved)
        } else {
            self.net.adapt_from(&self.params, task, x, y, steps, false)
        }
    }

    /// The standardisation of inputs and outputs, if the model has one.
    pub fn normalizer(&self) -> Option<&Normalizer> {
        self.ext.normalizer.as_ref()
    }

    /// Raw inputs `[T, N, input_len]` to what the network sees.
    pub fn standardize_inputs(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.stats[0] {
            Some((m, s)) => (x - m.clone()) / s.clone(),
            None => x,
        }
    }

    /// Raw targets `[T, N, output_len]` to what the network is trained on.
    pub fn standardize_targets(&self, y: Tensor<3>) -> Tensor<3> {
        match &self.stats[1] {
            Some((m, s)) => (y - m.clone()) / s.clone(),
            None => y,
        }
    }

    /// The network's outputs back in raw units.
    pub fn raw_outputs(&self, out: Tensor<3>) -> Tensor<3> {
        match &self.stats[1] {
            Some((m, s)) => out * s.clone() + m.clone(),
            None => out,
        }
    }

    /// Decodes a model file (see [`crate::format`]) onto `device`, in f32.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self, Error> {
        Self::from_record(&ModelRecord::from_bytes(bytes)?, device, DType::F32)
    }

    /// Reads a model file from disk onto `device`, in f32.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Self::from_bytes(&bytes, device)
    }

    /// The model as a storable record (parameters read back as f32).
    pub fn to_record(&self) -> ModelRecord {
        let mut layers = record_from_params(&self.params);
        let mut ext = self.ext.clone();
        if let Some(sv) = &mut ext.solver {
            // The lr slots hold the log-dampings; a layer's lr is its on/off switch.
            sv.log_damping = layers.iter().map(|l| l.lr).collect();
            for (l, m) in layers.iter_mut().zip(&self.moved) {
                l.lr = if *m { 1.0 } else { 0.0 };
            }
        }
        ModelRecord {
            info: self.info.clone(),
            net: self.net.spec().clone(),
            layers,
            ext,
        }
    }

    /// Writes the model file to disk.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        std::fs::write(path, self.to_record().to_bytes()).map_err(|e| io_error(path, e))
    }

    /// Metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    /// The architecture.
    pub fn spec(&self) -> &NetSpec {
        self.net.spec()
    }
    /// The network on its device.
    pub fn net(&self) -> &Net {
        &self.net
    }
    /// The meta-learned parameters.
    pub fn params(&self) -> &MetaParams {
        &self.params
    }

    /// Checks a support or query set: `x` `[T, N, input_len]`, `y` `[T, N, output_len]`.
    pub fn check_set(&self, x: &Tensor<3>, y: Option<&Tensor<3>>) -> Result<(), DataError> {
        self.net
            .check_data("inputs", x.dims(), self.net.input_len())?;
        if !all_finite(x) {
            return Err(DataError::NonFinite("inputs"));
        }
        if let Some(y) = y {
            self.net
                .check_data("targets", y.dims(), self.net.output_len())?;
            if y.dims()[..2] != x.dims()[..2] {
                return Err(crate::error::ShapeError::Mismatch {
                    what: "targets [tasks, examples]".into(),
                    expected: format!("{:?}", &x.dims()[..2]),
                    got: format!("{:?}", &y.dims()[..2]),
                }
                .into());
            }
            if !all_finite(y) {
                return Err(DataError::NonFinite("targets"));
            }
        }
        Ok(())
    }

    /// Adapts the meta-learned initialisation to each task of a support set with `steps` inner
    /// SGD steps. `x` `[T, N, input_len]`, `y` `[T, N, output_len]`, raw units (the model
    /// standardises them as it was trained to).
    pub fn adapt(&self, x: Tensor<3>, y: Tensor<3>, steps: usize) -> Result<TaskParams, Error> {
        self.check_set(&x, Some(&y))?;
        if self.gauss_newton() {
            crate::gn::check_rows(x.dims()[1], self.net.output_len())?;
        }
        let (x, y) = (self.standardize_inputs(x), self.standardize_targets(y));
        Ok(self.adapt_standardized(x, y, steps))
    }

    /// The unadapted (meta-learned) parameters for `tasks` tasks.
    pub fn initial(&self, tasks: usize) -> TaskParams {
        self.net.initial(&self.params, tasks)
    }

    /// Predicts `[T, N, output_len]` for inputs `x` `[T, N, input_len]` with adapted `task`,
    /// in raw units.
    pub fn predict(&self, task: &TaskParams, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        self.check_set(&x, None)?;
        if task.tasks() != 0 && task.tasks() != x.dims()[0] {
            return Err(crate::error::ShapeError::Mismatch {
                what: "tasks in the adapted parameters and the inputs".into(),
                expected: task.tasks().to_string(),
                got: x.dims()[0].to_string(),
            }
            .into());
        }
        let out = self
            .net
            .forward(&self.params, task, self.standardize_inputs(x));
        Ok(self.raw_outputs(out))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn all_finite<const D: usize>(t: &Tensor<D>) -> bool {
    !t.clone().is_finite().bool_not().any().into_scalar::<bool>()
}

/// Uploads stored parameters (shapes already validated against `net`).
pub fn params_from_record(net: &Net, layers: &[LayerRecord], dtype: DType) -> MetaParams {
    let device = net.device();
    let layouts = &net.shapes().params;
    let layers = layers
        .iter()
        .zip(layouts)
        .map(|(rec, layout)| LayerParams {
            shared: rec
                .shared
                .iter()
                .zip(&layout.shared)
                .map(|(m, shape)| upload(m, *shape, device, dtype))
                .collect(),
            adapted0: rec
                .adapted0
                .iter()
                .map(|v| upload(v, [1, v.len()], device, dtype))
                .collect(),
            lr: upload(&[rec.lr], [1, 1], device, dtype),
        })
        .collect();
    MetaParams { layers }
}

/// Reads parameters back into storable f32 vectors.
pub fn record_from_params(params: &MetaParams) -> Vec<LayerRecord> {
    params
        .layers
        .iter()
        .map(|l| LayerRecord {
            shared: l.shared.iter().map(download).collect(),
            adapted0: l.adapted0.iter().map(download).collect(),
            lr: download(&l.lr)[0],
        })
        .collect()
}

/// A tensor of `dtype` on `device` from row-major f32 values.
pub(crate) fn upload<const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, dtype))
}

/// A tensor's values as row-major f32.
pub fn download<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32")
}
