//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use fastfeedforward::kernels::{reference, FffWeightsView};
use fastfeedforward::{Activation, Fff, FffConfig, Init};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// A seeded generator.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` standard-normal floats.
pub fn normal_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// A layer whose logits are O(1) for standard-normal inputs (uniform init, random biases).
pub fn random_layer(config: FffConfig, seed: u64) -> Fff {
    Fff::new(config, Init::Uniform, seed).unwrap()
}

/// A random config within the given limits, keeping the weights small enough for fast tests.
pub fn random_config(rng: &mut StdRng, max_depth: usize, max_trees: usize) -> FffConfig {
    const WIDTHS: [usize; 12] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 100, 1100];
    loop {
        let depth = rng.random_range(0..=max_depth);
        let trees = rng.random_range(1..=max_trees);
        let input_width = WIDTHS[rng.random_range(0..WIDTHS.len())];
        let output_width = WIDTHS[rng.random_range(0..WIDTHS.len())];
        let activation = Activation::ALL[rng.random_range(0..Activation::ALL.len())];
        let c = FffConfig {
            input_width,
            output_width,
            depth,
            trees,
            activation,
        };
        if c.total_nodes() * (input_width + output_width) <= 3_000_000 {
            return c;
        }
    }
}

/// Smallest |z| over the nodes an input visits (plain f64 reference): how close it is to a flip.
pub fn min_abs_logit_on_path(layer: &Fff, x: &[f32]) -> f32 {
    layer
        .with_view(|w| {
            let c = w.config;
            let m = c.nodes_per_tree();
            let path = reference::route(&w, x);
            path.iter()
                .enumerate()
                .map(|(i, &n)| {
                    let row = (i / (c.depth + 1)) * m + n as usize;
                    reference::node_logit(&w, row, x).abs()
                })
                .fold(f32::INFINITY, f32::min)
        })
        .unwrap()
}

/// Reference output of the plain descent.
pub fn reference_output(layer: &Fff, x: &[f32], batch: usize) -> Vec<f32> {
    let mut y = vec![0f32; batch * layer.config().output_width];
    layer
        .with_view(|w: FffWeightsView<'_>| reference::forward(&w, x, batch, &mut y))
        .unwrap()
        .unwrap();
    y
}

/// Compares outputs row by row. Rows may differ only where the input sits within `tie_margin`
/// of a decision boundary (a routing flip caused by summation order); returns how many did.
/// Panics on any other mismatch.
pub fn assert_rows_close(
    layer: &Fff,
    x: &[f32],
    got: &[f32],
    want: &[f32],
    tie_margin: f32,
    what: &str,
) -> usize {
    let c = layer.config();
    let mut flips = 0;
    for (b, (g, w)) in got
        .chunks(c.output_width)
        .zip(want.chunks(c.output_width))
        .enumerate()
    {
        let scale = 1.0 + w.iter().fold(0f32, |m, v| m.max(v.abs()));
        // NaN against a number is an infinite error (f32::max would skip a NaN difference).
        let err = g.iter().zip(w).fold(0f32, |m, (a, b)| {
            m.max(match (a.is_nan(), b.is_nan()) {
                (true, true) => 0.0,
                (false, false) => (a - b).abs(),
                _ => f32::INFINITY,
            })
        });
        if err <= 2e-5 * scale * (c.input_width as f32).sqrt().max(1.0) {
            continue;
        }
        let xb = &x[b * c.input_width..(b + 1) * c.input_width];
        let margin = min_abs_logit_on_path(layer, xb);
        assert!(
            margin < tie_margin,
            "{what}: row {b} differs by {err} (scale {scale}) and is not near a tie \
             (min |z| on path {margin}); config {c:?}"
        );
        flips += 1;
    }
    flips
}

/// A [batch, width] tensor from a flat vector.
pub fn tensor(v: Vec<f32>, batch: usize, width: usize) -> Tensor {
    Tensor::from_vec(v, (batch, width), &Device::Cpu).unwrap()
}

/// Flat contents of a tensor.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}
