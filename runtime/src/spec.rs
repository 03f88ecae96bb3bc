//! The architecture of a network, without any tensors: layer kinds, shapes, losses.
//!
//! A [`NetSpec`] is what the model file stores next to the parameters, and what every
//! shape check runs against. Nothing here touches a device.

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
        let mut out = Vec::with_capacity(dims);
        for d in 0..dims {
            let (k, s, p, n) = (
                self.kernel[d],
                self.stride[d],
                self.padding[d],
                input.0[d + 1],
            );
            if k == 0 || s == 0 || n + 2 * p < k {
                return Err(ShapeError::InvalidLayer(format!(
                    "kernel {k} (stride {s}, padding {p}) does not fit input size {n}"
                )));
            }
            out.push((n + 2 * p - k) / s + 1);
        }
        Ok(out)
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
            check_size("kernel", &g.kernel)?;
            check_size("stride", &g.stride)?;
            check_size("padding", &g.padding)?;
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

/// The largest number of elements any one tensor of a model may have (2^31).
pub const MAX_ELEMENTS: u128 = 1 << 31;

fn check_size(what: &str, dims: &[usize]) -> Result<(), ShapeError> {
    if dims.len() > 8 {
        return Err(ShapeError::InvalidLayer(format!(
            "{what} has {} dims",
            dims.len()
        )));
    }
    let total = dims
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX);
    if total > MAX_ELEMENTS {
        return Err(ShapeError::InvalidLayer(format!(
            "{what} {dims:?} is too large (over {MAX_ELEMENTS} elements)"
        )));
    }
    Ok(())
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
}

impl NetSpec {
    /// Checks every layer against its input and returns all shapes.
    pub fn shapes(&self) -> Result<NetShapes, ShapeError> {
        // Bound every size first, so that no product below can overflow, whatever a
        // (possibly corrupted) model file says.
        check_size("input shape", &self.input.0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.op.check_sizes().map_err(|e| e.in_layer(i))?;
        }
        if self.layers.is_empty() {
            return Err(ShapeError::InvalidLayer(
                "a network needs at least one layer".into(),
            ));
        }
        if self.input.numel() == 0 {
            return Err(ShapeError::InvalidLayer("empty input shape".into()));
        }
        let mut activations = vec![self.input.clone()];
        let mut params = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let input = activations.last().expect("non-empty");
            let layout = layer.op.param_layout(input).map_err(|e| e.in_layer(i))?;
            let out = layer.op.output_shape(input).map_err(|e| e.in_layer(i))?;
            params.push(layout);
            activations.push(out);
        }
        Ok(NetShapes {
            activations,
            params,
        })
    }

    /// Shape of one output example.
    pub fn output(&self) -> Result<FeatureShape, ShapeError> {
        Ok(self.shapes()?.activations.pop().expect("non-empty"))
    }
}
