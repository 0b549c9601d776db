//! `fff inspect`: how a trained model's conditional layers route a dataset.

use crate::data::{load_data, DataArgs};
use anyhow::{Context, Result};
use clap::Args;
use fff_train::checkpoint::{check_dataset, load_model, load_state};
use fff_train::inspect::{compare, probe, report, routing, summarize_layer};
use fff_util::chart::line_chart;
use fff_util::fs::write_atomic;
use serde_json::json;
use std::path::PathBuf;

/// Options of `fff inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint folder written by `fff train --out`.
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// A second checkpoint of the same model: report the fraction of inputs whose path changed.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Route at most this many test inputs.
    #[arg(long, default_value_t = 10000)]
    inputs: usize,
    /// Draw a region-usage chart and a |z|-per-level chart per conditional layer into DIR.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the statistics as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `fff inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    if let Some(path) = &args.json {
        fff_util::fs::check_output_file(path, "--json")?;
    }
    let state = load_state(&args.checkpoint)?;
    let model = load_model(&args.checkpoint, &state)?;
    anyhow::ensure!(args.inputs > 0, "--inputs must be at least 1");
    let (data, _) = load_data(&args.data, state.config.seed)?;
    check_dataset(&args.checkpoint, &state, &data.train.name)?;
    let x = probe(&data.test.features, data.test.dim, args.inputs)?;
    let routes = routing(&model, &x)?;
    anyhow::ensure!(
        !routes.is_empty(),
        "{}: model `{}` has no conditional (fff, orig or flat) layer to inspect",
        args.checkpoint.display(),
        model.spec
    );
    let summaries: Vec<_> = routes.iter().map(summarize_layer).collect();
    let changes = match &args.compare {
        Some(other) => {
            let s2 = load_state(other)?;
            let m2 = load_model(other, &s2)?;
            anyhow::ensure!(
                m2.spec == model.spec,
                "{} holds `{}`, not `{}`",
                other.display(),
                m2.spec,
                model.spec
            );
            Some(compare(&routes, &routing(&m2, &x)?)?)
        }
        None => None,
    };
    outln!(
        "{} (epoch {}, `{}`) on {} test inputs of {}:",
        args.checkpoint.display(),
        state.epoch,
        model.spec,
        x.dim(0)?,
        data.test.name
    );
    out!("{}", report(&summaries, changes.as_deref()));
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for s in &summaries {
            let usage: Vec<(f64, f64)> = s
                .region_counts_sorted
                .iter()
                .enumerate()
                .map(|(i, &c)| (i as f64, c as f64))
                .collect();
            let path = dir.join(format!("layer{}_region_usage.png", s.layer));
            line_chart(
                &path,
                &format!(
                    "layer {} ({}): inputs per region, busiest first",
                    s.layer, s.name
                ),
                "region rank",
                "inputs",
                [("tree 0".to_string(), usage)],
            )?;
            let series = |name: &str, f: fn(&fff_train::inspect::AbsZ) -> f32| {
                (
                    name.to_string(),
                    s.abs_z
                        .iter()
                        .map(|z| (z.level as f64, f(z) as f64))
                        .collect::<Vec<_>>(),
                )
            };
            if !s.abs_z.is_empty() {
                let path = dir.join(format!("layer{}_abs_z.png", s.layer));
                line_chart(
                    &path,
                    &format!("layer {} ({}): |z| of decisions per level", s.layer, s.name),
                    "level",
                    "|z|",
                    [
                        series("p90", |z| z.p90),
                        series("median", |z| z.median),
                        series("p10", |z| z.p10),
                    ],
                )?;
            }
        }
        outln!("charts in {}", dir.display());
    }
    if let Some(path) = &args.json {
        let v = json!({ "layers": summaries, "changes": changes });
        write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}
