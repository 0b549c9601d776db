//! A model: a stack of [`ConditionalLayer`]s built from a [`ModelSpec`] (see [`crate::spec`]
//! for the description language).

use crate::spec::ModelSpec;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use fastfeedforward::{ConditionalLayer, Fff, SoftRouting, TrainStep, WeightFormat};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::any::Any;
use std::collections::HashMap;
use std::path::Path;

/// A stack of layers built from a description.
#[derive(Debug)]
pub struct Model {
    /// The description it was built from.
    pub spec: ModelSpec,
    /// The layers, in order.
    pub layers: Vec<Box<dyn ConditionalLayer>>,
}

/// Most parameters one layer of a model description may have: 2^31 (8 GiB of `f32`).
pub const MAX_LAYER_PARAMETERS: usize = 1 << 31;

impl Model {
    /// Builds the model described by `spec`, parameters drawn from `seed`.
    pub fn new(spec: &str, seed: u64) -> Result<Self> {
        Self::from_spec(spec.parse()?, seed)
    }

    /// Builds the model of a parsed description, parameters drawn from `seed`.
    pub fn from_spec(spec: ModelSpec, seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut width = spec.input_width();
        let mut layers = Vec::with_capacity(spec.layers().len());
        for (index, l) in spec.layers().iter().enumerate() {
            // Refused before anything is allocated.
            ensure!(
                l.parameter_bound()
                    .is_some_and(|n| n <= MAX_LAYER_PARAMETERS),
                "layer {index} `{l}`: too large (more than {MAX_LAYER_PARAMETERS} parameters)"
            );
            let layer = l
                .build(width, &mut rng)
                .with_context(|| format!("layer {index} `{l}`"))?;
            width = layer.output_width();
            layers.push(layer);
        }
        Ok(Model { spec, layers })
    }

    /// Input width.
    pub fn input_width(&self) -> usize {
        self.spec.input_width()
    }

    /// Output width.
    pub fn output_width(&self) -> usize {
        self.spec.output_width()
    }

    /// Layer `i` as its concrete type, if it is a `T`.
    pub fn layer_as<T: Any>(&self, i: usize) -> Option<&T> {
        let layer: &dyn Any = self.layers.get(i)?.as_ref();
        layer.downcast_ref()
    }

    /// Trainable parameters.
    pub fn vars(&self) -> Vec<Var> {
        self.layers.iter().flat_map(|l| l.vars()).collect()
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Neurons evaluated per input: dense layers count all their outputs, FFF layers their
    /// visited nodes, original FFF layers their `D` nodes plus one leaf's hidden and output
    /// units, flat FFF layers their `D` hyperplanes.
    pub fn neurons_per_input(&self) -> usize {
        self.layers.iter().map(|l| l.neurons_per_input()).sum()
    }

    /// Multiply-adds per input at inference, summed over the layers.
    pub fn multiply_adds_per_input(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.multiply_adds_per_input())
            .sum()
    }

    /// Stores every FFF layer's weights in `format` for inference (see
    /// [`fastfeedforward::QuantizedFff`]); other layers (dense, original and flat FFF) stay
    /// f32. Returns how many layers changed. A quantized model evaluates but no longer trains.
    pub fn quantize(&mut self, format: WeightFormat) -> Result<usize> {
        if format == WeightFormat::F32 {
            return Ok(0);
        }
        let mut changed = 0;
        for i in 0..self.layers.len() {
            if let Some(fff) = self.layer_as::<Fff>(i) {
                let q = fff.quantize(format).with_context(|| {
                    format!("layer {i} `{}` to {format}", self.spec.layers()[i])
                })?;
                self.layers[i] = Box::new(q);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Inference forward of layer `i` alone (for routing statistics).
    pub fn forward_layer_infer(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        Ok(self.layers[i].forward_infer(h)?)
    }

    /// Differentiable forward (FFF layers on the O(depth) training op, original FFF layers
    /// soft, no region leak): `[B, in] -> [B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.to_dtype(DType::F32)?;
        for layer in &self.layers {
            h = layer.forward_train(&h)?;
        }
        Ok(h)
    }

    /// The training forward of one step: also applies region leaks drawn from `step_seed` and
    /// returns the summed auxiliary (hardening) losses of the layers, if any.
    /// With `soft`, FFF layers route their top levels softly; with `load_balance > 0` they add
    /// their load-balancing loss at that weight.
    pub fn forward_step(
        &self,
        x: &Tensor,
        step_seed: u64,
        soft: Option<SoftRouting>,
        load_balance: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut step = TrainStep::seeded(step_seed)
            .with_soft_routing(soft)
            .with_load_balance(load_balance);
        let mut h = x.to_dtype(DType::F32)?;
        for (i, layer) in self.layers.iter().enumerate() {
            step.enter_layer(i);
            h = layer.forward_step(&h, &mut step)?;
        }
        Ok((h, step.into_loss()))
    }

    /// The training forward with soft routing `soft` and no random choices (no region leak):
    /// what a softly trained model computes before it is hardened.
    pub fn forward_soft(&self, x: &Tensor, soft: SoftRouting) -> Result<Tensor> {
        let mut step = TrainStep::default().with_soft_routing(Some(soft));
        let mut h = x.to_dtype(DType::F32)?;
        for (i, layer) in self.layers.iter().enumerate() {
            step.enter_layer(i);
            h = layer.forward_step(&h, &mut step)?;
        }
        Ok(h)
    }

    /// Inference forward (FFF layers on the fast kernel, original FFF layers hard).
    pub fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.to_dtype(DType::F32)?;
        for layer in &self.layers {
            h = layer.forward_infer(&h)?;
        }
        Ok(h)
    }

    /// Parameters with PyTorch-style names: `layers.{i}.linear_in.weight` etc. for FFF layers,
    /// `layers.{i}.weight` and `layers.{i}.bias` for linear layers.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.named_tensors(&format!("layers.{i}."))?);
        }
        Ok(out)
    }

    /// Replaces the parameters with those in `tensors` (names as in [`Model::named_tensors`]);
    /// `source` names the file in errors. Call before creating an optimizer.
    pub fn load_tensors(&mut self, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.load_tensors(tensors, &format!("layers.{i}."), source)?;
        }
        Ok(())
    }
}
