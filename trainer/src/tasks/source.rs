//! What a family's tasks come from: the built-in problems and task files, by name.

use std::fmt;
use std::str::FromStr;

/// The synthetic 1-D families of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// y = valid convolution of x with a per-task 3-tap filter.
    Rank1,
    /// Locally connected layer whose per-position filters mix 2 per-task basis filters.
    Rank2,
    /// Same with 5 basis filters.
    Rank5,
    /// 2-D: 32x32 inputs, 24 output channels of a C8-equivariant 3x3 convolution.
    Rot8,
    /// 2-D: 32x32 inputs, 48 output channels of a D8-equivariant 3x3 convolution.
    Rot8Flip,
    /// A user's task set from a `.npz` file (`npz:PATH`; see [`npz`](super::npz)).
    Npz,
    /// Few-shot classification of glyphs rendered from real fonts (`glyphs`: Debian's
    /// fonts-noto-core; `glyphs-mini`: the committed subset; see [`glyphs`](super::glyphs)).
    Glyphs,
    /// Cart-poles of random masses, pole length and friction: state and force to
    /// accelerations (see [`cartpole`]).
    Cartpole,
    /// A Franka Panda holding an unknown payload: state to residual joint torques, by
    /// MuJoCo (see [`robots`](super::robots); feature `mujoco`).
    PandaPayload,
    /// A quadrotor in an unknown wind: flight state to residual force, by MuJoCo.
    QuadrotorWind,
}

impl Problem {
    /// Whether inputs are 1 x 32 x 32 images (else 70-long sequences).
    pub fn is_2d(self) -> bool {
        matches!(self, Problem::Rot8 | Problem::Rot8Flip)
    }

    /// Whether examples are feature vectors and targets vectors (a task file, cartpole,
    /// the robots), not the paper's sequences, images or glyphs.
    pub fn is_vector_regression(self) -> bool {
        matches!(
            self,
            Problem::Npz | Problem::Cartpole | Problem::PandaPayload | Problem::QuadrotorWind
        )
    }

    /// Whether a MuJoCo robot generates the tasks.
    pub fn is_robot(self) -> bool {
        matches!(self, Problem::PandaPayload | Problem::QuadrotorWind)
    }
}

impl FromStr for Problem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rank1" => Ok(Problem::Rank1),
            "rank2" => Ok(Problem::Rank2),
            "rank5" => Ok(Problem::Rank5),
            "rot8" => Ok(Problem::Rot8),
            "rot8-flip" => Ok(Problem::Rot8Flip),
            "glyphs" | "glyphs-mini" => Ok(Problem::Glyphs),
            "cartpole" => Ok(Problem::Cartpole),
            "panda-payload" => Ok(Problem::PandaPayload),
            "quadrotor-wind" => Ok(Problem::QuadrotorWind),
            other if other.starts_with("npz:") => Ok(Problem::Npz),
            other => Err(format!(
                "unknown problem '{other}' (available: rank1, rank2, rank5, rot8, rot8-flip, cartpole, panda-payload, quadrotor-wind, glyphs, glyphs-mini, npz:PATH)"
            )),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Rank1 => "rank1",
            Problem::Rank2 => "rank2",
            Problem::Rank5 => "rank5",
            Problem::Rot8 => "rot8",
            Problem::Rot8Flip => "rot8-flip",
            Problem::Npz => "npz",
            Problem::Glyphs => "glyphs",
            Problem::Cartpole => "cartpole",
            Problem::PandaPayload => "panda-payload",
            Problem::QuadrotorWind => "quadrotor-wind",
        })
    }
}

/// Where a run's tasks come from, named as on the command line (`rank1`, `glyphs-mini`,
/// `npz:PATH`...). Stored (checkpoints, configurations) by that name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum TaskSource {
    /// A generated family: rank1, rank2, rank5, rot8, rot8-flip (the paper's), cartpole.
    Synthetic(Problem),
    /// Glyph classification: Debian's full font set, or the committed subset (`mini`).
    Glyphs {
        /// The committed subset (`glyphs-mini`).
        mini: bool,
    },
    /// A user's task file (`npz:PATH`).
    Npz(std::path::PathBuf),
}

impl TaskSource {
    /// The kind of family.
    pub fn problem(&self) -> Problem {
        match self {
            TaskSource::Synthetic(p) => *p,
            TaskSource::Glyphs { .. } => Problem::Glyphs,
            TaskSource::Npz(_) => Problem::Npz,
        }
    }
}

impl From<Problem> for TaskSource {
    /// A family of `problem`: the full font set for glyphs, no file yet for npz.
    fn from(problem: Problem) -> Self {
        match problem {
            Problem::Glyphs => TaskSource::Glyphs { mini: false },
            Problem::Npz => TaskSource::Npz(std::path::PathBuf::new()),
            p => TaskSource::Synthetic(p),
        }
    }
}

impl FromStr for TaskSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.parse::<Problem>()? {
            Problem::Glyphs => TaskSource::Glyphs {
                mini: s == "glyphs-mini",
            },
            Problem::Npz => TaskSource::Npz(s["npz:".len()..].into()),
            p => TaskSource::Synthetic(p),
        })
    }
}

impl fmt::Display for TaskSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskSource::Synthetic(p) => write!(f, "{p}"),
            TaskSource::Glyphs { mini: true } => f.write_str("glyphs-mini"),
            TaskSource::Glyphs { mini: false } => f.write_str("glyphs"),
            TaskSource::Npz(path) => write!(f, "npz:{}", path.display()),
        }
    }
}

impl From<TaskSource> for String {
    fn from(s: TaskSource) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for TaskSource {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
