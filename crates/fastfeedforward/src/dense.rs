//! A plain dense feedforward layer, `act(x·W1ᵀ + b1)·W2ᵀ`, on candle's SGEMM: the baseline an
//! FFF is measured against.

use crate::config::Activation;
use crate::error::Result;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// Dense feedforward layer with `hidden` neurons. Weights are stored pre-transposed
/// (`[in, hidden]` and `[hidden, out]`) so both products are plain row-major GEMMs.
#[derive(Debug, Clone)]
pub struct DenseFf {
    w1_t: Tensor,
    b1: Tensor,
    w2_t: Tensor,
    activation: Activation,
}

impl DenseFf {
    /// A dense layer with N(0, 0.02²) weights and zero bias.
    pub fn new(
        input_width: usize,
        hidden: usize,
        output_width: usize,
        activation: Activation,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| normal.sample(&mut rng)).collect() };
        let dev = &Device::Cpu;
        Ok(DenseFf {
            w1_t: Tensor::from_vec(draw(input_width * hidden), (input_width, hidden), dev)?,
            b1: Tensor::zeros(hidden, candle_core::DType::F32, dev)?,
            w2_t: Tensor::from_vec(draw(hidden * output_width), (hidden, output_width), dev)?,
            activation,
        })
    }

    /// Neurons in the hidden layer.
    pub fn hidden(&self) -> usize {
        self.b1.dims()[0]
    }

    /// `x [B, in] -> [B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.matmul(&self.w1_t)?.broadcast_add(&self.b1)?;
        let h = self.activation.apply_tensor(&h)?;
        Ok(h.matmul(&self.w2_t)?)
    }
}
