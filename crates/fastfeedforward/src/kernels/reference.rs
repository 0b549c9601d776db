//! The plain reference descent: one input at a time, one node at a time, f64 accumulation.
//! It is slow on purpose and is what the fast kernel is tested against. For bf16 and int8
//! weights it is the reference of that format: each stored weight widened and scaled exactly,
//! so the fast kernel of a format is held to the same numbers it should compute.

use super::{check_io, FffWeightsView, WeightElem};
use crate::error::Result;
use crate::tree::forest_visits;

/// Pre-activation of global node `row` for input `x`, accumulated in f64.
pub fn node_logit<E: WeightElem>(w: &FffWeightsView<'_, E>, row: usize, x: &[f32]) -> f32 {
    let dot: f64 = w
        .w_in_row(row)
        .iter()
        .zip(x)
        .map(|(a, b)| a.to_f32() as f64 * *b as f64)
        .sum();
    (dot * w.w_in_scale(row) as f64 + w.b_in[row] as f64) as f32
}

/// The nodes one input visits: `K·(D+1)` local node indices, tree-major (tree t's path is
/// `path[t·(D+1)..(t+1)·(D+1)]`, starting at its root 0).
pub fn route<E: WeightElem>(w: &FffWeightsView<'_, E>, x: &[f32]) -> Vec<u32> {
    let c = &w.config;
    let m = c.nodes_per_tree();
    forest_visits(c.trees, c.depth + 1, |row| node_logit(w, row, x))
        .map(|v| (v.row - v.tree * m) as u32)
        .collect()
}

/// The layer's output for `batch` inputs, by plain per-input descent.
pub fn forward<E: WeightElem>(
    w: &FffWeightsView<'_, E>,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<()> {
    let c = &w.config;
    check_io(c, x, y, batch)?;
    for b in 0..batch {
        let xb = &x[b * c.input_width..(b + 1) * c.input_width];
        let mut acc = vec![0f64; c.output_width];
        for v in forest_visits(c.trees, c.depth + 1, |row| node_logit(w, row, xb)) {
            let a = c.activation.apply(v.z) as f64 * w.w_out_scale(v.row) as f64;
            for (o, wo) in acc.iter_mut().zip(w.w_out_row(v.row)) {
                *o += a * wo.to_f32() as f64;
            }
        }
        for (o, v) in y[b * c.output_width..(b + 1) * c.output_width]
            .iter_mut()
            .zip(acc)
        {
            *o = v as f32;
        }
    }
    Ok(())
}
