//! Where a command's data comes from: `--dataset` and `--data-dir`, and the loading behind them.

use anyhow::Result;
use clap::{Args, ValueEnum};
use fff_data::download::{self, DownloadOptions};
use fff_data::mnist::{load_dir, ImageSet, PixelRange};
use fff_data::synthetic::spirals;
use fff_data::Split;
use serde::Deserialize;
use std::path::PathBuf;

/// A dataset the commands know by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// Three interleaved spirals in 2-D, built in.
    #[default]
    Spirals,
    /// MNIST digits.
    Mnist,
    /// Fashion-MNIST clothing.
    #[value(alias = "fashion")]
    #[serde(alias = "fashion")]
    FashionMnist,
}

impl std::fmt::Display for Dataset {
    /// The name the command line takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset: spirals (built in), or mnist / fashion-mnist (downloaded once into a cache
    /// folder, or read from --data-dir).
    #[arg(long, value_enum, default_value_t)]
    pub dataset: Dataset,
    /// Folder holding the dataset's IDX files (gzip or raw), directly or in a subfolder named
    /// after the dataset [default: the download cache].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The train/test split `args` names, and the default model description for it.
pub fn load_data(args: &DataArgs, seed: u64) -> Result<(Split, &'static str)> {
    let set = match args.dataset {
        Dataset::Spirals => {
            return Ok((
                spirals(3, 1000, 0.03, seed),
                "fff:2-32:d4:k4:identity, relu, linear:32-3",
            ))
        }
        Dataset::Mnist => ImageSet::Mnist,
        Dataset::FashionMnist => ImageSet::FashionMnist,
    };
    let range = PixelRange::MinusOneOne;
    let split = match &args.data_dir {
        Some(dir) => load_dir(set, dir, range, true)?,
        // The cache folder, filled from the mirrors the first time.
        None => download::load(set, range, &DownloadOptions::from_env(set)?)?,
    };
    Ok((
        split,
        "fff:784-500:d8:identity, relu, fff:500-10:d8:identity",
    ))
}
