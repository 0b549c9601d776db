//! Flat FFF ("precomputed lambdas", from the community's CIFAR-10 experiments): one hyperplane
//! per level instead of one per node. `λ = x·X` with `X` `[in, D]`; the path is read from the
//! signs of `λ` (bit `d` decides the turn after level `d`; `λ_d > 0` goes right, a tie goes
//! left); the output is `y = Σ_d λ_d · Y[node_d]` with `Y` `[2^D − 1, out]`, one output row per
//! tree node. All `D` projections share one small matmul, so routing costs `D` dot products no
//! matter which path is taken, and gradients reach every hyperplane on every input.

use crate::conditional::{ConditionalLayer, Route, Routing};
use crate::error::{check_rows, FffError, Result};
use crate::kernels::simd::{axpy_f32, dot_f32};
use crate::kernels::Workspace;
use crate::tree::{path, recorded_path};
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

    /// Node index at every level for each row of `lambdas` `[B, D]`.
    fn nodes_of(&self, lambdas: &[f32], batch: usize) -> Vec<u32> {
        let d = self.config.depth;
        let mut nodes = vec![0u32; batch * d];
        for (out, lam) in nodes
            .chunks_mut(d.max(1))
            .zip(lambdas.chunks(d.max(1)))
            .take(batch)
        {
            for (o, s) in out.iter_mut().zip(recorded_path(lam)) {
                *o = s.node as u32;
            }
        }
        nodes
    }

    /// Per-input nodes (tree-level order) and `λ`, for routing statistics.
    pub fn route(&self, x: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        let mut r = self.route_nodes(x, 1)?;
        Ok(r.pop().expect("one input"))
    }

    /// [`FlatFff::route`] for each row of `x` `[batch, in]`, transposing `X` once.
    pub fn route_nodes(&self, x: &[f32], batch: usize) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
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

    fn infer_into(&self, x: &[f32], batch: usize, out: &mut [f32]) -> Result<()> {
        let c = &self.config;
        check_rows("input", x.len(), batch, c.input_width)?;
        check_rows("output", out.len(), batch, c.output_width)?;
        let (cin, cout, d) = (c.input_width, c.output_width, c.depth);
        let xt = self.planes()?;
        let (ys_storage, ys_layout) = self.y.storage_and_layout();
        let ys = crate::layer::cpu_f32(&ys_storage, ys_layout, "Y")?;
        out.par_chunks_mut(cout)
            .zip(x.par_chunks(cin))
            .for_each(|(yo, xi)| {
                yo.fill(0.0);
                // One hyperplane per level, in order.
                let mut planes = xt.chunks_exact(cin);
                let lambda = |_node| dot_f32(planes.next().expect("D planes"), xi);
                for s in path(d, lambda) {
                    axpy_f32(s.z, &ys[s.node * cout..(s.node + 1) * cout], yo);
                }
            });
        Ok(())
    }
}

impl ConditionalLayer for FlatFff {
    fn describe(&self) -> String {
        let c = &self.config;
        format!("flat {}-{} d{}", c.input_width, c.output_width, c.depth)
    }

    fn input_width(&self) -> usize {
        self.config.input_width
    }

    fn output_width(&self) -> usize {
        self.config.output_width
    }

    /// Differentiable forward `[B, in] → [B, out]` (gradients reach `X` through `λ` and the
    /// visited rows of `Y`).
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
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

    /// `D` dot products and `D` row updates per input.
    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        _ws: &mut Workspace,
    ) -> Result<()> {
        self.infer_into(x, batch, y)
    }

    /// One tree whose region is the whole sign pattern, first level most significant.
    fn route_batch(&self, x: &[f32], batch: usize) -> Result<Option<Routing>> {
        let routes = self
            .route_nodes(x, batch)?
            .into_iter()
            .map(|(_, lambdas)| {
                let region = lambdas
                    .iter()
                    .fold(0u32, |acc, &l| (acc << 1) | u32::from(l > 0.0));
                vec![Route { region, z: lambdas }]
            })
            .collect();
        Ok(Some(Routing {
            regions: 1 << self.config.depth,
            levels: self.config.depth,
            routes,
        }))
    }

    /// `[X, Y]`.
    fn vars(&self) -> Vec<Var> {
        vec![self.x.clone(), self.y.clone()]
    }

    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (format!("{prefix}X"), self.x.as_tensor().clone()),
            (format!("{prefix}Y"), self.y.as_tensor().clone()),
        ])
    }

    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()> {
        *self = FlatFff::from_tensors(self.config, tensors, prefix, source)?;
        Ok(())
    }

    /// `D` hyperplanes and `D` output rows.
    fn multiply_adds_per_input(&self) -> usize {
        let c = &self.config;
        c.depth * (c.input_width + c.output_width)
    }

    /// `D` hyperplanes.
    fn neurons_per_input(&self) -> usize {
        self.config.depth
    }
}
