//! MNIST and Fashion-MNIST from a local folder, verified against the published checksums of
//! the decompressed bytes (the `.gz` wrappers differ between mirrors; the contents do not).

use crate::idx::{parse_u8, read_maybe_gzip};
use crate::{DataError, Dataset, Result, Split};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One of the 28×28 grey-level image sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSet {
    /// Handwritten digits (LeCun et al.).
    Mnist,
    /// Zalando's clothing images.
    FashionMnist,
}

/// How pixel bytes become features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelRange {
    /// `p / 255`.
    ZeroOne,
    /// `p / 127.5 − 1` (the node-activation study's scaling).
    MinusOneOne,
}

/// One file of an image set: its name without `.gz`, and the SHA-256 (lowercase hex) of its
/// decompressed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFile {
    /// File name without `.gz`, e.g. `train-images-idx3-ubyte`.
    pub stem: String,
    /// SHA-256 of the decompressed bytes, lowercase hex.
    pub sha256: String,
    /// Size of the decompressed file in bytes; reading stops past it.
    pub bytes: u64,
}

/// Decompressed sizes, shared by MNIST and Fashion-MNIST: a 16-byte header and 60,000 or 10,000
/// images of 28×28 bytes; an 8-byte header and one byte per label.
const FILE_BYTES: [u64; 4] = [16 + 60_000 * 784, 8 + 60_000, 16 + 10_000 * 784, 8 + 10_000];

/// The published checksums of the decompressed files, in the order train images, train labels,
/// test images, test labels.
const MNIST_FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

/// As [`MNIST_FILES`], for Fashion-MNIST (same names, different contents).
const FASHION_MNIST_FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

impl ImageSet {
    /// Name as used on the command line and for the folder.
    pub fn name(self) -> &'static str {
        match self {
            ImageSet::Mnist => "mnist",
            ImageSet::FashionMnist => "fashion-mnist",
        }
    }

    /// The set's four files with their published checksums, in the order train images, train
    /// labels, test images, test labels.
    pub fn files(self) -> [SetFile; 4] {
        let table = match self {
            ImageSet::Mnist => &MNIST_FILES,
            ImageSet::FashionMnist => &FASHION_MNIST_FILES,
        };
        let mut sizes = FILE_BYTES.into_iter();
        table.map(|(stem, sha256)| SetFile {
            stem: stem.into(),
            sha256: sha256.into(),
            bytes: sizes.next().unwrap_or(0),
        })
    }
}

impl FromStr for ImageSet {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mnist" => Ok(ImageSet::Mnist),
            "fashion-mnist" | "fashion" => Ok(ImageSet::FashionMnist),
            _ => Err(format!(
                "unknown dataset `{s}`; expected mnist or fashion-mnist"
            )),
        }
    }
}

/// Finds `stem.gz` or `stem` in `dir` or in `dir/<set name>`.
pub(crate) fn locate(set: ImageSet, dir: &Path, stem: &str) -> Result<PathBuf> {
    for folder in [dir.to_path_buf(), dir.join(set.name())] {
        for name in [format!("{stem}.gz"), stem.to_string()] {
            let p = folder.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DataError::Missing {
        message: format!(
            "{}: `{stem}.gz` (or `{stem}`) not found in {} or {}; put the four IDX files of \
             {} there (gzip or raw)",
            set.name(),
            dir.display(),
            dir.join(set.name()).display(),
            set.name()
        ),
    })
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads `path` (gzip or raw), at most `file.bytes` of it, and checks the decompressed bytes
/// against `file.sha256`; returns them.
pub fn read_verified(path: &Path, file: &SetFile) -> Result<Vec<u8>> {
    let bytes = read_maybe_gzip(path, file.bytes)?;
    let found = sha256_hex(&bytes);
    let sha256 = file.sha256.as_str();
    if found != sha256 {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: sha256.into(),
            found,
        });
    }
    Ok(bytes)
}

/// Reads, optionally verifies, and parses one file.
fn read_file(
    set: ImageSet,
    dir: &Path,
    file: &SetFile,
    verify: bool,
) -> Result<(PathBuf, crate::idx::IdxU8)> {
    let path = locate(set, dir, &file.stem)?;
    let bytes = if verify {
        read_verified(&path, file)?
    } else {
        read_maybe_gzip(&path, file.bytes)?
    };
    let idx = parse_u8(&bytes, &path)?;
    Ok((path, idx))
}

/// One half (train or test) from its image and label files.
fn load_half(
    set: ImageSet,
    dir: &Path,
    images: &SetFile,
    labels: &SetFile,
    range: PixelRange,
    verify: bool,
    half: &str,
) -> Result<Dataset> {
    let (ipath, img) = read_file(set, dir, images, verify)?;
    let (lpath, lab) = read_file(set, dir, labels, verify)?;
    let format = |path: &Path, message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    if img.dims.len() != 3 {
        return Err(format(
            &ipath,
            format!(
                "image file has dimensions {:?}, expected [count, rows, cols]",
                img.dims
            ),
        ));
    }
    if lab.dims.len() != 1 {
        return Err(format(
            &lpath,
            format!("label file has dimensions {:?}, expected [count]", lab.dims),
        ));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(format(
            &lpath,
            format!(
                "{} labels for {} images in {}",
                lab.dims[0],
                img.dims[0],
                ipath.display()
            ),
        ));
    }
    if let Some(i) = lab.data.iter().position(|&l| l > 9) {
        return Err(format(
            &lpath,
            format!("label {} at index {i} is out of range 0..=9", lab.data[i]),
        ));
    }
    let features = img
        .data
        .iter()
        .map(|&p| match range {
            PixelRange::ZeroOne => p as f32 / 255.0,
            PixelRange::MinusOneOne => p as f32 / 127.5 - 1.0,
        })
        .collect();
    Ok(Dataset {
        name: format!("{}/{half}", set.name()),
        features,
        labels: lab.data.iter().map(|&l| l as u32).collect(),
        dim: img.dims[1] * img.dims[2],
        classes: 10,
    })
}

/// Loads both halves of `set` from `dir` (or `dir/<set name>`), verifying checksums if `verify`.
pub fn load_dir(set: ImageSet, dir: &Path, range: PixelRange, verify: bool) -> Result<Split> {
    let [train_images, train_labels, test_images, test_labels] = set.files();
    Ok(Split {
        train: load_half(
            set,
            dir,
            &train_images,
            &train_labels,
            range,
            verify,
            "train",
        )?,
        test: load_half(set, dir, &test_images, &test_labels, range, verify, "test")?,
    })
}
