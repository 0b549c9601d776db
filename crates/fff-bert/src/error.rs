//! Errors of the BERT loader and runner: each names the file, the key or tensor, and what was
//! expected.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, BertError>;

/// Everything that can go wrong when loading or running a crammedBERT / UltraFastBERT model.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A config key holds a value the model does not support, or is unknown, or is missing.
    #[error("{path}: `{key}` {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The dotted key, e.g. `arch.attention.rotary_embedding`.
        key: String,
        /// What was found and what was expected.
        message: String,
    },
    /// A tensor is absent from the checkpoint.
    #[error("{path}: tensor `{name}` is missing ({hint})")]
    MissingTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The missing tensor's name.
        name: String,
        /// What is there instead.
        hint: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor holds NaN or infinity.
    #[error("{path}: tensor `{name}` holds a non-finite value")]
    NonFinite {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// The tokenizer file is unusable.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A model could not be fetched from the Hugging Face Hub.
    #[error("cannot fetch `{model}` from the Hugging Face Hub: {message}")]
    Hub {
        /// The model id.
        model: String,
        /// What went wrong, and what to do instead.
        message: String,
    },
    /// An input the model cannot run (e.g. no `<mask>` for fill-mask, a head the checkpoint lacks).
    #[error("{0}")]
    Input(String),
    /// An error of the FFF layer.
    #[error(transparent)]
    Fff(#[from] fastfeedforward::FffError),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
