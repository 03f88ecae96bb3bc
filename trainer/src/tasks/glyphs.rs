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

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale};

use crate::rng::Rng;

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

/// The script a Noto font file belongs to, or `None` for fonts that are not one script's
/// alphabet (the pan-European NotoSans itself, symbols, math, numerals, hieroglyphs...).
pub fn script_of(file_name: &str) -> Option<String> {
    let family = file_name.split('-').next()?;
    let mut s = family
        .strip_prefix("NotoSans")
        .or_else(|| family.strip_prefix("NotoSerif"))
        .or_else(|| family.strip_prefix("Noto"))?;
    for style in [
        "Kufi",
        "Naskh",
        "Nastaliq",
        "Looped",
        "Rashi",
        "Traditional",
    ] {
        if let Some(rest) = s.strip_prefix(style) {
            s = rest;
        }
    }
    let s = s.strip_suffix("Urdu").map_or(s, |_| "Arabic");
    let s = s.strip_suffix("Unjoined").unwrap_or(s);
    let s = s.strip_suffix("Slanted").unwrap_or(s);
    let s = if s.starts_with("Tifinagh") {
        "Tifinagh"
    } else {
        s
    };
    const NOT_ALPHABETS: [&str; 15] = [
        "",
        "Display",
        "Mono",
        "Math",
        "Music",
        "Symbols",
        "Symbols2",
        "IndicSiyaqNumbers",
        "MayanNumerals",
        "SignWriting",
        "Cuneiform",
        "EgyptianHieroglyphs",
        "AnatolianHieroglyphs",
        "Tangut",
        "Duployan",
    ];
    (!NOT_ALPHABETS.contains(&s)).then(|| s.to_string())
}

/// Code points that are never a script's letters: Latin, Greek, Cyrillic, punctuation and
/// symbol blocks, variation selectors, private use, specials.
fn excluded(c: char) -> bool {
    let u = c as u32;
    u < 0x0530
        || (0x1E00..0x1F00).contains(&u)
        || (0x2000..0x2C00).contains(&u)
        || (0x2E00..0x2E80).contains(&u)
        || (0x3000..0x3040).contains(&u)
        || (0xA700..0xA800).contains(&u)
        || (0xE000..0xF900).contains(&u)
        || (0xFB00..0xFB07).contains(&u)
        || (0xFE00..0xFE70).contains(&u)
        || (0xFEFF..=0xFFFF).contains(&u)
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

    fn noto_alphabets(dir: &Path, hint: &str) -> Result<Vec<Alphabet>, GlyphError> {
        let no_fonts = || GlyphError::NoFonts {
            dir: dir.display().to_string(),
            hint: hint.to_string(),
        };
        let entries = std::fs::read_dir(dir).map_err(|_| no_fonts())?;
        let mut by_script: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".ttf") || name.ends_with(".otf")) {
                continue;
            }
            if let Some(script) = script_of(&name) {
                by_script.entry(script).or_default().push(path);
            }
        }
        let mut alphabets = Vec::new();
        for (name, mut paths) in by_script {
            // Regular fonts first: a character's candidate test uses its first style.
            paths.sort_by_key(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                (!n.contains("Regular"), n)
            });
            let fonts = paths
                .iter()
                .map(|p| {
                    let bytes = std::fs::read(p).map_err(|e| GlyphError::BadFont {
                        path: p.display().to_string(),
                        why: e.to_string(),
                    })?;
                    FontVec::try_from_vec(bytes).map_err(|e| GlyphError::BadFont {
                        path: p.display().to_string(),
                        why: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let chars = characters(&fonts);
            if chars.len() >= 5 {
                alphabets.push(Alphabet {
                    name,
                    fonts: fonts.len(),
                    chars,
                });
            }
        }
        if alphabets.len() < 3 {
            return Err(no_fonts());
        }
        Ok(alphabets)
    }

    fn with_splits(alphabets: Vec<Alphabet>) -> Self {
        let n = alphabets.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::derive(&[GLYPH_SEED, 1]);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let n_test = (n / 5).max(1);
        let n_val = (n / 5).max(1);
        let mut split_alphabets: [Vec<usize>; 3] = Default::default();
        for (rank, &a) in order.iter().enumerate() {
            let s = if rank < n_test {
                2
            } else if rank < n_test + n_val {
                1
            } else {
                0
            };
            split_alphabets[s].push(a);
        }
        let mut classes: [Vec<(usize, usize)>; 3] = Default::default();
        for s in 0..3 {
            split_alphabets[s].sort_unstable();
            for &a in &split_alphabets[s] {
                classes[s].extend((0..alphabets[a].chars.len()).map(|c| (a, c)));
            }
        }
        Glyphs {
            alphabets,
            classes,
            split_alphabets,
        }
    }

    /// The `(alphabet, character)` classes of `split`.
    pub fn classes(&self, split: Split) -> &[(usize, usize)] {
        &self.classes[split as usize]
    }

    /// The alphabet indices of `split`.
    pub fn split_alphabets(&self, split: Split) -> &[usize] {
        &self.split_alphabets[split as usize]
    }

    /// Total characters.
    pub fn num_chars(&self) -> usize {
        self.alphabets.iter().map(|a| a.chars.len()).sum()
    }

    /// Instance `instance` of character `(alphabet, ch)`, augmented by `aug`, written into
    /// `out` (`SIDE * SIDE` values in [0, 1], ink = 1).
    pub fn render(
        &self,
        alphabet: usize,
        ch: usize,
        instance: usize,
        aug: Augment,
        out: &mut [f32],
    ) {
        let c = &self.alphabets[alphabet].chars[ch];
        let mut rng = Rng::derive(&[
            GLYPH_SEED,
            2,
            alphabet as u64,
            c.code as u64,
            instance as u64,
        ]);
        let base = &c.styles[rng.below(c.styles.len())];
        // Stroke width: erode, keep or dilate by one canvas pixel.
        let stroke = match rng.below(20) {
            0..=4 => Morph::Erode,
            5..=11 => Morph::None,
            _ => Morph::Dilate,
        };
        let img = morph(base, stroke);
        // Instance affine: rotation, anisotropic scale, shear, translation.
        let theta = rng.range(-12.0, 12.0).to_radians() as f32;
        let scale = rng.range(0.85, 1.1) as f32;
        let aspect = rng.range(0.9, 1.1) as f32;
        let shear = rng.range(-0.2, 0.2) as f32;
        let shift = [rng.range(-1.5, 1.5) as f32, rng.range(-1.5, 1.5) as f32];
        // Elastic: a 3x3 grid of displacements (output pixels), bilinearly interpolated.
        let grid: Vec<[f32; 2]> = (0..9)
            .map(|_| [0.7 * rng.normal() as f32, 0.7 * rng.normal() as f32])
            .collect();
        // Forward map from glyph coordinates (output pixels, centred) to the image:
        // p = Aug * (R * Shear * S) * q + shift. Sampling needs its inverse.
        let m = mat_mul(
            aug.matrix(),
            mat_mul(
                rot(theta),
                mat_mul(
                    [[1.0, shear], [0.0, 1.0]],
                    [[scale * aspect, 0.0], [0.0, scale / aspect]],
                ),
            ),
        );
        let inv = mat_inv(m);
        let f = GLYPH_BOX / GLYPH_OUT; // canvas pixels per output pixel
        let half_canvas = CANVAS as f32 / 2.0;
        let half = SIDE as f32 / 2.0;
        for v in 0..SIDE {
            for u in 0..SIDE {
                let mut acc = 0.0;
                for (du, dv) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let (x, y) = (u as f32 + du, v as f32 + dv);
                    let d = elastic(&grid, x / SIDE as f32, y / SIDE as f32);
                    let p = [x - half - shift[0] + d[0], y - half - shift[1] + d[1]];
                    let q = [
                        inv[0][0] * p[0] + inv[0][1] * p[1],
                        inv[1][0] * p[0] + inv[1][1] * p[1],
                    ];
                    acc += bilinear(&img, half_canvas + q[0] * f, half_canvas + q[1] * f);
                }
                out[v * SIDE + u] = acc / 4.0;
            }
        }
    }
}

impl Augment {
    /// The forward 2x2 map: resize * rotation * flip.
    fn matrix(self) -> [[f32; 2]; 2] {
        let flip = if self.flip { -1.0 } else { 1.0 };
        let r = rot(self.angle);
        [
            [self.scale * r[0][0] * flip, self.scale * r[0][1]],
            [self.scale * r[1][0] * flip, self.scale * r[1][1]],
        ]
    }
}

fn rot(t: f32) -> [[f32; 2]; 2] {
    let (s, c) = t.sin_cos();
    [[c, -s], [s, c]]
}

fn mat_mul(a: [[f32; 2]; 2], b: [[f32; 2]; 2]) -> [[f32; 2]; 2] {
    let mut o = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            o[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    o
}

fn mat_inv(m: [[f32; 2]; 2]) -> [[f32; 2]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [
        [m[1][1] / det, -m[0][1] / det],
        [-m[1][0] / det, m[0][0] / det],
    ]
}

/// Displacement at (x, y) in [0, 1]^2 from a 3x3 grid over the image.
fn elastic(grid: &[[f32; 2]], x: f32, y: f32) -> [f32; 2] {
    let gx = (x * 2.0).clamp(0.0, 2.0 - 1e-6);
    let gy = (y * 2.0).clamp(0.0, 2.0 - 1e-6);
    let (i, j) = (gx as usize, gy as usize);
    let (fx, fy) = (gx - i as f32, gy - j as f32);
    let at = |a: usize, b: usize, k: usize| grid[b * 3 + a][k];
    let mut d = [0.0; 2];
    for (k, dk) in d.iter_mut().enumerate() {
        *dk = (1.0 - fy) * ((1.0 - fx) * at(i, j, k) + fx * at(i + 1, j, k))
            + fy * ((1.0 - fx) * at(i, j + 1, k) + fx * at(i + 1, j + 1, k));
    }
    d
}

/// Bilinear sample of a `[CANVAS, CANVAS]` image (values 0..1) at pixel-centre coordinates;
/// zero outside.
fn bilinear(img: &[f32], x: f32, y: f32) -> f32 {
    let (x, y) = (x - 0.5, y - 0.5);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= CANVAS as f32 || yi >= CANVAS as f32 {
            0.0
        } else {
            img[yi as usize * CANVAS + xi as usize]
        }
    };
    (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1.0, y0))
        + fy * ((1.0 - fx) * at(x0, y0 + 1.0) + fx * at(x0 + 1.0, y0 + 1.0))
}

#[derive(Clone, Copy, PartialEq)]
enum Morph {
    Erode,
    None,
    Dilate,
}

/// 3x3 min / max filter (clamped at the border), to [0, 1] floats.
fn morph(base: &[u8], op: Morph) -> Vec<f32> {
    let n = CANVAS as isize;
    let get = |x: isize, y: isize| base[(y.clamp(0, n - 1) * n + x.clamp(0, n - 1)) as usize];
    let mut out = vec![0.0f32; CANVAS * CANVAS];
    for y in 0..n {
        for x in 0..n {
            let v = match op {
                Morph::None => get(x, y),
                _ => {
                    let mut acc = get(x, y);
                    for (dx, dy) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                        let w = get(x + dx, y + dy);
                        acc = if op == Morph::Erode {
                            acc.min(w)
                        } else {
                            acc.max(w)
                        };
                    }
                    acc
                }
            };
            out[(y * n + x) as usize] = v as f32 / 255.0;
        }
    }
    out
}

/// The characters of one script: code points in the fonts' character maps that are
/// letters of the script (not excluded blocks, not marks, not small punctuation), each
/// rendered once per font that has it; renderings identical to an earlier character's are
/// dropped. At most [`MAX_CHARS`], in code point order.
fn characters(fonts: &[FontVec]) -> Vec<Character> {
    let mut codes: Vec<char> = fonts
        .iter()
        .flat_map(|f| f.codepoint_ids().map(|(_, c)| c))
        .filter(|&c| !excluded(c))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    distinct_characters(codes.into_iter().map(|c| (c, c)), |code| {
        fonts.iter().filter_map(|f| render_base(f, code)).collect()
    })
}

/// The first [`MAX_CHARS`] candidates `(code, key)` that render (`styles(key)`: one canvas
/// per style that has the character) differently from every earlier one (compared in the
/// first style). Renders lazily: stops at the cap.
fn distinct_characters<K>(
    candidates: impl IntoIterator<Item = (char, K)>,
    styles: impl Fn(K) -> Vec<Vec<u8>>,
) -> Vec<Character> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for (code, key) in candidates {
        if out.len() == MAX_CHARS {
            break;
        }
        let styles = styles(key);
        if let Some(first) = styles.first()
            && seen.insert(first.clone())
        {
            out.push(Character { code, styles });
        }
    }
    out
}

/// The Hershey alphabets of `dir` (see [`HERSHEY_ALPHABETS`]). A character's code is its
/// ASCII position (Latin, Greek, Cyrillic) or a private-use code point (Japanese glyph
/// index); either way it only names the class.
fn hershey_alphabets(dir: &Path, hint: &str) -> Result<Vec<Alphabet>, GlyphError> {
    let mut out = Vec::new();
    for (name, files, all) in HERSHEY_ALPHABETS {
        let fonts = files
            .iter()
            .map(|f| {
                let path = dir.join(format!("{f}.jhf"));
                let text = std::fs::read_to_string(&path).map_err(|_| GlyphError::NoFonts {
                    dir: dir.display().to_string(),
                    hint: hint.to_string(),
                })?;
                parse_jhf(&text).map_err(|why| GlyphError::BadFont {
                    path: path.display().to_string(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slots: Vec<(usize, char)> = if all {
            (1..fonts[0].len())
                .map(|i| (i, char::from_u32(0xE000 + i as u32).unwrap_or('?')))
                .collect()
        } else {
            (b'A'..=b'Z')
                .chain(b'a'..=b'z')
                .map(|c| (c as usize - 32, c as char))
                .collect()
        };
        let chars =
            distinct_characters(slots.into_iter().map(|(slot, code)| (code, slot)), |slot| {
                fonts
                    .iter()
                    .filter_map(|f| f.get(slot).and_then(render_strokes))
                    .collect()
            });
        out.push(Alphabet {
            name: name.to_string(),
            fonts: fonts.len(),
            chars,
        });
    }
    Ok(out)
}

/// A Hershey glyph: strokes of points (font units, y down).
type Strokes = Vec<Vec<(f32, f32)>>;

/// Parses a `.jhf` file: per glyph, a 5-column number, a 3-column vertex count, then that
/// many coordinate pairs (each a character minus 'R'); the first pair is the horizontal
/// margins, " R" lifts the pen. A record may continue on following lines.
fn parse_jhf(text: &str) -> Result<Vec<Strokes>, String> {
    let mut glyphs = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((no, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let head = line
            .get(5..8)
            .ok_or(format!("line {}: short header", no + 1))?;
        let count: usize = head
            .trim()
            .parse()
            .map_err(|_| format!("line {}: bad vertex count '{head}'", no + 1))?;
        let mut data: Vec<u8> = line.as_bytes()[8..].to_vec();
        while data.len() < 2 * count {
            let (_, more) = lines
                .next()
                .ok_or(format!("line {}: truncated glyph", no + 1))?;
            data.extend_from_slice(more.as_bytes());
        }
        let mut strokes: Strokes = vec![Vec::new()];
        for pair in data[..2 * count].chunks(2).skip(1) {
            if pair == b" R" {
                strokes.push(Vec::new());
            } else {
                let x = pair[0] as f32 - b'R' as f32;
                let y = pair[1] as f32 - b'R' as f32;
                strokes.last_mut().expect("one stroke").push((x, y));
            }
        }
        strokes.retain(|s| !s.is_empty());
        glyphs.push(strokes);
    }
    Ok(glyphs)
}

/// A Hershey glyph drawn with round pen strokes of [`HERSHEY_STROKE`] canvas pixels, its
/// bounding box scaled to [`GLYPH_BOX`] and centred; `None` for an empty or tiny glyph.
fn render_strokes(strokes: &Strokes) -> Option<Vec<u8>> {
    let pts = strokes.iter().flatten();
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for &(x, y) in pts {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let side = (x1 - x0).max(y1 - y0);
    if !side.is_finite() || side < 4.0 {
        return None; // punctuation-sized or empty
    }
    let k = (GLYPH_BOX - HERSHEY_STROKE) / side;
    let c = CANVAS as f32 / 2.0;
    let map = |(x, y): (f32, f32)| (c + (x - (x0 + x1) / 2.0) * k, c + (y - (y0 + y1) / 2.0) * k);
    let segments: Vec<((f32, f32), (f32, f32))> = strokes
        .iter()
        .flat_map(|s| {
            let p: Vec<_> = s.iter().map(|&q| map(q)).collect();
            if p.len() == 1 {
                vec![(p[0], p[0])]
            } else {
                p.windows(2).map(|w| (w[0], w[1])).collect()
            }
        })
        .collect();
    let mut canvas = vec![0u8; CANVAS * CANVAS];
    for py in 0..CANVAS {
        for px in 0..CANVAS {
            let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
            let d = segments
                .iter()
                .map(|&(a, b)| segment_distance((x, y), a, b))
                .fold(f32::MAX, f32::min);
            let cover = (HERSHEY_STROKE / 2.0 + 0.5 - d).clamp(0.0, 1.0);
            canvas[py * CANVAS + px] = (cover * 255.0).round() as u8;
        }
    }
    Some(canvas)
}

/// Distance from `p` to the segment `a`-`b`.
fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (qx * qx + qy * qy).sqrt()
}

/// `code` drawn by `font`, its bounding box scaled to [`GLYPH_BOX`] and centred on the
/// canvas; `None` if the font lacks it or it is a mark (no advance) or small punctuation.
fn render_base(font: &FontVec, code: char) -> Option<Vec<u8>> {
    let id = font.glyph_id(code);
    if id.0 == 0 || font.h_advance_unscaled(id) <= 0.0 {
        return None;
    }
    let outline = font.outline(id)?;
    let (w, h) = (
        outline.bounds.max.x - outline.bounds.min.x,
        outline.bounds.max.y - outline.bounds.min.y,
    );
    let em = font.units_per_em()?;
    if w.max(h) < MIN_EM_FRACTION * em {
        return None;
    }
    let px_per_unit = GLYPH_BOX / w.max(h);
    let scale = PxScale::from(px_per_unit * font.height_unscaled());
    let glyph = id.with_scale_and_position(scale, ab_glyph::point(0.0, 0.0));
    let og = font.outline_glyph(glyph)?;
    let b = og.px_bounds();
    let ox = ((CANVAS as f32 - b.width()) / 2.0).round() as i64;
    let oy = ((CANVAS as f32 - b.height()) / 2.0).round() as i64;
    let mut canvas = vec![0u8; CANVAS * CANVAS];
    let mut ink = 0.0;
    og.draw(|x, y, c| {
        let (cx, cy) = (x as i64 + ox, y as i64 + oy);
        if (0..CANVAS as i64).contains(&cx) && (0..CANVAS as i64).contains(&cy) {
            let v = (c.clamp(0.0, 1.0) * 255.0).round() as u8;
            let px = &mut canvas[cy as usize * CANVAS + cx as usize];
            *px = (*px).max(v);
            ink += c;
        }
    });
    (ink >= 20.0).then_some(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mini() -> &'static Glyphs {
        static G: std::sync::OnceLock<Glyphs> = std::sync::OnceLock::new();
        G.get_or_init(|| Glyphs::mini().expect("committed fonts load"))
    }

    fn corr(x: &[f32], y: &[f32]) -> f32 {
        let mx = x.iter().sum::<f32>() / x.len() as f32;
        let my = y.iter().sum::<f32>() / y.len() as f32;
        let cov: f32 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let vx: f32 = x.iter().map(|a| (a - mx).powi(2)).sum();
        let vy: f32 = y.iter().map(|b| (b - my).powi(2)).sum();
        cov / (vx * vy).sqrt()
    }

    #[test]
    fn script_names_group_fonts_and_skip_non_alphabets() {
        for (file, script) in [
            ("NotoSansRunic-Regular.ttf", Some("Runic")),
            ("NotoSerifHebrew-Bold.ttf", Some("Hebrew")),
            ("NotoRashiHebrew-Regular.ttf", Some("Hebrew")),
            ("NotoNastaliqUrdu-Regular.ttf", Some("Arabic")),
            ("NotoSansTifinaghAir-Regular.ttf", Some("Tifinagh")),
            ("NotoSans-Regular.ttf", None),
            ("NotoSansSymbols2-Regular.ttf", None),
            ("NotoSansMath-Regular.ttf", None),
        ] {
            assert_eq!(script_of(file).as_deref(), script, "{file}");
        }
    }

    #[test]
    fn the_committed_set_is_shaped_like_omniglot_with_disjoint_splits() {
        let g = mini();
        assert!(g.alphabets.len() >= 30, "{} alphabets", g.alphabets.len());
        assert!(g.num_chars() >= 600, "{} characters", g.num_chars());
        assert!(
            g.alphabets
                .iter()
                .all(|a| a.chars.len() <= MAX_CHARS && a.chars.len() >= 5)
        );
        // Styles: scripts with a bold font have two renderings of most characters.
        let two = g.alphabets.iter().filter(|a| a.fonts == 2).count();
        assert!(two >= 5, "{two} scripts with two fonts");
        let sets: Vec<HashSet<usize>> = [Split::Train, Split::Val, Split::Test]
            .iter()
            .map(|&s| g.split_alphabets(s).iter().copied().collect())
            .collect();
        for i in 0..3 {
            assert!(!sets[i].is_empty());
            for j in i + 1..3 {
                assert!(
                    sets[i].is_disjoint(&sets[j]),
                    "splits {i} and {j} share an alphabet"
                );
            }
        }
        assert_eq!(
            sets.iter().map(|s| s.len()).sum::<usize>(),
            g.alphabets.len()
        );
        // No Latin, punctuation or marks made it in.
        for a in &g.alphabets {
            for c in &a.chars {
                assert!(!excluded(c.code), "{} in {}", c.code, a.name);
            }
        }
    }

    #[test]
    fn instances_are_deterministic_varied_and_inked() {
        let g = mini();
        let mut a = vec![0.0; SIDE * SIDE];
        let mut b = vec![0.0; SIDE * SIDE];
        g.render(0, 0, 3, Augment::NONE, &mut a);
        g.render(0, 0, 3, Augment::NONE, &mut b);
        assert_eq!(a, b, "same instance, same image");
        g.render(0, 0, 4, Augment::NONE, &mut b);
        assert_ne!(a, b, "instances differ");
        for img in [&a, &b] {
            let ink: f32 = img.iter().sum();
            assert!(ink > 20.0 && ink < 0.7 * (SIDE * SIDE) as f32, "ink {ink}");
            assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
            // The character stays inside the frame: the border is (nearly) empty.
            let border: f32 = (0..SIDE)
                .flat_map(|i| {
                    [
                        img[i],
                        img[(SIDE - 1) * SIDE + i],
                        img[i * SIDE],
                        img[i * SIDE + SIDE - 1],
                    ]
                })
                .sum();
            assert!(border < 0.05 * ink, "border {border} of ink {ink}");
        }
        // Instances of one character resemble each other more than another character.
        let mut same = 0.0;
        let mut other = 0.0;
        let mut c = vec![0.0; SIDE * SIDE];
        let n = 30;
        for i in 0..n {
            let al = i % g.alphabets.len();
            g.render(al, 1, 0, Augment::NONE, &mut a);
            g.render(al, 1, 1, Augment::NONE, &mut b);
            g.render(al, 2, 1, Augment::NONE, &mut c);
            same += corr(&a, &b);
            other += corr(&a, &c);
        }
        assert!(same > other + 0.1 * n as f32, "same {same} other {other}");
    }

    #[test]
    fn augmentation_is_a_rotation_flip_and_resize_of_the_instance() {
        let g = mini();
        let mut plain = vec![0.0; SIDE * SIDE];
        let mut aug = vec![0.0; SIDE * SIDE];
        g.render(1, 0, 0, Augment::NONE, &mut plain);
        // A flip mirrors the character (the instance's own elastic field and shift are in
        // output coordinates, so the mirror is close, not exact).
        let flip = Augment {
            angle: 0.0,
            flip: true,
            scale: 1.0,
        };
        g.render(1, 0, 0, flip, &mut aug);
        let mirrored: Vec<f32> = (0..SIDE * SIDE)
            .map(|i| aug[(i / SIDE) * SIDE + SIDE - 1 - i % SIDE])
            .collect();
        assert!(
            corr(&mirrored, &plain) > 0.5,
            "mirror corr {}",
            corr(&mirrored, &plain)
        );
        assert!(corr(&mirrored, &plain) > corr(&aug, &plain) + 0.1);
        let ink = |img: &[f32]| img.iter().sum::<f32>();
        // A resize by 1.2 inks about 1.44x as many pixels.
        let big = Augment {
            angle: 0.0,
            flip: false,
            scale: 1.2,
        };
        g.render(1, 0, 0, big, &mut aug);
        let ratio = ink(&aug) / ink(&plain);
        assert!((1.2..1.7).contains(&ratio), "ink ratio {ratio}");
        // A random augmentation stays within its documented ranges.
        let mut rng = Rng::new(5);
        for _ in 0..100 {
            let a = Augment::random(&mut rng);
            assert!(a.angle.abs() <= Augment::MAX_DEGREES.to_radians() + 1e-6);
            assert!((Augment::SCALES.0..=Augment::SCALES.1).contains(&a.scale));
        }
    }

    #[test]
    fn hershey_records_parse_and_draw_their_strokes() {
        // 'A' of Hershey's simplex Greek: margins, two legs, the bar; then a record that
        // continues on a second line.
        let text = "12345  9I[RFJ[ RRFZ[ RMTWT\n12345  3\nJZRFR[\n";
        let g = parse_jhf(text).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].len(), 3, "three strokes");
        assert_eq!(g[0][0], vec![(0.0, -12.0), (-8.0, 9.0)]);
        assert_eq!(g[1], vec![vec![(0.0, -12.0), (0.0, 9.0)]]);
        assert!(parse_jhf("12345 xx\n").is_err());
        assert!(parse_jhf("12345 10IZRF\n").is_err(), "truncated");
        // The vertical stroke: ink on the centre column, none in the corners.
        let img = render_strokes(&g[1]).unwrap();
        let at = |x: usize, y: usize| img[y * CANVAS + x];
        assert_eq!(at(CANVAS / 2, CANVAS / 2), 255);
        assert_eq!(at(2, 2), 0);
        assert_eq!(at(CANVAS / 2 + 4, CANVAS / 2), 0);
        assert!((segment_distance((1.0, 1.0), (0.0, 0.0), (2.0, 0.0)) - 1.0).abs() < 1e-6);
        assert!((segment_distance((3.0, 0.0), (0.0, 0.0), (2.0, 0.0)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_missing_font_directory_names_the_package_to_install() {
        let err = Glyphs::from_dir(Path::new("/nonexistent/fonts"), "install fonts-noto-core")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/fonts") && msg.contains("fonts-noto-core"),
            "{msg}"
        );
    }
}
