//! [`ConditionalLayer`]: the one interface of every layer a model is built from (the
//! UltraFastBERT FFF, the original FFF, the flat FFF, and the dense and element-wise layers
//! beside them), so that a model is a list of layers and nothing matches on their kinds.

use crate::config::Activation;
use crate::error::{check_rows, FffError, Result};
use crate::kernels::Workspace;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;

/// Routing of one input through one tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Region (leaf) index in `0..regions`.
    pub region: u32,
    /// Decision value at each level (`z` of the visited node; `λ_d` for the flat FFF).
    pub z: Vec<f32>,
}

/// Routing of a batch through every tree of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// Regions (leaves) per tree.
    pub regions: usize,
    /// Decision levels per tree.
    pub levels: usize,
    /// `routes[input][tree]`.
    pub routes: Vec<Vec<Route>>,
}

/// What one training step hands its layers: the seed of its random choices (region leaks)
/// and where auxiliary losses (hardening) are collected.
#[derive(Debug, Default)]
pub struct TrainStep {
    seed: Option<u64>,
    layer: usize,
    auxiliary: Option<Tensor>,
    soft: Option<crate::soft::SoftRouting>,
    load_balance: f64,
}

impl TrainStep {
    /// A step whose random choices are drawn from `seed`.
    pub fn seeded(seed: u64) -> Self {
        TrainStep {
            seed: Some(seed),
            ..TrainStep::default()
        }
    }

    /// The step with FFF layers routing their top levels softly (see [`crate::soft`]).
    pub fn with_soft_routing(mut self, soft: Option<crate::soft::SoftRouting>) -> Self {
        self.soft = soft;
        self
    }

    /// The step with FFF layers adding `weight ·` their load-balancing loss
    /// ([`crate::balance`]) to the auxiliary loss.
    pub fn with_load_balance(mut self, weight: f64) -> Self {
        self.load_balance = weight;
        self
    }

    /// Weight of the FFF layers' load-balancing loss in this step (0: none).
    pub fn load_balance(&self) -> f64 {
        self.load_balance
    }

    /// How FFF layers route in this step: softly over their top levels, or (None) hard.
    pub fn soft_routing(&self) -> Option<crate::soft::SoftRouting> {
        self.soft
    }

    /// Tells the step which layer runs next (each layer draws its own random stream).
    pub fn enter_layer(&mut self, index: usize) {
        self.layer = index;
    }

    /// The current layer's seed, if the step draws random choices.
    pub fn layer_seed(&self) -> Option<u64> {
        self.seed
            .map(|s| s ^ (self.layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Adds a scalar auxiliary loss.
    pub fn add_loss(&mut self, loss: Tensor) -> Result<()> {
        self.auxiliary = Some(match self.auxiliary.take() {
            Some(a) => (a + loss)?,
            None => loss,
        });
        Ok(())
    }

    /// The sum of the auxiliary losses added so far.
    pub fn into_loss(self) -> Option<Tensor> {
        self.auxiliary
    }
}

/// A layer of a model: trained through candle's autodiff, run for inference on its own
/// kernel, saved under PyTorch-style names.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use fastfeedforward::{
///     Activation, ConditionalLayer, Elementwise, Fff, FffConfig, Init, Linear,
/// };
///
/// let layers: Vec<Box<dyn ConditionalLayer>> = vec![
///     Box::new(Fff::new(FffConfig::new(16, 8, 3, 1), Init::Uniform, 0)?),
///     Box::new(Elementwise { activation: Activation::Relu, width: 8 }),
///     Box::new(Linear::new(8, 3, 1)?),
/// ];
/// let mut h = Tensor::randn(0f32, 1.0, (4, 16), &Device::Cpu)?;
/// for layer in &layers {
///     h = layer.forward_infer(&h)?;
/// }
/// assert_eq!(h.dims(), &[4, 3]);
/// // 4 visited nodes of 16 + 8 weights, then 8·3.
/// let macs: usize = layers.iter().map(|l| l.multiply_adds_per_input()).sum();
/// assert_eq!(macs, 4 * (16 + 8) + 8 * 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ConditionalLayer: Any + Debug + Send + Sync {
    /// Kind and shape, e.g. `fff 784-500 d8 k1`.
    fn describe(&self) -> String;

    /// Input width.
    fn input_width(&self) -> usize;

    /// Output width.
    fn output_width(&self) -> usize;

    /// Differentiable forward `[B, in] → [B, out]` (no random choices).
    fn forward_train(&self, x: &Tensor) -> Result<Tensor>;

    /// The forward of one training step: may draw random choices from `step` and add
    /// auxiliary losses to it. By default the same as [`ConditionalLayer::forward_train`].
    fn forward_step(&self, x: &Tensor, step: &mut TrainStep) -> Result<Tensor> {
        let _ = step;
        self.forward_train(x)
    }

    /// Inference into caller-owned buffers: `x` is `[batch, in]`, `y` is `[batch, out]`.
    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<()>;

    /// Inference forward on the layer's kernel (no autodiff); `x` is `[..., in]`.
    fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        let (cin, cout) = (self.input_width(), self.output_width());
        let (lead, batch) = leading_dims(x, cin)?;
        let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; batch * cout];
        self.forward_infer_into(&input, batch, &mut out, &mut Workspace::new())?;
        let mut dims = lead;
        dims.push(cout);
        Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
    }

    /// How each row of `x` (`[batch, in]`) is routed, or None for a layer that routes nothing.
    fn route_batch(&self, x: &[f32], batch: usize) -> Result<Option<Routing>> {
        check_rows("input", x.len(), batch, self.input_width())?;
        Ok(None)
    }

    /// The trainable parameters.
    fn vars(&self) -> Vec<Var>;

    /// The parameters in PyTorch's names and layouts, each name prefixed by `prefix`.
    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>>;

    /// Replaces the parameters with `{prefix}NAME` from `tensors` (shapes checked against the
    /// layer's own); `source` names the file in errors.
    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()>;

    /// Multiply-adds per input at inference.
    fn multiply_adds_per_input(&self) -> usize;

    /// Neurons evaluated per input at inference.
    fn neurons_per_input(&self) -> usize;
}

/// Checks that the last dimension of `x` is `width`: the leading dims and their product.
pub(crate) fn leading_dims(x: &Tensor, width: usize) -> Result<(Vec<usize>, usize)> {
    let dims = x.dims();
    if dims.last() != Some(&width) {
        let mut want = dims.to_vec();
        match want.last_mut() {
            Some(last) => *last = width,
            None => want.push(width),
        }
        return Err(FffError::shape("input", &want, dims));
    }
    let lead = dims[..dims.len() - 1].to_vec();
    let batch = lead.iter().product();
    Ok((lead, batch))
}

/// A dense layer `x·Wᵀ + b` (`W` is `[out, in]`, PyTorch's `nn.Linear`).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Var,
    bias: Var,
}

impl Linear {
    /// A layer initialised as PyTorch's `nn.Linear`: uniform `±1/√in` weights and bias.
    pub fn new(input_width: usize, output_width: usize, seed: u64) -> Result<Self> {
        Self::with_rng(input_width, output_width, &mut StdRng::seed_from_u64(seed))
    }

    /// [`Linear::new`] drawing from `rng` (weights row by row, then the bias).
    pub fn with_rng(input_width: usize, output_width: usize, rng: &mut impl Rng) -> Result<Self> {
        if input_width == 0 || output_width == 0 {
            return Err(FffError::InvalidConfig {
                field: "widths",
                message: format!("linear {input_width}-{output_width}: widths must be at least 1"),
            });
        }
        let k = (1.0 / input_width as f64).sqrt();
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-k..k) as f32).collect() };
        let dev = &Device::Cpu;
        Ok(Linear {
            weight: Var::from_vec(
                draw(input_width * output_width),
                (output_width, input_width),
                dev,
            )?,
            bias: Var::from_vec(draw(output_width), output_width, dev)?,
        })
    }

    /// Weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    /// Bias `[out]`.
    pub fn bias(&self) -> &Tensor {
        self.bias.as_tensor()
    }
}

impl ConditionalLayer for Linear {
    fn describe(&self) -> String {
        format!("linear {}-{}", self.input_width(), self.output_width())
    }

    fn input_width(&self) -> usize {
        self.weight.dims()[1]
    }

    fn output_width(&self) -> usize {
        self.weight.dims()[0]
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (lead, batch) = leading_dims(x, self.input_width())?;
        let y = x
            .reshape((batch, self.input_width()))?
            .matmul(&self.weight().t()?)?
            .broadcast_add(self.bias())?;
        let mut dims = lead;
        dims.push(self.output_width());
        Ok(y.reshape(dims)?)
    }

    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        _ws: &mut Workspace,
    ) -> Result<()> {
        let (cin, cout) = (self.input_width(), self.output_width());
        check_rows("input", x.len(), batch, cin)?;
        check_rows("output", y.len(), batch, cout)?;
        let xt = Tensor::from_slice(x, (batch, cin), &Device::Cpu)?;
        let out = self.forward_train(&xt)?.flatten_all()?.to_vec1::<f32>()?;
        y.copy_from_slice(&out);
        Ok(())
    }

    fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_train(&x.to_dtype(DType::F32)?.detach())
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (format!("{prefix}weight"), self.weight().clone()),
            (format!("{prefix}bias"), self.bias().clone()),
        ])
    }

    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()> {
        for (name, var) in [("weight", &self.weight), ("bias", &self.bias)] {
            let values =
                crate::checkpoint::checked_values(tensors, prefix, name, var.dims(), source)?;
            var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu)?)?;
        }
        Ok(())
    }

    fn multiply_adds_per_input(&self) -> usize {
        self.input_width() * self.output_width()
    }

    fn neurons_per_input(&self) -> usize {
        self.output_width()
    }
}

/// An element-wise activation between layers, of a fixed width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Elementwise {
    /// The function.
    pub activation: Activation,
    /// Input and output width.
    pub width: usize,
}

impl ConditionalLayer for Elementwise {
    fn describe(&self) -> String {
        self.activation.to_string()
    }

    fn input_width(&self) -> usize {
        self.width
    }

    fn output_width(&self) -> usize {
        self.width
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        leading_dims(x, self.width)?;
        Ok(self.activation.apply_tensor(x)?)
    }

    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        _ws: &mut Workspace,
    ) -> Result<()> {
        check_rows("input", x.len(), batch, self.width)?;
        check_rows("output", y.len(), batch, self.width)?;
        for (o, &v) in y.iter_mut().zip(x) {
            *o = self.activation.apply(v);
        }
        Ok(())
    }

    fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_train(&x.to_dtype(DType::F32)?.detach())
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }

    fn named_tensors(&self, _prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    fn load_tensors(
        &mut self,
        _tensors: &HashMap<String, Tensor>,
        _prefix: &str,
        _source: &Path,
    ) -> Result<()> {
        Ok(())
    }

    fn multiply_adds_per_input(&self) -> usize {
        0
    }

    fn neurons_per_input(&self) -> usize {
        0
    }
}
