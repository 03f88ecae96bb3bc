//! The meta-learners: MSR and the MAML baselines, as architectures with their initial
//! parameters (initialisations follow the reference code).

use msr_runtime::format::LayerRecord;
use msr_runtime::{Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op};

use crate::rng::Rng;
use crate::tasks::{Family, IMG, Problem, SEQ_IN, SEQ_OUT, TAPS};

mod kind;
pub use kind::{Arch, ModelKind};

/// The paper's default latent size k for MSR-FC on each problem.
pub fn default_k(problem: Problem) -> usize {
    match problem {
        Problem::Rank1 => 3,
        Problem::Rank2 => 6,
        Problem::Rank5 => 30,
        // msr-conv's Kronecker factors are square (the reference code's choice): k is the
        // filter bank size, not a free choice.
        Problem::Rot8 | Problem::Rot8Flip => 0,
        // A user's task set: a small latent size; set --k to taste.
        Problem::Npz | Problem::Cartpole | Problem::PandaPayload | Problem::QuadrotorWind => 8,
        // The glyph nets' MSR-Conv layers have square Kronecker factors, as on rot8.
        Problem::Glyphs => 0,
    }
}

/// MAML's 4-block conv net for Omniglot (strided 3x3 convolutions, ReLU; 28 -> 14 -> 7 ->
/// 4 -> 2) with `channels` filters per block and a linear `ways`-way head; MSR-Conv
/// replaces each convolution by a Kronecker-factored share-conv (square factors, identity
/// initialised: training starts from the plain net). ProtoNets has no head: its output is
/// the embedding. No batch norm (see docs/results.md).
pub fn glyph_spec(
    kind: ModelKind,
    ways: usize,
    channels: usize,
) -> Result<NetSpec, crate::train::TrainError> {
    build_glyph_spec(kind, ways, channels).map_err(crate::train::TrainError::Config)
}

/// [`glyph_spec`]'s work, its errors as messages.
fn build_glyph_spec(kind: ModelKind, ways: usize, channels: usize) -> Result<NetSpec, String> {
    if !matches!(
        kind,
        ModelKind::MamlConv | ModelKind::MsrConv | ModelKind::Anil | ModelKind::ProtoNet
    ) {
        return Err(format!(
            "model {kind} is not a classifier; on glyphs use maml-conv, msr-conv, anil or protonet"
        ));
    }
    let side = crate::tasks::glyphs::SIDE;
    let mut layers = Vec::new();
    let mut cin = 1;
    for _ in 0..4 {
        let geom = ConvGeom::d2(cin, channels, 3, 2, 1);
        let op = if kind == ModelKind::MsrConv {
            Op::ShareConv {
                geom,
                sharing: ConvSharing::Kronecker {
                    ka: channels,
                    kb: cin,
                    kc: 9,
                },
                bias: true,
            }
        } else {
            Op::Conv { geom, bias: true }
        };
        layers.push(LayerSpec {
            op,
            activation: Activation::Relu,
        });
        cin = channels;
    }
    layers.push(LayerSpec {
        op: Op::Flatten,
        activation: Activation::Identity,
    });
    if kind != ModelKind::ProtoNet {
        layers.push(LayerSpec {
            op: Op::Linear {
                inputs: channels * 2 * 2,
                outputs: ways,
                bias: true,
            },
            activation: Activation::Identity,
        });
    }
    Ok(NetSpec {
        input: FeatureShape(vec![1, side, side]),
        layers,
        loss: Loss::CrossEntropy,
    })
}

/// Whether a classifier `spec` has no head and embeds (ProtoNets): its last op is
/// Flatten, and prototypes of the support embeddings classify.
pub fn embeds(spec: &NetSpec) -> bool {
    spec.loss == Loss::CrossEntropy
        && matches!(spec.layers.last().map(|l| &l.op), Some(Op::Flatten))
}

/// A multilayer perceptron from `inputs` to `outputs` through `arch.hidden`: share-linear
/// layers for msr-mlp, plain ones otherwise.
fn mlp(
    kind: ModelKind,
    inputs: usize,
    outputs: usize,
    arch: &Arch,
) -> Result<Vec<LayerSpec>, String> {
    let widths: Vec<usize> = std::iter::once(inputs)
        .chain(arch.hidden.iter().copied())
        .chain([outputs])
        .collect();
    if arch.hidden.contains(&0) {
        return Err("--hidden widths must be positive".into());
    }
    let layers = widths.len() - 1;
    (0..layers)
        .map(|i| {
            let (inputs, outputs, bias) = (widths[i], widths[i + 1], arch.bias);
            let head = i + 1 == layers;
            let op = if kind == ModelKind::MsrMlp || (kind == ModelKind::MsrHead && head) {
                Op::ShareLinear {
                    inputs,
                    outputs,
                    k: arch.k_of(i, layers)?,
                    bias,
                }
            } else {
                Op::Linear {
                    inputs,
                    outputs,
                    bias,
                }
            };
            let activation = if i + 1 < layers {
                arch.activation
            } else {
                Activation::Identity
            };
            Ok(LayerSpec { op, activation })
        })
        .collect()
}

/// Architecture of `kind` for a regression `family`.
pub fn spec(
    kind: ModelKind,
    family: &Family,
    arch: &Arch,
) -> Result<NetSpec, crate::train::TrainError> {
    build_spec(kind, family, arch).map_err(crate::train::TrainError::Config)
}

/// [`spec`]'s work, its errors as messages.
fn build_spec(kind: ModelKind, family: &Family, arch: &Arch) -> Result<NetSpec, String> {
    let problem = family.problem();
    if matches!(kind, ModelKind::Anil | ModelKind::ProtoNet) {
        return Err(format!(
            "model {kind} is for the glyph problems (for regression, anil-mlp)"
        ));
    }
    let bias = arch.bias;
    let single = |layer: Op| -> Result<Vec<LayerSpec>, String> {
        if !arch.hidden.is_empty() {
            return Err(format!(
                "--hidden is for msr-mlp, maml-mlp, anil-mlp and msr-head, not {kind}"
            ));
        }
        Ok(vec![LayerSpec {
            op: layer,
            activation: Activation::Identity,
        }])
    };
    let (inputs, outputs) = (family.input_len(), family.output_len());
    if kind.is_mlp() {
        if matches!(kind, ModelKind::AnilMlp | ModelKind::MsrHead) && arch.hidden.is_empty() {
            return Err(format!("{kind} needs a body: give --hidden"));
        }
        return Ok(NetSpec {
            input: FeatureShape(vec![inputs]),
            layers: mlp(kind, inputs, outputs, arch)?,
            loss: Loss::Mse,
        });
    }
    let k = arch.k_of(0, 1)?;
    if problem.is_vector_regression() {
        let op = match kind {
            ModelKind::MsrFc => Op::ShareLinear {
                inputs,
                outputs,
                k,
                bias,
            },
            ModelKind::MamlFc => Op::Linear {
                inputs,
                outputs,
                bias,
            },
            other => {
                return Err(format!(
                    "model {other} needs a known spatial layout; on {problem} use msr-fc, maml-fc, msr-mlp, maml-mlp or anil-mlp"
                ));
            }
        };
        return Ok(NetSpec {
            input: FeatureShape(vec![inputs]),
            layers: single(op)?,
            loss: Loss::Mse,
        });
    }
    if problem.is_2d() {
        let c = crate::tasks::rot::channels(problem);
        let geom = ConvGeom::d2(1, c, 3, 1, 0);
        let op = match kind {
            ModelKind::MamlConv => Op::Conv { geom, bias },
            ModelKind::MsrConv => Op::ShareConv {
                geom,
                sharing: ConvSharing::Kronecker {
                    ka: c,
                    kb: 1,
                    kc: 9,
                },
                bias,
            },
            other => {
                return Err(format!(
                    "model {other} is for the 1-D problems; on {problem} use msr-conv or maml-conv"
                ));
            }
        };
        return Ok(NetSpec {
            input: FeatureShape(vec![1, IMG, IMG]),
            layers: single(op)?,
            loss: Loss::Mse,
        });
    }
    let (input, op) = match kind {
        ModelKind::MsrFc => (
            vec![SEQ_IN],
            Op::ShareLinear {
                inputs: SEQ_IN,
                outputs: SEQ_OUT,
                k,
                bias,
            },
        ),
        ModelKind::MamlFc => (
            vec![SEQ_IN],
            Op::Linear {
                inputs: SEQ_IN,
                outputs: SEQ_OUT,
                bias,
            },
        ),
        ModelKind::MamlLc => (
            vec![1, SEQ_IN],
            Op::LocallyConnected1d {
                geom: ConvGeom::d1(1, 1, TAPS, 0),
                bias,
            },
        ),
        ModelKind::MamlConv => (
            vec![1, SEQ_IN],
            Op::Conv {
                geom: ConvGeom::d1(1, 1, TAPS, 0),
                bias,
            },
        ),
        ModelKind::MsrConv => {
            return Err(format!(
                "msr-conv is for the 2-D problems; on {problem} use msr-fc"
            ));
        }
        _ => unreachable!("refused or handled above"),
    };
    Ok(NetSpec {
        input: FeatureShape(input),
        layers: single(op)?,
        loss: Loss::Mse,
    })
}

/// Initial meta-parameters of `kind`'s network `spec`, with inner learning rate `lr0` (0 for
/// layers that [`ModelKind::adapts`] says do not adapt):
/// U ~ N(0, 0.01^2), v ~ N(0, 1/out^2) (reference ShareLinearFull); plain weights
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default); biases zero. msr-mlp's layers
/// start where a plain MLP does: v ~ N(0, 1) and U ~ N(0, gain / (fan_in k)), so that
/// `W = U v` has the variance of a Glorot (tanh, identity) or He (ReLU, GELU) weight: with
/// the reference scales a deep MSR net's first activations vanish.
pub fn init(
    spec: &NetSpec,
    kind: ModelKind,
    lr0: f32,
    rng: &mut Rng,
) -> Result<Vec<LayerRecord>, msr_runtime::ShapeError> {
    let layers = spec.layers.len();
    let adapts = |i: usize| kind.adapts(i, layers);
    let shapes = spec.shapes()?;
    let mut out = Vec::new();
    for (i, (layer, layout)) in spec.layers.iter().zip(&shapes.params).enumerate() {
        let fan_in = |op: &Op| -> usize {
            match op {
                Op::Linear { inputs, .. } | Op::ShareLinear { inputs, .. } => *inputs,
                Op::Conv { geom, .. }
                | Op::ShareConv { geom, .. }
                | Op::LocallyConnected1d { geom, .. } => geom.in_channels * geom.kernel_area(),
                Op::Flatten => 1,
            }
        };
        let kronecker = matches!(
            layer.op,
            Op::ShareConv {
                sharing: ConvSharing::Kronecker { .. },
                ..
            }
        );
        // msr-mlp's layers and msr-head's head start where a plain MLP's would.
        let scaled = kind == ModelKind::MsrMlp
            || (kind == ModelKind::MsrHead && matches!(layer.op, Op::ShareLinear { .. }));
        let gain = match layer.activation {
            Activation::Relu | Activation::Gelu => 2.0,
            _ => 1.0,
        };
        let shared = layout
            .shared
            .iter()
            .map(|&[r, c]| {
                if scaled {
                    let var = gain / (fan_in(&layer.op) * c) as f64;
                    rng.normals(r * c, var.sqrt())
                } else if kronecker {
                    // Identity factors: training starts from a plain convolution.
                    (0..r * c)
                        .map(|e| if e / c == e % c { 1.0 } else { 0.0 })
                        .collect()
                } else {
                    rng.normals(r * c, 0.01)
                }
            })
            .collect();
        let mut adapted0 = Vec::new();
        for (j, n) in layout.adapted.iter().enumerate() {
            let v = if j > 0 {
                vec![0.0; *n] // bias
            } else if scaled {
                rng.normals(*n, 1.0)
            } else if matches!(layer.op, Op::ShareLinear { .. })
                || (!kronecker && matches!(layer.op, Op::ShareConv { .. }))
            {
                let out = shapes.activations[i + 1].numel().max(1);
                rng.normals(*n, 1.0 / out as f64)
            } else {
                // PyTorch's default, U(+-1/sqrt(fan_in)); He's U(+-sqrt(6/fan_in)) before a
                // ReLU, so that a deep net's activations keep their scale without batch norm.
                let gain = if layer.activation == Activation::Relu {
                    6.0
                } else {
                    1.0
                };
                let bound = (gain / fan_in(&layer.op) as f64).sqrt();
                (0..*n).map(|_| rng.range(-bound, bound) as f32).collect()
            };
            adapted0.push(v);
        }
        out.push(LayerRecord {
            shared,
            adapted0,
            lr: if layout.adapted.is_empty() || !adapts(i) {
                0.0
            } else {
                lr0
            },
        });
    }
    Ok(out)
}
