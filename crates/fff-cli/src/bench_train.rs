//! `fff bench train`: one training step of an FFF layer on the O(depth) op against the dense
//! masked formulation UltraFastBERT trains with, run as a good PyTorch implementation runs it
//! (SGEMMs, bias, mask and activation fused into one pass). Both sides are first checked against
//! each other, outputs and every gradient, at the timed shape.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{Activation, Fff, FffConfig, Init, SoftRouting, TrainStep};
use fff_bench::check::TOLERANCE;
use fff_bench::train::{check_train_sides, masked_dense_forward, TrainSide, COMPARED};
use fff_train::optim::{Optimizer, ParamsAdamW};
use fff_util::timing::{human_seconds, median};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
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
    /// Random seed for the inputs and targets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also time soft-to-hard training steps with this many soft levels each (comma-separated;
    /// empty for none), against the O(depth) op.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    soft_levels: Vec<usize>,
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    ensure!(
        args.batch > 0 && args.reps > 0,
        "--batch and --reps must be at least 1"
    );
    let config = FffConfig::new(args.width, args.width, args.depth, args.trees)
        .with_activation(Activation::Gelu);
    config.validate()?;
    let nodes = config.total_nodes();
    crate::limits::MemoryEstimate::default()
        .floats(
            "weights, gradients and AdamW moments",
            &[8, nodes, args.width],
        )
        .floats(
            "inputs, targets, outputs and their gradients",
            &[8, args.batch, args.width],
        )
        .floats(
            "dense masked logits, activations and gradients",
            &[3, args.batch, nodes],
        )
        .check(None, "--width, --depth, --trees or --batch")?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut rng)).collect() };
    let x_data = draw(args.batch * args.width);
    let target_data = draw(args.batch * args.width);
    let x = Tensor::from_slice(&x_data, (args.batch, args.width), &Device::Cpu)?;
    let target = Tensor::from_slice(&target_data, (args.batch, args.width), &Device::Cpu)?;
    outln!(
        "training step (forward, MSE loss, backward, AdamW) of an FFF {} layer, width {}, batch {}, {} threads",
        config.name(),
        args.width,
        args.batch,
        rayon::current_num_threads()
    );
    let o_depth: TrainSide = &|layer, x| Ok(layer.forward_train(x)?);
    let masked: TrainSide = &masked_dense_forward;
    let sides = [
        ("O(depth) training op", o_depth),
        ("dense masked (SGEMMs, fused mask)", masked),
    ];

    // The check runs at the timed shape: one more forward and backward pass per side.
    let layer = Fff::new(config, Init::Uniform, 0)?;
    let check = check_train_sides(&layer, &x_data, &target_data, o_depth, masked, TOLERANCE)?;
    let errs: Vec<String> = COMPARED
        .iter()
        .zip(check.max_err)
        .map(|(name, e)| format!("{name} {e:.1e}"))
        .collect();
    outln!(
        "check at the timed shape, O(depth) op vs dense masked: {} ({} of {} rows excused as near \
         ties); allowed {TOLERANCE:e} relative",
        errs.join(", "),
        check.excused,
        check.rows
    );
    if let Some(why) = &check.failure {
        anyhow::bail!("the two sides of `fff bench train` disagree, so neither is timed: {why}");
    }

    // The soft sides, checked at the timed shape: at a temperature of 1e-6 they must route and
    // compute as the O(depth) op, up to rows near a tie.
    let soft_sides: Vec<(String, SoftRouting)> = args
        .soft_levels
        .iter()
        .map(|&levels| {
            (
                format!(
                    "soft-to-hard, {levels} soft level{}",
                    if levels == 1 { "" } else { "s" }
                ),
                SoftRouting {
                    levels,
                    temperature: 1.0,
                },
            )
        })
        .collect();
    for (name, routing) in &soft_sides {
        let cold = SoftRouting {
            temperature: 1e-6,
            ..*routing
        };
        let hard = layer.forward_train(&x)?.to_vec2::<f32>()?;
        let soft = layer
            .forward_step(&x, &mut TrainStep::default().with_soft_routing(Some(cold)))?
            .to_vec2::<f32>()?;
        let differ = hard
            .iter()
            .zip(&soft)
            .filter(|(h, s)| {
                h.iter()
                    .zip(*s)
                    .any(|(a, b)| (a - b).abs() > 1e-3 * (1.0 + a.abs()))
            })
            .count();
        outln!(
            "check at the timed shape, {name} at T = 1e-6 vs the O(depth) op: {differ} of {} rows differ",
            args.batch
        );
        ensure!(
            differ * 100 <= args.batch,
            "{name} at T = 1e-6 differs from the O(depth) op in {differ} of {} rows, so it is \
             not timed",
            args.batch
        );
    }

    let mut results = Vec::new();
    for (name, side) in sides {
        let layer = Fff::new(config, Init::Uniform, 0)?;
        let mut opt = Optimizer::adamw(layer.vars(), ParamsAdamW::default());
        let mut step = || -> Result<f64> {
            let start = Instant::now();
            let y = side(&layer, &x)?;
            let loss = (y - &target)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?, 1.0)?;
            Ok(start.elapsed().as_secs_f64())
        };
        step()?;
        let times = (0..args.reps).map(|_| step()).collect::<Result<Vec<_>>>()?;
        let t = median(times);
        outln!("  {name:<34} {:>12} per step", human_seconds(t));
        results.push(t);
    }
    outln!(
        "speedup of the O(depth) op over the dense masked formulation: {:.1}x (same run, medians)",
        results[1] / results[0]
    );
    for (name, routing) in &soft_sides {
        let layer = Fff::new(config, Init::Uniform, 0)?;
        let mut opt = Optimizer::adamw(layer.vars(), ParamsAdamW::default());
        let mut step = || -> Result<f64> {
            let start = Instant::now();
            let mut ts = TrainStep::default().with_soft_routing(Some(*routing));
            let y = layer.forward_step(&x, &mut ts)?;
            let loss = (y - &target)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?, 1.0)?;
            Ok(start.elapsed().as_secs_f64())
        };
        step()?;
        let times = (0..args.reps).map(|_| step()).collect::<Result<Vec<_>>>()?;
        let t = median(times);
        outln!(
            "  {name:<34} {:>12} per step, {:.2}x the O(depth) op's",
            human_seconds(t),
            t / results[0]
        );
    }
    Ok(())
}
