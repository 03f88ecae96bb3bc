//! The model file (`.msr`): a fixed header, a postcard body, a CRC-32 trailer.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "MSR\0"
//! 4       2     format version, u16 little-endian (this build writes FORMAT_VERSION and
//!               reads every version from 1)
//! 6       2     flags, u16 little-endian (none defined: must be 0)
//! 8       4     body length in bytes, u32 little-endian
//! 12      len   body: postcard encoding of ModelRecord
//! 12+len  4     CRC-32 (IEEE) of bytes [0, 12+len), u32 little-endian
//! ```
//!
//! See `docs/model-format.md` for the body layout and the version history.

use serde::{Deserialize, Serialize};

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{FormatError, ShapeError};
use crate::spec::{NetSpec, limits};

/// The four bytes every model file starts with.
pub const MAGIC: [u8; 4] = *b"MSR\0";
/// The format version this build writes; it reads every version from 1 to this one.
///
/// - 1: info, net, layers.
/// - 2: the same, then a list of extension records ([`Extension`]): named,
///   length-prefixed, skippable when optional. Known: [`NORMALIZE`].
pub const FORMAT_VERSION: u16 = 2;
const HEADER_LEN: usize = 12;
const TRAILER_LEN: usize = 4;

/// Descriptive metadata of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// A short name, e.g. "rank1-msr-fc".
    pub name: String,
    /// The task family it was meta-trained on, e.g. "rank1".
    pub task_family: String,
    /// Inner SGD steps used at meta-training time: the default at deployment.
    pub inner_steps: u32,
    /// Version of the trainer that wrote it.
    pub trainer_version: String,
}

/// Parameters of one layer, as stored: row-major f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The frozen symmetry matrices, each row-major `[rows, cols]` (shapes from the spec).
    #[serde(deserialize_with = "fallible::vectors")]
    pub shared: Vec<Vec<f32>>,
    /// Initial adapted vectors (v or W, then the bias).
    #[serde(deserialize_with = "fallible::vectors")]
    pub adapted0: Vec<Vec<f32>>,
    /// Inner-loop learning rate.
    pub lr: f32,
}

/// Everything a model file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRecord {
    /// Metadata.
    pub info: ModelInfo,
    /// Architecture and loss.
    pub net: NetSpec,
    /// Parameters, one per layer of `net`.
    pub layers: Vec<LayerRecord>,
    /// What the extension records hold (format version 2 on).
    pub ext: Extensions,
}

/// Per-feature standardisation `(value - mean) / scale`: the model sees standardised
/// values, its users raw ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardize {
    /// Per-feature mean.
    #[serde(deserialize_with = "fallible::floats")]
    pub mean: Vec<f32>,
    /// Per-feature scale (the standard deviation; 1 for a feature that was constant).
    #[serde(deserialize_with = "fallible::floats")]
    pub scale: Vec<f32>,
}

impl Standardize {
    /// Checks `len` features with finite means and finite, positive scales.
    fn check(&self, what: &str, len: usize) -> Result<(), String> {
        if self.mean.len() != len || self.scale.len() != len {
            return Err(format!(
                "{what} statistics for {} and {} features, the model has {len}",
                self.mean.len(),
                self.scale.len()
            ));
        }
        if !self.mean.iter().all(|m| m.is_finite()) {
            return Err(format!("non-finite {what} mean"));
        }
        if !self.scale.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(format!("{what} scales must be finite and positive"));
        }
        Ok(())
    }

    /// Standardises `values` (whole examples of `mean.len()` features) in place.
    pub fn apply(&self, values: &mut [f32]) {
        for row in values.chunks_exact_mut(self.mean.len()) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
    }

    /// Undoes [`Standardize::apply`] in place.
    pub fn invert(&self, values: &mut [f32]) {
        for row in values.chunks_exact_mut(self.mean.len()) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = *v * s + m;
            }
        }
    }
}

/// Extension record [`NORMALIZE`]: the model's inputs and (regression) outputs are
/// standardised with statistics of the training tasks. Every engine standardises inputs
/// and targets, and un-standardises predictions, so callers use raw units throughout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Input statistics.
    pub input: Option<Standardize>,
    /// Output statistics (mean squared error models only).
    pub output: Option<Standardize>,
}

/// The name of the normalisation extension record (required: a reader that ignored it
/// would predict in the wrong units).
pub const NORMALIZE: &str = "normalize";

/// The name of the solver extension record (required: a reader that adapted with SGD a
/// model meta-trained for Gauss-Newton would adapt it wrongly).
pub const SOLVER: &str = "solver";

/// Extension record [`SOLVER`]: the model was meta-trained to adapt by damped
/// Gauss-Newton, with these per-layer dampings (a layer's `lr` is then only its on/off
/// switch: 0 keeps it frozen).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Solver {
    /// Natural log of each layer's damping lambda, one per layer (0 for layers without
    /// adapted parameters). Finite, within +-30.
    #[serde(deserialize_with = "fallible::floats")]
    pub log_damping: Vec<f32>,
}

/// The name of the refinement extension record (required: the model was meta-trained
/// through its SGD steps *and* this refinement, so a reader that ran the SGD steps alone
/// would not adapt it as trained).
pub const REFINE: &str = "refine";

/// The most Gauss-Newton steps a [`Refine`] record may ask for.
pub const MAX_REFINE_STEPS: u32 = 16;

/// Extension record [`REFINE`]: after its SGD steps (`inner_steps`, the meta-learned
/// learning rates), the model adapts by `steps` damped Gauss-Newton steps from where SGD
/// ended, every moved parameter damped by `damping` (the prior centred where SGD ended):
/// what `trainer train --inner sgd+gn` meta-trains through (docs/adaptation.md). Regression
/// models without a [`Solver`] record only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refine {
    /// Gauss-Newton steps after the SGD ones, 1 to [`MAX_REFINE_STEPS`].
    pub steps: u32,
    /// The damping of every moved parameter: finite, positive, at most 1e30.
    pub damping: f32,
}

/// One extension record as stored: a name, whether a reader that does not know it must
/// refuse the model (`required`) or may skip it, and its postcard-encoded body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    /// The record's name.
    pub name: String,
    /// A reader that does not know this record must refuse the model.
    pub required: bool,
    /// The record's body (postcard), skipped whole by a reader that does not need it.
    pub body: Vec<u8>,
}

/// What the extension records of a model hold, decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extensions {
    /// [`NORMALIZE`]: standardisation of inputs and outputs.
    pub normalizer: Option<Normalizer>,
    /// [`SOLVER`]: how the model adapts, if not by SGD.
    pub solver: Option<Solver>,
    /// [`REFINE`]: Gauss-Newton steps after the SGD ones, if the model was meta-trained
    /// through them.
    pub refine: Option<Refine>,
    /// Optional records this build does not know, kept so that a model is written back
    /// as it was read.
    pub unknown: Vec<Extension>,
}

impl Extensions {
    /// The records to store, known ones first.
    fn records(&self) -> Vec<Extension> {
        let mut out = Vec::new();
        if let Some(n) = &self.normalizer {
            out.push(Extension {
                name: NORMALIZE.into(),
                required: true,
                body: postcard::to_allocvec(n).expect("postcard encoding into a Vec cannot fail"),
            });
        }
        if let Some(sv) = &self.solver {
            out.push(Extension {
                name: SOLVER.into(),
                required: true,
                body: postcard::to_allocvec(sv).expect("postcard encoding into a Vec cannot fail"),
            });
        }
        if let Some(r) = &self.refine {
            out.push(Extension {
                name: REFINE.into(),
                required: true,
                body: postcard::to_allocvec(r).expect("postcard encoding into a Vec cannot fail"),
            });
        }
        out.extend(self.unknown.iter().cloned());
        out
    }

    /// Decodes stored records: known ones are parsed (each from its own body alone, which
    /// it must fill exactly), unknown optional ones kept (copied with fallible
    /// allocation), an unknown required one refuses the model.
    fn from_records(records: Vec<RawExtension<'_>>) -> Result<Self, FormatError> {
        let mut ext = Extensions::default();
        for r in records {
            if r.name.len() > MAX_EXTENSION_NAME {
                return Err(FormatError::Body(format!(
                    "an extension record name of {} bytes (at most {MAX_EXTENSION_NAME})",
                    r.name.len()
                )));
            }
            match r.name {
                NORMALIZE => {
                    if ext.normalizer.is_some() {
                        return Err(bad_extension(NORMALIZE, "stored twice".into()));
                    }
                    let failures = fallible::FAILURES.load(core::sync::atomic::Ordering::Relaxed);
                    let (n, rest): (Normalizer, &[u8]) = postcard::take_from_bytes(r.body)
                        .map_err(|e| {
                            if fallible::FAILURES.load(core::sync::atomic::Ordering::Relaxed)
                                != failures
                            {
                                FormatError::OutOfMemory {
                                    bytes: r.body.len() as u64,
                                }
                            } else {
                                bad_extension(NORMALIZE, e.to_string())
                            }
                        })?;
                    if !rest.is_empty() {
                        return Err(bad_extension(
                            NORMALIZE,
                            format!("{} bytes after its statistics", rest.len()),
                        ));
                    }
                    ext.normalizer = Some(n);
                }
                SOLVER => settings(SOLVER, r.body, &mut ext.solver)?,
                REFINE => settings(REFINE, r.body, &mut ext.refine)?,
                _ if r.required => {
                    return Err(FormatError::UnknownExtension {
                        name: r.name.into(),
                    });
                }
                _ => {
                    let mut body = Vec::new();
                    body.try_reserve_exact(r.body.len())
                        .map_err(|_| FormatError::OutOfMemory {
                            bytes: r.body.len() as u64,
                        })?;
                    body.extend_from_slice(r.body);
                    ext.unknown.push(Extension {
                        name: r.name.into(),
                        required: false,
                        body,
                    });
                }
            }
        }
        Ok(ext)
    }
}

/// Decodes a small settings record (`solver`, `refine`) into `slot`: stored once, its body
/// exactly one value.
fn settings<'a, T: Deserialize<'a>>(
    name: &'static str,
    body: &'a [u8],
    slot: &mut Option<T>,
) -> Result<(), FormatError> {
    if slot.is_some() {
        return Err(bad_extension(name, "stored twice".into()));
    }
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| bad_extension(name, e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad_extension(
            name,
            format!("{} bytes after its settings", rest.len()),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// At most this many extension records in a model, with names of at most
/// [`MAX_EXTENSION_NAME`] bytes: a file of millions of empty records is refused, not
/// expanded in memory.
pub const MAX_EXTENSIONS: usize = 64;
/// The longest extension record name.
pub const MAX_EXTENSION_NAME: usize = 64;

/// An extension record as decoded: borrowed from the file's bytes (nothing is copied
/// before the record is known to be wanted).
#[derive(Deserialize)]
struct RawExtension<'a> {
    #[serde(borrow)]
    name: &'a str,
    required: bool,
    #[serde(borrow)]
    body: &'a [u8],
}

/// The list of extension records: the first [`MAX_EXTENSIONS`] + 1 (the rest are read,
/// not kept), and how many there were.
struct RawExtensions<'a>(Vec<RawExtension<'a>>, usize);

impl<'de: 'a, 'a> Deserialize<'de> for RawExtensions<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawExtensions<'de>;
            fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                f.write_str("a list of extension records")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let (mut out, mut count) = (Vec::new(), 0usize);
                while let Some(r) = seq.next_element::<RawExtension<'de>>()? {
                    count += 1;
                    if out.len() > MAX_EXTENSIONS {
                        continue;
                    }
                    if out.len() == out.capacity() && out.try_reserve(8).is_err() {
                        return Err(serde::de::Error::custom("out of memory"));
                    }
                    out.push(r);
                }
                Ok(RawExtensions(out, count))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The CRC-32 trailer of a model file (its last four bytes): the model's fingerprint.
/// `bytes` must be a whole file, as [`ModelRecord::from_bytes`] accepted it.
pub fn trailer(bytes: &[u8]) -> u32 {
    match bytes.len().checked_sub(TRAILER_LEN) {
        Some(at) => u32::from_le_bytes(bytes[at..].try_into().expect("4 bytes")),
        None => 0,
    }
}

fn bad_extension(name: &'static str, message: String) -> FormatError {
    FormatError::BadExtension { name, message }
}

/// The body of a version 1 file, and the start of every later one.
#[derive(Deserialize)]
struct BodyV1 {
    info: ModelInfo,
    net: NetSpec,
    layers: Vec<LayerRecord>,
}

/// The body as written (version [`FORMAT_VERSION`]): borrowed, so that encoding and
/// fingerprinting copy nothing but the (small) extension records.
#[derive(Serialize)]
struct Body<'a> {
    info: &'a ModelInfo,
    net: &'a NetSpec,
    layers: &'a [LayerRecord],
    extensions: Vec<Extension>,
}

/// Decoding the parameter vectors with fallible allocation: a model that does not fit in
/// memory is [`FormatError::OutOfMemory`], not an abort. serde's own `Vec` grows with
/// infallible allocation.
mod fallible {
    use alloc::vec::Vec;
    use core::fmt;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

    /// Allocation failures while decoding, in all threads: `from_bytes` tells a failed
    /// allocation from a malformed body by a change of this count.
    pub(super) static FAILURES: AtomicUsize = AtomicUsize::new(0);

    /// Reserves room for one more element, counting a failure.
    fn grow<T, E: de::Error>(v: &mut Vec<T>) -> Result<(), E> {
        if v.len() == v.capacity() {
            // Doubling, as Vec does, but fallible.
            let more = v.capacity().max(16);
            if v.try_reserve(more).is_err() {
                FAILURES.fetch_add(1, Ordering::Relaxed);
                return Err(E::custom("out of memory"));
            }
        }
        Ok(())
    }

    struct Floats;
    impl<'de> Visitor<'de> for Floats {
        type Value = Vec<f32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence of f32")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut v = Vec::new();
            while let Some(x) = {
                grow(&mut v)?;
                seq.next_element::<f32>()?
            } {
                v.push(x);
            }
            Ok(v)
        }
    }
    impl<'de> DeserializeSeed<'de> for Floats {
        type Value = Vec<f32>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<f32>, D::Error> {
            d.deserialize_seq(Floats)
        }
    }

    struct Vectors;
    impl<'de> Visitor<'de> for Vectors {
        type Value = Vec<Vec<f32>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence of f32 sequences")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Vec<f32>>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = {
                grow(&mut out)?;
                seq.next_element_seed(Floats)?
            } {
                out.push(v);
            }
            Ok(out)
        }
    }

    /// `deserialize_with` for a `Vec<f32>` field.
    pub(super) fn floats<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        d.deserialize_seq(Floats)
    }

    /// `deserialize_with` for a `Vec<Vec<f32>>` field.
    pub(super) fn vectors<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f32>>, D::Error> {
        d.deserialize_seq(Vectors)
    }
}

/// The body length a (checked) header declares.
fn len_of_body(bytes: &[u8]) -> u64 {
    u32::from_le_bytes(bytes[8..12].try_into().expect("a checked header")) as u64
}

/// Checks a model file's 12-byte header (magic, version, flags, the body length against
/// [`limits::MAX_BODY_BYTES`]) and returns the length of the whole file it declares.
fn file_len(header: &[u8; HEADER_LEN]) -> Result<usize, FormatError> {
    let magic: [u8; 4] = header[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes([header[6], header[7]]);
    if flags != 0 {
        return Err(FormatError::UnknownFlags(flags));
    }
    let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if len as u64 > limits::MAX_BODY_BYTES {
        return Err(ShapeError::OverLimit {
            what: "model body length (bytes, from the header)".into(),
            value: Some(len as u128),
            limit: limits::MAX_BODY_BYTES,
        }
        .into());
    }
    Ok(HEADER_LEN + len as usize + TRAILER_LEN)
}

/// Reads a model file, checking its header before the body: a file that is not a model,
/// or declares a body over the limit, is refused after 12 bytes (a device such as
/// /dev/zero is never read to exhaustion), and the body buffer is allocated fallibly.
/// The bytes still go through [`ModelRecord::from_bytes`].
#[cfg(feature = "std")]
pub fn read_model_file(path: &std::path::Path) -> Result<Vec<u8>, crate::error::Error> {
    use crate::error::Error;
    use std::io::Read;
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    if got >= 4 && header[0..4] != MAGIC {
        return Err(FormatError::BadMagic {
            found: header[0..4].try_into().expect("4 bytes"),
        }
        .into());
    }
    if got < HEADER_LEN {
        return Err(FormatError::Truncated {
            needed: HEADER_LEN + TRAILER_LEN,
            got,
        }
        .into());
    }
    let total = file_len(&header)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(total)
        .map_err(|_| Error::OutOfMemory {
            what: "a model file",
            bytes: total as u128,
        })?;
    bytes.extend_from_slice(&header);
    // One byte more than declared, to notice trailing bytes without reading them all.
    (&mut file)
        .take((total - HEADER_LEN + 1) as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() < total {
        return Err(FormatError::Truncated {
            needed: total,
            got: bytes.len(),
        }
        .into());
    }
    if bytes.len() > total {
        let extra = match file.metadata() {
            Ok(m) if m.is_file() => (m.len() as usize).saturating_sub(total),
            _ => 1,
        };
        return Err(FormatError::TrailingBytes(extra.max(1)).into());
    }
    Ok(bytes)
}

impl ModelRecord {
    /// Checks that the parameters have the shapes the architecture implies and are finite.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.info.inner_steps as u64 > limits::MAX_INNER_STEPS {
            return Err(ShapeError::OverLimit {
                what: "inner_steps (the model's default inner steps)".into(),
                value: Some(self.info.inner_steps as u128),
                limit: limits::MAX_INNER_STEPS,
            }
            .into());
        }
        let shapes = self.net.shapes()?;
        if self.layers.len() != shapes.params.len() {
            return Err(ShapeError::Mismatch {
                what: "number of parameter layers".into(),
                expected: shapes.params.len().to_string(),
                got: self.layers.len().to_string(),
            }
            .into());
        }
        for (i, (rec, layout)) in self.layers.iter().zip(&shapes.params).enumerate() {
            let mismatch = |what: String, expected: usize, got: usize| {
                FormatError::from(
                    ShapeError::Mismatch {
                        what,
                        expected: expected.to_string(),
                        got: got.to_string(),
                    }
                    .in_layer(i),
                )
            };
            if rec.shared.len() != layout.shared.len() {
                return Err(mismatch(
                    "number of symmetry matrices".into(),
                    layout.shared.len(),
                    rec.shared.len(),
                ));
            }
            for (j, (m, [r, c])) in rec.shared.iter().zip(&layout.shared).enumerate() {
                if m.len() != r * c {
                    return Err(mismatch(
                        format!("elements of symmetry matrix {j} ({r} x {c})"),
                        r * c,
                        m.len(),
                    ));
                }
            }
            if rec.adapted0.len() != layout.adapted.len() {
                return Err(mismatch(
                    "number of adapted vectors".into(),
                    layout.adapted.len(),
                    rec.adapted0.len(),
                ));
            }
            for (j, (v, n)) in rec.adapted0.iter().zip(&layout.adapted).enumerate() {
                if v.len() != *n {
                    return Err(mismatch(
                        format!("length of adapted vector {j}"),
                        *n,
                        v.len(),
                    ));
                }
            }
            let finite = |xs: &[f32]| xs.iter().all(|x| x.is_finite());
            if !rec.shared.iter().all(|m| finite(m)) {
                return Err(FormatError::NonFinite(format!("layer {i} symmetry matrix")));
            }
            if !rec.adapted0.iter().all(|v| finite(v)) {
                return Err(FormatError::NonFinite(format!(
                    "layer {i} initial parameters"
                )));
            }
            if !rec.lr.is_finite() {
                return Err(FormatError::NonFinite(format!("layer {i} learning rate")));
            }
        }
        if let Some(sv) = &self.ext.solver {
            if sv.log_damping.len() != self.net.layers.len() {
                return Err(bad_extension(
                    SOLVER,
                    format!(
                        "{} dampings for {} layers",
                        sv.log_damping.len(),
                        self.net.layers.len()
                    ),
                ));
            }
            if !sv
                .log_damping
                .iter()
                .all(|d| d.is_finite() && d.abs() <= 30.0)
            {
                return Err(bad_extension(
                    SOLVER,
                    "log-dampings must be finite and within +-30".into(),
                ));
            }
        }
        if let Some(r) = &self.ext.refine {
            let bad = |m: &str| Err(bad_extension(REFINE, m.into()));
            if !(1..=MAX_REFINE_STEPS).contains(&r.steps) {
                return Err(bad_extension(
                    REFINE,
                    format!("{} Gauss-Newton steps (1 to {MAX_REFINE_STEPS})", r.steps),
                ));
            }
            if !(r.damping.is_finite() && r.damping > 0.0 && r.damping <= 1e30) {
                return bad("the damping must be finite, positive and at most 1e30");
            }
            if self.net.loss != crate::spec::Loss::Mse {
                return bad("Gauss-Newton refinement is for mean squared error models");
            }
            if self.ext.solver.is_some() {
                return bad(
                    "a model that adapts by Gauss-Newton (solver record) has no SGD steps to refine",
                );
            }
        }
        if let Some(n) = &self.ext.normalizer {
            let bad = |m| bad_extension(NORMALIZE, m);
            if let Some(s) = &n.input {
                s.check("input", shapes.activations[0].numel())
                    .map_err(bad)?;
            }
            if let Some(s) = &n.output {
                if self.net.loss != crate::spec::Loss::Mse {
                    return Err(bad(
                        "output statistics, but the loss is not mean squared error".into(),
                    ));
                }
                let out = shapes.activations.last().expect("non-empty").numel();
                s.check("output", out).map_err(bad)?;
            }
        }
        Ok(())
    }

    fn body(&self) -> Body<'_> {
        Body {
            info: &self.info,
            net: &self.net,
            layers: &self.layers,
            extensions: self.ext.records(),
        }
    }

    /// Encodes the record as a complete model file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body =
            postcard::to_allocvec(&self.body()).expect("postcard encoding into a Vec cannot fail");
        let len = u32::try_from(body.len()).expect("model body over 4 GiB");
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&[0; TRAILER_LEN]);
        crate::frame::seal(&mut out);
        out
    }

    /// The CRC-32 trailer [`ModelRecord::to_bytes`] would write, computed by streaming the
    /// encoding through the hash: no copy of the model is made (a model near the size limit
    /// must not need twice its memory to be fingerprinted).
    pub fn file_crc(&self) -> u32 {
        use postcard::ser_flavors::Flavor;
        struct Count(usize);
        impl Flavor for Count {
            type Output = usize;
            fn try_push(&mut self, _: u8) -> postcard::Result<()> {
                self.0 += 1;
                Ok(())
            }
            fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
                self.0 += data.len();
                Ok(())
            }
            fn finalize(self) -> postcard::Result<usize> {
                Ok(self.0)
            }
        }
        struct Crc(crc32fast::Hasher);
        impl Flavor for Crc {
            type Output = u32;
            fn try_push(&mut self, b: u8) -> postcard::Result<()> {
                self.0.update(&[b]);
                Ok(())
            }
            fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
                self.0.update(data);
                Ok(())
            }
            fn finalize(self) -> postcard::Result<u32> {
                Ok(self.0.finalize())
            }
        }
        let body = self.body();
        let len =
            postcard::serialize_with_flavor(&body, Count(0)).expect("counting bytes cannot fail");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&MAGIC);
        hasher.update(&FORMAT_VERSION.to_le_bytes());
        hasher.update(&0u16.to_le_bytes());
        hasher.update(&(len as u32).to_le_bytes());
        postcard::serialize_with_flavor(&body, Crc(hasher)).expect("hashing bytes cannot fail")
    }

    /// Decodes and validates a model file. Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let truncated = |needed: usize| FormatError::Truncated {
            needed,
            got: bytes.len(),
        };
        if bytes.len() < 4 {
            return Err(truncated(HEADER_LEN + TRAILER_LEN));
        }
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        if bytes.len() < HEADER_LEN {
            return Err(truncated(HEADER_LEN + TRAILER_LEN));
        }
        let needed = file_len(bytes[..HEADER_LEN].try_into().expect("12 bytes"))?;
        let end = needed - TRAILER_LEN;
        if bytes.len() < needed {
            return Err(truncated(needed));
        }
        if bytes.len() > needed {
            return Err(FormatError::TrailingBytes(bytes.len() - needed));
        }
        crate::frame::unseal(bytes)
            .map_err(|(stored, computed)| FormatError::Checksum { stored, computed })?;
        let failures = fallible::FAILURES.load(core::sync::atomic::Ordering::Relaxed);
        let decode_error = |e: postcard::Error| {
            if fallible::FAILURES.load(core::sync::atomic::Ordering::Relaxed) != failures {
                FormatError::OutOfMemory {
                    bytes: len_of_body(bytes),
                }
            } else {
                FormatError::Body(e.to_string())
            }
        };
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let (v1, mut rest): (BodyV1, &[u8]) =
            postcard::take_from_bytes(&bytes[HEADER_LEN..end]).map_err(decode_error)?;
        let mut ext = Extensions::default();
        if version >= 2 {
            let (records, after): (RawExtensions, &[u8]) =
                postcard::take_from_bytes(rest).map_err(decode_error)?;
            if records.1 > MAX_EXTENSIONS {
                return Err(FormatError::Body(format!(
                    "{} extension records (at most {MAX_EXTENSIONS})",
                    records.1
                )));
            }
            ext = Extensions::from_records(records.0)?;
            rest = after;
        }
        let record = ModelRecord {
            info: v1.info,
            net: v1.net,
            layers: v1.layers,
            ext,
        };
        if !rest.is_empty() {
            return Err(FormatError::Body(format!(
                "{} bytes left after the model record",
                rest.len()
            )));
        }
        record.validate()?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Activation, FeatureShape, LayerSpec, Loss, Op};
    use crate::test_rng::Rng;
    use alloc::vec;

    fn record(rng: &mut Rng) -> ModelRecord {
        let net = NetSpec {
            input: FeatureShape(vec![7]),
            layers: vec![
                LayerSpec {
                    op: Op::ShareLinear {
                        inputs: 7,
                        outputs: 5,
                        k: 3,
                        bias: true,
                    },
                    activation: Activation::Relu,
                },
                LayerSpec {
                    op: Op::Linear {
                        inputs: 5,
                        outputs: 2,
                        bias: false,
                    },
                    activation: Activation::Identity,
                },
            ],
            loss: Loss::Mse,
        };
        let mut vals = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let layers = vec![
            LayerRecord {
                shared: vec![vals(35 * 3)],
                adapted0: vec![vals(3), vals(5)],
                lr: 0.1,
            },
            LayerRecord {
                shared: vec![],
                adapted0: vec![vals(10)],
                lr: 0.25,
            },
        ];
        ModelRecord {
            info: ModelInfo {
                name: "test".into(),
                task_family: "rank1".into(),
                inner_steps: 1,
                trainer_version: "0.1.0".into(),
            },
            net,
            layers,
            ext: Extensions::default(),
        }
    }

    fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
        let end = bytes.len() - TRAILER_LEN;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let rec = record(&mut Rng::new(1));
        let bytes = rec.to_bytes();
        // The streamed fingerprint is the trailer the file ends with.
        let trailer = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(rec.file_crc(), trailer);
        let back = ModelRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.to_bytes(), bytes);
        let bits = |r: &ModelRecord| -> Vec<u32> {
            r.layers
                .iter()
                .flat_map(|l| {
                    l.shared
                        .iter()
                        .chain(&l.adapted0)
                        .flatten()
                        .map(|x| x.to_bits())
                })
                .collect()
        };
        assert_eq!(bits(&back), bits(&rec));
    }

    #[test]
    fn each_corruption_has_its_error() {
        let rec = record(&mut Rng::new(2));
        let good = rec.to_bytes();

        let e = ModelRecord::from_bytes(&good[..good.len() - 1]).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
        let e = ModelRecord::from_bytes(&good[..6]).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "{e}");

        let mut bad = good.clone();
        bad[0] = b'X';
        let e = ModelRecord::from_bytes(&bad).unwrap_err();
        assert!(matches!(e, FormatError::BadMagic { .. }), "{e}");

        let mut bad = good.clone();
        bad[4..6].copy_from_slice(&3u16.to_le_bytes());
        let e = ModelRecord::from_bytes(&with_crc(bad)).unwrap_err();
        assert_eq!(
            e,
            FormatError::UnsupportedVersion {
                found: 3,
                supported: 2
            }
        );
        assert!(e.to_string().contains("upgrade"), "{e}");

        let mut bad = good.clone();
        bad[6] = 1;
        let e = ModelRecord::from_bytes(&with_crc(bad)).unwrap_err();
        assert_eq!(e, FormatError::UnknownFlags(1));

        let mut bad = good.clone();
        bad[HEADER_LEN + 20] ^= 0x10;
        let e = ModelRecord::from_bytes(&bad).unwrap_err();
        assert!(matches!(e, FormatError::Checksum { .. }), "{e}");

        let mut bad = good.clone();
        bad.push(0);
        let e = ModelRecord::from_bytes(&bad).unwrap_err();
        assert_eq!(e, FormatError::TrailingBytes(1));

        // U with one row too few: rows != out * in.
        let mut short = rec.clone();
        short.layers[0].shared[0].truncate(34 * 3);
        let e = ModelRecord::from_bytes(&short.to_bytes()).unwrap_err();
        assert!(matches!(e, FormatError::Shape(_)), "{e}");
        assert!(e.to_string().contains("symmetry matrix"), "{e}");

        // A layer whose input does not match the previous output.
        let mut wrong = rec.clone();
        wrong.net.layers[1].op = Op::Linear {
            inputs: 4,
            outputs: 2,
            bias: false,
        };
        wrong.layers[1].adapted0[0].truncate(8);
        let e = ModelRecord::from_bytes(&wrong.to_bytes()).unwrap_err();
        assert!(matches!(e, FormatError::Shape(_)), "{e}");

        let mut nan = rec.clone();
        nan.layers[1].adapted0[0][3] = f32::NAN;
        let e = ModelRecord::from_bytes(&nan.to_bytes()).unwrap_err();
        assert!(matches!(e, FormatError::NonFinite(_)), "{e}");
        let mut inf = rec;
        inf.layers[0].lr = f32::INFINITY;
        let e = ModelRecord::from_bytes(&inf.to_bytes()).unwrap_err();
        assert!(matches!(e, FormatError::NonFinite(_)), "{e}");
    }

    /// A version 1 file, as the first release wrote it: the body without extensions.
    fn v1_bytes(rec: &ModelRecord) -> Vec<u8> {
        #[derive(Serialize)]
        struct V1<'a>(&'a ModelInfo, &'a NetSpec, &'a [LayerRecord]);
        let body = postcard::to_allocvec(&V1(&rec.info, &rec.net, &rec.layers)).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&[0; 4]);
        with_crc(out)
    }

    fn normalizer(inputs: usize, outputs: usize) -> Normalizer {
        let stats = |n: usize| Standardize {
            mean: (0..n).map(|i| i as f32 - 2.0).collect(),
            scale: (0..n).map(|i| 0.5 + i as f32).collect(),
        };
        Normalizer {
            input: Some(stats(inputs)),
            output: Some(stats(outputs)),
        }
    }

    #[test]
    fn version_1_files_still_load() {
        let rec = record(&mut Rng::new(11));
        let back = ModelRecord::from_bytes(&v1_bytes(&rec)).unwrap();
        assert_eq!(back, rec);
        // Written back, it is a version 2 file with no extension records.
        let v2 = back.to_bytes();
        assert_eq!(u16::from_le_bytes([v2[4], v2[5]]), 2);
        assert_eq!(ModelRecord::from_bytes(&v2).unwrap(), rec);
    }

    #[test]
    fn a_refine_record_round_trips_and_bad_ones_are_refused() {
        let mut rec = record(&mut Rng::new(13));
        rec.net.loss = Loss::Mse;
        rec.ext.refine = Some(Refine {
            steps: 2,
            damping: 10.0,
        });
        let bytes = rec.to_bytes();
        let back = ModelRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.to_bytes(), bytes);
        // Required: a reader that does not know it refuses the model (here: stored under
        // a name this reader does not know, the same bytes).
        let mut renamed = rec.clone();
        renamed.ext.refine = None;
        renamed.ext.unknown.push(Extension {
            name: "refine2".into(),
            required: true,
            body: postcard::to_allocvec(&Refine {
                steps: 2,
                damping: 10.0,
            })
            .unwrap(),
        });
        assert!(matches!(
            ModelRecord::from_bytes(&renamed.to_bytes()),
            Err(FormatError::UnknownExtension { .. })
        ));
        let refused = |edit: &dyn Fn(&mut ModelRecord), want: &str| {
            let mut bad = rec.clone();
            edit(&mut bad);
            let e = ModelRecord::from_bytes(&bad.to_bytes()).unwrap_err();
            assert!(
                matches!(e, FormatError::BadExtension { name: REFINE, .. }),
                "{e}"
            );
            assert!(e.to_string().contains(want), "{e}");
        };
        let set = |steps: u32, damping: f32| {
            move |r: &mut ModelRecord| r.ext.refine = Some(Refine { steps, damping })
        };
        refused(&set(0, 10.0), "0 Gauss-Newton steps");
        refused(&set(MAX_REFINE_STEPS + 1, 10.0), "Gauss-Newton steps (1 to");
        for d in [0.0, -1.0, f32::NAN, f32::INFINITY, 2e30] {
            refused(&set(1, d), "damping");
        }
        refused(
            &|r: &mut ModelRecord| r.net.loss = Loss::CrossEntropy,
            "mean squared error",
        );
        refused(
            &|r: &mut ModelRecord| {
                r.ext.solver = Some(Solver {
                    log_damping: vec![0.0; r.net.layers.len()],
                })
            },
            "solver record",
        );
        // Stored twice, or with bytes after its settings.
        let mut twice = rec.clone();
        let body = postcard::to_allocvec(rec.ext.refine.as_ref().unwrap()).unwrap();
        twice.ext.unknown.push(Extension {
            name: REFINE.into(),
            required: true,
            body: body.clone(),
        });
        let e = ModelRecord::from_bytes(&twice.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("stored twice"), "{e}");
        let mut padded = rec.clone();
        padded.ext.refine = None;
        padded.ext.unknown.push(Extension {
            name: REFINE.into(),
            required: true,
            body: [body, vec![0, 0]].concat(),
        });
        let e = ModelRecord::from_bytes(&padded.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("2 bytes after"), "{e}");
    }

    #[test]
    fn extension_records_round_trip_or_refuse_by_name() {
        let mut rec = record(&mut Rng::new(12));
        rec.ext.normalizer = Some(normalizer(7, 2));
        rec.ext.unknown.push(Extension {
            name: "from-the-future".into(),
            required: false,
            body: vec![1, 2, 3],
        });
        let bytes = rec.to_bytes();
        let trailer = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(rec.file_crc(), trailer);
        let back = ModelRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.to_bytes(), bytes);

        // A required record this reader does not know refuses the model, by name.
        let mut future = rec.clone();
        future.ext.unknown[0].required = true;
        let e = ModelRecord::from_bytes(&future.to_bytes()).unwrap_err();
        assert_eq!(
            e,
            FormatError::UnknownExtension {
                name: "from-the-future".into()
            }
        );
        assert_eq!(
            crate::error::Error::from(e).kind(),
            crate::error::ErrorKind::Version
        );

        // Statistics that do not fit the model, or are not positive.
        let mut wrong = rec.clone();
        wrong.ext.normalizer = Some(normalizer(6, 2));
        let e = ModelRecord::from_bytes(&wrong.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("input statistics for 6"), "{e}");
        let mut zero = rec.clone();
        zero.ext
            .normalizer
            .as_mut()
            .unwrap()
            .output
            .as_mut()
            .unwrap()
            .scale[1] = 0.0;
        let e = ModelRecord::from_bytes(&zero.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
        let mut ce = rec.clone();
        ce.net.loss = Loss::CrossEntropy;
        let e = ModelRecord::from_bytes(&ce.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("not mean squared error"), "{e}");
        // A garbled body of a known record.
        let mut garbled = rec;
        garbled.ext.normalizer = None;
        garbled.ext.unknown = vec![Extension {
            name: NORMALIZE.into(),
            required: true,
            body: vec![7; 3],
        }];
        let e = ModelRecord::from_bytes(&garbled.to_bytes()).unwrap_err();
        assert!(matches!(e, FormatError::BadExtension { .. }), "{e}");

        // A valid normaliser followed by junk inside its own body.
        let mut padded = garbled.clone();
        let mut body = postcard::to_allocvec(&normalizer(7, 2)).unwrap();
        body.extend_from_slice(&[0, 0, 0]);
        padded.ext.unknown[0].body = body;
        let e = ModelRecord::from_bytes(&padded.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("3 bytes after"), "{e}");

        // Too many records, or too long a name: refused before anything is kept.
        let mut many = garbled.clone();
        many.ext.unknown = (0..MAX_EXTENSIONS + 1)
            .map(|i| Extension {
                name: format!("x{i}"),
                required: false,
                body: Vec::new(),
            })
            .collect();
        let e = ModelRecord::from_bytes(&many.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("65 extension records"), "{e}");
        many.ext.unknown.truncate(MAX_EXTENSIONS);
        assert_eq!(ModelRecord::from_bytes(&many.to_bytes()).unwrap(), many);
        let mut long = garbled;
        long.ext.unknown[0].name = "n".repeat(MAX_EXTENSION_NAME + 1);
        long.ext.unknown[0].required = false;
        let e = ModelRecord::from_bytes(&long.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("name of 65 bytes"), "{e}");
    }

    #[test]
    fn standardize_inverts() {
        let s = normalizer(3, 1).input.unwrap();
        let raw = [1.0f32, -4.0, 9.5, 0.0, 2.0, -1.0];
        let mut v = raw;
        s.apply(&mut v);
        assert_eq!(v[0], (1.0 + 2.0) / 0.5);
        s.invert(&mut v);
        for (a, b) in v.iter().zip(raw) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let good = record(&mut Rng::new(3)).to_bytes();
        for len in 0..good.len() {
            assert!(
                ModelRecord::from_bytes(&good[..len]).is_err(),
                "length {len}"
            );
        }
    }

    #[test]
    fn random_byte_flips_never_panic() {
        let good = record(&mut Rng::new(4)).to_bytes();
        let mut rng = Rng::new(5);
        for round in 0..3000 {
            let mut bad = good.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bad.len());
                bad[at] ^= 1 << rng.below(8);
            }
            if bad == good {
                continue; // two flips cancelled out
            }
            // Raw flips: the checksum (or the header checks) must catch every one.
            assert!(ModelRecord::from_bytes(&bad).is_err(), "round {round}");
            // With the checksum recomputed, the body decoder and the validation see the
            // damage: any outcome but a panic is acceptable.
            let _ = ModelRecord::from_bytes(&with_crc(bad));
        }
    }

    #[test]
    fn inner_steps_and_body_length_are_bounded() {
        let mut rec = record(&mut Rng::new(7));
        rec.info.inner_steps = 1001;
        let e = ModelRecord::from_bytes(&rec.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("inner_steps"), "{e}");
        rec.info.inner_steps = 1000;
        ModelRecord::from_bytes(&rec.to_bytes()).unwrap();

        // A header declaring a 4 GiB body is refused from its 12 bytes.
        let mut bytes = rec.to_bytes();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = ModelRecord::from_bytes(&bytes).unwrap_err();
        assert!(e.to_string().contains("body length"), "{e}");
    }

    #[cfg(feature = "std")]
    #[test]
    fn files_are_read_header_first() {
        extern crate std;
        use crate::error::Error;
        use std::path::Path;
        let dir = std::env::temp_dir().join(format!("msr-format-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = record(&mut Rng::new(8)).to_bytes();
        let path = dir.join("m.msr");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(read_model_file(&path).unwrap(), good);
        let mut long = good.clone();
        long.extend_from_slice(&[0; 5]);
        std::fs::write(&path, &long).unwrap();
        let e = read_model_file(&path).unwrap_err();
        assert!(
            matches!(e, Error::Format(FormatError::TrailingBytes(5))),
            "{e}"
        );
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let e = read_model_file(&path).unwrap_err();
        assert!(
            matches!(e, Error::Format(FormatError::Truncated { .. })),
            "{e}"
        );
        // A device is refused from its first bytes, not read to exhaustion.
        let e = read_model_file(Path::new("/dev/zero")).unwrap_err();
        assert!(
            matches!(e, Error::Format(FormatError::BadMagic { .. })),
            "{e}"
        );
        let e = read_model_file(&dir.join("missing.msr")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn huge_declared_sizes_are_refused_not_allocated() {
        let mut rec = record(&mut Rng::new(6));
        rec.net.input = FeatureShape(vec![usize::MAX / 2, 3]);
        let e = ModelRecord::from_bytes(&rec.to_bytes()).unwrap_err();
        assert!(matches!(e, FormatError::Shape(_)), "{e}");
    }
}
