//! Where a command's data comes from: `--dataset` and `--data-dir`, and the loading behind them.

use anyhow::Result;
use clap::Args;
use fff_data::download::{self, DownloadOptions};
use fff_data::mnist::{load_dir, ImageSet, PixelRange};
use fff_data::synthetic::spirals;
use fff_data::Split;
use std::path::PathBuf;

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset: spirals (built in), mnist or fashion-mnist (downloaded once into a cache folder,
    /// or read from --data-dir).
    #[arg(long, default_value = "spirals")]
    pub dataset: String,
    /// Folder holding the dataset's IDX files (gzip or raw), directly or in a subfolder named
    /// after the dataset [default: the download cache].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The train/test split `args` names, and the default model description for it.
pub fn load_data(args: &DataArgs, seed: u64) -> Result<(Split, &'static str)> {
    Ok(match args.dataset.as_str() {
        "spirals" => (
            spirals(3, 1000, 0.03, seed),
            "fff:2-32:d4:k4:identity, relu, linear:32-3",
        ),
        name => {
            let set: ImageSet = name.parse().map_err(anyhow::Error::msg)?;
            let range = PixelRange::MinusOneOne;
            let split = match &args.data_dir {
                Some(dir) => load_dir(set, dir, range, true)?,
                // The cache folder, filled from the mirrors the first time.
                None => download::load(set, range, &DownloadOptions::from_env(set)?)?,
            };
            (
                split,
                "fff:784-500:d8:identity, relu, fff:500-10:d8:identity",
            )
        }
    })
}
