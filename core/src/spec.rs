//! The architecture of a network, without any tensors: layer kinds, shapes, losses.
//!
//! A [`NetSpec`] is what the model file stores next to the parameters, and what every
//! shape check runs against. Nothing here touches a device.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::error::ShapeError;

/// The shape of one example's features: `[channels, spatial...]` with 0, 1 or 2 spatial
/// dimensions. A dense layer sees the row-major flattening of the whole shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureShape(pub Vec<usize>);

impl FeatureShape {
    /// Number of scalars in one example.
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// The leading (channel) dimension; a flat vector is `numel` channels of size 1.
    pub fn channels(&self) -> usize {
        self.0.first().copied().unwrap_or(1)
    }
    /// The spatial dimensions (empty for a flat vector).
    pub fn spatial(&self) -> &[usize] {
        if self.0.is_empty() { &[] } else { &self.0[1..] }
    }
    /// Product of the spatial dimensions (1 for a flat vector).
    pub fn spatial_numel(&self) -> usize {
        self.spatial().iter().product()
    }
}

/// Elementwise nonlinearity applied after a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// y = x
    Identity,
    /// y = max(x, 0)
    Relu,
    /// y = tanh(x)
    Tanh,
    /// y = x Phi(x), Phi the standard normal CDF (the exact GELU, with erf; format v2).
    Gelu,
}

impl Activation {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
        }
    }
}

impl core::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "identity" => Ok(Activation::Identity),
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(format!(
                "unknown activation '{other}' (available: relu, tanh, gelu, identity)"
            )),
        }
    }
}

/// The training and adaptation loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Loss {
    /// Mean squared error, mean over examples and outputs of each task.
    Mse,
    /// Softmax cross-entropy against one-hot (or soft) targets, mean over examples.
    CrossEntropy,
}

/// Geometry of a 1-D or 2-D convolution (cross-correlation, as in every DL framework).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvGeom {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size per spatial dimension (1 or 2 entries).
    pub kernel: Vec<usize>,
    /// Stride per spatial dimension.
    pub stride: Vec<usize>,
    /// Zero padding on both sides, per spatial dimension.
    pub padding: Vec<usize>,
}

impl ConvGeom {
    /// A 1-D convolution with stride 1.
    pub fn d1(in_channels: usize, out_channels: usize, kernel: usize, padding: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: vec![kernel],
            stride: vec![1],
            padding: vec![padding],
        }
    }
    /// A 2-D convolution with a square kernel and the same stride and padding on both axes.
    pub fn d2(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: vec![kernel; 2],
            stride: vec![stride; 2],
            padding: vec![padding; 2],
        }
    }
    fn kernel_area_checked(&self) -> Result<usize, ShapeError> {
        check_size("kernel", &self.kernel)?;
        Ok(self.kernel_area())
    }
    /// Number of taps of one filter: the product of the kernel sizes.
    pub fn kernel_area(&self) -> usize {
        self.kernel.iter().product()
    }
    /// Size of the filter bank `[out, in, kernel...]`.
    pub fn filter_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel_area()
    }

    /// Checks the kernel, stride and padding of each dimension on its own (a product check
    /// would let `[2^31, 0]` through) against [`limits::MAX_KERNEL`], and the padding
    /// against the kernel: padding of the kernel size or more only adds outputs that see
    /// nothing but zeros.
    fn check_dims(&self) -> Result<(), ShapeError> {
        let dims = self.kernel.len();
        if !(1..=2).contains(&dims) || self.stride.len() != dims || self.padding.len() != dims {
            return Err(ShapeError::InvalidLayer(format!(
                "convolution needs 1 or 2 spatial dims with one kernel, stride and padding each, got {} kernel sizes, {} strides, {} paddings",
                self.kernel.len(),
                self.stride.len(),
                self.padding.len()
            )));
        }
        for d in 0..dims {
            let (k, s, p) = (self.kernel[d], self.stride[d], self.padding[d]);
            check_limit(
                format!("convolution kernel size (dimension {d})"),
                Some(k as u128),
                limits::MAX_KERNEL,
            )?;
            check_limit(
                format!("convolution stride (dimension {d})"),
                Some(s as u128),
                limits::MAX_KERNEL,
            )?;
            if k == 0 || s == 0 {
                return Err(ShapeError::InvalidLayer(format!(
                    "convolution kernel {k} and stride {s} must be at least 1 (dimension {d})"
                )));
            }
            check_limit(
                format!(
                    "convolution padding (dimension {d}; it must be below the kernel size {k})"
                ),
                Some(p as u128),
                k as u64 - 1,
            )?;
        }
        Ok(())
    }

    fn output_spatial(&self, input: &FeatureShape) -> Result<Vec<usize>, ShapeError> {
        let dims = self.kernel.len();
        if !(1..=2).contains(&dims) || self.stride.len() != dims || self.padding.len() != dims {
            return Err(ShapeError::InvalidLayer(format!(
                "convolution needs 1 or 2 spatial dims with one kernel, stride and padding each, got kernel {:?} stride {:?} padding {:?}",
                self.kernel, self.stride, self.padding
            )));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err(ShapeError::InvalidLayer(
                "convolution with zero channels".into(),
            ));
        }
        if input.0.len() != dims + 1 || input.channels() != self.in_channels {
            return Err(ShapeError::Mismatch {
                what: "convolution input [channels, spatial...]".into(),
                expected: format!("[{}, <{} dims>]", self.in_channels, dims),
                got: format!("{:?}", input.0),
            });
        }
        self.check_dims()?;
        let mut out = Vec::with_capacity(dims);
        for d in 0..dims {
            let (k, s, p, n) = (
                self.kernel[d],
                self.stride[d],
                self.padding[d],
                input.0[d + 1],
            );
            // n + 2p - k: no overflow, all three are bounded (check_dims).
            let padded = n as u128 + 2 * p as u128;
            if padded < k as u128 {
                return Err(ShapeError::InvalidLayer(format!(
                    "kernel {k} (stride {s}, padding {p}) does not fit input size {n}"
                )));
            }
            out.push(((padded - k as u128) / s as u128 + 1) as usize);
        }
        Ok(out)
    }
}

impl ConvGeom {
    /// The gather index of this convolution for input and output spatial shapes `in_sp`
    /// and `out_sp` (as [`NetSpec::shapes`] computed and bounded them): for output position p
    /// and kernel tap q, entry `p * taps + q` is the flat input position to read, or
    /// `in_positions` (one past the last) where the tap falls in the zero padding. Both
    /// engines (burn and real-time) build their convolutions on it.
    ///
    /// Fails only when the memory cannot be reserved (the size is bounded by
    /// [`limits::MAX_GATHER_ENTRIES`] when the shapes come from [`NetSpec::shapes`]).
    pub fn gather_index(
        &self,
        in_sp: &[usize],
        out_sp: &[usize],
    ) -> Result<Vec<u32>, alloc::collections::TryReserveError> {
        let dims = self.kernel.len();
        let in_positions: usize = in_sp.iter().product();
        let positions: usize = out_sp.iter().product();
        let taps = self.kernel_area();
        let mut index = Vec::new();
        index.try_reserve_exact(positions * taps)?;
        for p in 0..positions {
            for q in 0..taps {
                let (mut pr, mut qr) = (p, q);
                let mut flat = 0usize;
                let mut stride_acc = 1usize;
                let mut inside = true;
                // Unravel from the last dimension.
                for d in (0..dims).rev() {
                    let pc = pr % out_sp[d];
                    pr /= out_sp[d];
                    let qc = qr % self.kernel[d];
                    qr /= self.kernel[d];
                    let c = (pc * self.stride[d] + qc) as isize - self.padding[d] as isize;
                    if c < 0 || c >= in_sp[d] as isize {
                        inside = false;
                    }
                    flat += c.max(0) as usize * stride_acc;
                    stride_acc *= in_sp[d];
                }
                index.push(if inside { flat } else { in_positions } as u32);
            }
        }
        Ok(index)
    }
}

/// How a conv layer's filter bank is generated from its adapted vector v.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvSharing {
    /// vec(filters) = U v with a dense U: `[out*in*kernel_area, k]`.
    Dense {
        /// Latent size (length of v).
        k: usize,
    },
    /// vec(filters) = (A ⊗ B ⊗ C) vec(v), A: `[out, ka]`, B: `[in, kb]`, C: `[kernel_area, kc]`,
    /// v: `[ka, kb, kc]`. The paper's factorization for large conv layers (square factors,
    /// initialised to identity, are the reference code's choice).
    Kronecker {
        /// Columns of the out-channel factor.
        ka: usize,
        /// Columns of the in-channel factor.
        kb: usize,
        /// Columns of the kernel factor.
        kc: usize,
    },
}

/// One layer's operation. Parameters are described by [`Op::param_layout`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// MSR dense layer: vec(W) = U v, W: `[outputs, inputs]` (row-major), U: `[outputs*inputs, k]`.
    ShareLinear {
        /// Input features (the flattened input shape).
        inputs: usize,
        /// Output features.
        outputs: usize,
        /// Latent size: the length of v.
        k: usize,
        /// Whether an adapted bias `[outputs]` is added.
        bias: bool,
    },
    /// MSR hybrid conv layer: the filter bank `[out, in, kernel...]` = reshape(U v).
    ShareConv {
        /// Convolution geometry.
        geom: ConvGeom,
        /// Dense or Kronecker-factored U.
        sharing: ConvSharing,
        /// Whether an adapted bias `[out_channels]` is added.
        bias: bool,
    },
    /// Plain dense layer; W `[outputs, inputs]` adapts.
    Linear {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
        /// Whether an adapted bias is added.
        bias: bool,
    },
    /// Plain convolution; the filter bank adapts.
    Conv {
        /// Convolution geometry.
        geom: ConvGeom,
        /// Whether an adapted bias is added.
        bias: bool,
    },
    /// 1-D locally connected layer: a different filter `[out, in, kernel]` at every output
    /// position; weights `[positions, out, in, kernel]`, bias `[out, positions]`.
    LocallyConnected1d {
        /// Convolution geometry (1-D).
        geom: ConvGeom,
        /// Whether an adapted bias is added.
        bias: bool,
    },
    /// Reshape `[channels, spatial...]` to a flat vector (no parameters).
    Flatten,
}

/// One layer: an operation followed by an activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The operation.
    pub op: Op,
    /// The activation applied to its output.
    pub activation: Activation,
}

/// Shapes of a layer's parameters.
///
/// `shared` are meta-learned and frozen at test time (U, or its Kronecker factors), each 2-D.
/// `adapted` are the per-task parameters (v or W, then the bias), each stored flat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    /// Shapes `[rows, cols]` of the frozen symmetry matrices.
    pub shared: Vec<[usize; 2]>,
    /// Lengths of the adapted parameter vectors.
    pub adapted: Vec<usize>,
}

impl Op {
    /// The output shape for a given input shape, or why the input does not fit.
    pub fn output_shape(&self, input: &FeatureShape) -> Result<FeatureShape, ShapeError> {
        match self {
            Op::ShareLinear {
                inputs, outputs, k, ..
            } => {
                if *k == 0 || *outputs == 0 {
                    return Err(ShapeError::InvalidLayer(
                        "share-linear needs k > 0 and outputs > 0".into(),
                    ));
                }
                dense_output(*inputs, *outputs, input)
            }
            Op::Linear {
                inputs, outputs, ..
            } => dense_output(*inputs, *outputs, input),
            Op::ShareConv { geom, sharing, .. } => {
                if let ConvSharing::Dense { k: 0 } = sharing {
                    return Err(ShapeError::InvalidLayer("share-conv needs k > 0".into()));
                }
                conv_output(geom, input)
            }
            Op::Conv { geom, .. } => conv_output(geom, input),
            Op::LocallyConnected1d { geom, .. } => {
                if geom.kernel.len() != 1 {
                    return Err(ShapeError::InvalidLayer(
                        "locally connected layers are 1-D".into(),
                    ));
                }
                conv_output(geom, input)
            }
            Op::Flatten => Ok(FeatureShape(vec![input.numel()])),
        }
    }

    /// Parameter shapes of this op, given its input shape (needed by locally connected layers).
    pub fn param_layout(&self, input: &FeatureShape) -> Result<ParamLayout, ShapeError> {
        let out = self.output_shape(input)?;
        let bias_len = |bias: bool, n: usize| if bias { Some(n) } else { None };
        let (shared, main, bias) = match self {
            Op::ShareLinear {
                inputs,
                outputs,
                k,
                bias,
            } => (vec![[inputs * outputs, *k]], *k, bias_len(*bias, *outputs)),
            Op::Linear {
                inputs,
                outputs,
                bias,
            } => (vec![], inputs * outputs, bias_len(*bias, *outputs)),
            Op::ShareConv {
                geom,
                sharing,
                bias,
            } => match sharing {
                ConvSharing::Dense { k } => (
                    vec![[geom.filter_len(), *k]],
                    *k,
                    bias_len(*bias, geom.out_channels),
                ),
                ConvSharing::Kronecker { ka, kb, kc } => (
                    vec![
                        [geom.out_channels, *ka],
                        [geom.in_channels, *kb],
                        [geom.kernel_area(), *kc],
                    ],
                    ka * kb * kc,
                    bias_len(*bias, geom.out_channels),
                ),
            },
            Op::Conv { geom, bias } => (
                vec![],
                geom.filter_len(),
                bias_len(*bias, geom.out_channels),
            ),
            Op::LocallyConnected1d { geom, bias } => {
                let positions = out.spatial_numel();
                (
                    vec![],
                    positions * geom.filter_len(),
                    bias_len(*bias, geom.out_channels * positions),
                )
            }
            Op::Flatten => {
                return Ok(ParamLayout {
                    shared: vec![],
                    adapted: vec![],
                });
            }
        };
        let mut adapted = vec![main];
        adapted.extend(bias);
        if adapted.contains(&0) {
            return Err(ShapeError::InvalidLayer(format!(
                "{self:?} has an empty parameter"
            )));
        }
        for [r, c] in &shared {
            check_size("symmetry matrix", &[*r, *c])?;
        }
        check_size("adapted parameters", &[adapted.iter().sum()])?;
        Ok(ParamLayout { shared, adapted })
    }

    fn check_sizes(&self) -> Result<(), ShapeError> {
        let geom_sizes = |g: &ConvGeom| -> Result<(), ShapeError> {
            check_size("channels", &[g.in_channels, g.out_channels])?;
            g.check_dims()?;
            check_size(
                "filter bank",
                &[g.in_channels, g.out_channels, g.kernel_area_checked()?],
            )
        };
        match self {
            Op::ShareLinear {
                inputs, outputs, k, ..
            } => check_size("weight", &[*inputs, *outputs, *k]),
            Op::Linear {
                inputs, outputs, ..
            } => check_size("weight", &[*inputs, *outputs]),
            Op::ShareConv { geom, sharing, .. } => {
                geom_sizes(geom)?;
                match sharing {
                    ConvSharing::Dense { k } => check_size("U", &[geom.filter_len(), *k]),
                    ConvSharing::Kronecker { ka, kb, kc } => check_size("v", &[*ka, *kb, *kc]),
                }
            }
            Op::Conv { geom, .. } | Op::LocallyConnected1d { geom, .. } => geom_sizes(geom),
            Op::Flatten => Ok(()),
        }
    }

    /// Checks the sizes an engine derives from this op: a convolution's gather index
    /// (output positions x taps) and the cost and intermediate buffers of materialising a
    /// Kronecker-factored filter bank.
    fn check_engine_sizes(&self, output: &FeatureShape) -> Result<(), ShapeError> {
        let geom = match self {
            Op::ShareConv { geom, .. }
            | Op::Conv { geom, .. }
            | Op::LocallyConnected1d { geom, .. } => geom,
            _ => return Ok(()),
        };
        check_limit(
            "convolution gather index (output positions x kernel taps)",
            Some(output.spatial_numel() as u128 * geom.kernel_area() as u128),
            limits::MAX_GATHER_ENTRIES,
        )?;
        if let Op::ShareConv {
            sharing: ConvSharing::Kronecker { ka, kb, kc },
            ..
        } = self
        {
            let (o, i, s) = (
                geom.out_channels as u128,
                geom.in_channels as u128,
                geom.kernel_area() as u128,
            );
            let (ka, kb, kc) = (*ka as u128, *kb as u128, *kc as u128);
            check_limit(
                "Kronecker intermediate buffer (max(out, ka) x max(in, kb) x max(taps, kc))",
                Some(o.max(ka) * i.max(kb) * s.max(kc)),
                limits::MAX_TENSOR_ELEMENTS,
            )?;
            // The three mode products of materialising W, then those of its backward.
            let macs = ka * kb * kc * s
                + ka * kb * s * i
                + ka * i * s * o
                + o * i * s * kc
                + o * i * kb * kc
                + o * ka * kb * kc;
            check_limit(
                "multiply-adds to materialise the Kronecker filter bank",
                Some(macs),
                limits::MAX_MATERIALISE_MACS,
            )?;
        }
        Ok(())
    }

    /// Multiply-adds of one example's forward pass through this op (`input` and `output`
    /// as checked by [`NetSpec::shapes`]: every factor is bounded, so the product fits).
    fn macs(&self, input: &FeatureShape, output: &FeatureShape) -> u128 {
        let taps =
            |g: &ConvGeom| (g.in_channels * g.kernel_area()) as u128 * output.numel() as u128;
        match self {
            Op::ShareLinear {
                inputs, outputs, ..
            }
            | Op::Linear {
                inputs, outputs, ..
            } => *inputs as u128 * *outputs as u128,
            Op::ShareConv { geom, .. }
            | Op::Conv { geom, .. }
            | Op::LocallyConnected1d { geom, .. } => taps(geom),
            Op::Flatten => input.numel() as u128,
        }
    }

    /// A short human name of the op kind.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::ShareLinear { .. } => "share-linear",
            Op::ShareConv {
                sharing: ConvSharing::Dense { .. },
                ..
            } => "share-conv",
            Op::ShareConv { .. } => "share-conv-kron",
            Op::Linear { .. } => "linear",
            Op::Conv { .. } => "conv",
            Op::LocallyConnected1d { .. } => "locally-connected-1d",
            Op::Flatten => "flatten",
        }
    }
}

/// The documented limits every model file is checked against before anything is
/// allocated (docs/model-format.md, "Limits"). A model over a limit is refused with
/// [`ShapeError::OverLimit`] naming the field and the limit.
pub mod limits {
    /// Floats in any one tensor: a parameter tensor, or one example's activation.
    pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 28;
    /// Floats in all parameter tensors of a model together (1 GiB of f32).
    pub const MAX_MODEL_ELEMENTS: u64 = 1 << 28;
    /// Layers in a network.
    pub const MAX_LAYERS: u64 = 256;
    /// Dimensions of an example's shape: `[channels]`, `[channels, n]` or `[channels, h, w]`.
    pub const MAX_INPUT_DIMS: u64 = 3;
    /// Kernel size and stride along one spatial dimension.
    pub const MAX_KERNEL: u64 = 1 << 12;
    /// Multiply-adds of one example's forward pass, all layers together: bounds the time
    /// one call can take (about 0.1-0.5 s per example at the limit on one core).
    pub const MAX_MACS_PER_EXAMPLE: u64 = 1 << 30;
    /// Inner steps of one adaptation (the model's default and a session's option).
    pub const MAX_INNER_STEPS: u64 = 1000;
    /// Entries of a convolution's gather index (output positions x kernel taps): 64 MiB
    /// of u32.
    pub const MAX_GATHER_ENTRIES: u64 = 1 << 24;
    /// Multiply-adds to materialise one layer's weights `W = reshape(U v)` (done once per
    /// adaptation step), and floats of the Kronecker product's intermediate buffers.
    pub const MAX_MATERIALISE_MACS: u64 = 1 << 30;
    /// Bytes of a model file's body: the parameters at their limit, plus 1 MiB for the
    /// architecture and metadata.
    pub const MAX_BODY_BYTES: u64 = 4 * MAX_MODEL_ELEMENTS + (1 << 20);
    /// Work units (multiply-adds; see `realtime::cost`) of any one call of a session: its
    /// fixed part and its part per example, each. A session (or a model's default
    /// session) whose worst call is over it is refused.
    pub const MAX_CALL_WORK: u64 = 1 << 34;
}

/// Checks `value <= limit`; `None` is a product that overflowed.
fn check_limit(what: impl Into<String>, value: Option<u128>, limit: u64) -> Result<(), ShapeError> {
    match value {
        Some(v) if v <= limit as u128 => Ok(()),
        _ => Err(ShapeError::OverLimit {
            what: what.into(),
            value,
            limit,
        }),
    }
}

/// The product of `dims`, or `None` if it does not fit in a u128.
fn product(dims: &[usize]) -> Option<u128> {
    dims.iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
}

/// Checks that a tensor of shape `dims` has at most [`limits::MAX_TENSOR_ELEMENTS`] floats.
fn check_size(what: &str, dims: &[usize]) -> Result<(), ShapeError> {
    check_limit(
        format!("{what} {dims:?} (elements)"),
        product(dims),
        limits::MAX_TENSOR_ELEMENTS,
    )
}

fn dense_output(
    inputs: usize,
    outputs: usize,
    input: &FeatureShape,
) -> Result<FeatureShape, ShapeError> {
    if inputs == 0 || outputs == 0 {
        return Err(ShapeError::InvalidLayer(
            "dense layer with zero width".into(),
        ));
    }
    if input.numel() != inputs {
        return Err(ShapeError::Mismatch {
            what: "dense layer input features".into(),
            expected: inputs.to_string(),
            got: format!("{} (shape {:?})", input.numel(), input.0),
        });
    }
    Ok(FeatureShape(vec![outputs]))
}

fn conv_output(geom: &ConvGeom, input: &FeatureShape) -> Result<FeatureShape, ShapeError> {
    let spatial = geom.output_spatial(input)?;
    let mut dims = vec![geom.out_channels];
    dims.extend(spatial);
    Ok(FeatureShape(dims))
}

/// A feed-forward network: the input shape of one example and its layers in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// Shape of one input example.
    pub input: FeatureShape,
    /// Layers, applied in order.
    pub layers: Vec<LayerSpec>,
    /// The loss adaptation minimises.
    pub loss: Loss,
}

/// The shapes a [`NetSpec`] implies, computed once and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetShapes {
    /// Input shape of each layer, then the network's output shape (len = layers + 1).
    pub activations: Vec<FeatureShape>,
    /// Parameter layout of each layer.
    pub params: Vec<ParamLayout>,
    /// Multiply-adds of one example's forward pass (at most
    /// [`limits::MAX_MACS_PER_EXAMPLE`]): a bound on the time a call can take.
    pub macs_per_example: u64,
}

impl NetSpec {
    /// Checks every layer against its input and the documented [`limits`], and returns all
    /// shapes. Every size is bounded before any product of sizes is formed, so no
    /// arithmetic below can overflow, whatever a (possibly hostile) model file says.
    pub fn shapes(&self) -> Result<NetShapes, ShapeError> {
        if self.layers.is_empty() {
            return Err(ShapeError::InvalidLayer(
                "a network needs at least one layer".into(),
            ));
        }
        check_limit(
            "number of layers",
            Some(self.layers.len() as u128),
            limits::MAX_LAYERS,
        )?;
        check_limit(
            format!("input shape {:?} (dimensions)", self.input.0),
            Some(self.input.0.len() as u128),
            limits::MAX_INPUT_DIMS,
        )?;
        check_size("input shape", &self.input.0)?;
        if self.input.0.is_empty() || self.input.numel() == 0 {
            return Err(ShapeError::InvalidLayer(format!(
                "empty input shape {:?}",
                self.input.0
            )));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            layer.op.check_sizes().map_err(|e| e.in_layer(i))?;
        }
        let mut activations = vec![self.input.clone()];
        let mut params = Vec::with_capacity(self.layers.len());
        let (mut total_params, mut total_macs) = (0u128, 0u128);
        for (i, layer) in self.layers.iter().enumerate() {
            let input = activations.last().expect("non-empty");
            let out = layer.op.output_shape(input).map_err(|e| e.in_layer(i))?;
            check_size("output shape", &out.0).map_err(|e| e.in_layer(i))?;
            let layout = layer.op.param_layout(input).map_err(|e| e.in_layer(i))?;
            for [r, c] in &layout.shared {
                total_params += (*r * *c) as u128;
            }
            total_params += layout.adapted.iter().map(|&n| n as u128).sum::<u128>();
            total_macs += layer.op.macs(input, &out);
            layer
                .op
                .check_engine_sizes(&out)
                .map_err(|e| e.in_layer(i))?;
            params.push(layout);
            activations.push(out);
        }
        check_limit(
            "parameters of the model (floats, all layers)",
            Some(total_params),
            limits::MAX_MODEL_ELEMENTS,
        )?;
        check_limit(
            "multiply-adds of one example's forward pass",
            Some(total_macs),
            limits::MAX_MACS_PER_EXAMPLE,
        )?;
        Ok(NetShapes {
            activations,
            params,
            macs_per_example: total_macs as u64,
        })
    }

    /// Shape of one output example.
    pub fn output(&self) -> Result<FeatureShape, ShapeError> {
        Ok(self.shapes()?.activations.pop().expect("non-empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(geom: ConvGeom) -> LayerSpec {
        LayerSpec {
            op: Op::Conv { geom, bias: true },
            activation: Activation::Relu,
        }
    }

    fn net(input: Vec<usize>, layers: Vec<LayerSpec>) -> NetSpec {
        NetSpec {
            input: FeatureShape(input),
            layers,
            loss: Loss::Mse,
        }
    }

    /// The message of a refused spec, which must name `field` and say "over the limit".
    fn refused(spec: &NetSpec, field: &str) -> String {
        let e = spec.shapes().expect_err("must be refused").to_string();
        assert!(e.contains(field), "'{field}' not named in: {e}");
        assert!(
            e.contains("over the limit") || e.contains("at least 1"),
            "{e}"
        );
        e
    }

    #[test]
    fn every_limit_is_checked_by_field() {
        let dense = |i, o| LayerSpec {
            op: Op::Linear {
                inputs: i,
                outputs: o,
                bias: false,
            },
            activation: Activation::Identity,
        };
        // A plausible net passes.
        let ok = net(vec![1, 28, 28], vec![conv(ConvGeom::d2(1, 8, 3, 2, 1))]);
        assert_eq!(ok.shapes().unwrap().activations[1].0, vec![8, 14, 14]);

        // Padding per dimension (a [2^31, 0] product is 0), and against the kernel.
        let mut g = ConvGeom::d2(1, 1, 3, 1, 0);
        g.padding = vec![1 << 31, 0];
        refused(&net(vec![1, 8, 8], vec![conv(g)]), "padding (dimension 0");
        let mut g = ConvGeom::d2(1, 1, 3, 1, 0);
        g.padding = vec![0, 3];
        refused(&net(vec![1, 8, 8], vec![conv(g)]), "padding (dimension 1");
        // Kernel and stride per dimension.
        let mut g = ConvGeom::d1(1, 1, 3, 0);
        g.kernel = vec![1 << 13];
        refused(&net(vec![1, 1 << 14], vec![conv(g)]), "kernel size");
        let mut g = ConvGeom::d1(1, 1, 3, 0);
        g.stride = vec![usize::MAX];
        refused(&net(vec![1, 8], vec![conv(g)]), "stride");
        let mut g = ConvGeom::d1(1, 1, 3, 0);
        g.stride = vec![0];
        refused(&net(vec![1, 8], vec![conv(g)]), "stride");
        // Input shape: elements, then dimensions.
        refused(&net(vec![1 << 29], vec![dense(1 << 29, 1)]), "input shape");
        refused(
            &net(vec![usize::MAX, usize::MAX], vec![dense(1, 1)]),
            "input shape",
        );
        refused(&net(vec![1, 1, 1, 1], vec![dense(1, 1)]), "input shape");
        // An output activation over the per-tensor limit.
        let e = refused(&net(vec![1 << 20], vec![dense(1 << 20, 1 << 9)]), "weight");
        assert!(e.contains("layer 0"), "{e}");
        // Number of layers.
        refused(
            &net(vec![4], (0..300).map(|_| dense(4, 4)).collect()),
            "number of layers",
        );
        // Total parameters: two layers each under the tensor limit, together over the
        // model limit.
        let big = 1 << 14;
        refused(
            &net(
                vec![big],
                vec![
                    dense(big, big / 2),
                    dense(big / 2, big),
                    dense(big, big / 2),
                ],
            ),
            "parameters of the model",
        );
        // A gather index of 2^28 entries from a 1-D conv with a 4096-tap kernel.
        let g = ConvGeom::d1(1, 1, 4096, 4095);
        refused(&net(vec![1, 57_346], vec![conv(g)]), "gather index");
        // A Kronecker filter bank whose materialisation costs 2^36 multiply-adds, with every
        // tensor small (1024 input channels, a 256x256 kernel, v of 1 x 1024 x 1).
        let kron = LayerSpec {
            op: Op::ShareConv {
                geom: ConvGeom::d2(1024, 1, 256, 1, 0),
                sharing: ConvSharing::Kronecker {
                    ka: 1,
                    kb: 1024,
                    kc: 1,
                },
                bias: false,
            },
            activation: Activation::Identity,
        };
        refused(&net(vec![1024, 256, 256], vec![kron]), "materialise");
        // Multiply-adds: a conv whose parameters and activations are small but whose
        // compute is not (64 x 64 channels, 7x7 kernel, 256x256 outputs: 13 G MACs).
        refused(
            &net(
                vec![64, 256, 256],
                vec![conv(ConvGeom::d2(64, 64, 7, 1, 3))],
            ),
            "multiply-adds",
        );
    }
}
