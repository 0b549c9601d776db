//! AdamW as one fused pass per parameter.
//!
//! candle-nn's AdamW builds about a dozen temporary tensors per parameter per step; on a
//! 1M-parameter MNIST net that is most of the training time. This is the same update (decoupled
//! weight decay, bias-corrected moments, as in PyTorch and candle-nn) computed in one pass, with
//! the moments held here so a checkpoint can save and restore them.

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Storage, Tensor, Var};
use rayon::prelude::*;

pub use candle_nn::ParamsAdamW;

/// Fused AdamW over a fixed list of variables.
pub struct AdamW {
    vars: Vec<Var>,
    first: Vec<Vec<f32>>,
    second: Vec<Vec<f32>>,
    step: u64,
    params: ParamsAdamW,
}

/// Calls `f` with the contiguous f32 contents of a CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("AdamW runs on CPU tensors")
    };
    let (a, b) = layout
        .contiguous_offsets()
        .context("AdamW needs contiguous tensors")?;
    Ok(f(&cpu.as_slice::<f32>()?[a..b]))
}

impl AdamW {
    /// An optimizer for `vars` with zero moments.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Self {
        let zeros = |v: &Var| vec![0f32; v.elem_count()];
        AdamW {
            first: vars.iter().map(zeros).collect(),
            second: vars.iter().map(zeros).collect(),
            vars,
            step: 0,
            params,
        }
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Sets the learning rate (for schedules).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// The moments and step count, for checkpoints.
    pub fn state(&self) -> (&[Vec<f32>], &[Vec<f32>], u64) {
        (&self.first, &self.second, self.step)
    }

    /// Restores moments and step count saved by [`AdamW::state`].
    pub fn set_state(
        &mut self,
        first: Vec<Vec<f32>>,
        second: Vec<Vec<f32>>,
        step: u64,
    ) -> Result<()> {
        let sizes: Vec<usize> = self.vars.iter().map(|v| v.elem_count()).collect();
        let ok = |m: &Vec<Vec<f32>>| {
            m.len() == sizes.len() && m.iter().zip(&sizes).all(|(a, &n)| a.len() == n)
        };
        if !ok(&first) || !ok(&second) {
            bail!("optimizer state does not match the model's parameters");
        }
        self.first = first;
        self.second = second;
        self.step = step;
        Ok(())
    }

    /// One update from the gradients in `grads`; variables without a gradient are skipped.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = self.params.clone();
        let t = self.step as i32;
        let scale_m = (1.0 / (1.0 - p.beta1.powi(t))) as f32;
        let scale_v = (1.0 / (1.0 - p.beta2.powi(t))) as f32;
        let (b1, b2, eps) = (p.beta1 as f32, p.beta2 as f32, p.eps as f32);
        let (lr, decay) = (p.lr as f32, (1.0 - p.lr * p.weight_decay) as f32);
        for ((var, m), v) in self.vars.iter().zip(&mut self.first).zip(&mut self.second) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.contiguous()?;
            let next = with_slice(var.as_tensor(), |theta| {
                with_slice(&g, |g| {
                    let mut next = vec![0f32; theta.len()];
                    next.par_chunks_mut(4096)
                        .zip(theta.par_chunks(4096))
                        .zip(g.par_chunks(4096))
                        .zip(m.par_chunks_mut(4096).zip(v.par_chunks_mut(4096)))
                        .for_each(|(((out, th), gr), (mm, vv))| {
                            for i in 0..out.len() {
                                mm[i] = mm[i] * b1 + gr[i] * (1.0 - b1);
                                vv[i] = vv[i] * b2 + gr[i] * gr[i] * (1.0 - b2);
                                let update = (mm[i] * scale_m) / ((vv[i] * scale_v).sqrt() + eps);
                                out[i] = th[i] * decay - update * lr;
                            }
                        });
                    next
                })
            })??;
            var.set(&Tensor::from_vec(next, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}
