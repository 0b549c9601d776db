//! `fff train`: train a model on a dataset and report per-epoch figures.

use anyhow::{Context, Result};
use clap::Args;
use fff_data::mnist::{load_dir, ImageSet, PixelRange};
use fff_data::synthetic::spirals;
use fff_train::{train, Model, TrainConfig};
use std::path::PathBuf;

/// Options of `fff train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset: spirals (built in), mnist or fashion-mnist (from --data-dir).
    #[arg(long, default_value = "spirals")]
    dataset: String,
    /// Folder holding the dataset's IDX files (gzip or raw).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Model description, e.g. "fff:784-500:d8:identity, relu, fff:500-10:d8:identity"
    /// [default: a small FFF net for spirals, the study's FFF net for the image sets].
    #[arg(long)]
    model: Option<String>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Inputs per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed of the initialisation and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (data, default_model) = match args.dataset.as_str() {
        "spirals" => (
            spirals(3, 1000, 0.03, args.seed),
            "fff:2-32:d4:k4:identity, relu, linear:32-3",
        ),
        name => {
            let set: ImageSet = name.parse().map_err(anyhow::Error::msg)?;
            let dir = args.data_dir.clone().with_context(|| {
                format!(
                    "{name} needs --data-dir DIR with its four IDX files \
                     (train-images-idx3-ubyte.gz, ...); downloading is not built yet"
                )
            })?;
            (
                load_dir(set, &dir, PixelRange::MinusOneOne, true)?,
                "fff:784-500:d8:identity, relu, fff:500-10:d8:identity",
            )
        }
    };
    let spec = args.model.as_deref().unwrap_or(default_model);
    let model = Model::new(spec, args.seed)?;
    println!(
        "model `{spec}`: {} parameters, {} neurons per input; data {} ({} train, {} test)",
        model.parameter_count(),
        model.neurons_per_input(),
        data.train.name,
        data.train.len(),
        data.test.len()
    );
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        progress: true,
    };
    let history = train(&model, &data, &cfg, |m| {
        println!(
            "epoch {:>3}: train loss {:.4} acc {:6.2}% | test loss {:.4} acc {:6.2}% | {:.2} s train, {:.2} s eval",
            m.epoch,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.test_loss,
            100.0 * m.test_accuracy,
            m.train_seconds,
            m.eval_seconds
        )
    })?;
    if let Some(last) = history.last() {
        let best = history.iter().map(|m| m.test_accuracy).fold(0.0, f64::max);
        println!(
            "done: final test accuracy {:.2}% (best {:.2}%), {:.2} s per epoch",
            100.0 * last.test_accuracy,
            100.0 * best,
            history.iter().map(|m| m.train_seconds).sum::<f64>() / history.len() as f64
        );
    }
    Ok(())
}
