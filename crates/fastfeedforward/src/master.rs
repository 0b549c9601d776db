//! An FFF layer with a master leaf: a small dense branch `relu(x·W₁ᵀ + b₁)·W₂ᵀ + b₂` that
//! every input runs, added to the trees' output ("Enhancing Fast Feed Forward Networks with
//! Load Balancing and a Master Leaf Node", arXiv 2405.16836). The trees specialise; the
//! master leaf carries what every input shares.

use crate::conditional::{ConditionalLayer, Linear, Routing, TrainStep};
use crate::error::{check_rows, Result};
use crate::kernels::Workspace;
use crate::layer::Fff;
use candle_core::{Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Tensor-name prefix of the master leaf's hidden layer (`master.hidden.weight`, `.bias`).
pub const MASTER_HIDDEN: &str = "master.hidden.";
/// Tensor-name prefix of the master leaf's output layer (`master.output.weight`, `.bias`).
pub const MASTER_OUTPUT: &str = "master.output.";

/// An FFF layer plus a dense master leaf of width `W` on the same input.
#[derive(Debug, Clone)]
pub struct MasterLeafFff {
    fff: Fff,
    hidden: Linear,
    output: Linear,
}

impl MasterLeafFff {
    /// `fff` plus a master leaf of `width` hidden units drawn from `seed` (PyTorch's
    /// `nn.Linear` init).
    pub fn new(fff: Fff, width: usize, seed: u64) -> Result<Self> {
        let c = *fff.config();
        Ok(MasterLeafFff {
            hidden: Linear::new(c.input_width, width, seed)?,
            output: Linear::new(width, c.output_width, seed ^ 0x9E37_79B9_7F4A_7C15)?,
            fff,
        })
    }

    /// The trees.
    pub fn fff(&self) -> &Fff {
        &self.fff
    }

    /// Hidden width of the master leaf.
    pub fn width(&self) -> usize {
        self.hidden.output_width()
    }

    fn master(&self, x: &Tensor) -> Result<Tensor> {
        self.output
            .forward_train(&self.hidden.forward_train(x)?.relu()?)
    }
}

impl ConditionalLayer for MasterLeafFff {
    fn describe(&self) -> String {
        format!("{} master {}", self.fff.describe(), self.width())
    }

    fn input_width(&self) -> usize {
        self.fff.input_width()
    }

    fn output_width(&self) -> usize {
        self.fff.output_width()
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok((self.fff.forward_train(x)? + self.master(x)?)?)
    }

    fn forward_step(&self, x: &Tensor, step: &mut TrainStep) -> Result<Tensor> {
        Ok((self.fff.forward_step(x, step)? + self.master(x)?)?)
    }

    fn forward_infer_into(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        ws: &mut Workspace,
    ) -> Result<()> {
        let (cin, cout, w) = (self.input_width(), self.output_width(), self.width());
        check_rows("input", x.len(), batch, cin)?;
        check_rows("output", y.len(), batch, cout)?;
        self.fff.forward_infer_into(x, batch, y, ws)?;
        let mut h = vec![0f32; batch * w];
        self.hidden.forward_infer_into(x, batch, &mut h, ws)?;
        h.iter_mut().for_each(|v| *v = v.max(0.0));
        let mut m = vec![0f32; batch * cout];
        self.output.forward_infer_into(&h, batch, &mut m, ws)?;
        y.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn route_batch(&self, x: &[f32], batch: usize) -> Result<Option<Routing>> {
        self.fff.route_batch(x, batch)
    }

    fn vars(&self) -> Vec<Var> {
        let mut v = self.fff.vars();
        v.extend(self.hidden.vars());
        v.extend(self.output.vars());
        v
    }

    fn named_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut t = self.fff.named_tensors(prefix)?;
        t.extend(
            self.hidden
                .named_tensors(&format!("{prefix}{MASTER_HIDDEN}"))?,
        );
        t.extend(
            self.output
                .named_tensors(&format!("{prefix}{MASTER_OUTPUT}"))?,
        );
        Ok(t)
    }

    fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        source: &Path,
    ) -> Result<()> {
        self.fff.load_tensors(tensors, prefix, source)?;
        self.hidden
            .load_tensors(tensors, &format!("{prefix}{MASTER_HIDDEN}"), source)?;
        self.output
            .load_tensors(tensors, &format!("{prefix}{MASTER_OUTPUT}"), source)
    }

    fn multiply_adds_per_input(&self) -> usize {
        self.fff.multiply_adds_per_input()
            + self.hidden.multiply_adds_per_input()
            + self.output.multiply_adds_per_input()
    }

    fn neurons_per_input(&self) -> usize {
        self.fff.neurons_per_input() + self.width() + self.output_width()
    }
}
