//! `fff demo`: the main job on built-in data, no network and no files: check the fast kernel and
//! the training op against the dense masked reference, time the kernel against a dense layer,
//! and train a small FFF net on the built-in spirals.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use fastfeedforward::kernels::reference;
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{
    Activation, DenseFf, Fff, FffConfig, InferOptions, Init, SimdLevel, Strategy, Workspace,
};
use fff_util::timing::{human, median_time};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Options of `fff demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Input and output width.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::WIDTH}>, default_value_t = 768)]
    width: usize,
    /// Tree depth D.
    #[arg(long, default_value_t = 11)]
    depth: usize,
    /// Number of trees K.
    #[arg(long, default_value_t = 1)]
    trees: usize,
    /// Node activation: gelu, identity, relu or tanh.
    #[arg(long, default_value = "gelu")]
    activation: Activation,
    /// Batch sizes to time.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, value_delimiter = ',', default_value = "1,128,2048")]
    batches: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::REPS}>, default_value_t = 15)]
    reps: usize,
    /// Kernel walk: auto, per-token, bucketed or grouped.
    #[arg(long, default_value = "auto")]
    strategy: Strategy,
    /// Random seed for weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of the training part on the built-in spirals (0 skips it).
    #[arg(long, default_value_t = 30)]
    train_epochs: usize,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let config = FffConfig {
        input_width: args.width,
        output_width: args.width,
        depth: args.depth,
        trees: args.trees,
        activation: args.activation,
    };
    config.validate()?;
    demo_memory(&config, &args.batches)
        .gemm_scratch(rayon::current_num_threads())
        .check(None, "--width, --depth, --trees or --batches")?;
    let layer = Fff::new(config, Init::Uniform, args.seed)?;
    let dense = DenseFf::new(
        args.width,
        config.total_nodes(),
        args.width,
        args.activation,
        args.seed,
    )?;
    outln!(
        "FFF {} ({} activation): width {}, {} neurons, {} used per input ({:.1}x fewer)",
        config.name(),
        config.activation,
        args.width,
        config.total_nodes(),
        config.used_nodes(),
        config.total_nodes() as f64 / config.used_nodes() as f64
    );
    outln!(
        "kernel: {} SIMD, {} threads",
        SimdLevel::detect().name(),
        rayon::current_num_threads()
    );

    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    check(&layer, &mut rng)?;

    outln!();
    outln!(
        "{:>7}  {:>14}  {:>14}  {:>9}",
        "batch",
        "FFF kernel",
        format!("dense {}", dense.hidden()),
        "speedup"
    );
    for &batch in &args.batches {
        let x = random(&mut rng, batch * args.width);
        let xt = Tensor::from_vec(x.clone(), (batch, args.width), &Device::Cpu)?;
        let mut y = vec![0f32; batch * args.width];
        let mut ws = Workspace::new();
        let opts = InferOptions {
            strategy: args.strategy,
            ..InferOptions::default()
        };
        let fff_time = median_time(3, args.reps, || {
            layer
                .forward_infer_with(&x, batch, &mut y, &mut ws, opts)
                .expect("shapes checked above");
        });
        let dense_reps = if batch >= 1024 {
            args.reps.min(5)
        } else {
            args.reps
        };
        let dense_time = median_time(1, dense_reps, || {
            dense.forward(&xt).expect("dense forward");
        });
        outln!(
            "{batch:>7}  {:>14}  {:>14}  {:>8.1}x",
            human(fff_time),
            human(dense_time),
            dense_time.as_secs_f64() / fff_time.as_secs_f64()
        );
    }
    outln!();
    outln!("(medians; speedup = dense time / FFF kernel time, measured side by side)");
    if args.train_epochs > 0 {
        train_spirals(args.train_epochs, args.seed)?;
    }
    Ok(())
}

/// Trains a small FFF net on the built-in spirals (3 classes in 2-D; a linear model cannot
/// separate them) on the O(depth) training op, and reports accuracy on held-out points.
fn train_spirals(epochs: usize, seed: u64) -> Result<()> {
    let data = fff_data::synthetic::spirals(3, 1000, 0.03, seed);
    let spec = "fff:2-32:d4:k4:identity, relu, linear:32-3";
    let model = fff_train::Model::new(spec, seed)?;
    let cfg = fff_train::TrainConfig {
        epochs,
        batch_size: 32,
        lr: 1e-2,
        seed,
        ..fff_train::TrainConfig::default()
    };
    outln!();
    outln!(
        "training `{spec}` ({} parameters) on built-in spirals ({} train / {} test points), AdamW lr 1e-2:",
        model.parameter_count(),
        data.train.len(),
        data.test.len()
    );
    let start = std::time::Instant::now();
    let history = fff_train::train(
        &model,
        &data,
        &cfg,
        fff_train::OnEpoch(|m: &fff_train::EpochMetrics| {
            if m.epoch == 1 || m.epoch.is_multiple_of(10) || m.epoch == epochs {
                outln!(
                    "  epoch {:>3}: train loss {:.4}, test accuracy {:.2}%",
                    m.epoch,
                    m.train_loss,
                    100.0 * m.test_accuracy.unwrap_or(f64::NAN)
                );
            }
        }),
    )?;
    let last = history.last().expect("at least one epoch");
    outln!(
        "trained in {}: test accuracy {:.2}% (chance: 33.3%)",
        human(start.elapsed()),
        100.0 * last.test_accuracy.unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Rows of the check against the dense masked reference.
const CHECK_ROWS: usize = 256;

/// The demo's largest buffers at once: both layers' weights, the check's dense reference
/// (every neuron of every row: its logits, their copy and mask, the activations and the masked
/// product, all alive at once), and the timing of the largest batch (inputs and outputs, the
/// dense layer's hidden activations, the kernel's copy of its top levels and their logits).
/// The spirals' small net is left out.
fn demo_memory(config: &FffConfig, batches: &[usize]) -> crate::limits::MemoryEstimate {
    let (nodes, width) = (config.total_nodes(), config.input_width);
    let batch = batches.iter().copied().max().unwrap_or(0);
    // The GEMM walk copies at most the top 12 levels of each tree, and holds at most 32 MiB of
    // their logits or 16 rows of them.
    let top = nodes.min(config.trees.saturating_mul(4095));
    let logits = (8usize << 20)
        .max(top.saturating_mul(16))
        .min(top.saturating_mul(batch));
    crate::limits::MemoryEstimate::default()
        .floats("FFF and dense weights", &[4, nodes, width])
        .floats("biases", &[2, nodes])
        .floats(
            &format!("the check's dense reference over {CHECK_ROWS} rows"),
            &[4, CHECK_ROWS, nodes],
        )
        .floats(
            "the check's inputs, outputs and node logits",
            &[CHECK_ROWS, 8 * width + 4 * config.used_nodes()],
        )
        .floats(
            &format!("the timed batch of {batch}: inputs and outputs"),
            &[4, batch, width],
        )
        .floats(
            &format!("the dense layer's hidden activations over {batch} rows"),
            &[3, batch, nodes],
        )
        .floats("the kernel's copy of the top levels", &[2, top, width])
        .floats("the kernel's top-level logits", &[logits])
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Checks the kernel and the training op against the dense masked reference on one batch.
fn check(layer: &Fff, rng: &mut StdRng) -> Result<()> {
    let c = *layer.config();
    let batch = CHECK_ROWS;
    let x = random(rng, batch * c.input_width);
    let xt = Tensor::from_vec(x.clone(), (batch, c.input_width), &Device::Cpu)?;
    let oracle = layer
        .forward_reference(&xt)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let train = layer.forward_train(&xt)?.flatten_all()?.to_vec1::<f32>()?;
    let mut fast = vec![0f32; batch * c.output_width];
    layer.forward_infer_with(
        &x,
        batch,
        &mut fast,
        &mut Workspace::new(),
        InferOptions::default(),
    )?;
    // Rows that pass within 1e-4 of a decision boundary may route differently under another
    // summation order; they are counted, not compared.
    let mut near_tie = 0;
    let mut non_finite = 0usize;
    let (mut err_fast, mut err_train, mut scale) = (0f32, 0f32, 0f32);
    for b in 0..batch {
        let xb = &x[b * c.input_width..(b + 1) * c.input_width];
        let margin = layer.with_view(|w| {
            let m = c.nodes_per_tree();
            reference::route(&w, xb)
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let row = (i / (c.depth + 1)) * m + n as usize;
                    reference::node_logit(&w, row, xb).abs()
                })
                .fold(f32::INFINITY, f32::min)
        })?;
        if margin < 1e-4 {
            near_tie += 1;
            continue;
        }
        let rows = b * c.output_width..(b + 1) * c.output_width;
        for ((o, f), t) in oracle[rows.clone()]
            .iter()
            .zip(&fast[rows.clone()])
            .zip(&train[rows])
        {
            // `f32::max` ignores NaN, so non-finite values are counted apart.
            non_finite += usize::from(!(o.is_finite() && f.is_finite() && t.is_finite()));
            err_fast = err_fast.max((o - f).abs());
            err_train = err_train.max((o - t).abs());
            scale = scale.max(o.abs());
        }
    }
    let tol = 1e-4 * scale.max(1.0);
    outln!(
        "check vs dense masked reference ({batch} inputs): kernel max |err| {err_fast:.2e}, \
         training op max |err| {err_train:.2e} (output scale {scale:.2}), {near_tie} near-tie rows"
    );
    ensure!(
        non_finite == 0,
        "{non_finite} output values are not finite (NaN or infinite)"
    );
    // Excused rows are routing flips at |z| < 1e-4: rare on random data; many means a bug.
    ensure!(
        near_tie <= batch / 50,
        "{near_tie} of {batch} rows excused as near ties: more than 2% is no longer rounding"
    );
    ensure!(
        err_fast <= tol && err_train <= tol,
        "kernel or training op disagrees with the reference beyond {tol:.1e}"
    );
    outln!("check: PASS");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fff_util::memory::Limit;

    #[test]
    fn the_demo_counts_the_checks_dense_reference() {
        // Width 8, depth 20: 2 M neurons. The weights are small, but the check's reference
        // holds 256 rows of every neuron four times over: 8 GiB, past a 7 GB cap.
        let deep = FffConfig::new(8, 8, 20, 1);
        let estimate = demo_memory(&deep, &[1]);
        let nodes = (1u128 << 21) - 1;
        assert!(estimate.total() > 4 * 4 * 256 * nodes, "{estimate:?}");
        let cap = Limit {
            bytes: 7_000_000 * 1024,
            source: "the address-space limit RLIMIT_AS (ulimit -v)".into(),
            counts_reserved: true,
        };
        let err = estimate
            .check(Some(cap.clone()), "--width, --depth, --trees or --batches")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the check's dense reference over 256 rows 8.0 GiB")
                && err.contains("RLIMIT_AS")
                && err.contains("lower --width, --depth, --trees or --batches"),
            "{err}"
        );
        // The default demo fits easily.
        let default = FffConfig::new(768, 768, 11, 1);
        demo_memory(&default, &[1, 128, 2048])
            .check(Some(cap), "--x")
            .unwrap();
        assert!(demo_memory(&default, &[1, 128, 2048]).total() < 1 << 30);
    }
}
