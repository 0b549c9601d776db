//! Datasets for training and evaluating FFF models.
//!
//! - [`idx`]: the IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw, with errors that
//!   name the file and the problem;
//! - [`mnist`]: the two image sets read from a local folder, verified against the published
//!   checksums of the decompressed bytes;
//! - [`download`]: the two image sets fetched once from public mirrors into a cache folder and
//!   verified, or read from that folder with no network when they are already there;
//! - [`synthetic`]: small sets generated in memory (interleaved spirals), so that examples run
//!   with no network and no files;
//! - [`text`]: text evaluation sets: scored sentence pairs (STS) and labelled sentences.

#![warn(missing_docs)]

pub mod download;
pub mod idx;
pub mod mnist;
pub mod synthetic;
pub mod text;

use std::path::PathBuf;

/// Errors of the data layer; each names the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's contents are not what the format requires.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The decompressed bytes do not match the published checksum.
    #[error("{path}: SHA-256 of the decompressed bytes is {found}, expected {expected} (corrupt or a different file)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The published checksum.
        expected: String,
        /// The checksum found.
        found: String,
    },
    /// A file of the dataset is absent.
    #[error("{message}")]
    Missing {
        /// What is missing and how to provide it.
        message: String,
    },
    /// A file of the dataset is not (validly) cached and no mirror provided a good copy.
    #[error("{}", download::unavailable_message(.dataset, .file, .attempts, .cache_dir, .files))]
    Unavailable {
        /// The dataset's name.
        dataset: String,
        /// The file that could not be had, e.g. `train-images-idx3-ubyte.gz`.
        file: String,
        /// One line per source tried (the cached copy, then each mirror): where and why not.
        attempts: Vec<String>,
        /// The cache folder the files belong in.
        cache_dir: PathBuf,
        /// All files of the dataset, to download by hand.
        files: Vec<String>,
    },
}

/// Result alias of the data layer.
pub type Result<T> = std::result::Result<T, DataError>;

/// A labelled set of feature rows.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name for reports.
    pub name: String,
    /// Row-major features, `[len, dim]`.
    pub features: Vec<f32>,
    /// Labels in `0..classes`.
    pub labels: Vec<u32>,
    /// Features per row.
    pub dim: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Rows per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A train/test pair.
#[derive(Debug, Clone)]
pub struct Split {
    /// Training rows.
    pub train: Dataset,
    /// Held-out rows.
    pub test: Dataset,
}
