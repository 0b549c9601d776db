//! `fff bench train`: one training step of an FFF layer on the O(depth) op against the dense
//! masked formulation UltraFastBERT trains with.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{Activation, Fff, FffConfig, Init};
use fff_train::optim::{Optimizer, ParamsAdamW};
use fff_util::timing::{human_seconds, median};
use std::time::Instant;

/// Options of `fff bench train`.
#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    /// Input and output width.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::WIDTH}>, default_value_t = 768)]
    width: usize,
    /// Tree depth.
    #[arg(long, default_value_t = 11)]
    depth: usize,
    /// Trees.
    #[arg(long, default_value_t = 1)]
    trees: usize,
    /// Inputs per step.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Timed steps per implementation (after one warm-up step); the median is reported.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::REPS}>, default_value_t = 5)]
    reps: usize,
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    ensure!(
        args.batch > 0 && args.reps > 0,
        "--batch and --reps must be at least 1"
    );
    let config = FffConfig::new(args.width, args.width, args.depth, args.trees)
        .with_activation(Activation::Gelu);
    let x = Tensor::randn(0f32, 1.0, (args.batch, args.width), &Device::Cpu)?;
    let target = Tensor::randn(0f32, 1.0, (args.batch, args.width), &Device::Cpu)?;
    outln!(
        "training step (forward, MSE loss, backward, AdamW) of an FFF {} layer, width {}, batch {}, {} threads",
        config.name(),
        args.width,
        args.batch,
        rayon::current_num_threads()
    );
    let mut results = Vec::new();
    for (name, dense_masked) in [
        ("O(depth) training op", false),
        ("dense masked (UltraFastBERT)", true),
    ] {
        let layer = Fff::new(config, Init::Uniform, 0)?;
        let mut opt = Optimizer::adamw(layer.vars(), ParamsAdamW::default());
        let mut step = || -> Result<f64> {
            let start = Instant::now();
            let y = if dense_masked {
                layer.forward_reference(&x)?
            } else {
                layer.forward_train(&x)?
            };
            let loss = (y - &target)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?, 1.0)?;
            Ok(start.elapsed().as_secs_f64())
        };
        step()?;
        let times = (0..args.reps).map(|_| step()).collect::<Result<Vec<_>>>()?;
        let t = median(times);
        outln!("  {name:<30} {:>12} per step", human_seconds(t));
        results.push(t);
    }
    outln!(
        "speedup of the O(depth) op over the dense masked formulation: {:.1}x (same run, medians)",
        results[1] / results[0]
    );
    Ok(())
}
