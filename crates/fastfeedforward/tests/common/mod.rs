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

/// How far an f32 evaluation of `w·x + b` can be from its exact value. A dot product of `n`
/// terms summed in f32, in any order and blocking, with or without FMA, is within
/// `n·u·Σ|w_i·x_i|` of it to first order (`u = ε/2`), and adding the bias rounds once more; this
/// is twice that, `(n+2)·ε·(Σ|w_i·x_i| + |b|)`, to cover the higher-order terms and the
/// reference's own rounding to f32. Two correct implementations can send an input different
/// ways only at a decision whose exact `|z|` is below it.
pub fn tie_tolerance(w: &[f32], b: f32, x: &[f32]) -> f64 {
    let magnitude: f64 = w
        .iter()
        .zip(x)
        .map(|(&a, &v)| (a as f64 * v as f64).abs())
        .sum::<f64>()
        + (b as f64).abs();
    (w.len() + 2) as f64 * f32::EPSILON as f64 * magnitude
}

/// Whether a decision value `z` (exact, in f64) is within `tolerance` of the boundary. Strict, so
/// that a forced tie (zero weights and bias: `z = 0`, tolerance 0) is never excused: it must go
/// left.
pub fn is_near_tie(z: f64, tolerance: f64) -> bool {
    z.abs() < tolerance
}

/// The most rows of `rows` that one comparison may excuse as near-tie flips: 2%, and at least
/// one, so that a lone flip in a small batch is not a failure but a pattern of them is.
pub fn max_excused(rows: usize) -> usize {
    rows.div_ceil(50).max(1)
}

/// Fails when a comparison of `rows` rows excused more than [`max_excused`] of them.
pub fn assert_excused_within_cap(excused: usize, rows: usize, what: &str) {
    assert!(
        excused <= max_excused(rows),
        "{what}: {excused} of {rows} rows excused as near-tie flips, more than the {} allowed",
        max_excused(rows)
    );
}

/// Whether `got` matches `want` within the tests' tolerance for a row of this layer: relative to
/// the row's largest value, growing with the square root of the input width. NaN against a
/// number never matches (`f32::max` would skip a NaN difference).
pub fn row_matches(got: &[f32], want: &[f32], input_width: usize) -> bool {
    let scale = 1.0 + want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (&a, &b)| {
        m.max(match (a.is_nan(), b.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (a - b).abs(),
            _ => f32::INFINITY,
        })
    });
    got.len() == want.len() && err <= 2e-5 * scale * (input_width as f32).sqrt().max(1.0)
}

/// Decision value of global node `row` in f64 (not rounded), and its [`tie_tolerance`].
fn exact_logit(w: &FffWeightsView<'_>, row: usize, x: &[f32]) -> (f64, f64) {
    let wr = w.w_in_row(row);
    let dot: f64 = wr.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    (dot + w.b_in[row] as f64, tie_tolerance(wr, w.b_in[row], x))
}

/// Most admissible paths one input may have: more would mean the test's inputs sit on
/// boundaries by construction, which the tie tests check exactly instead.
const MAX_PATHS: usize = 64;

/// Every path (`K·(D+1)` local nodes, as [`Fff::route`] lays them out) that a correct
/// implementation may take for `x`: the plain descent's, first, and those that leave it only at
/// near-tie decisions ([`is_near_tie`]), below which they descend by the rule again.
pub fn admissible_paths(w: &FffWeightsView<'_>, x: &[f32]) -> Vec<Vec<u32>> {
    let c = w.config;
    let m = c.nodes_per_tree();
    let mut all: Vec<Vec<u32>> = vec![Vec::new()];
    for t in 0..c.trees {
        // Depth first, the rule's child before the other, so the plain descent comes first.
        let mut tree_paths = Vec::new();
        let mut stack = vec![vec![0u32]];
        while let Some(path) = stack.pop() {
            let node = *path.last().expect("a root") as usize;
            if path.len() == c.depth + 1 {
                tree_paths.push(path);
                continue;
            }
            let (z, tol) = exact_logit(w, t * m + node, x);
            let taken = fastfeedforward::tree::child(node, z as f32) as u32;
            let other = (4 * node as u32 + 3) - taken;
            if is_near_tie(z, tol) {
                let mut alt = path.clone();
                alt.push(other);
                stack.push(alt);
            }
            let mut next = path;
            next.push(taken);
            stack.push(next);
        }
        all = all
            .iter()
            .flat_map(|prefix| {
                tree_paths.iter().map(move |p| {
                    let mut full = prefix.clone();
                    full.extend(p);
                    full
                })
            })
            .collect();
        assert!(all.len() <= MAX_PATHS, "{} admissible paths", all.len());
    }
    all
}

/// The layer's output for `x` along `path` (local nodes, tree-major), accumulated in f64 with
/// each node's activation taken of its f32 logit, as the reference descent does.
pub fn output_along(w: &FffWeightsView<'_>, x: &[f32], path: &[u32]) -> Vec<f64> {
    let c = w.config;
    let m = c.nodes_per_tree();
    let mut y = vec![0f64; c.output_width];
    for (i, &n) in path.iter().enumerate() {
        let row = (i / (c.depth + 1)) * m + n as usize;
        let a = c.activation.apply(reference::node_logit(w, row, x)) as f64;
        for (o, &v) in y.iter_mut().zip(w.w_out_row(row)) {
            *o += a * v as f64;
        }
    }
    y
}

/// What each row of a batch may be: its admissible paths and the output along each.
pub struct Expected {
    input_width: usize,
    output_width: usize,
    paths: Vec<Vec<Vec<u32>>>,
    /// Rounded to f32 to halve the memory of large batches; far below the tolerance.
    outputs: Vec<Vec<Vec<f32>>>,
}

impl Expected {
    /// The expectations for `batch` rows of `x` through `layer`.
    pub fn new(layer: &Fff, x: &[f32], batch: usize) -> Self {
        let c = *layer.config();
        let (paths, outputs) = layer
            .with_view(|w| {
                x.chunks(c.input_width)
                    .take(batch)
                    .map(|xb| {
                        let paths = admissible_paths(&w, xb);
                        let outputs = paths
                            .iter()
                            .map(|p| output_along(&w, xb, p).iter().map(|&v| v as f32).collect())
                            .collect();
                        (paths, outputs)
                    })
                    .unzip()
            })
            .unwrap();
        Expected {
            input_width: c.input_width,
            output_width: c.output_width,
            paths,
            outputs,
        }
    }

    /// The plain descent's output, row by row.
    pub fn reference(&self) -> Vec<f32> {
        self.outputs.iter().flat_map(|o| o[0].clone()).collect()
    }

    /// Holds `got` to the expectations and returns how many rows took a path other than the
    /// plain descent's (near-tie flips). With `routes` (the paths the implementation reports,
    /// `[batch, K·(D+1)]`), each row's path must be admissible and its output the one along
    /// that path; without, each row's output must be the one along some admissible path. Fails
    /// on any other difference and when more rows flipped than [`max_excused`] allows.
    pub fn check(&self, got: &[f32], routes: Option<&[u32]>, what: &str) -> usize {
        let batch = self.paths.len();
        assert_eq!(
            got.len(),
            batch * self.output_width,
            "{what}: output length"
        );
        let per_row = self.paths.first().map_or(0, |p| p[0].len());
        if let Some(r) = routes {
            assert_eq!(r.len(), batch * per_row, "{what}: routes length");
        }
        let mut excused = 0;
        for (b, (paths, outputs)) in self.paths.iter().zip(&self.outputs).enumerate() {
            let g = &got[b * self.output_width..(b + 1) * self.output_width];
            let which = match routes {
                Some(r) => {
                    let route = &r[b * per_row..(b + 1) * per_row];
                    let which = paths.iter().position(|p| p == route).unwrap_or_else(|| {
                        panic!(
                            "{what}: row {b} took {route:?}, which leaves the reference's \
                             {:?} at a decision that is not a near tie",
                            paths[0]
                        )
                    });
                    assert!(
                        row_matches(g, &outputs[which], self.input_width),
                        "{what}: row {b} took {route:?} but its output {g:?} is not the one \
                         along it, {:?}",
                        outputs[which]
                    );
                    which
                }
                None => outputs
                    .iter()
                    .position(|o| row_matches(g, o, self.input_width))
                    .unwrap_or_else(|| {
                        panic!(
                            "{what}: row {b} is {g:?}, not the output {:?} of the reference's \
                             path {:?} nor of any of its {} near-tie alternatives",
                            outputs[0],
                            paths[0],
                            paths.len() - 1
                        )
                    }),
            };
            if which != 0 {
                excused += 1;
            }
        }
        assert_excused_within_cap(excused, batch, what);
        excused
    }
}

/// A [batch, width] tensor from a flat vector.
pub fn tensor(v: Vec<f32>, batch: usize, width: usize) -> Tensor {
    Tensor::from_vec(v, (batch, width), &Device::Cpu).unwrap()
}

/// Flat contents of a tensor.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}
