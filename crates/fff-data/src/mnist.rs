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

/// The four files of a set: (file stem, SHA-256 of the decompressed bytes).
struct Files {
    train_images: (&'static str, &'static str),
    train_labels: (&'static str, &'static str),
    test_images: (&'static str, &'static str),
    test_labels: (&'static str, &'static str),
}

impl ImageSet {
    /// Name as used on the command line and for the folder.
    pub fn name(self) -> &'static str {
        match self {
            ImageSet::Mnist => "mnist",
            ImageSet::FashionMnist => "fashion-mnist",
        }
    }

    fn files(self) -> Files {
        match self {
            ImageSet::Mnist => Files {
                train_images: (
                    "train-images-idx3-ubyte",
                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                ),
                train_labels: (
                    "train-labels-idx1-ubyte",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                ),
                test_images: (
                    "t10k-images-idx3-ubyte",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                ),
                test_labels: (
                    "t10k-labels-idx1-ubyte",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                ),
            },
            ImageSet::FashionMnist => Files {
                train_images: (
                    "train-images-idx3-ubyte",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                ),
                train_labels: (
                    "train-labels-idx1-ubyte",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                ),
                test_images: (
                    "t10k-images-idx3-ubyte",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                ),
                test_labels: (
                    "t10k-labels-idx1-ubyte",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                ),
            },
        }
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
fn locate(set: ImageSet, dir: &Path, stem: &str) -> Result<PathBuf> {
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

/// Reads, optionally verifies, and parses one file.
fn read_file(
    set: ImageSet,
    dir: &Path,
    (stem, sha): (&str, &str),
    verify: bool,
) -> Result<(PathBuf, crate::idx::IdxU8)> {
    let path = locate(set, dir, stem)?;
    let bytes = read_maybe_gzip(&path)?;
    if verify {
        let found = hex(&Sha256::digest(&bytes));
        if found != sha {
            return Err(DataError::Checksum {
                path,
                expected: sha.into(),
                found,
            });
        }
    }
    let idx = parse_u8(&bytes, &path)?;
    Ok((path, idx))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One half (train or test) from its image and label files.
fn load_half(
    set: ImageSet,
    dir: &Path,
    images: (&str, &str),
    labels: (&str, &str),
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
    let f = set.files();
    Ok(Split {
        train: load_half(
            set,
            dir,
            f.train_images,
            f.train_labels,
            range,
            verify,
            "train",
        )?,
        test: load_half(
            set,
            dir,
            f.test_images,
            f.test_labels,
            range,
            verify,
            "test",
        )?,
    })
}
