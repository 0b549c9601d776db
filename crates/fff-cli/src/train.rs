//! `fff train` and `fff eval`: train a model on a dataset, resume it, evaluate a checkpoint.

use anyhow::{ensure, Context, Result};
use clap::Args;
use fff_data::mnist::{load_dir, ImageSet, PixelRange};
use fff_data::synthetic::spirals;
use fff_data::Split;
use fff_train::checkpoint::{load_model, load_optimizer, load_state};
use fff_train::optim::OptimizerKind;
use fff_train::trainer::{evaluate, optimizer_for, train_from, EpochMetrics, Schedule};
use fff_train::{Model, TrainConfig};
use std::path::{Path, PathBuf};

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset: spirals (built in), mnist or fashion-mnist (from --data-dir).
    #[arg(long, default_value = "spirals")]
    pub dataset: String,
    /// Folder holding the dataset's IDX files (gzip or raw), directly or in a subfolder named
    /// after the dataset.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Options of `fff train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Model description, e.g. "fff:784-500:d8:identity, relu, fff:500-10:d8:identity"
    /// [default: a small FFF net for spirals, the study's FFF net for the image sets].
    #[arg(long)]
    model: Option<String>,
    /// Passes over the training set (with --resume: the total to reach).
    #[arg(long)]
    epochs: Option<usize>,
    /// Inputs per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Optimizer: adamw or sgd.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Weight decay (decoupled for AdamW, L2 for SGD).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// AdamW betas, "beta1,beta2".
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.999")]
    betas: Vec<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Learning-rate schedule after warm-up: constant, cosine or linear.
    #[arg(long, default_value = "constant")]
    schedule: Schedule,
    /// Steps of linear warm-up.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Seed of the initialisation and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint and metrics.json into this folder after every epoch.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run checkpointed in this folder (settings come from its state.json).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
}

/// Options of `fff eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder written by `fff train --out`.
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
}

pub fn load_data(args: &DataArgs, seed: u64) -> Result<(Split, &'static str)> {
    Ok(match args.dataset.as_str() {
        "spirals" => (
            spirals(3, 1000, 0.03, seed),
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
    })
}

fn print_epoch(m: &EpochMetrics) {
    println!(
        "epoch {:>3}: train loss {:.4} acc {:6.2}% | test loss {:.4} acc {:6.2}% | {:.2} s train, {:.2} s eval",
        m.epoch,
        m.train_loss,
        100.0 * m.train_accuracy,
        m.test_loss,
        100.0 * m.test_accuracy,
        m.train_seconds,
        m.eval_seconds
    );
}

fn describe(model: &Model, data: &Split) {
    println!(
        "model `{}`: {} parameters, {} neurons per input; data {} ({} train, {} test)",
        model.spec,
        model.parameter_count(),
        model.neurons_per_input(),
        data.train.name,
        data.train.len(),
        data.test.len()
    );
}

pub fn run(args: TrainArgs) -> Result<()> {
    let history = if let Some(dir) = &args.resume {
        let state = load_state(dir)?;
        // The spirals' points come from the seed; image sets ignore it.
        let (data, _) = load_data(&args.data, state.config.seed)?;
        ensure!(
            data.train.name == state.dataset,
            "{} was trained on {}, not {}; pass --dataset accordingly",
            dir.display(),
            state.dataset,
            data.train.name
        );
        let model = load_model(dir, &state)?;
        let mut opt = optimizer_for(&model, &state.config);
        load_optimizer(dir, &state, &mut opt, model.vars().len())?;
        let mut cfg = state.config.clone();
        cfg.progress = true;
        if let Some(e) = args.epochs {
            cfg.epochs = e;
        }
        describe(&model, &data);
        println!("resuming after epoch {} of {}", state.epoch, cfg.epochs);
        for m in &state.history {
            print_epoch(m);
        }
        train_from(
            &model,
            &mut opt,
            &data,
            &cfg,
            state.history,
            Some((dir.as_path(), state.model_seed)),
            print_epoch,
        )?
    } else {
        let (data, default_model) = load_data(&args.data, args.seed)?;
        let spec = args.model.as_deref().unwrap_or(default_model);
        let model = Model::new(spec, args.seed)?;
        describe(&model, &data);
        let optimizer = match args.optimizer.as_str() {
            "adamw" => {
                ensure!(
                    args.betas.len() == 2,
                    "--betas takes two numbers, e.g. 0.9,0.999"
                );
                OptimizerKind::AdamW {
                    beta1: args.betas[0],
                    beta2: args.betas[1],
                    eps: 1e-8,
                }
            }
            "sgd" => OptimizerKind::Sgd {
                momentum: args.momentum,
            },
            other => anyhow::bail!("unknown optimizer `{other}`; expected adamw or sgd"),
        };
        if let Some(c) = args.clip_norm {
            ensure!(
                c.is_finite() && c > 0.0,
                "--clip-norm must be a positive number"
            );
        }
        let cfg = TrainConfig {
            epochs: args.epochs.unwrap_or(10),
            batch_size: args.batch_size,
            lr: args.lr,
            weight_decay: args.weight_decay,
            optimizer,
            schedule: args.schedule,
            warmup_steps: args.warmup_steps,
            clip_norm: args.clip_norm,
            seed: args.seed,
            progress: true,
        };
        let mut opt = optimizer_for(&model, &cfg);
        let out = args.out.as_deref().map(|d: &Path| (d, args.seed));
        train_from(&model, &mut opt, &data, &cfg, Vec::new(), out, print_epoch)?
    };
    if let Some(last) = history.last() {
        let best = history.iter().map(|m| m.test_accuracy).fold(0.0, f64::max);
        println!(
            "done: final test accuracy {:.2}% (best {:.2}%), {:.2} s per epoch",
            100.0 * last.test_accuracy,
            100.0 * best,
            history.iter().map(|m| m.train_seconds).sum::<f64>() / history.len() as f64
        );
    }
    if let Some(dir) = args.out.as_ref().or(args.resume.as_ref()) {
        println!("checkpoint and metrics.json in {}", dir.display());
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let state = load_state(&args.checkpoint)?;
    let model = load_model(&args.checkpoint, &state)?;
    let (data, _) = load_data(&args.data, state.config.seed)?;
    let (loss, accuracy) = evaluate(&model, &data.test)?;
    println!(
        "{} (epoch {}) on {}: loss {loss:.4}, accuracy {:.2}% ({} inputs)",
        args.checkpoint.display(),
        state.epoch,
        data.test.name,
        100.0 * accuracy,
        data.test.len()
    );
    Ok(())
}
