//! What bf16 and int8 weights cost an FFF layer against its f32 original, on random layers and
//! inputs: the fraction of inputs whose path changes in any tree, the fraction of (input, tree)
//! paths that change, and the output error (relative, over inputs that keep their path,
//! and over all). Writes docs/quantization_layers.json.
//!
//!   cargo run --release -p fastfeedforward --example quantization_layers

use fastfeedforward::{Activation, Fff, FffConfig, Init, WeightFormat, Workspace};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shapes = [
        ("1x11 768-768 gelu", FffConfig::new(768, 768, 11, 1)),
        (
            "1x11 768-768 identity",
            FffConfig::new(768, 768, 11, 1).with_activation(Activation::Identity),
        ),
        (
            "4x6 784-500 identity",
            FffConfig::new(784, 500, 6, 4).with_activation(Activation::Identity),
        ),
        ("128x4 768-768 gelu", FffConfig::new(768, 768, 4, 128)),
        ("3072x0 768-768 gelu", FffConfig::new(768, 768, 0, 3072)),
    ];
    let batch = 2000;
    let mut rows = Vec::new();
    println!("| layer | weights | inputs whose path moved (any tree) | tree paths moved | output rel. error (unmoved) | output rel. error (all) |");
    println!("|---|---|---:|---:|---:|---:|");
    for (seed, (name, config)) in shapes.into_iter().enumerate() {
        let layer = Fff::new(config, Init::Uniform, seed as u64)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(100 + seed as u64);
        let x: Vec<f32> = (0..batch * config.input_width)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let mut y32 = vec![0f32; batch * config.output_width];
        let mut ws = Workspace::new();
        layer.forward_infer_with(&x, batch, &mut y32, &mut ws, Default::default())?;
        let paths32: Vec<Vec<u32>> = x
            .chunks(config.input_width)
            .map(|r| layer.route(r))
            .collect::<Result<_, _>>()?;
        for format in [WeightFormat::Bf16, WeightFormat::Int8] {
            let q = layer.quantize(format)?;
            let mut y = vec![0f32; y32.len()];
            q.forward_infer_with(&x, batch, &mut y, &mut ws, Default::default())?;
            let (mut moved, mut trees_seen, mut changed) = (0usize, 0usize, 0usize);
            let (mut err_kept, mut norm_kept, mut err_all, mut norm_all) = (0f64, 0f64, 0f64, 0f64);
            let cout = config.output_width;
            for (b, row) in x.chunks(config.input_width).enumerate() {
                let path = q.route(row)?;
                let levels = config.depth + 1;
                let mut row_moved = false;
                for t in 0..config.trees {
                    let span = t * levels..(t + 1) * levels;
                    trees_seen += 1;
                    if paths32[b][span.clone()] != path[span] {
                        changed += 1;
                        row_moved = true;
                    }
                }
                let (g, w) = (&y[b * cout..(b + 1) * cout], &y32[b * cout..(b + 1) * cout]);
                let e: f64 = g.iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                let n: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
                err_all += e;
                norm_all += n;
                if row_moved {
                    moved += 1;
                } else {
                    err_kept += e;
                    norm_kept += n;
                }
            }
            let row = serde_json::json!({
                "layer": name,
                "weights": format.name(),
                "inputs": batch,
                "inputs_path_moved": moved as f64 / batch as f64,
                "tree_paths_moved": changed as f64 / trees_seen.max(1) as f64,
                "output_rel_error_unmoved": (err_kept / norm_kept.max(f64::MIN_POSITIVE)).sqrt(),
                "output_rel_error_all": (err_all / norm_all.max(f64::MIN_POSITIVE)).sqrt(),
                "weight_bytes": q.weight_bytes(),
            });
            println!(
                "| {name} | {format} | {:.2}% | {:.3}% | {:.2e} | {:.2e} |",
                100.0 * moved as f64 / batch as f64,
                100.0 * changed as f64 / trees_seen.max(1) as f64,
                row["output_rel_error_unmoved"].as_f64().unwrap_or(f64::NAN),
                row["output_rel_error_all"].as_f64().unwrap_or(f64::NAN),
            );
            rows.push(row);
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/quantization_layers.json");
    fff_util::fs::write_atomic(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    println!("wrote docs/quantization_layers.json");
    Ok(())
}
