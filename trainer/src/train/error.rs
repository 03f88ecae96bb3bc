//! The errors of the training library.

use std::path::{Path, PathBuf};

/// Errors of the training loop's files.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad configuration: a field out of range, a model that does not fit the family.
    #[error("{0}")]
    Config(String),
    /// The tasks cannot be had: a task file that is missing or malformed, fonts or a
    /// simulator that are not installed, episodes larger than the data.
    #[error("{0}")]
    Tasks(String),
    /// A checkpoint could not be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The processes of a distributed run disagree or cannot exchange their gradients.
    #[error("distributed run: {0}")]
    Distributed(String),
    /// From the runtime.
    #[error(transparent)]
    Runtime(#[from] msr_runtime::Error),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
