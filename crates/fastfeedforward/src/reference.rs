//! The dense masked formulation, exactly as UltraFastBERT trains: all K·M logits in one matmul,
//! a 0/1 mask of each input's path, the activation, and the output matmul. Built from candle ops
//! so that autodiff gives its gradients. It is the oracle of the tests, never the fast path.

use crate::config::FffConfig;
use crate::tree::forest_visits;
use candle_core::{Result, Tensor};

/// `y = (act(x·w_inᵀ + b_in) ⊙ mask) · w_out_t`, with the mask of visited nodes.
pub fn forward(
    config: &FffConfig,
    x: &Tensor,
    w_in: &Tensor,
    b_in: &Tensor,
    w_out_t: &Tensor,
) -> Result<Tensor> {
    let logits = x.matmul(&w_in.t()?)?.broadcast_add(b_in)?;
    let mask = path_mask(config, &logits)?;
    let activations = (config.activation.apply_tensor(&logits)? * mask)?;
    activations.matmul(w_out_t)
}

/// The 0/1 mask `[B, K·M]` of the nodes each input visits, read off the dense logits
/// (the same descent UltraFastBERT performs with `gather`). Carries no gradient.
pub fn path_mask(config: &FffConfig, logits: &Tensor) -> Result<Tensor> {
    let (batch, rows) = logits.dims2()?;
    let values = logits.detach().flatten_all()?.to_vec1::<f32>()?;
    let mut mask = vec![0f32; batch * rows];
    for (b, logits_b) in values.chunks_exact(rows.max(1)).take(batch).enumerate() {
        for v in forest_visits(config.trees, config.depth + 1, |row| logits_b[row]) {
            mask[b * rows + v.row] = 1.0;
        }
    }
    Tensor::from_vec(mask, (batch, rows), logits.device())
}
