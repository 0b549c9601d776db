//! What a trained FFF does with its inputs: for every conditional layer (UltraFastBERT FFF,
//! original FFF, flat FFF) and every tree, how inputs spread over nodes and regions (leaves),
//! how close decisions are to their boundaries, and how routing differs between two
//! checkpoints or two epochs.

use crate::model::Model;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;

pub use fastfeedforward::Route;

/// Routing of a batch through every tree of one layer.
#[derive(Clone, Debug)]
pub struct LayerRouting {
    /// Index of the layer in the model.
    pub layer: usize,
    /// Layer kind and shape, e.g. `fff 784-500 d8 k1`.
    pub name: String,
    /// Number of regions per tree.
    pub regions: usize,
    /// Decision levels per tree.
    pub levels: usize,
    /// `routes[input][tree]`.
    pub routes: Vec<Vec<Route>>,
}

/// The inputs of each layer for a batch `x`.
fn layer_inputs(model: &Model, x: &Tensor) -> Result<Vec<Tensor>> {
    let mut inputs = Vec::with_capacity(model.layers.len());
    let mut h = x.clone();
    for i in 0..model.layers.len() {
        inputs.push(h.clone());
        h = model.forward_layer_infer(i, &h)?;
    }
    Ok(inputs)
}

/// Routes every row of `x` (`[B, in]`) through every conditional layer of `model`.
pub fn routing(model: &Model, x: &Tensor) -> Result<Vec<LayerRouting>> {
    let inputs = layer_inputs(model, x)?;
    let mut out = Vec::new();
    for (i, (layer, input)) in model.layers.iter().zip(&inputs).enumerate() {
        let (b, _) = input.dims2()?;
        let rows = input.flatten_all()?.to_vec1::<f32>()?;
        let Some(r) = layer.route_batch(&rows, b)? else {
            continue;
        };
        let lr = LayerRouting {
            layer: i,
            name: layer.describe(),
            regions: r.regions,
            levels: r.levels,
            routes: r.routes,
        };
        out.push(lr);
    }
    Ok(out)
}

/// Quantiles of `|z|` at one level.
#[derive(Clone, Debug, Serialize)]
pub struct AbsZ {
    /// Decision level.
    pub level: usize,
    /// 10th percentile.
    pub p10: f32,
    /// Median.
    pub median: f32,
    /// 90th percentile.
    pub p90: f32,
    /// Fraction of decisions with `|z| < 0.01`: the ones a tiny change of weights flips.
    pub near_boundary: f64,
}

/// Summary of one layer's routing.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSummary {
    /// Index of the layer in the model.
    pub layer: usize,
    /// Kind and shape.
    pub name: String,
    /// Inputs routed.
    pub inputs: usize,
    /// Regions per tree.
    pub regions: usize,
    /// Fraction of regions that receive at least one input (mean over trees).
    pub regions_used: f64,
    /// Entropy of the region distribution in bits (mean over trees).
    pub entropy_bits: f64,
    /// The largest possible entropy, `log2(regions)`.
    pub max_entropy_bits: f64,
    /// Distinct nodes visited at each level (summed over trees).
    pub nodes_visited_per_level: Vec<usize>,
    /// Inputs per region, tree 0, sorted from most to least used.
    pub region_counts_sorted: Vec<usize>,
    /// `|z|` per level (all trees).
    pub abs_z: Vec<AbsZ>,
}

fn quantile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Statistics of one layer's routing.
pub fn summarize_layer(r: &LayerRouting) -> LayerSummary {
    let trees = r.routes.first().map_or(0, Vec::len);
    let n = r.routes.len();
    let (mut used, mut entropy) = (0.0, 0.0);
    let mut sorted0 = Vec::new();
    for t in 0..trees {
        let mut counts = vec![0usize; r.regions];
        for per_input in &r.routes {
            counts[per_input[t].region as usize] += 1;
        }
        used += counts.iter().filter(|&&c| c > 0).count() as f64 / r.regions as f64;
        entropy -= counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n as f64;
                p * p.log2()
            })
            .sum::<f64>();
        if t == 0 {
            counts.sort_unstable_by(|a, b| b.cmp(a));
            sorted0 = counts;
        }
    }
    let trees_f = trees.max(1) as f64;
    let mut nodes_visited_per_level = Vec::with_capacity(r.levels);
    let mut abs_z = Vec::with_capacity(r.levels);
    for level in 0..r.levels {
        let mut visited = 0;
        let mut zs: Vec<f32> = Vec::with_capacity(n * trees);
        for t in 0..trees {
            // The node at level d is named by the region's first d bits (root first).
            let bits = r.regions.trailing_zeros() as usize;
            let shift = bits.saturating_sub(level) as u32;
            let mut prefixes: Vec<u32> = r.routes.iter().map(|p| p[t].region >> shift).collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            visited += prefixes.len();
            zs.extend(
                r.routes
                    .iter()
                    .filter_map(|p| p[t].z.get(level))
                    .map(|z| z.abs()),
            );
        }
        nodes_visited_per_level.push(visited);
        zs.sort_unstable_by(f32::total_cmp);
        abs_z.push(AbsZ {
            level,
            p10: quantile(&zs, 0.1),
            median: quantile(&zs, 0.5),
            p90: quantile(&zs, 0.9),
            near_boundary: zs.iter().filter(|&&z| z < 0.01).count() as f64 / zs.len().max(1) as f64,
        });
    }
    LayerSummary {
        layer: r.layer,
        name: r.name.clone(),
        inputs: n,
        regions: r.regions,
        regions_used: used / trees_f,
        entropy_bits: entropy / trees_f,
        max_entropy_bits: (r.regions as f64).log2(),
        nodes_visited_per_level,
        region_counts_sorted: sorted0,
        abs_z,
    }
}

/// How routing differs between two routings of the same inputs through the same layer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RoutingChange {
    /// Index of the layer in the model.
    pub layer: usize,
    /// Fraction of (input, tree) pairs whose region changed.
    pub path_changed: f64,
    /// Fraction of (input, tree, level) decisions whose sign changed.
    pub decision_flips: f64,
}

/// Compares two routings of the same inputs (e.g. two checkpoints, or two epochs).
pub fn compare(a: &[LayerRouting], b: &[LayerRouting]) -> Result<Vec<RoutingChange>> {
    ensure!(
        a.len() == b.len(),
        "the two models have different conditional layers"
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            ensure!(
                x.name == y.name && x.routes.len() == y.routes.len(),
                "layer {}: `{}` vs `{}` on {} vs {} inputs",
                x.layer,
                x.name,
                y.name,
                x.routes.len(),
                y.routes.len()
            );
            let (mut pairs, mut changed, mut decisions, mut flips) =
                (0usize, 0usize, 0usize, 0usize);
            for (p, q) in x.routes.iter().zip(&y.routes) {
                for (s, t) in p.iter().zip(q) {
                    pairs += 1;
                    changed += usize::from(s.region != t.region);
                    for (u, v) in s.z.iter().zip(&t.z) {
                        decisions += 1;
                        flips += usize::from((*u > 0.0) != (*v > 0.0));
                    }
                }
            }
            Ok(RoutingChange {
                layer: x.layer,
                path_changed: changed as f64 / pairs.max(1) as f64,
                decision_flips: flips as f64 / decisions.max(1) as f64,
            })
        })
        .collect()
}

/// The first `n` rows of a dataset as a `[n, dim]` tensor (a fixed probe batch).
pub fn probe(features: &[f32], dim: usize, n: usize) -> Result<Tensor> {
    let n = n.min(features.len() / dim.max(1));
    Ok(Tensor::from_slice(
        &features[..n * dim],
        (n, dim),
        &Device::Cpu,
    )?)
}

/// A text report of layer summaries (and changes, when given).
pub fn report(summaries: &[LayerSummary], changes: Option<&[RoutingChange]>) -> String {
    let mut s = String::new();
    for l in summaries {
        s += &format!(
            "layer {} ({}), {} inputs: {} of {} regions used ({:.1}%), region entropy {:.2} of {:.2} bits\n",
            l.layer,
            l.name,
            l.inputs,
            (l.regions_used * l.regions as f64).round(),
            l.regions,
            100.0 * l.regions_used,
            l.entropy_bits,
            l.max_entropy_bits
        );
        let top: Vec<String> = l
            .region_counts_sorted
            .iter()
            .take(5)
            .map(|c| c.to_string())
            .collect();
        s += &format!("  busiest regions (tree 0): {} inputs\n", top.join(", "));
        s += "  level | nodes visited | |z| p10 | median | p90 | |z|<0.01\n";
        for (z, nodes) in l.abs_z.iter().zip(&l.nodes_visited_per_level) {
            s += &format!(
                "  {:>5} | {:>13} | {:>7.4} | {:>6.4} | {:>6.4} | {:>7.2}%\n",
                z.level,
                nodes,
                z.p10,
                z.median,
                z.p90,
                100.0 * z.near_boundary
            );
        }
    }
    if let Some(changes) = changes {
        for c in changes {
            s += &format!(
                "layer {}: paths changed for {:.2}% of inputs, {:.2}% of decisions flipped sign\n",
                c.layer,
                100.0 * c.path_changed,
                100.0 * c.decision_flips
            );
        }
    }
    s
}

/// Per-epoch routing statistics on a fixed probe batch (`fff train --track-routing`).
pub struct RoutingTracker {
    probe: Tensor,
    previous: Option<Vec<LayerRouting>>,
    log: Vec<serde_json::Value>,
}

impl RoutingTracker {
    /// Probes the first 512 test inputs.
    pub fn new(data: &fff_data::Split) -> Result<Self> {
        Ok(RoutingTracker {
            probe: probe(&data.test.features, data.test.dim, 512)?,
            previous: None,
            log: Vec::new(),
        })
    }

    /// Routes the probe batch and records it; returns a line per conditional layer with its
    /// region entropy and the change since the last epoch.
    pub fn record(&mut self, model: &Model, epoch: usize) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        let now = routing(model, &self.probe)?;
        let changes = match &self.previous {
            Some(prev) => Some(compare(prev, &now)?),
            None => None,
        };
        for (i, r) in now.iter().enumerate() {
            let s = summarize_layer(r);
            let change = changes.as_ref().map(|c| &c[i]);
            lines.push(format!(
                "routing layer {}: region entropy {:.2}/{:.2} bits, {:.1}% regions used{}",
                s.layer,
                s.entropy_bits,
                s.max_entropy_bits,
                100.0 * s.regions_used,
                change.map_or(String::new(), |c| format!(
                    ", since last epoch {:.2}% of paths changed, {:.2}% of decisions flipped sign",
                    100.0 * c.path_changed,
                    100.0 * c.decision_flips
                ))
            ));
            self.log.push(serde_json::json!({
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
        Ok(lines)
    }

    /// Writes the log as `routing.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("routing.json");
        Ok(fff_util::fs::write_atomic(
            &path,
            serde_json::to_string_pretty(&self.log)?.as_bytes(),
        )?)
    }
}
