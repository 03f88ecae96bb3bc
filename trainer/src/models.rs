//! The meta-learners: MSR and the MAML baselines, as architectures with their initial
//! parameters (initialisations follow the reference code).

use std::fmt;
use std::str::FromStr;

use msr_runtime::format::LayerRecord;
use msr_runtime::{Activation, ConvGeom, ConvSharing, FeatureShape, LayerSpec, Loss, NetSpec, Op};

use crate::rng::Rng;
use crate::tasks::{Family, IMG, Problem, SEQ_IN, SEQ_OUT, TAPS};

/// Which meta-learner. Stored (checkpoints, configurations) by its command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ModelKind {
    /// MSR: one share-linear layer, vec(W) = U v; U is meta-learned, v adapts.
    MsrFc,
    /// MAML on a fully connected layer: all of W adapts.
    MamlFc,
    /// MAML on a locally connected layer.
    MamlLc,
    /// MAML on a convolution (the right symmetry, built in).
    MamlConv,
    /// MSR's hybrid for images: a convolution whose filter bank is (A ⊗ B ⊗ C) v, with the
    /// Kronecker factors meta-learned (translation built in, rotation/reflection learned).
    MsrConv,
    /// ANIL (glyphs): MAML's conv net whose body is meta-learned but frozen in the inner
    /// loop; only the head adapts.
    Anil,
    /// Prototypical networks (glyphs): the conv body embeds; a query's class is its nearest
    /// class mean of the support embeddings. No inner loop.
    ProtoNet,
}

impl From<ModelKind> for String {
    fn from(m: ModelKind) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for ModelKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl ModelKind {
    /// Whether layer `layer` of this kind's network adapts in the inner loop (ANIL: only
    /// the head; ProtoNets: nothing).
    pub fn adapts(self, layer: usize, layers: usize) -> bool {
        match self {
            ModelKind::Anil => layer + 1 == layers,
            ModelKind::ProtoNet => false,
            _ => true,
        }
    }
}

impl FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "msr-fc" => Ok(ModelKind::MsrFc),
            "maml-fc" => Ok(ModelKind::MamlFc),
            "maml-lc" => Ok(ModelKind::MamlLc),
            "maml-conv" => Ok(ModelKind::MamlConv),
            "msr-conv" => Ok(ModelKind::MsrConv),
            "anil" => Ok(ModelKind::Anil),
            "protonet" => Ok(ModelKind::ProtoNet),
            other => Err(format!(
                "unknown model '{other}' (available: msr-fc, maml-fc, maml-lc, maml-conv, msr-conv, anil, protonet)"
            )),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::MsrFc => "msr-fc",
            ModelKind::MamlFc => "maml-fc",
            ModelKind::MamlLc => "maml-lc",
            ModelKind::MamlConv => "maml-conv",
            ModelKind::MsrConv => "msr-conv",
            ModelKind::Anil => "anil",
            ModelKind::ProtoNet => "protonet",
        })
    }
}

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
        Problem::Npz => 8,
        // The glyph nets' MSR-Conv layers have square Kronecker factors, as on rot8.
        Problem::Glyphs => 0,
    }
}

/// MAML's 4-block conv net for Omniglot (strided 3x3 convolutions, ReLU; 28 -> 14 -> 7 ->
/// 4 -> 2) with `channels` filters per block and a linear `ways`-way head; MSR-Conv
/// replaces each convolution by a Kronecker-factored share-conv (square factors, identity
/// initialised: training starts from the plain net). ProtoNets has no head: its output is
/// the embedding. No batch norm (see docs/results.md).
pub fn glyph_spec(kind: ModelKind, ways: usize, channels: usize) -> Result<NetSpec, String> {
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

/// Architecture of `kind` for `family` (no biases, as the reference synthetic models).
pub fn spec(kind: ModelKind, family: &Family, k: usize) -> Result<NetSpec, String> {
    let problem = family.problem();
    if matches!(kind, ModelKind::Anil | ModelKind::ProtoNet) && problem != Problem::Glyphs {
        return Err(format!("model {kind} is for the glyph problems"));
    }
    if problem == Problem::Npz {
        let (inputs, outputs) = (family.input_len(), family.output_len());
        let op = match kind {
            ModelKind::MsrFc => Op::ShareLinear {
                inputs,
                outputs,
                k,
                bias: false,
            },
            ModelKind::MamlFc => Op::Linear {
                inputs,
                outputs,
                bias: false,
            },
            other => {
                return Err(format!(
                    "model {other} needs a known spatial layout; a task file supports msr-fc and maml-fc"
                ));
            }
        };
        return Ok(NetSpec {
            input: FeatureShape(vec![inputs]),
            layers: vec![LayerSpec {
                op,
                activation: Activation::Identity,
            }],
            loss: Loss::Mse,
        });
    }
    if problem.is_2d() {
        let c = crate::tasks::rot::channels(problem);
        let geom = ConvGeom::d2(1, c, 3, 1, 0);
        let op = match kind {
            ModelKind::MamlConv => Op::Conv { geom, bias: false },
            ModelKind::MsrConv => Op::ShareConv {
                geom,
                sharing: ConvSharing::Kronecker {
                    ka: c,
                    kb: 1,
                    kc: 9,
                },
                bias: false,
            },
            other => {
                return Err(format!(
                    "model {other} is for the 1-D problems; on {problem} use msr-conv or maml-conv"
                ));
            }
        };
        return Ok(NetSpec {
            input: FeatureShape(vec![1, IMG, IMG]),
            layers: vec![LayerSpec {
                op,
                activation: Activation::Identity,
            }],
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
                bias: false,
            },
        ),
        ModelKind::MamlFc => (
            vec![SEQ_IN],
            Op::Linear {
                inputs: SEQ_IN,
                outputs: SEQ_OUT,
                bias: false,
            },
        ),
        ModelKind::MamlLc => (
            vec![1, SEQ_IN],
            Op::LocallyConnected1d {
                geom: ConvGeom::d1(1, 1, TAPS, 0),
                bias: false,
            },
        ),
        ModelKind::MamlConv => (
            vec![1, SEQ_IN],
            Op::Conv {
                geom: ConvGeom::d1(1, 1, TAPS, 0),
                bias: false,
            },
        ),
        ModelKind::MsrConv => {
            return Err(format!(
                "msr-conv is for the 2-D problems; on {problem} use msr-fc"
            ));
        }
        ModelKind::Anil | ModelKind::ProtoNet => unreachable!("refused above"),
    };
    Ok(NetSpec {
        input: FeatureShape(input),
        layers: vec![LayerSpec {
            op,
            activation: Activation::Identity,
        }],
        loss: Loss::Mse,
    })
}

/// Initial meta-parameters for `spec`, with inner learning rate `lr0` (0 for layers that
/// `adapts` says do not adapt):
/// U ~ N(0, 0.01^2), v ~ N(0, 1/out^2) (reference ShareLinearFull); plain weights
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default); biases zero.
pub fn init(
    spec: &NetSpec,
    lr0: f32,
    adapts: impl Fn(usize) -> bool,
    rng: &mut Rng,
) -> Result<Vec<LayerRecord>, msr_runtime::ShapeError> {
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
        let shared = layout
            .shared
            .iter()
            .map(|&[r, c]| {
                if kronecker {
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
