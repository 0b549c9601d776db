//! `fff inspect`: how a trained model's conditional layers route a dataset; and the routing
//! tracker behind `fff train --track-routing`.

use crate::train::{load_data, DataArgs};
use anyhow::{Context, Result};
use candle_core::Tensor;
use clap::Args;
use fff_bench::report::line_chart;
use fff_data::Split;
use fff_train::checkpoint::{load_model, load_state};
use fff_train::inspect::{compare, probe, report, routing, summarize_layer, LayerRouting};
use fff_train::Model;
use serde_json::json;
use std::path::{Path, PathBuf};

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
    let state = load_state(&args.checkpoint)?;
    let model = load_model(&args.checkpoint, &state)?;
    anyhow::ensure!(args.inputs > 0, "--inputs must be at least 1");
    let (data, _) = load_data(&args.data, state.config.seed)?;
    anyhow::ensure!(
        data.train.name == state.dataset,
        "{} was trained on {}, not {}; pass --dataset accordingly",
        args.checkpoint.display(),
        state.dataset,
        data.train.name
    );
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
    println!(
        "{} (epoch {}, `{}`) on {} test inputs of {}:",
        args.checkpoint.display(),
        state.epoch,
        model.spec,
        x.dim(0)?,
        data.test.name
    );
    print!("{}", report(&summaries, changes.as_deref()));
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
                &[("tree 0".to_string(), usage)],
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
                    &[
                        series("p90", |z| z.p90),
                        series("median", |z| z.median),
                        series("p10", |z| z.p10),
                    ],
                )?;
            }
        }
        println!("charts in {}", dir.display());
    }
    if let Some(path) = &args.json {
        let v = json!({ "layers": summaries, "changes": changes });
        fff_train::checkpoint::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Per-epoch routing statistics on a fixed probe batch (`fff train --track-routing`).
pub struct RoutingTracker {
    probe: Tensor,
    previous: Option<Vec<LayerRouting>>,
    log: Vec<serde_json::Value>,
}

impl RoutingTracker {
    /// Probes the first 512 test inputs.
    pub fn new(data: &Split) -> Result<Self> {
        Ok(RoutingTracker {
            probe: probe(&data.test.features, data.test.dim, 512)?,
            previous: None,
            log: Vec::new(),
        })
    }

    /// Routes the probe batch, prints region entropy and the change since the last epoch.
    pub fn record(&mut self, model: &Model, epoch: usize) -> Result<()> {
        let now = routing(model, &self.probe)?;
        let changes = match &self.previous {
            Some(prev) => Some(compare(prev, &now)?),
            None => None,
        };
        for (i, r) in now.iter().enumerate() {
            let s = summarize_layer(r);
            let change = changes.as_ref().map(|c| &c[i]);
            println!(
                "          routing layer {}: region entropy {:.2}/{:.2} bits, {:.1}% regions used{}",
                s.layer,
                s.entropy_bits,
                s.max_entropy_bits,
                100.0 * s.regions_used,
                change.map_or(String::new(), |c| format!(
                    ", since last epoch {:.2}% of paths changed, {:.2}% of decisions flipped sign",
                    100.0 * c.path_changed,
                    100.0 * c.decision_flips
                ))
            );
            self.log.push(json!({
                "epoch": epoch,
                "layer": s.layer,
                "entropy_bits": s.entropy_bits,
                "max_entropy_bits": s.max_entropy_bits,
                "regions_used": s.regions_used,
                "path_changed": change.map(|c| c.path_changed),
                "decision_flips": change.map(|c| c.decision_flips),
            }));
        }
        self.previous = Some(now);
        Ok(())
    }

    /// Writes the log as `routing.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("routing.json");
        fff_train::checkpoint::write_atomic(
            &path,
            serde_json::to_string_pretty(&self.log)?.as_bytes(),
        )
    }
}
