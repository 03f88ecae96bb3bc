//! Which meta-learner, and the architecture choices of the MLP models, by name.

use std::fmt;
use std::str::FromStr;

use msr_runtime::Activation;

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
    /// MSR multilayer perceptron (regression): every layer `W = reshape(U v)` with its own
    /// k; every v and bias adapts.
    MsrMlp,
    /// MAML on a plain multilayer perceptron: every weight and bias adapts.
    MamlMlp,
    /// ANIL on a plain multilayer perceptron: the body is meta-learned and frozen, the
    /// linear head adapts (a meta-learned basis with adapted linear coefficients).
    AnilMlp,
    /// ANIL with an MSR head (regression): the multilayer perceptron's body is meta-learned
    /// and frozen; the head's weight is `W = reshape(U v)` with U meta-learned and only its
    /// k coefficients v (and the head's bias) adapted. For a robot whose unknown enters
    /// linearly (a payload's 10 inertial parameters), the structure of the physics.
    MsrHead,
}

impl ModelKind {
    /// Every kind, in the order of the command-line help.
    pub const ALL: [ModelKind; 11] = [
        ModelKind::MsrFc,
        ModelKind::MamlFc,
        ModelKind::MamlLc,
        ModelKind::MamlConv,
        ModelKind::MsrConv,
        ModelKind::MsrMlp,
        ModelKind::MamlMlp,
        ModelKind::AnilMlp,
        ModelKind::MsrHead,
        ModelKind::Anil,
        ModelKind::ProtoNet,
    ];

    /// Whether this is one of the multilayer perceptrons (`--hidden`, `--activation`).
    pub fn is_mlp(self) -> bool {
        matches!(
            self,
            ModelKind::MsrMlp | ModelKind::MamlMlp | ModelKind::AnilMlp | ModelKind::MsrHead
        )
    }
}

/// The architecture choices of a regression model (the command line's `--k`, `--hidden`,
/// `--activation`, `--bias`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    /// MSR latent size of every layer, or of each layer (one entry per layer).
    pub k: Vec<usize>,
    /// Hidden widths of the multilayer perceptrons.
    pub hidden: Vec<usize>,
    /// Activation after every hidden layer.
    pub activation: Activation,
    /// Adapted biases on every layer.
    pub bias: bool,
}

impl Arch {
    /// The latent size of layer `i` of `layers`.
    pub(super) fn k_of(&self, i: usize, layers: usize) -> Result<usize, String> {
        match self.k.as_slice() {
            [k] => Ok(*k),
            ks if ks.len() == layers => Ok(ks[i]),
            ks => Err(format!(
                "--k has {} values for {layers} layers; give one value or one per layer",
                ks.len()
            )),
        }
    }
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
            ModelKind::Anil | ModelKind::AnilMlp | ModelKind::MsrHead => layer + 1 == layers,
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
            "msr-mlp" => Ok(ModelKind::MsrMlp),
            "maml-mlp" => Ok(ModelKind::MamlMlp),
            "anil-mlp" => Ok(ModelKind::AnilMlp),
            "msr-head" => Ok(ModelKind::MsrHead),
            other => Err(format!(
                "unknown model '{other}' (available: {})",
                ModelKind::ALL.map(|k| k.to_string()).join(", ")
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
            ModelKind::MsrMlp => "msr-mlp",
            ModelKind::MamlMlp => "maml-mlp",
            ModelKind::AnilMlp => "anil-mlp",
            ModelKind::MsrHead => "msr-head",
        })
    }
}
