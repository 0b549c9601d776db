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
    /// Accuracy against compute: a grid of dense and FFF configurations and training recipes,
    /// each over seeds, chosen on a validation split and tested once; resumable.
    Frontier(FrontierArgs),
    /// A sentence encoder's FFNs compressed at several budgets: FFF of deep and of shallow
    /// trees against the dense FFN shrunk to the same multiply-adds, with STS, probe, cosine to
    /// the original, size, multiply-adds and speed beside the original; resumable.
    Compress(Box<crate::experiment_compress::CompressFrontierArgs>),
}

/// Options of `fff experiment frontier`.
#[derive(Args, Debug)]
pub struct FrontierArgs {
    /// Datasets to run on.
    #[arg(long, value_delimiter = ',', default_value = "mnist,fashion-mnist")]
    datasets: Vec<Dataset>,
    /// Folder holding the datasets (each directly or in a subfolder named after it).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Families of the grid to run [default: all; a distilled family needs its teacher's].
    #[arg(long, value_delimiter = ',')]
    families: Vec<String>,
    /// Seeds per configuration.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Each run's checkpoints and result.json go here; a rerun skips finished runs and
    /// resumes an interrupted one.
    #[arg(long, default_value = "runs/frontier")]
    work_dir: PathBuf,
    /// A CI-sized sweep: the dense teacher and the distilled forest, 1 seed, 1 epoch on the
    /// first 6,000 training images (1,000 of them for validation).
    #[arg(long)]
    quick: bool,
    /// Train nothing: report the runs of the grid that have finished in --work-dir, and name
    /// the ones that have not.
    #[arg(long)]
    report_only: bool,
    /// Write the rows (and each run) to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the frontier and ablation tables to this markdown file.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Draw test accuracy against multiply-adds per input to PNG or SVG files (by the
    /// extension) named after this path, one per dataset (`frontier.png` → `frontier_mnist.png`).
    #[arg(long)]
    plot: Option<PathBuf>,
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
    /// Draw mean test accuracy per epoch for each variant to this PNG or SVG file (by the
    /// extension).
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    let (args, mut chosen, title) = match cmd {
        ExperimentCommand::Frontier(a) => return frontier(a),
        ExperimentCommand::Compress(a) => return crate::experiment_compress::run(*a),
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
        fff_util::chart::check_file(path, "--plot")?;
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
                    100.0 * last.test_accuracy.unwrap_or(f64::NAN),
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

/// The family of the frontier whose ablations the table reports.
const BEST_FAMILY: &str = fff_train::frontier::DEFAULT_FAMILY;

fn frontier(args: FrontierArgs) -> Result<()> {
    use fff_train::frontier::{
        check_grid, first_dataset_only, image_grid, run_dir, run_one, seeds_of,
    };
    ensure!(args.seeds > 0, "--seeds must be at least 1");
    for (path, flag) in [(&args.json, "--json"), (&args.table, "--table")] {
        if let Some(path) = path {
            fff_util::fs::check_output_file(path, flag)?;
        }
    }
    if let Some(path) = &args.plot {
        fff_util::chart::check_file(path, "--plot")?;
    }
    let mut grid = image_grid();
    let mut seeds = args.seeds;
    if args.quick {
        grid.retain(|e| e.family == "dense" || e.family == BEST_FAMILY);
        for e in &mut grid {
            e.recipe.epochs = 1;
            e.recipe.validation = 1000;
        }
        seeds = 1;
    }
    if !args.families.is_empty() {
        for f in &args.families {
            ensure!(
                grid.iter().any(|e| &e.family == f),
                "unknown family `{f}`; expected one of {}",
                grid.iter()
                    .map(|e| e.family.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        grid.retain(|e| args.families.contains(&e.family));
    }
    check_grid(&grid)?;
    let mut sets = Vec::new();
    for name in &args.datasets {
        let data_args = DataArgs {
            dataset: *name,
            data_dir: args.data_dir.clone(),
        };
        let (mut data, _) = load_data(&data_args, 0)?;
        ensure!(
            data.train.dim == 784 && data.train.classes == 10,
            "the frontier's grid is for 784-pixel, 10-class images; {} is not",
            data.train.name
        );
        if args.quick {
            let keep = 6000.min(data.train.len());
            data.train.features.truncate(keep * data.train.dim);
            data.train.labels.truncate(keep);
        }
        sets.push((name.to_string(), data));
    }
    // Configuration by configuration across the datasets, so that an interrupted sweep has
    // its first rows on every dataset; the ablations run on the first dataset only.
    let mut runs = Vec::new();
    for e in &grid {
        for (i, (dataset, data)) in sets.iter().enumerate() {
            if i > 0 && first_dataset_only(&e.family) {
                continue;
            }
            for seed in 0..seeds_of(&e.family, seeds) {
                let dir = run_dir(&args.work_dir, dataset, &e.family, seed);
                let teacher = e
                    .recipe
                    .distill
                    .as_ref()
                    .map(|(family, ..)| run_dir(&args.work_dir, dataset, family, seed));
                if args.report_only && !dir.join("result.json").is_file() {
                    outln!("{dataset} {} seed {seed}: not finished, left out", e.family);
                    continue;
                }
                outln!("{dataset} {} seed {seed}: `{}`", e.family, e.spec());
                let bars = EpochProgress::new(|_: &fff_train::EpochMetrics| {});
                let r = run_one(dataset, data, e, seed, &dir, teacher.as_deref(), bars)?;
                outln!(
                    "  validation {:.2}%, test {:.2}%, {} multiply-adds per input, {:.2} s/epoch",
                    100.0 * r.val_accuracy,
                    100.0 * r.test_accuracy,
                    r.multiply_adds_per_input,
                    r.seconds_per_epoch
                );
                runs.push(r);
                // Written after every run, so an interrupted sweep leaves its figures so far.
                write_frontier(&args, &runs, false)?;
            }
        }
    }
    write_frontier(&args, &runs, true)
}

/// Writes the JSON, table and plots of `runs` where asked (printing the table when `last`).
fn write_frontier(
    args: &FrontierArgs,
    runs: &[fff_train::frontier::RunResult],
    last: bool,
) -> Result<()> {
    use fff_train::frontier;
    let rows = frontier::summarize(runs);
    let mut table = frontier::markdown(&rows);
    if let Some(first) = args.datasets.first() {
        for base in frontier::ABLATED {
            if let Some(t) = frontier::ablation_markdown(&rows, &first.to_string(), base) {
                table.push('\n');
                table.push_str(&t);
            }
        }
    }
    if last {
        outln!();
        out!("{table}");
    }
    let say = |path: &std::path::Path| {
        if last {
            outln!("wrote {}", path.display());
        }
    };
    if let Some(path) = &args.json {
        let doc = serde_json::to_string_pretty(&rows)?;
        fff_util::fs::write_atomic(path, doc.as_bytes())?;
        say(path);
        let runs_path = path.with_extension("runs.json");
        fff_util::fs::write_atomic(&runs_path, serde_json::to_string_pretty(&runs)?.as_bytes())?;
        say(&runs_path);
    }
    if let Some(path) = &args.table {
        fff_util::fs::write_atomic(path, table.as_bytes())?;
        say(path);
    }
    if let Some(path) = &args.plot {
        for name in &args.datasets {
            let dataset = name.to_string();
            if !rows.iter().any(|r| r.dataset == dataset) {
                continue;
            }
            let file = fff_util::chart::beside(path, &dataset);
            frontier_plot(&file, &dataset, &rows)?;
            say(&file);
        }
    }
    Ok(())
}

/// Test accuracy against multiply-adds per input (log scale), one series per family kind
/// (the name before its first `-`) through its best row at each compute, the best full
/// dense net's accuracy as a dashed line; the ablations and the one-seed scan are left to
/// the table.
fn frontier_plot(
    path: &std::path::Path,
    dataset: &str,
    rows: &[fff_train::frontier::FrontierRow],
) -> Result<()> {
    use fff_util::chart::{draw, Chart, Legend, Series};
    let rows: Vec<_> = rows
        .iter()
        .filter(|r| r.dataset == dataset && !fff_train::frontier::first_dataset_only(&r.family))
        .collect();
    let mut kinds: Vec<&str> = Vec::new();
    for r in &rows {
        let kind = r.family.split('-').next().unwrap_or(&r.family);
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let mut series: Vec<Series> = kinds
        .iter()
        .map(|kind| {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.family.split('-').next() == Some(kind))
                .map(|r| {
                    (
                        r.multiply_adds_per_input as f64,
                        100.0 * r.test_accuracy_mean,
                    )
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
            pts.dedup_by(|later, first| later.0 == first.0);
            Series::line(*kind, pts)
        })
        .collect();
    let full_dense = rows
        .iter()
        .filter(|r| r.family.split('-').next() == Some("dense"))
        .max_by_key(|r| r.multiply_adds_per_input)
        .map(|r| r.multiply_adds_per_input);
    let best_dense = rows
        .iter()
        .filter(|r| {
            r.family.split('-').next() == Some("dense")
                && Some(r.multiply_adds_per_input) == full_dense
        })
        .max_by(|a, b| a.test_accuracy_mean.total_cmp(&b.test_accuracy_mean));
    if let Some(d) = best_dense {
        let xs = rows.iter().map(|r| r.multiply_adds_per_input as f64);
        let (x0, x1) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
        series.push(Series {
            label: format!("{} ({:.2}%)", d.family, 100.0 * d.test_accuracy_mean),
            points: vec![
                (x0, 100.0 * d.test_accuracy_mean),
                (x1, 100.0 * d.test_accuracy_mean),
            ],
            dashed: true,
        });
    }
    let title = format!("{dataset}: test accuracy against compute (mean over seeds)");
    let chart = Chart {
        title: &title,
        x_desc: "multiply-adds per input at inference (log scale)",
        y_desc: "test accuracy (%)",
        log_x: true,
        log_y: false,
        legend: Legend::LowerRight,
    };
    Ok(draw(path, &chart, &series)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ExperimentCommand,
    }

    fn run_args(argv: &[&str]) -> Result<()> {
        let cli =
            Cli::try_parse_from(std::iter::once("experiment").chain(argv.iter().copied())).unwrap();
        run(cli.command)
    }

    #[test]
    fn a_plot_name_without_a_chart_extension_is_refused_before_any_work() {
        // The data folder does not exist: the runs would fail on it, after the plot's check.
        let data = "/nonexistent/fff-data";
        for (command, bad) in [
            ("frontier", "/tmp/x.tmp"),
            ("node-activation", "out"),
            ("variants", "plot.jpg"),
        ] {
            let err = run_args(&[command, "--data-dir", data, "--plot", bad])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("--plot {bad}: ")) && err.contains(".png or .svg"),
                "{command}: {err}"
            );
        }
        // An accepted name gets past the check, to the data.
        let err = run_args(&["frontier", "--data-dir", data, "--plot", "/tmp/f.svg"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("--plot"), "{err}");
    }
}
