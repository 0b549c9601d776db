//! `fff train` and `fff eval`: train a model on a dataset, resume it, evaluate a checkpoint.

use crate::data::{load_data, DataArgs};
use crate::progress::EpochProgress;
use crate::train_config::TrainSettings;
use anyhow::{ensure, Result};
use clap::Args;
use fff_data::Split;
use fff_train::checkpoint::{load_model, load_optimizer, load_state};
use fff_train::inspect::RoutingTracker;
use fff_train::trainer::{evaluate, optimizer_for, train_from};
use fff_train::{EpochMetrics, Model};
use std::path::{Path, PathBuf};

/// Options of `fff train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Read the settings from this TOML file; its keys are the flags' names without `--`
    /// (`batch-size = 64`), and flags given on the command line override it.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: TrainSettings,
    /// Continue the run checkpointed in this folder (settings come from its state.json).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// After every epoch, route 512 test inputs and print each conditional layer's region
    /// entropy and how many paths and decisions changed since the last epoch (also written to
    /// routing.json in the output folder).
    #[arg(long)]
    track_routing: bool,
}

impl TrainArgs {
    /// The flags given, over the `--config` file's settings where there is one.
    pub fn settings(&self) -> Result<TrainSettings> {
        let flags = self.settings.clone();
        Ok(match &self.config {
            Some(path) => flags.or(TrainSettings::read(path)?),
            None => flags,
        })
    }
}

/// Options of `fff eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder written by `fff train --out`.
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
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

fn tracker_for(on: bool, data: &Split) -> Result<Option<RoutingTracker>> {
    on.then(|| RoutingTracker::new(data)).transpose()
}

fn on_epoch(m: &EpochMetrics, model: &fff_train::Model, tracker: Option<&mut RoutingTracker>) {
    print_epoch(m);
    if let Some(t) = tracker {
        // Statistics are a report, not part of training: a failure is printed, not fatal.
        match t.record(model, m.epoch) {
            Ok(lines) => lines.iter().for_each(|l| println!("          {l}")),
            Err(e) => eprintln!("routing statistics: {e:#}"),
        }
    }
}

fn save_tracker(tracker: Option<&RoutingTracker>, dir: Option<&Path>) -> Result<()> {
    if let (Some(t), Some(dir)) = (tracker, dir) {
        t.save(dir)?;
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let settings = args.settings()?;
    let resume = args.resume.as_deref();
    match settings.threads {
        Some(n) => {
            ensure!(n > 0, "--threads must be at least 1");
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build()?;
            pool.install(|| run_with(&settings, resume, args.track_routing))
        }
        None => run_with(&settings, resume, args.track_routing),
    }
}

/// `fff train` with merged settings, on the current thread pool.
fn run_with(s: &TrainSettings, resume: Option<&Path>, track_routing: bool) -> Result<()> {
    let data_args = DataArgs {
        dataset: s.dataset(),
        data_dir: s.data_dir.clone(),
    };
    let history = if let Some(dir) = resume {
        let state = load_state(dir)?;
        // The spirals' points come from the seed; image sets ignore it.
        let (data, _) = load_data(&data_args, state.config.seed)?;
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
        if let Some(e) = s.epochs {
            cfg.epochs = e;
        }
        describe(&model, &data);
        println!("resuming after epoch {} of {}", state.epoch, cfg.epochs);
        for m in &state.history {
            print_epoch(m);
        }
        let mut tracker = tracker_for(track_routing, &data)?;
        let history = train_from(
            &model,
            &mut opt,
            &data,
            &cfg,
            state.history,
            Some((dir, state.model_seed)),
            EpochProgress::new(|m| on_epoch(m, &model, tracker.as_mut())),
        )?;
        save_tracker(tracker.as_ref(), Some(dir))?;
        history
    } else {
        // Checked before loading, which may download.
        let cfg = s.train_config()?;
        let (data, default_model) = load_data(&data_args, cfg.seed)?;
        let spec = s.model.as_deref().unwrap_or(default_model);
        let model = Model::new(spec, cfg.seed)?;
        describe(&model, &data);
        let mut opt = optimizer_for(&model, &cfg);
        let out = s.out.as_deref().map(|d| (d, cfg.seed));
        let mut tracker = tracker_for(track_routing, &data)?;
        let history = train_from(
            &model,
            &mut opt,
            &data,
            &cfg,
            Vec::new(),
            out,
            EpochProgress::new(|m| on_epoch(m, &model, tracker.as_mut())),
        )?;
        save_tracker(tracker.as_ref(), s.out.as_deref())?;
        history
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
    if let Some(dir) = s.out.as_deref().or(resume) {
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
