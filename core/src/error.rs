//! Typed errors, one enum per concern, joined in [`Error`].

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};

use thiserror::Error;

/// A network or its data does not have the shapes it claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShapeError {
    /// Two shapes that must agree do not.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        /// What was being checked.
        what: String,
        /// What it had to be.
        expected: String,
        /// What it was.
        got: String,
    },
    /// A layer description is impossible on its own (zero sizes, kernel larger than input...).
    #[error("invalid layer: {0}")]
    InvalidLayer(String),
    /// A size over one of the documented limits ([`crate::spec::limits`]), or a product of
    /// sizes that overflowed.
    #[error("{what} is {}, over the limit of {limit}", over(.value))]
    OverLimit {
        /// The field or product, e.g. "convolution padding 2147483648 (dimension 0)".
        what: String,
        /// Its value; `None` when computing it overflowed.
        value: Option<u128>,
        /// The limit.
        limit: u64,
    },
    /// A size computed from a caller's arguments does not fit in a `usize` (e.g. an `n`
    /// that wraps `n * input_len`).
    #[error("{what} overflows: the size does not fit in a size_t (is n right?)")]
    Overflow {
        /// What was being sized, with its factors.
        what: String,
    },
    /// The error of one layer, with its index.
    #[error("layer {index}: {source}")]
    InLayer {
        /// Index of the layer in the network.
        index: usize,
        /// What is wrong with it.
        source: Box<ShapeError>,
    },
}

/// A loss as a person reads it: plain in [1e-4, 1e6), in scientific notation elsewhere.
fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:.4e}")
    }
}

fn over(value: &Option<u128>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "too large to compute (the product overflows)".into(),
    }
}

/// A size computed from a caller's arguments overflowed: `n` examples of `per` floats.
pub fn overflow(what: &str, n: usize, per: usize) -> ShapeError {
    ShapeError::Overflow {
        what: format!("{what}: {n} examples x {per} values"),
    }
}

impl ShapeError {
    /// Attaches the index of the layer the error comes from.
    pub fn in_layer(self, index: usize) -> Self {
        ShapeError::InLayer {
            index,
            source: Box::new(self),
        }
    }
}

/// A model file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// Fewer bytes than the header, the declared body and the trailer need.
    #[error("model file truncated: need {needed} bytes, have {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The file does not start with `MSR\0`.
    #[error("not an msr model file (bad magic {found:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The file's major format version is not one this reader knows.
    #[error(
        "unsupported model format version {found} (this reader supports versions 1 to {supported}; a newer msr wrote it: upgrade the reader)"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// The newest version this build reads (it reads every version from 1).
        supported: u16,
    },
    /// The model needs an extension record this reader does not know: it would predict
    /// wrongly without it (optional extensions are skipped instead).
    #[error(
        "the model needs extension record '{name}', which this reader does not know (a newer msr wrote it: upgrade the reader)"
    )]
    UnknownExtension {
        /// The extension's name.
        name: String,
    },
    /// An extension record this reader knows is malformed or does not fit the model.
    #[error("extension record '{name}': {message}")]
    BadExtension {
        /// The extension's name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The header has flags this reader does not understand.
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    /// Bytes follow the checksum trailer.
    #[error("{0} unexpected bytes after the end of the model")]
    TrailingBytes(usize),
    /// The CRC-32 of the body does not match the trailer: the file is corrupted.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (file corrupted)")]
    Checksum {
        /// CRC stored in the file.
        stored: u32,
        /// CRC of the body as read.
        computed: u32,
    },
    /// The body is not a valid postcard encoding of a model.
    #[error("malformed model body: {0}")]
    Body(String),
    /// The shapes in the file are inconsistent with each other.
    #[error("invalid model: {0}")]
    Shape(#[from] ShapeError),
    /// A parameter holds NaN or infinity.
    #[error("non-finite value in {0}")]
    NonFinite(String),
    /// Memory for the decoded parameters could not be allocated.
    #[error("out of memory decoding a model body of {bytes} bytes")]
    OutOfMemory {
        /// Bytes of the model body.
        bytes: u64,
    },
}

/// A saved session state (`save_state`) could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    /// The buffer is not the length a state of this model has.
    #[error("saved state has {got} bytes, a state of this model has {needed}")]
    Length {
        /// Bytes a state of this model has.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The buffer does not start with `MSRS`.
    #[error("not a saved session state (bad magic {found:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A state version this library does not read.
    #[error("unsupported saved state version {found} (this library reads {supported})")]
    UnsupportedVersion {
        /// Version in the state.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The CRC-32 does not match: the state was corrupted.
    #[error(
        "saved state checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (state corrupted)"
    )]
    Checksum {
        /// CRC stored in the state.
        stored: u32,
        /// CRC of the state as read.
        computed: u32,
    },
    /// The state was saved from a session of another model.
    #[error(
        "the saved state belongs to another model (fingerprint {found:#010x}, this model {expected:#010x})"
    )]
    OtherModel {
        /// Fingerprint in the state.
        found: u32,
        /// This model's fingerprint.
        expected: u32,
    },
    /// The state's parameters are finite but make the weights `U v` overflow f32.
    #[error(
        "the saved state's parameters make the weights overflow f32 (not a state this model wrote)"
    )]
    WeightsOverflow,
    /// The state holds NaN or infinity.
    #[error("saved state holds a non-finite parameter (index {index})")]
    NonFinite {
        /// Index of the first non-finite value.
        index: usize,
    },
}

/// Input data a caller passed is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DataError {
    /// The data does not have the shape the model needs.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The data holds NaN or infinity.
    #[error("{0} contains NaN or infinity")]
    NonFinite(&'static str),
    /// An empty set where at least one example is needed.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The call needs a session set up differently (the message says how).
    #[error("{0}")]
    NotConfigured(&'static str),
}

/// Adaptation produced a non-finite or exploding loss; the parameters were left unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
#[error(
    "adaptation diverged at step {step}: loss {} (before adapting: {}){}; parameters rolled back",
    number(*.loss),
    number(*.initial),
    if *.nonfinite_params { ", an adapted parameter became non-finite" } else { "" }
)]
pub struct DivergedError {
    /// Inner step (1-based) at which divergence was detected.
    pub step: usize,
    /// The offending loss.
    pub loss: f64,
    /// The support loss before adaptation.
    pub initial: f64,
    /// Whether an adapted parameter became NaN or infinite (with a loss that may look
    /// finite).
    pub nonfinite_params: bool,
}

/// Every error of the runtime.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// See [`FormatError`].
    #[error(transparent)]
    Format(#[from] FormatError),
    /// See [`ShapeError`].
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// See [`DataError`].
    #[error(transparent)]
    Data(#[from] DataError),
    /// See [`DivergedError`].
    #[error(transparent)]
    Diverged(#[from] DivergedError),
    /// See [`StateError`].
    #[error(transparent)]
    State(#[from] StateError),
    /// A prediction came out NaN or infinite (finite inputs far outside the range the
    /// model was trained on can overflow f32).
    #[error(
        "the prediction overflowed: an output is NaN or infinite (inputs far outside the model's range?)"
    )]
    NonFiniteOutput,
    /// Memory for a model or session could not be allocated (or would exceed a limit).
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// Bytes requested.
        bytes: u128,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
}

/// What kind of failure an [`Error`] is: one kind per status of the C ABI (`msr_status`),
/// one to one, so that every binding reports the same thing the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's data or options are unusable (a wrong length, n = 0, a value over a
    /// limit): `MSR_ERR_INVALID_ARGUMENT`.
    InvalidArgument,
    /// The data holds NaN or infinity, or a prediction overflowed: `MSR_ERR_NON_FINITE`.
    NonFinite,
    /// A model file or saved state is corrupted, inconsistent or over a limit:
    /// `MSR_ERR_FORMAT`.
    Format,
    /// A model file or saved state of a version this build does not read:
    /// `MSR_ERR_VERSION`.
    Version,
    /// A file could not be read: `MSR_ERR_IO`.
    Io,
    /// An adaptation diverged and was rolled back: `MSR_ERR_DIVERGED`.
    Diverged,
    /// Memory could not be allocated: `MSR_ERR_OUT_OF_MEMORY`.
    OutOfMemory,
}

impl Error {
    /// The kind of this error (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Format(FormatError::UnsupportedVersion { .. })
            | Error::Format(FormatError::UnknownExtension { .. })
            | Error::State(StateError::UnsupportedVersion { .. }) => ErrorKind::Version,
            Error::Format(FormatError::OutOfMemory { .. }) => ErrorKind::OutOfMemory,
            Error::Format(_) | Error::Shape(_) | Error::State(_) => ErrorKind::Format,
            Error::Data(DataError::NonFinite(_)) | Error::NonFiniteOutput => ErrorKind::NonFinite,
            Error::Data(_) => ErrorKind::InvalidArgument,
            Error::Diverged(_) => ErrorKind::Diverged,
            Error::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            Error::Io { .. } => ErrorKind::Io,
        }
    }
}
