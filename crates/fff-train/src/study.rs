//! The node-activation study: does GELU starve the left branches?
//!
//! The community thread "Left branches getting ignored" argued that with GELU as the node
//! activation a node whose `z ≤ 0` (every left turn) contributes almost nothing and learns
//! almost nothing through its output row, while the identity keeps the left turns' `z`. Their
//! net: FFF(784→500, depth 8) → ReLU → FFF(500→10, depth 8), AdamW lr 1e-3, batch 64, inputs in
//! [-1, 1]. This runs that net with each node activation, plus the dense 784→500→10 baseline,
//! over several seeds, and reports the figures. The variants study ([`variants_study`]) puts
//! the FFF forms side by side on the same shape.

use crate::state::{EpochMetrics, TrainConfig};
use crate::trainer::{train, TrainObserver};
use crate::Model;
use anyhow::Result;
use fff_data::Split;
use serde::Serialize;

/// One variant of the study: a name and a model description.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Short name for tables.
    pub name: String,
    /// Model description.
    pub spec: String,
}

/// The study's variants: the dense baseline and the FFF net with each node activation.
pub fn variants() -> Vec<Variant> {
    let mut v = vec![Variant {
        name: "dense".into(),
        spec: "linear:784-500, relu, linear:500-10".into(),
    }];
    for act in ["gelu", "identity", "relu", "tanh"] {
        v.push(Variant {
            name: format!("fff-{act}"),
            spec: format!("fff:784-500:d8:{act}, relu, fff:500-10:d8:{act}"),
        });
    }
    v
}

/// The variants study: the FFF forms under one roof on the 784→500→10 shape with ReLU between
/// layers: dense; UltraFastBERT FFF (one tree of depth 8 per layer) with GELU and identity
/// nodes; a forest of 4 trees of depth 6 (508 nodes per layer, close to the single tree's 511);
/// flat FFF (8 hyperplanes per layer); the original FFF of depth 3 (8 leaves; leaf width 36 in
/// the first layer and 4 in the second, 399,514 parameters against dense's 397,510), without
/// and with a hardening loss.
pub fn variants_study() -> Vec<Variant> {
    let v = |name: &str, spec: &str| Variant {
        name: name.into(),
        spec: spec.into(),
    };
    vec![
        v("dense", "linear:784-500, relu, linear:500-10"),
        v("fff-gelu", "fff:784-500:d8:gelu, relu, fff:500-10:d8:gelu"),
        v(
            "fff-identity",
            "fff:784-500:d8:identity, relu, fff:500-10:d8:identity",
        ),
        v(
            "forest-k4-identity",
            "fff:784-500:d6:k4:identity, relu, fff:500-10:d6:k4:identity",
        ),
        v("flat", "flat:784-500:d8, relu, flat:500-10:d8"),
        v("orig", "orig:784-500:d3:l36, relu, orig:500-10:d3:l4"),
        v(
            "orig-hardened",
            "orig:784-500:d3:l36:harden=1, relu, orig:500-10:d3:l4:harden=1",
        ),
    ]
}

/// One training run of the study.
#[derive(Debug, Clone, Serialize)]
pub struct StudyRun {
    /// Dataset name.
    pub dataset: String,
    /// Variant name.
    pub variant: String,
    /// Model description.
    pub model: String,
    /// Seed.
    pub seed: u64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Neurons evaluated per input.
    pub neurons_per_input: usize,
    /// Per-epoch figures.
    pub history: Vec<EpochMetrics>,
    /// Median seconds of one inference forward of 1024 test inputs with the trained model.
    pub infer_seconds_per_1024: f64,
}

/// Summary of one (dataset, variant) over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct StudySummary {
    /// Dataset name.
    pub dataset: String,
    /// Variant name.
    pub variant: String,
    /// Final test accuracy, mean over seeds.
    pub accuracy_mean: f64,
    /// Final test accuracy, sample standard deviation over seeds (0 for one seed).
    pub accuracy_std: f64,
    /// Seeds.
    pub seeds: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Neurons evaluated per input.
    pub neurons_per_input: usize,
    /// Mean training seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Median inference seconds per batch of 1024, mean over seeds.
    pub infer_seconds_per_1024: f64,
}

/// Trains every variant on `data` with each seed; `observer()` gives each run's observer, and
/// `log` sees each finished run.
pub fn run<O: TrainObserver>(
    dataset: &str,
    data: &Split,
    variants: &[Variant],
    seeds: &[u64],
    cfg: &TrainConfig,
    mut observer: impl FnMut() -> O,
    mut log: impl FnMut(&StudyRun),
) -> Result<Vec<StudyRun>> {
    let mut runs = Vec::new();
    for v in variants {
        for &seed in seeds {
            let model = Model::new(&v.spec, seed)?;
            let cfg = TrainConfig {
                seed,
                ..cfg.clone()
            };
            let history = train(&model, data, &cfg, observer())?;
            let infer_seconds_per_1024 = time_inference(&model, data)?;
            let r = StudyRun {
                dataset: dataset.into(),
                variant: v.name.clone(),
                model: v.spec.clone(),
                seed,
                parameters: model.parameter_count(),
                neurons_per_input: model.neurons_per_input(),
                history,
                infer_seconds_per_1024,
            };
            log(&r);
            runs.push(r);
        }
    }
    Ok(runs)
}

/// Median of 7 timed inference forwards of the first 1024 test inputs (after a warm-up).
fn time_inference(model: &Model, data: &Split) -> Result<f64> {
    let x = crate::inspect::probe(&data.test.features, data.test.dim, 1024)?;
    model.forward_infer(&x)?;
    let t: Vec<f64> = (0..7)
        .map(|_| {
            let start = std::time::Instant::now();
            model
                .forward_infer(&x)
                .map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    Ok(fff_util::timing::median(t))
}

/// Mean ± std of the final test accuracy per (dataset, variant), in first-seen order.
pub fn summarize(runs: &[StudyRun]) -> Vec<StudySummary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in runs {
        let k = (r.dataset.clone(), r.variant.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(dataset, variant)| {
            let group: Vec<&StudyRun> = runs
                .iter()
                .filter(|r| r.dataset == dataset && r.variant == variant)
                .collect();
            let acc: Vec<f64> = group
                .iter()
                .filter_map(|r| r.history.last().and_then(|m| m.test_accuracy))
                .collect();
            let n = acc.len().max(1) as f64;
            let mean = acc.iter().sum::<f64>() / n;
            let std = if acc.len() > 1 {
                (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            let epochs: Vec<&EpochMetrics> = group.iter().flat_map(|r| &r.history).collect();
            StudySummary {
                dataset,
                variant,
                accuracy_mean: mean,
                accuracy_std: std,
                seeds: acc.len(),
                parameters: group[0].parameters,
                neurons_per_input: group[0].neurons_per_input,
                seconds_per_epoch: epochs.iter().map(|m| m.train_seconds).sum::<f64>()
                    / epochs.len().max(1) as f64,
                infer_seconds_per_1024: group.iter().map(|r| r.infer_seconds_per_1024).sum::<f64>()
                    / group.len().max(1) as f64,
            }
        })
        .collect()
}

/// The summaries as a markdown table.
pub fn markdown(summaries: &[StudySummary]) -> String {
    let mut out = String::from(
        "| dataset | variant | test accuracy (mean ± std) | seeds | parameters | neurons used per input | train s/epoch | inference ms per 1024 |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in summaries {
        out.push_str(&format!(
            "| {} | {} | {:.2}% ± {:.2} | {} | {} | {} | {:.2} | {:.2} |\n",
            s.dataset,
            s.variant,
            100.0 * s.accuracy_mean,
            100.0 * s.accuracy_std,
            s.seeds,
            s.parameters,
            s.neurons_per_input,
            s.seconds_per_epoch,
            1e3 * s.infer_seconds_per_1024
        ));
    }
    out
}

/// Mean test accuracy per epoch for each (dataset, variant): `(label, [(epoch, accuracy)])`.
pub fn curves(runs: &[StudyRun]) -> Vec<(String, Vec<(f64, f64)>)> {
    summarize(runs)
        .iter()
        .map(|s| {
            let group: Vec<&StudyRun> = runs
                .iter()
                .filter(|r| r.dataset == s.dataset && r.variant == s.variant)
                .collect();
            let epochs = group.iter().map(|r| r.history.len()).min().unwrap_or(0);
            let pts = (0..epochs)
                .map(|e| {
                    let mean = group
                        .iter()
                        .map(|r| r.history[e].test_accuracy.unwrap_or(f64::NAN))
                        .sum::<f64>()
                        / group.len() as f64;
                    ((e + 1) as f64, 100.0 * mean)
                })
                .collect();
            (format!("{} {}", s.dataset, s.variant), pts)
        })
        .collect()
}
