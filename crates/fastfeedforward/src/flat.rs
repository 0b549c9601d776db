//! Flat FFF ("precomputed lambdas", from the community's CIFAR-10 experiments): one hyperplane
//! per level instead of one per node. `λ = x·X` with `X` `[in, D]`; the path is read from the
//! signs of `λ` (bit `d` decides the turn after level `d`; `λ_d > 0` goes right, a tie goes
//! left); the output is `y = Σ_d λ_d · Y[node_d]` with `Y` `[2^D − 1, out]`, one output row per
//! tree node. All `D` projections share one small matmul, so routing costs `D` dot products no
//! matter which path is taken, and gradients reach every hyperplane on every input.

use crate::error::{check_rows, FffError, Result};
use crate::kernels::simd::{axpy_f32, dot_f32};
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// PyTorch-style names of the two parameters.
pub const FLAT_NAMES: [&str; 2] = ["X", "Y"];

/// Shape of a [`FlatFff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatFffConfig {
    /// Input width.
    pub input_width: usize,
    /// Output width.
    pub output_width: usize,
    /// Levels `D` (hyperplanes); the tree has `2^D − 1` output rows.
    pub depth: usize,
}

impl FlatFffConfig {
    /// Number of output rows, `2^D − 1`.
    pub fn nodes(&self) -> usize {
        (1usize << self.depth) - 1
    }

    /// Checks the shape.
    pub fn validate(&self) -> Result<()> {
        if self.input_width == 0 || self.output_width == 0 || self.depth == 0 || self.depth > 24 {
            return Err(FffError::InvalidConfig {
                field: "flat",
                message: format!(
                    "widths must be at least 1 and depth in 1..=24, found {}-{} d{}",
                    self.input_width, self.output_width, self.depth
                ),
            });
        }
        Ok(())
    }

    /// Parameter count.
    pub fn parameters(&self) -> usize {
        self.input_width * self.depth + self.nodes() * self.output_width
    }
}

/// The flat FFF layer.
#[derive(Clone, Debug)]
pub struct FlatFff {
    config: FlatFffConfig,
    /// `[in, D]`.
    x: Var,
    /// `[2^D − 1, out]`.
    y: Var,
}

impl FlatFff {
    /// Uniform `±1/√in` hyperplanes and `±1/√D` output rows.
    pub fn new(config: FlatFffConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (cin, d, n, cout) = (
            config.input_width,
            config.depth,
            config.nodes(),
            config.output_width,
        );
        let k1 = (1.0 / cin as f64).sqrt();
        let k2 = (1.0 / d as f64).sqrt();
        let xs: Vec<f32> = (0..cin * d)
            .map(|_| rng.random_range(-k1..=k1) as f32)
            .collect();
        let ys: Vec<f32> = (0..n * cout)
            .map(|_| rng.random_range(-k2..=k2) as f32)
            .collect();
        Ok(FlatFff {
            config,
            x: Var::from_vec(xs, (cin, d), &Device::Cpu)?,
            y: Var::from_vec(ys, (n, cout), &Device::Cpu)?,
        })
    }

    /// A layer from tensors `{prefix}X` `[in, D]` and `{prefix}Y` `[2^D − 1, out]`.
    pub fn from_tensors(
        config: FlatFffConfig,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<Self> {
        config.validate()?;
        let shapes = [
            vec![config.input_width, config.depth],
            vec![config.nodes(), config.output_width],
        ];
        let mut vars = Vec::new();
        for (name, shape) in FLAT_NAMES.iter().zip(&shapes) {
            let values = crate::checkpoint::checked_values(tensors, prefix, name, shape, source)?;
            vars.push(Var::from_vec(values, shape.as_slice(), &Device::Cpu)?);
        }
        let y = vars.pop().expect("two");
        let x = vars.pop().expect("two");
        Ok(FlatFff { config, x, y })
    }

    /// The config.
    pub fn config(&self) -> &FlatFffConfig {
        &self.config
    }

    /// Trainable variables `[X, Y]`.
    pub fn vars(&self) -> Vec<Var> {
        vec![self.x.clone(), self.y.clone()]
    }

    /// Parameters with their names, each prefixed by `prefix`.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{prefix}X"), self.x.as_tensor().clone()),
            (format!("{prefix}Y"), self.y.as_tensor().clone()),
        ]
    }

    /// Node index at every level for each row of `lambdas` `[B, D]`.
    fn nodes_of(&self, lambdas: &[f32], batch: usize) -> Vec<u32> {
        let d = self.config.depth;
        let mut nodes = vec![0u32; batch * d];
        for b in 0..batch {
            let mut node = 0usize;
            for level in 0..d {
                nodes[b * d + level] = node as u32;
                node = 2 * node + 1 + usize::from(lambdas[b * d + level] > 0.0);
            }
        }
        nodes
    }

    /// Differentiable forward `[B, in] → [B, out]` (gradients reach `X` through `λ` and the
    /// visited rows of `Y`).
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin) = x.dims2()?;
        if cin != self.config.input_width {
            return Err(FffError::shape(
                "input",
                &[b, self.config.input_width],
                &[b, cin],
            ));
        }
        let d = self.config.depth;
        let lambdas = x.matmul(self.x.as_tensor())?; // [B, D]
        let nodes = self.nodes_of(&lambdas.flatten_all()?.to_vec1::<f32>()?, b);
        let idx = Tensor::from_vec(nodes, b * d, &Device::Cpu)?;
        let rows =
            self.y
                .as_tensor()
                .index_select(&idx, 0)?
                .reshape((b, d, self.config.output_width))?;
        Ok(rows.broadcast_mul(&lambdas.unsqueeze(2)?)?.sum(1)?)
    }

    /// Per-input nodes (tree-level order) and `λ`, for routing statistics.
    pub fn route(&self, x: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        let mut r = self.route_batch(x, 1)?;
        Ok(r.pop().expect("one input"))
    }

    /// [`FlatFff::route`] for each row of `x` `[batch, in]`, transposing `X` once.
    pub fn route_batch(&self, x: &[f32], batch: usize) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let c = &self.config;
        check_rows("input", x.len(), batch, c.input_width)?;
        let xt = self.planes()?;
        Ok(x.chunks(c.input_width)
            .take(batch)
            .map(|xi| {
                let lambdas: Vec<f32> = xt
                    .chunks(c.input_width)
                    .map(|plane| dot_f32(plane, xi))
                    .collect();
                (self.nodes_of(&lambdas, 1), lambdas)
            })
            .collect())
    }

    /// The hyperplanes as rows, `[D, in]`.
    fn planes(&self) -> Result<Vec<f32>> {
        Ok(self
            .x
            .as_tensor()
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Inference `y[B, out]` for `x[B, in]`: `D` dot products and `D` row updates per input.
    pub fn forward_infer(&self, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        check_rows("input", x.len(), batch, c.input_width)?;
        let (cin, cout, d) = (c.input_width, c.output_width, c.depth);
        let xt = self.planes()?;
        let (ys_storage, ys_layout) = self.y.storage_and_layout();
        let ys = crate::layer::cpu_f32(&ys_storage, ys_layout, "Y")?;
        let mut out = vec![0f32; batch * cout];
        out.par_chunks_mut(cout)
            .zip(x.par_chunks(cin))
            .for_each(|(yo, xi)| {
                let mut node = 0usize;
                for level in 0..d {
                    let lambda = dot_f32(&xt[level * cin..(level + 1) * cin], xi);
                    axpy_f32(lambda, &ys[node * cout..(node + 1) * cout], yo);
                    node = 2 * node + 1 + usize::from(lambda > 0.0);
                }
            });
        Ok(out)
    }
}
