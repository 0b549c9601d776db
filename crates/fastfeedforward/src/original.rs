//! The original Fast Feedforward Network (Belcak & Wattenhofer, "Fast Feedforward Networks",
//! 2023; the `fastfeedforward` Python package): a routing tree of `2^D − 1` node neurons
//! `p = σ(w·x + b)` over `2^D` leaves, each a small MLP `act(x·W1 + b1)·W2 + b2` of width `ℓ`.
//!
//! Training mixes all leaves, each weighted by the product along its path of `p` (right) or
//! `1 − p` (left), computed here in log space (`log σ(z)`, `log σ(−z)`) so deep trees do not
//! underflow; optionally with hard decisions, region leaks (each decision flipped with
//! probability `r`) and the mean node entropy for a hardening loss. Inference descends hard
//! (right when `w·x + b ≥ 0`, as the package does) and runs one leaf per input, with inputs
//! grouped by leaf so each leaf's weights are read once per batch. Unlike the package's `naive`
//! evaluation, the leaf bias `b2` is always added.
//!
//! Parameter names and shapes are the package's: `node_weights [2^D−1, in]`,
//! `node_biases [2^D−1, 1]`, `w1s [2^D, in, ℓ]`, `b1s [2^D, ℓ]`, `w2s [2^D, ℓ, out]`,
//! `b2s [2^D, out]`.

use crate::conditional::{ConditionalLayer, Route, Routing, TrainStep};
use crate::config::Activation;
use crate::error::{check_rows, FffError, Result};
use crate::kernels::simd::{axpy_f32, dot_f32};
use crate::kernels::Workspace;
use crate::tree::{path_with, Tie};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Shape and training options of an [`OriginalFff`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OriginalFffConfig {
    /// Input width.
    pub input_width: usize,
    /// Width `ℓ` of each leaf's hidden layer.
    pub leaf_width: usize,
    /// Output width.
    pub output_width: usize,
    /// Tree depth `D`: `2^D` leaves, `2^D − 1` nodes.
    pub depth: usize,
    /// Activation inside the leaves (the package's default is ReLU).
    pub activation: Activation,
    /// Probability of flipping each decision during training (0 = off).
    pub region_leak: f64,
    /// Train with hard (rounded) decisions, as the package's `train_hardened`.
    pub train_hardened: bool,
    /// Weight `h` of the hardening loss added in training: `h` × mean node entropy (0 = off).
    pub hardening: f64,
}

impl OriginalFffConfig {
    /// A config with the package's defaults (ReLU leaves, no leak, soft training).
    pub fn new(input_width: usize, leaf_width: usize, output_width: usize, depth: usize) -> Self {
        OriginalFffConfig {
            input_width,
            leaf_width,
            output_width,
            depth,
            activation: Activation::Relu,
            region_leak: 0.0,
            train_hardened: false,
            hardening: 0.0,
        }
    }

    /// Number of routing nodes, `2^D − 1`.
    pub fn nodes(&self) -> usize {
        (1usize << self.depth) - 1
    }

    /// Number of leaves, `2^D`.
    pub fn leaves(&self) -> usize {
        1usize << self.depth
    }

    /// Checks widths, depth and probabilities.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &'static str, message: String| Err(FffError::InvalidConfig { field, message });
        if self.input_width == 0 || self.leaf_width == 0 || self.output_width == 0 {
            return bad(
                "widths",
                "input, leaf and output widths must be at least 1".into(),
            );
        }
        if self.depth > 16 {
            return bad(
                "depth",
                format!("= {} is more than 16 (65536 leaves)", self.depth),
            );
        }
        if !(self.hardening.is_finite() && self.hardening >= 0.0) {
            return bad(
                "hardening",
                format!("= {} must be a finite number >= 0", self.hardening),
            );
        }
        if !(0.0..=1.0).contains(&self.region_leak) {
            return bad(
                "region_leak",
                format!("= {} must be in [0, 1]", self.region_leak),
            );
        }
        Ok(())
    }

    /// Parameter count.
    pub fn parameters(&self) -> usize {
        let (n, l) = (self.nodes(), self.leaves());
        n * (self.input_width + 1)
            + l * (self.input_width * self.leaf_width
                + self.leaf_width
                + self.leaf_width * self.output_width
                + self.output_width)
    }

    /// Neurons evaluated per input at inference: `D` nodes and one leaf's `ℓ` hidden units.
    pub fn used_neurons(&self) -> usize {
        self.depth + self.leaf_width
    }
}

/// Names of the parameters, in the package's order.
pub const ORIGINAL_NAMES: [&str; 6] = ["node_weights", "node_biases", "w1s", "b1s", "w2s", "b2s"];

/// The original FFF layer.
#[derive(Clone, Debug)]
pub struct OriginalFff {
    config: OriginalFffConfig,
    params: [Var; 6],
}

/// What a training forward returns besides the output.
#[derive(Clone, Debug)]
pub struct SoftForward {
    /// `[B, out]`.
    pub output: Tensor,
    /// Mean over the batch of each node's decision entropy, `[N]` (the hardening loss is its
    /// mean times the hardening weight). Empty for depth 0.
    pub node_entropies: Tensor,
    /// Leaf weights `[B, 2^D]`.
    pub mixture: Tensor,
}

impl OriginalFff {
    fn shapes(c: &OriginalFffConfig) -> [Vec<usize>; 6] {
        let (n, l) = (c.nodes(), c.leaves());
        let (i, w, o) = (c.input_width, c.leaf_width, c.output_width);
        [
            vec![n, i],
            vec![n, 1],
            vec![l, i, w],
            vec![l, w],
            vec![l, w, o],
            vec![l, o],
        ]
    }

    /// A layer initialised as the package does: uniform `±1/√in` for nodes, `w1s`, `b1s`, and
    /// `±1/√ℓ` for `w2s`, `b2s`.
    pub fn new(config: OriginalFffConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let k1 = (1.0 / config.input_width as f64).sqrt();
        let k2 = (1.0 / config.leaf_width as f64).sqrt();
        let shapes = Self::shapes(&config);
        let mut make = |i: usize| -> Result<Var> {
            let k = if i >= 4 { k2 } else { k1 };
            let n: usize = shapes[i].iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-k..=k) as f32).collect();
            Ok(Var::from_vec(v, shapes[i].as_slice(), &Device::Cpu)?)
        };
        let params = [make(0)?, make(1)?, make(2)?, make(3)?, make(4)?, make(5)?];
        Ok(OriginalFff { config, params })
    }

    /// A layer from tensors named `{prefix}node_weights` etc.; `source` names the file in errors.
    pub fn from_tensors(
        config: OriginalFffConfig,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<Self> {
        config.validate()?;
        let shapes = Self::shapes(&config);
        let mut vars = Vec::with_capacity(6);
        for (name, shape) in ORIGINAL_NAMES.iter().zip(&shapes) {
            let values = crate::checkpoint::checked_values(tensors, prefix, name, shape, source)?;
            vars.push(Var::from_vec(values, shape.as_slice(), &Device::Cpu)?);
        }
        let params: [Var; 6] = vars.try_into().expect("six parameters");
        Ok(OriginalFff { config, params })
    }

    /// The config.
    pub fn config(&self) -> &OriginalFffConfig {
        &self.config
    }

    /// The training forward (differentiable): all leaves mixed by their path weights. With
    /// `hard`, decisions are rounded (no gradient reaches the nodes, as in the package). With
    /// `leak_seed`, each decision is flipped with probability `region_leak`.
    pub fn forward_soft(
        &self,
        x: &Tensor,
        hard: bool,
        leak_seed: Option<u64>,
    ) -> Result<SoftForward> {
        let c = &self.config;
        let (b, cin) = x.dims2()?;
        if cin != c.input_width {
            return Err(FffError::shape("input", &[b, c.input_width], &[b, cin]));
        }
        let (n, l, dev) = (c.nodes(), c.leaves(), &Device::Cpu);
        let [nw, nb, w1s, b1s, w2s, b2s] = &self.params;
        let (mixture, node_entropies) = if n == 0 {
            (
                Tensor::ones((b, 1), DType::F32, dev)?,
                Tensor::zeros(0, DType::F32, dev)?,
            )
        } else {
            let z = x
                .matmul(&nw.as_tensor().t()?)?
                .broadcast_add(&nb.as_tensor().t()?)?; // [B, N]
                                                       // log σ(z) = −softplus(−z), log σ(−z) = −softplus(z), in a stable form.
            let softplus = |t: &Tensor| -> Result<Tensor> {
                Ok((t.relu()? + (t.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
            };
            let mut log_right = softplus(&z.neg()?)?.neg()?;
            let mut log_left = softplus(&z)?.neg()?;
            let p = candle_nn::ops::sigmoid(&z)?;
            let eps = 1e-6;
            let pc = p.clamp(eps, 1.0 - eps)?;
            let qc = (1.0 - &p)?.clamp(eps, 1.0 - eps)?;
            let entropy = ((&pc * pc.log()?)? + (&qc * qc.log()?)?)?.neg()?;
            let node_entropies = entropy.mean(0)?;
            if c.region_leak > 0.0 {
                if let Some(seed) = leak_seed {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let flips: Vec<f32> = (0..b * n)
                        .map(|_| f32::from(rng.random::<f64>() < c.region_leak))
                        .collect();
                    let f = Tensor::from_vec(flips, (b, n), dev)?;
                    let keep = (1.0 - &f)?;
                    let (r, lft) = (log_right.clone(), log_left.clone());
                    log_right = ((&keep * &r)? + (&f * &lft)?)?;
                    log_left = ((&keep * &lft)? + (&f * &r)?)?;
                }
            }
            if hard || c.train_hardened {
                // torch.round: p = 0.5 rounds to 0 (left). No gradient reaches the nodes.
                let right = log_right.exp()?.gt(0.5)?.to_dtype(DType::F32)?.detach();
                let ones = Tensor::ones_like(&right)?;
                // log 1 = 0 and log 0 = −∞ would poison gradients; use the mask directly.
                let cols = Tensor::cat(&[(&ones - &right)?, right], 1)?; // [B, 2N]: left | right
                let mut mixture = Tensor::ones((b, l), DType::F32, dev)?;
                for idx in path_columns(c.depth, n, dev)? {
                    mixture = (mixture * cols.index_select(&idx, 1)?)?;
                }
                (mixture, node_entropies)
            } else {
                let cols = Tensor::cat(&[log_left, log_right], 1)?; // [B, 2N]
                let mut log_mix = Tensor::zeros((b, l), DType::F32, dev)?;
                for idx in path_columns(c.depth, n, dev)? {
                    log_mix = (log_mix + cols.index_select(&idx, 1)?)?;
                }
                (log_mix.exp()?, node_entropies)
            }
        };
        // Every leaf on every input: [B, L·ℓ] = x · w1s laid out as [in, L·ℓ].
        let (lw, cout) = (c.leaf_width, c.output_width);
        let w1 = w1s.as_tensor().permute((1, 0, 2))?.reshape((cin, l * lw))?;
        let h = x
            .matmul(&w1)?
            .broadcast_add(&b1s.as_tensor().reshape(l * lw)?)?;
        let h = c.activation.apply_tensor(&h)?;
        let h = h.reshape((b, l, lw))?.transpose(0, 1)?.contiguous()?; // [L, B, ℓ]
        let leaf_out = h
            .matmul(w2s.as_tensor())?
            .broadcast_add(&b2s.as_tensor().unsqueeze(1)?)?; // [L, B, out]
        let weighted = leaf_out.broadcast_mul(&mixture.t()?.unsqueeze(D::Minus1)?)?;
        let output = weighted.sum(0)?;
        debug_assert_eq!(output.dims(), &[b, cout]);
        Ok(SoftForward {
            output,
            node_entropies,
            mixture,
        })
    }

    /// Runs `f` on borrowed views of the six parameters (no copy), in the package's order.
    fn with_params<R>(&self, f: impl FnOnce([&[f32]; 6]) -> R) -> Result<R> {
        let guards: Vec<_> = self.params.iter().map(|v| v.storage_and_layout()).collect();
        let mut slices = Vec::with_capacity(6);
        for ((s, l), name) in guards.iter().zip(ORIGINAL_NAMES) {
            slices.push(crate::layer::cpu_f32(s, l, name)?);
        }
        Ok(f(slices.try_into().expect("six parameters")))
    }

    /// The leaf input `x` reaches by hard descent (right when `w·x + b ≥ 0`), and the node
    /// logits on its path.
    pub fn route(&self, x: &[f32]) -> Result<(usize, Vec<f32>)> {
        let mut r = self.route_leaves(x, 1)?;
        Ok(r.pop().expect("one input"))
    }

    /// [`OriginalFff::route`] for each row of `x` `[batch, in]`, reading the weights once.
    pub fn route_leaves(&self, x: &[f32], batch: usize) -> Result<Vec<(usize, Vec<f32>)>> {
        let c = &self.config;
        check_rows("input", x.len(), batch, c.input_width)?;
        self.with_params(|[nw, nb, ..]| {
            x.chunks(c.input_width.max(1))
                .take(batch)
                .map(|xi| descend(c, nw, nb, xi))
                .collect()
        })
    }

    fn infer_with(&self, [nw, nb, w1s, b1s, w2s, b2s]: [&[f32]; 6], x: &[f32], out: &mut [f32]) {
        let c = &self.config;
        let (cin, lw, cout) = (c.input_width, c.leaf_width, c.output_width);
        let leaves: Vec<usize> = x
            .par_chunks(cin.max(1))
            .map(|xi| descend(c, nw, nb, xi).0)
            .collect();
        // Group by leaf: one pass over each leaf's weights per batch.
        let mut by_leaf: Vec<Vec<usize>> = vec![Vec::new(); c.leaves()];
        for (i, &leaf) in leaves.iter().enumerate() {
            by_leaf[leaf].push(i);
        }
        // One hidden buffer and one output block per leaf, not per input.
        let blocks: Vec<(&Vec<usize>, Vec<f32>)> = by_leaf
            .par_iter()
            .enumerate()
            .filter(|(_, inputs)| !inputs.is_empty())
            .map(|(leaf, inputs)| {
                let w1 = &w1s[leaf * cin * lw..(leaf + 1) * cin * lw]; // [in, ℓ]
                let b1 = &b1s[leaf * lw..(leaf + 1) * lw];
                let w2 = &w2s[leaf * lw * cout..(leaf + 1) * lw * cout]; // [ℓ, out]
                let b2 = &b2s[leaf * cout..(leaf + 1) * cout];
                let mut h = vec![0f32; lw];
                let mut block = vec![0f32; inputs.len() * cout];
                for (&i, y) in inputs.iter().zip(block.chunks_mut(cout.max(1))) {
                    let xi = &x[i * cin..(i + 1) * cin];
                    h.copy_from_slice(b1);
                    for (k, &xk) in xi.iter().enumerate() {
                        axpy_f32(xk, &w1[k * lw..(k + 1) * lw], &mut h);
                    }
                    y.copy_from_slice(b2);
                    for (j, &hj) in h.iter().enumerate() {
                        let a = c.activation.apply(hj);
                        if a != 0.0 {
                            axpy_f32(a, &w2[j * cout..(j + 1) * cout], y);
                        }
                    }
                }
                (inputs, block)
            })
            .collect();
        for (inputs, block) in blocks {
            for (&i, y) in inputs.iter().zip(block.chunks(cout.max(1))) {
                out[i * cout..(i + 1) * cout].copy_from_slice(y);
            }
        }
    }

    /// Plain f64 reference of hard inference, one input at a time (for tests).
    pub fn forward_reference(&self, x: &[f32], batch: usize) -> Result<Vec<f64>> {
        let c = &self.config;
        check_rows("input", x.len(), batch, c.input_width)?;
        self.with_params(|p| self.reference_with(p, x, batch))
    }

    fn reference_with(
        &self,
        [nw, nb, w1s, b1s, w2s, b2s]: [&[f32]; 6],
        x: &[f32],
        batch: usize,
    ) -> Vec<f64> {
        let c = &self.config;
        let (cin, lw, cout) = (c.input_width, c.leaf_width, c.output_width);
        let mut out = vec![0f64; batch * cout];
        for i in 0..batch {
            let xi = &x[i * cin..(i + 1) * cin];
            let logit = |node: usize| {
                let z: f64 = (0..cin)
                    .map(|k| nw[node * cin + k] as f64 * xi[k] as f64)
                    .sum::<f64>();
                // Decided in f64, as the f64 sum gives it.
                if z + nb[node] as f64 >= 0.0 {
                    1.0
                } else {
                    -1.0
                }
            };
            let mut walk = path_with(c.depth, Tie::Right, logit);
            walk.by_ref().for_each(drop);
            let leaf = walk.position() - c.nodes();
            for j in 0..lw {
                let mut h = b1s[leaf * lw + j] as f64;
                for k in 0..cin {
                    h += xi[k] as f64 * w1s[(leaf * cin + k) * lw + j] as f64;
                }
                let a = c.activation.apply(h as f32) as f64;
                for o in 0..cout {
                    out[i * cout + o] += a * w2s[(leaf * lw + j) * cout + o] as f64;
                }
            }
            for o in 0..cout {
                out[i * cout + o] += b2s[leaf * cout + o] as f64;
            }
        }
        out
    }
}

impl ConditionalLayer for OriginalFff {
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "orig {}-{} d{} l{}",
            c.input_width, c.output_width, c.depth, c.leaf_width
        )
    }

    fn input_width(&self) -> usize {
        self.config.input_width
    }

    fn output_width(&self) -> usize {
        self.config.output_width
    }

    /// The soft mixture of all leaves (hard decisions with `train_hardened`), no region leak.
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_soft(x, false, None)?.output)
    }

    /// [`ConditionalLayer::forward_train`] with region leaks drawn from the step's seed; adds
    /// the hardening loss to the step.
    fn forward_step(&self, x: &Tensor, step: &mut TrainStep) -> Result<Tensor> {
        let out = self.forward_soft(x, false, step.layer_seed())?;
        if self.config.hardening > 0.0 && out.node_entropies.elem_count() > 0 {
            step.add_loss((out.node_entropies.mean_all()? * self.config.hardening)?)?;
        }
        Ok(out.output)
    }

    /// Hard inference, inputs grouped by leaf.
    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        _ws: &mut Workspace,
    ) -> Result<()> {
        let c = &self.config;
        check_rows("input", x.len(), batch, c.input_width)?;
        check_rows("output", y.len(), batch, c.output_width)?;
        self.with_params(|p| self.infer_with(p, x, y))
    }

    fn route_batch(&self, x: &[f32], batch: usize) -> Result<Option<Routing>> {
        let routes = self
            .route_leaves(x, batch)?
            .into_iter()
            .map(|(leaf, z)| {
                vec![Route {
                    region: leaf as u32,
                    z,
                }]
            })
            .collect();
        Ok(Some(Routing {
            regions: self.config.leaves(),
            levels: self.config.depth,
            routes,
        }))
    }

    /// In the package's order.
    fn vars(&self) -> Vec<Var> {
        self.params.to_vec()
    }

    /// The package's names.
    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(ORIGINAL_NAMES
            .iter()
            .zip(&self.params)
            .map(|(n, v)| (format!("{prefix}{n}"), v.as_tensor().clone()))
            .collect())
    }

    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()> {
        *self = OriginalFff::from_tensors(self.config, tensors, prefix, source)?;
        Ok(())
    }

    /// `D` node rows, then one leaf's two layers.
    fn multiply_adds_per_input(&self) -> usize {
        let c = &self.config;
        c.depth * c.input_width + c.leaf_width * (c.input_width + c.output_width)
    }

    /// `D` nodes, one leaf's hidden and output units.
    fn neurons_per_input(&self) -> usize {
        self.config.used_neurons() + self.config.output_width
    }
}

/// Hard descent: (leaf index, node logits along the path).
fn descend(c: &OriginalFffConfig, nw: &[f32], nb: &[f32], x: &[f32]) -> (usize, Vec<f32>) {
    let cin = c.input_width;
    let logit = |node: usize| dot_f32(&nw[node * cin..(node + 1) * cin], x) + nb[node];
    let mut walk = path_with(c.depth, Tie::Right, logit);
    let zs = walk.by_ref().map(|s| s.z).collect();
    (walk.position() - c.nodes(), zs)
}

/// For each level, the column of `[left | right]` (`[B, 2N]`) that each leaf multiplies by: leaf
/// bits are the path from the root, most significant first.
fn path_columns(depth: usize, nodes: usize, dev: &Device) -> Result<Vec<Tensor>> {
    let leaves = 1usize << depth;
    (0..depth)
        .map(|d| {
            let idx: Vec<u32> = (0..leaves)
                .map(|leaf| {
                    let node = (1usize << d) - 1 + (leaf >> (depth - d));
                    let right = (leaf >> (depth - 1 - d)) & 1;
                    (right * nodes + node) as u32
                })
                .collect();
            Ok(Tensor::from_vec(idx, leaves, dev)?)
        })
        .collect()
}
