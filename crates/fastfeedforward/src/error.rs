//! Errors of the library: every message names what was wrong and what was expected.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, FffError>;

/// Everything that can go wrong when building, loading or running an FFF layer.
#[derive(Debug, thiserror::Error)]
pub enum FffError {
    /// A configuration value is out of range.
    #[error("invalid configuration: `{field}` {message}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A tensor or buffer has the wrong shape.
    #[error("shape mismatch for `{name}`: expected {expected:?}, found {found:?}")]
    Shape {
        /// The tensor's name (PyTorch name where one exists).
        name: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape that was found.
        found: Vec<usize>,
    },
    /// A tensor is required but absent from a checkpoint.
    #[error("{path}: tensor `{name}` is missing (found: {found})")]
    MissingTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The missing tensor's name.
        name: String,
        /// The tensor names that are present.
        found: String,
    },
    /// A checkpoint could not be read or parsed.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An input holds NaN or infinity where finite values are required.
    #[error("`{name}` holds a non-finite value at index {index}")]
    NonFinite {
        /// The input's name.
        name: String,
        /// Flat index of the first non-finite element.
        index: usize,
    },
    /// An unsupported data type or device.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl FffError {
    /// A shape error for tensor `name`.
    pub fn shape(name: impl Into<String>, expected: &[usize], found: &[usize]) -> Self {
        FffError::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }
}

/// Checks that the row-major buffer `name` of `len` values holds `batch` rows of `width`.
pub(crate) fn check_rows(name: &str, len: usize, batch: usize, width: usize) -> Result<()> {
    if len == batch * width {
        Ok(())
    } else {
        Err(FffError::shape(name, &[batch, width], &[len]))
    }
}
