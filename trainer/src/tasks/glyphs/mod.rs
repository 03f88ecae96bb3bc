//! Few-shot glyph classification from real fonts: an Aug-Omniglot stand-in (Omniglot
//! itself is in no package registry this project can install from).
//!
//! Shaped like Omniglot: alphabets (scripts) -> characters (classes) -> [`INSTANCES`]
//! 28x28 instances each. An alphabet is one script of Google's Noto fonts, with every font
//! of that script (sans / serif, regular / bold / italic, the Tifinagh regional variants...)
//! as its styles. An instance is a character drawn in one of its styles with a random stroke
//! width, a small random affine map and a smooth elastic distortion, all from a seed: the
//! data set is a pure function of the fonts.
//!
//! Two font sets:
//! - `glyphs-mini`: 40 small scripts committed in `trainer/assets/fonts` (SIL OFL 1.1), so
//!   the tests need nothing installed;
//! - `glyphs`: every script of Debian's `fonts-noto-core` under `/usr/share/fonts/truetype/noto`.
//!
//! Alphabets are split (fixed, seeded) into disjoint meta-train / meta-validation /
//! meta-test sets, 60 / 20 / 20%.
//!
//! The query augmentation of Algorithm 2 ([`Augment`]: a random rotation, flip and resize)
//! is applied by the caller to query examples only; it is folded into the instance's own
//! resampling so that an augmented image is resampled once.

use std::path::{Path, PathBuf};

use crate::rng::Rng;

mod hershey;
mod noto;
mod render;
mod splits;
#[cfg(test)]
mod tests;

use hershey::hershey_alphabets;
use noto::distinct_characters;

/// Side of an instance image.
pub const SIDE: usize = 28;
/// Instances per character.
pub const INSTANCES: usize = 20;
/// At most this many characters per alphabet (Omniglot's largest alphabet has 55).
pub const MAX_CHARS: usize = 55;
/// Side of the canvas a character's style is rendered on once.
const CANVAS: usize = 48;
/// The glyph's bounding box is scaled to this many canvas pixels (longest side).
const GLYPH_BOX: f32 = 40.0;
/// ... which maps to this many output pixels (before the instance's own scaling).
const GLYPH_OUT: f32 = 19.0;
/// Glyphs whose longest side is below this fraction of the em are marks or punctuation.
const MIN_EM_FRACTION: f32 = 0.3;
/// Seed of the alphabet split and of every instance.
const GLYPH_SEED: u64 = 0x61F5_0F0E_57AB_1E00;

/// Where the committed font subset lives.
pub fn mini_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fonts")
}

/// Where Debian's fonts-noto-core puts its fonts.
pub const SYSTEM_NOTO_DIR: &str = "/usr/share/fonts/truetype/noto";
/// Where Debian's hershey-fonts-data puts its stroke fonts.
pub const SYSTEM_HERSHEY_DIR: &str = "/usr/share/hershey-fonts";
/// Stroke width of Hershey glyphs, canvas pixels.
const HERSHEY_STROKE: f32 = 3.5;

/// The Hershey alphabets: name, font files (styles), and which glyphs are its letters
/// (`None`: the ASCII letter positions A-Z, a-z; `Some`: every glyph but the first).
const HERSHEY_ALPHABETS: [(&str, &[&str], bool); 4] = [
    (
        "Latin (Hershey)",
        &[
            "futural",
            "futuram",
            "rowmans",
            "rowmand",
            "rowmant",
            "timesr",
            "timesrb",
            "timesi",
            "timesib",
            "scripts",
            "scriptc",
            "cursive",
            "gothiceng",
            "gothicger",
            "gothicita",
            "gothgbt",
            "gothgrt",
            "gothitt",
        ],
        false,
    ),
    (
        "Greek (Hershey)",
        &["greek", "greekc", "greeks", "timesg"],
        false,
    ),
    ("Cyrillic (Hershey)", &["cyrillic", "cyrilc_1"], false),
    ("Japanese (Hershey)", &["japanese"], true),
];

/// A meta-split of the alphabets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Meta-training alphabets.
    Train,
    /// Meta-validation alphabets (periodic evaluations during training).
    Val,
    /// Meta-test alphabets (the reported numbers).
    Test,
}

/// One character: its code point and its base rendering in each style.
#[derive(Clone, Debug)]
pub struct Character {
    /// The Unicode scalar.
    pub code: char,
    /// Coverage `[CANVAS, CANVAS]`, 0..255, one per style that has the character.
    styles: Vec<Vec<u8>>,
}

/// One alphabet (script).
#[derive(Clone, Debug)]
pub struct Alphabet {
    /// Script name, e.g. "Runic".
    pub name: String,
    /// Number of fonts (styles) of the script.
    pub fonts: usize,
    /// Its characters.
    pub chars: Vec<Character>,
}

/// The whole data set.
#[derive(Clone, Debug)]
pub struct Glyphs {
    /// Alphabets, sorted by name.
    pub alphabets: Vec<Alphabet>,
    /// `(alphabet, character)` of every class, per split (train, val, test).
    classes: [Vec<(usize, usize)>; 3],
    /// Alphabet indices per split.
    split_alphabets: [Vec<usize>; 3],
}

/// The augmentation of Algorithm 2, applied to query examples only (never by the runtime).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Rotation, radians.
    pub angle: f32,
    /// Mirror left-right.
    pub flip: bool,
    /// Resize factor.
    pub scale: f32,
}

impl Augment {
    /// Largest rotation, degrees (uniform in +-this).
    pub const MAX_DEGREES: f32 = 45.0;
    /// Resize range.
    pub const SCALES: (f32, f32) = (0.8, 1.2);

    /// A random augmentation: rotation uniform in +-45 degrees, a left-right flip with
    /// probability 1/2, a resize uniform in [0.8, 1.2].
    pub fn random(rng: &mut Rng) -> Self {
        Augment {
            angle: (rng.range(-1.0, 1.0) as f32) * Self::MAX_DEGREES.to_radians(),
            flip: rng.below(2) == 1,
            scale: rng.range(Self::SCALES.0 as f64, Self::SCALES.1 as f64) as f32,
        }
    }

    /// The identity.
    pub const NONE: Augment = Augment {
        angle: 0.0,
        flip: false,
        scale: 1.0,
    };
}

/// Why a font set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GlyphError {
    /// The directory is missing or holds no usable font.
    #[error("no fonts in {dir}: {hint}")]
    NoFonts {
        /// The directory searched.
        dir: String,
        /// What to do about it.
        hint: String,
    },
    /// A font file could not be read or parsed.
    #[error("font {path}: {why}")]
    BadFont {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// Fewer classes than an episode needs.
    #[error("the {split:?} split has {have} characters; a {ways}-way episode needs {ways}")]
    TooFewClasses {
        /// The split.
        split: Split,
        /// Characters it has.
        have: usize,
        /// Ways asked for.
        ways: usize,
    },
}

impl Glyphs {
    /// The committed subset (`trainer/assets/fonts`).
    pub fn mini() -> Result<Self, GlyphError> {
        Self::from_dir(
            &mini_dir(),
            "the repository's trainer/assets/fonts is missing",
        )
    }

    /// The full set: Debian's fonts-noto-core (outline fonts, one alphabet per script) and
    /// hershey-fonts-data (stroke fonts: Latin, Greek, Cyrillic and Japanese alphabets).
    pub fn system() -> Result<Self, GlyphError> {
        let hint = "install Debian's fonts-noto-core and hershey-fonts-data \
                    (apt-get install fonts-noto-core hershey-fonts-data), or use glyphs-mini";
        let mut alphabets = Self::noto_alphabets(Path::new(SYSTEM_NOTO_DIR), hint)?;
        alphabets.extend(hershey_alphabets(Path::new(SYSTEM_HERSHEY_DIR), hint)?);
        alphabets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self::with_splits(alphabets))
    }

    /// Every `*.ttf` / `*.otf` Noto font in `dir`, grouped by script.
    pub fn from_dir(dir: &Path, hint: &str) -> Result<Self, GlyphError> {
        Ok(Self::with_splits(Self::noto_alphabets(dir, hint)?))
    }
}
