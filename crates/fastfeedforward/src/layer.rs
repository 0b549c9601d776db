//! [`Fff`]: the layer type. Parameters live in candle `Var`s for training; inference runs the
//! fast kernel on the same memory without copying it.

use crate::checkpoint;
use crate::conditional::{leading_dims, ConditionalLayer, Route, Routing};
use crate::config::{FffConfig, Init};
use crate::error::{FffError, Result};
use crate::kernels::{self, FffWeightsView, InferOptions, Workspace};
use crate::{reference, train_op};
use candle_core::{Device, Storage, Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::HashMap;
use std::path::Path;

/// PyTorch name of the input weights, `[K·M, in]`.
pub const W_IN: &str = "linear_in.weight";
/// PyTorch name of the input biases, `[K·M]`.
pub const B_IN: &str = "linear_in.bias";
/// PyTorch name of the output weights, `[out, K·M]`.
pub const W_OUT: &str = "linear_out.weight";

/// A Fast Feedforward layer of `K` trees of depth `D` (UltraFastBERT form).
#[derive(Debug, Clone)]
pub struct Fff {
    config: FffConfig,
    w_in: Var,
    b_in: Var,
    /// Node-major output weights `[K·M, out]`: PyTorch's `linear_out.weight` transposed.
    w_out_t: Var,
}

impl Fff {
    /// A new layer with parameters drawn by `init` from a generator seeded with `seed`.
    pub fn new(config: FffConfig, init: Init, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (rows, cin, cout) = (
            config.total_nodes(),
            config.input_width,
            config.output_width,
        );
        let (w_in, b_in, w_out_t) = match init {
            Init::Normal { std } => {
                let normal =
                    Normal::new(0.0f32, std as f32).map_err(|e| FffError::InvalidConfig {
                        field: "init",
                        message: format!("normal({std}): {e}"),
                    })?;
                (
                    sample(&normal, rows * cin, &mut rng),
                    vec![0.0; rows],
                    sample(&normal, rows * cout, &mut rng),
                )
            }
            Init::Uniform => {
                let k_in = (1.0 / cin as f32).sqrt();
                let k_out = (1.0 / (config.used_nodes() as f32)).sqrt();
                let u_in = Uniform::new_inclusive(-k_in, k_in).expect("finite bounds");
                let u_out = Uniform::new_inclusive(-k_out, k_out).expect("finite bounds");
                let w_in = sample(&u_in, rows * cin, &mut rng);
                let b_in = sample(&u_in, rows, &mut rng);
                // PyTorch draws linear_out.weight [out, K·M] row by row; draw in that order.
                let w_out = sample(&u_out, cout * rows, &mut rng);
                (w_in, b_in, transpose(&w_out, cout, rows))
            }
            Init::Hyperspherical => {
                let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
                let mut w_in = sample(&normal, rows * cin, &mut rng);
                let mut w_out_t = sample(&normal, rows * cout, &mut rng);
                normalize_rows(&mut w_in, cin);
                normalize_rows(&mut w_out_t, cout);
                (w_in, vec![0.0; rows], w_out_t)
            }
        };
        Self::from_node_major(config, w_in, b_in, w_out_t)
    }

    /// A layer from buffers in the kernels' layout (`w_out_t` node-major `[K·M, out]`).
    pub fn from_node_major(
        config: FffConfig,
        w_in: Vec<f32>,
        b_in: Vec<f32>,
        w_out_t: Vec<f32>,
    ) -> Result<Self> {
        FffWeightsView::new(config, &w_in, &b_in, &w_out_t)?;
        let (rows, dev) = (config.total_nodes(), &Device::Cpu);
        Ok(Fff {
            config,
            w_in: Var::from_vec(w_in, (rows, config.input_width), dev)?,
            b_in: Var::from_vec(b_in, rows, dev)?,
            w_out_t: Var::from_vec(w_out_t, (rows, config.output_width), dev)?,
        })
    }

    /// A layer from tensors in PyTorch's names and layouts (`linear_out.weight` is `[out, K·M]`),
    /// looked up as `{prefix}linear_in.weight` etc. `source` names the file in errors.
    pub fn from_tensors(
        config: FffConfig,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<Self> {
        config.validate()?;
        let rows = config.total_nodes();
        let get = |name: &str, shape: &[usize]| {
            checkpoint::checked_values(tensors, prefix, name, shape, source)
        };
        let w_in = get(W_IN, &[rows, config.input_width])?;
        let b_in = get(B_IN, &[rows])?;
        let w_out = get(W_OUT, &[config.output_width, rows])?;
        let w_out_t = transpose(&w_out, config.output_width, rows);
        Self::from_node_major(config, w_in, b_in, w_out_t)
    }

    /// Saves to a safetensors file (PyTorch names; config in the metadata), atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        checkpoint::save(
            path.as_ref(),
            &self.named_tensors("")?,
            checkpoint::config_metadata(&self.config),
        )
    }

    /// Loads a safetensors file written by [`Fff::save`] or by PyTorch (`torch` state dict of
    /// UltraFastBERT's `FFF` module). With `config` None, the config comes from the metadata.
    pub fn load(path: impl AsRef<Path>, config: Option<FffConfig>) -> Result<Self> {
        let path = path.as_ref();
        let (tensors, metadata) = checkpoint::load(path)?;
        let config = match config {
            Some(c) => c,
            None => checkpoint::config_from_metadata(path, &metadata)?,
        };
        Self::from_tensors(config, &tensors, "", path)
    }

    /// The layer's configuration.
    pub fn config(&self) -> &FffConfig {
        &self.config
    }

    /// Input weights `[K·M, in]`.
    pub fn w_in(&self) -> &Tensor {
        self.w_in.as_tensor()
    }

    /// Input biases `[K·M]`.
    pub fn b_in(&self) -> &Tensor {
        self.b_in.as_tensor()
    }

    /// Node-major output weights `[K·M, out]` (PyTorch's `linear_out.weight` transposed).
    pub fn w_out_t(&self) -> &Tensor {
        self.w_out_t.as_tensor()
    }

    /// Differentiable forward on the dense masked reference (all K·M neurons, masked).
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        self.with_flat_input(x, |x2| {
            Ok(reference::forward(
                &self.config,
                x2,
                self.w_in(),
                self.b_in(),
                self.w_out_t(),
            )?)
        })
    }

    /// Inference into caller-owned buffers with kernel options: `x` is `[batch, in]`, `y` is
    /// `[batch, out]`. With a warmed `Workspace`, this allocates nothing.
    pub fn forward_infer_with(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
        opts: InferOptions,
    ) -> Result<()> {
        self.with_view(|w| kernels::forward(&w, x, batch, y, ws, opts))?
    }

    /// [`Fff::forward_infer_with`], returning the nodes each input visited in the kernel's walk:
    /// `[batch, K·(D+1)]`, each input's as [`Fff::route`] lays them out. `route` is the plain f64
    /// reference's descent; these are the kernel's own decisions, which can differ from it where
    /// a `|z|` is within rounding of 0.
    pub fn forward_infer_routed(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
        opts: InferOptions,
    ) -> Result<Vec<u32>> {
        let mut routes = vec![0; batch * self.config.used_nodes()];
        self.with_view(|w| kernels::forward_with_routes(&w, x, batch, y, ws, opts, &mut routes))??;
        Ok(routes)
    }

    /// The nodes input `x` visits: `K·(D+1)` local node indices, tree-major, each path starting
    /// at its tree's root 0.
    pub fn route(&self, x: &[f32]) -> Result<Vec<u32>> {
        if x.len() != self.config.input_width {
            return Err(FffError::shape(
                "input",
                &[self.config.input_width],
                &[x.len()],
            ));
        }
        self.with_view(|w| kernels::reference::route(&w, x))
    }

    /// Like [`Fff::route`], with the logit `z` of every visited node (same order).
    pub fn route_with_logits(&self, x: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        let nodes = self.route(x)?;
        let m = self.config.nodes_per_tree();
        let depth1 = self.config.depth + 1;
        let z = self.with_view(|w| {
            nodes
                .iter()
                .enumerate()
                .map(|(i, &n)| kernels::reference::node_logit(&w, (i / depth1) * m + n as usize, x))
                .collect::<Vec<f32>>()
        })?;
        Ok((nodes, z))
    }

    /// Runs `f` on a borrowed view of the weights (no copy).
    pub fn with_view<R>(&self, f: impl FnOnce(FffWeightsView<'_>) -> R) -> Result<R> {
        let (s_in, l_in) = self.w_in.storage_and_layout();
        let (s_b, l_b) = self.b_in.storage_and_layout();
        let (s_out, l_out) = self.w_out_t.storage_and_layout();
        let view = FffWeightsView::new(
            self.config,
            cpu_f32(&s_in, l_in, W_IN)?,
            cpu_f32(&s_b, l_b, B_IN)?,
            cpu_f32(&s_out, l_out, W_OUT)?,
        )?;
        Ok(f(view))
    }
}

impl ConditionalLayer for Fff {
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "fff {}-{} d{} k{}",
            c.input_width, c.output_width, c.depth, c.trees
        )
    }

    fn input_width(&self) -> usize {
        self.config.input_width
    }

    fn output_width(&self) -> usize {
        self.config.output_width
    }

    /// Differentiable forward on the O(depth) training op. `x` is `[..., in]`.
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        self.with_flat_input(x, |x2| {
            Ok(train_op::forward(
                &self.config,
                x2,
                self.w_in(),
                self.b_in(),
                self.w_out_t(),
            )?)
        })
    }

    /// The training forward of one step: soft-to-hard routing where the step asks for it
    /// ([`crate::soft`]), the O(depth) training op otherwise.
    fn forward_step(&self, x: &Tensor, step: &mut crate::TrainStep) -> Result<Tensor> {
        match step.soft_routing() {
            Some(soft) => self.with_flat_input(x, |x2| {
                crate::soft::forward(
                    &self.config,
                    soft,
                    x2,
                    self.w_in(),
                    self.b_in(),
                    self.w_out_t(),
                )
            }),
            None if step.load_balance() > 0.0 => self.with_flat_input(x, |x2| {
                let c = &self.config;
                let z = x2.contiguous()?.apply_op3(
                    self.w_in(),
                    self.b_in(),
                    train_op::NodeLogits { config: *c },
                )?;
                let loss = crate::balance::loss(c, &z)?;
                step.add_loss((loss * step.load_balance())?)?;
                let a = c.activation.apply_tensor(&z)?;
                Ok(a.apply_op3(self.w_out_t(), &z, train_op::NodeOutputs { config: *c })?)
            }),
            None => self.forward_train(x),
        }
    }

    /// Inference on the fast kernel with its default options; allocation-free once `ws` is warm.
    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<()> {
        self.forward_infer_with(x, batch, y, ws, InferOptions::default())
    }

    fn route_batch(&self, x: &[f32], batch: usize) -> Result<Option<Routing>> {
        let c = self.config;
        crate::error::check_rows("input", x.len(), batch, c.input_width)?;
        let depth = c.depth;
        let routes = x
            .chunks_exact(c.input_width)
            .take(batch)
            .map(|row| {
                let (nodes, z) = self.route_with_logits(row)?;
                Ok((0..c.trees)
                    .map(|t| {
                        let path = &nodes[t * (depth + 1)..(t + 1) * (depth + 1)];
                        Route {
                            region: path[depth] + 1 - (1u32 << depth),
                            // The leaf's own z decides nothing; keep the D decisions.
                            z: z[t * (depth + 1)..t * (depth + 1) + depth].to_vec(),
                        }
                    })
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Routing {
            regions: 1 << depth,
            levels: depth,
            routes,
        }))
    }

    /// `w_in`, `b_in`, `w_out_t`.
    fn vars(&self) -> Vec<Var> {
        vec![self.w_in.clone(), self.b_in.clone(), self.w_out_t.clone()]
    }

    /// The parameters in PyTorch's names and layouts, each name prefixed by `prefix`.
    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (format!("{prefix}{W_IN}"), self.w_in.as_tensor().clone()),
            (format!("{prefix}{B_IN}"), self.b_in.as_tensor().clone()),
            (
                format!("{prefix}{W_OUT}"),
                self.w_out_t.as_tensor().t()?.contiguous()?,
            ),
        ])
    }

    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()> {
        *self = Fff::from_tensors(self.config, tensors, prefix, source)?;
        Ok(())
    }

    /// `K·(D+1)` visited nodes, each one input row and one output row.
    fn multiply_adds_per_input(&self) -> usize {
        let c = &self.config;
        c.used_nodes() * (c.input_width + c.output_width)
    }

    fn neurons_per_input(&self) -> usize {
        self.config.used_nodes()
    }
}

impl Fff {
    fn with_flat_input(
        &self,
        x: &Tensor,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (lead, batch) = leading_dims(x, self.config.input_width)?;
        let y = f(&x.reshape((batch, self.config.input_width))?)?;
        let mut out_dims = lead;
        out_dims.push(self.config.output_width);
        Ok(y.reshape(out_dims)?)
    }
}

/// The contiguous f32 contents of a CPU storage (`name` for errors).
pub(crate) fn cpu_f32<'a>(
    s: &'a Storage,
    l: &candle_core::Layout,
    name: &str,
) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = s else {
        return Err(FffError::Unsupported(format!(
            "`{name}` is not on the CPU; the kernels run on the CPU"
        )));
    };
    let data = cpu.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(FffError::Unsupported(format!("`{name}` is not contiguous"))),
    }
}

fn sample<D: Distribution<f32>>(dist: &D, n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| dist.sample(rng)).collect()
}

fn normalize_rows(v: &mut [f32], width: usize) {
    for row in v.chunks_exact_mut(width) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose<T: Copy + Default>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}
