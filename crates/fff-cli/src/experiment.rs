//! `fff experiment`: studies that answer a question with real figures.

use crate::data::{load_data, DataArgs, Dataset};
use crate::progress::EpochProgress;
use anyhow::{ensure, Result};
use clap::{Args, Subcommand};
use fff_train::study::{curves, markdown, run as run_study, summarize, variants, variants_study};
use fff_train::TrainConfig;
use std::path::PathBuf;

/// Which study.
#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Does GELU starve the left branches? FFF(784→500, d8) → ReLU → FFF(500→10, d8) with each
    /// node activation, plus the dense 784→500→10 baseline, over seeds and datasets.
    NodeActivation(NodeActivationArgs),
    /// The FFF forms side by side on the 784→500→10 shape: dense, UltraFastBERT FFF (gelu,
    /// identity), a 4-tree forest, flat FFF, and the original FFF with and without hardening;
    /// accuracy, parameters, neurons per input, training and inference time.
    Variants(NodeActivationArgs),
}

/// Options of `fff experiment node-activation`.
#[derive(Args, Debug)]
pub struct NodeActivationArgs {
    /// Datasets to run on.
    #[arg(long, value_delimiter = ',', default_value = "mnist,fashion-mnist")]
    datasets: Vec<Dataset>,
    /// Folder holding the datasets (each directly or in a subfolder named after it).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Variants to run [node-activation: dense, fff-gelu, fff-identity, fff-relu, fff-tanh;
    /// variants: dense, fff-gelu, fff-identity, forest-k4-identity, flat, orig, orig-hardened].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Seeds per variant.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Epochs per run.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Inputs per step.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 64)]
    batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Write every run (with per-epoch figures) and the summary to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw mean test accuracy per epoch for each variant to this PNG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    let (args, mut chosen, title) = match cmd {
        ExperimentCommand::NodeActivation(a) => (a, variants(), "Node-activation study"),
        ExperimentCommand::Variants(a) => (a, variants_study(), "FFF variants study"),
    };
    ensure!(
        args.seeds > 0 && args.epochs > 0,
        "--seeds and --epochs must be at least 1"
    );
    // A study runs for hours; a bad output path must not be found at its end.
    if let Some(path) = &args.json {
        fff_util::fs::check_output_file(path, "--json")?;
    }
    if let Some(path) = &args.plot {
        fff_util::fs::check_output_file(path, "--plot")?;
    }
    if !args.variants.is_empty() {
        for v in &args.variants {
            ensure!(
                chosen.iter().any(|c| &c.name == v),
                "unknown variant `{v}`; expected one of {}",
                chosen
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        chosen.retain(|c| args.variants.contains(&c.name));
    }
    let seeds: Vec<u64> = (0..args.seeds).collect();
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        ..TrainConfig::default()
    };
    let mut runs = Vec::new();
    for name in &args.datasets {
        let data_args = DataArgs {
            dataset: *name,
            data_dir: args.data_dir.clone(),
        };
        let (data, _) = load_data(&data_args, 0)?;
        let bars = || EpochProgress::new(|_: &fff_train::EpochMetrics| {});
        runs.extend(run_study(
            &name.to_string(),
            &data,
            &chosen,
            &seeds,
            &cfg,
            bars,
            |r| {
                let last = r.history.last().expect("at least one epoch");
                outln!(
                    "{} {} seed {}: test accuracy {:.2}% after {} epochs ({:.2} s/epoch)",
                    r.dataset,
                    r.variant,
                    r.seed,
                    100.0 * last.test_accuracy,
                    r.history.len(),
                    r.history.iter().map(|m| m.train_seconds).sum::<f64>() / r.history.len() as f64
                )
            },
        )?);
    }
    let summaries = summarize(&runs);
    outln!();
    out!("{}", markdown(&summaries));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "summary": summaries, "runs": runs });
        fff_util::fs::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        fff_util::chart::line_chart(
            path,
            &format!("{title}: test accuracy per epoch (mean over seeds)"),
            "epoch",
            "test accuracy (%)",
            curves(&runs),
        )?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}
