//! Soft-to-hard training: the top levels of each tree route softly, the rest hard.
//!
//! With temperature `T`, a node sends an input right with probability `σ(z/T)` and left with
//! `σ(−z/T)`, and both children run, weighted by the probability of reaching them. Over the top
//! `L` levels that is an exact soft tree; below them each of the `2^L` subtrees under a tree's
//! soft top is descended hard, on the O(depth) training op, its node outputs weighted by the
//! probability of reaching its root. Per input and tree that is `2^L − 1` soft nodes plus
//! `2^L · (D + 1 − L)` hard ones, against `D + 1` for hard training: about 1.9x the node work
//! at `L = 1`, 3.4x at `L = 2` (depth 8).
//!
//! As `T → 0` every probability goes to 0 or 1 (a tie, `z = 0`, stays at ½) and the output
//! becomes the hard forward's: the net trained is the net deployed. The routing decisions of
//! the soft levels receive gradient through the probabilities, which hard routing never gives.

use crate::config::FffConfig;
use crate::error::{FffError, Result};
use crate::train_op;
use candle_core::{Device, Tensor, D};

/// Soft routing of the top `levels` levels at `temperature`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftRouting {
    /// Levels routed softly (capped at the tree's depth: the leaves' own decisions never
    /// matter).
    pub levels: usize,
    /// Temperature `T > 0` of `σ(z/T)`.
    pub temperature: f64,
}

/// The index tensors of one layer shape's soft forward.
struct Plan {
    /// Global rows of the soft nodes, `[K·(2^L − 1)]`, tree-major.
    top_rows: Tensor,
    /// Global rows of the hard subtrees' nodes in the subtree forest's row order,
    /// `[K·2^L · (2^(D−L+1) − 1)]`.
    sub_rows: Tensor,
    /// `[2·K·(2^L − 1), K·(2^L − 1)]`: which log-probabilities (right ones, then left ones) of
    /// the soft nodes sum to the log-probability of reaching each soft node.
    reach_top: Tensor,
    /// The same for the roots of the hard subtrees, `[2·K·(2^L − 1), K·2^L]`.
    reach_sub: Tensor,
    /// The subtree forest: `K·2^L` trees of depth `D − L`.
    sub_config: FffConfig,
}

fn plan(config: &FffConfig, levels: usize) -> Result<Plan> {
    let (k, depth) = (config.trees, config.depth);
    let l = levels;
    let m = config.nodes_per_tree();
    let top = (1usize << l) - 1;
    let frontier = 1usize << l;
    let sub_depth = depth - l;
    let sub_nodes = (1usize << (sub_depth + 1)) - 1;
    let mut top_rows = Vec::with_capacity(k * top);
    let mut sub_rows = Vec::with_capacity(k * frontier * sub_nodes);
    let mut reach_top = vec![0f32; 2 * k * top * k * top];
    let mut reach_sub = vec![0f32; 2 * k * top * k * frontier];
    // Column `c` of a reach matrix gets a 1 in row `a` (right turn at soft node a) or
    // `k·top + a` (left turn) for every ancestor `a` of its node.
    let mark = |matrix: &mut [f32], cols: usize, col: usize, tree: usize, node: usize| {
        let mut n = node;
        while n > 0 {
            let parent = (n - 1) / 2;
            let right = n == 2 * parent + 2;
            let row = tree * top + parent + if right { 0 } else { k * top };
            matrix[row * cols + col] = 1.0;
            n = parent;
        }
    };
    for t in 0..k {
        for n in 0..top {
            top_rows.push((t * m + n) as u32);
            mark(&mut reach_top, k * top, t * top + n, t, n);
        }
        for s in 0..frontier {
            let root = top + s;
            mark(&mut reach_sub, k * frontier, t * frontier + s, t, root);
            // The subtree's nodes in breadth-first order: level j holds 2^j nodes starting
            // at (root + 1)·2^j − 1.
            for j in 0..=sub_depth {
                let first = ((root + 1) << j) - 1;
                for i in 0..(1usize << j) {
                    sub_rows.push((t * m + first + i) as u32);
                }
            }
        }
    }
    let dev = &Device::Cpu;
    let (n_top, n_sub) = (top_rows.len(), sub_rows.len());
    Ok(Plan {
        top_rows: Tensor::from_vec(top_rows, n_top, dev)?,
        sub_rows: Tensor::from_vec(sub_rows, n_sub, dev)?,
        reach_top: Tensor::from_vec(reach_top, (2 * k * top, k * top), dev)?,
        reach_sub: Tensor::from_vec(reach_sub, (2 * k * top, k * frontier), dev)?,
        sub_config: FffConfig {
            trees: k * frontier,
            depth: sub_depth,
            ..*config
        },
    })
}

/// `log σ(u)`, stably: `−(relu(−u) + log(1 + e^(−|u|)))`.
fn log_sigmoid(u: &Tensor) -> candle_core::Result<Tensor> {
    let soft = (u.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (u.neg()?.relu()? + soft)?.neg()
}

/// Differentiable soft-to-hard forward of an FFF layer, `x [B, in] -> y [B, out]`, from the
/// layer's parameters (`w_in [K·M, in]`, `b_in [K·M]`, `w_out_t [K·M, out]`).
pub fn forward(
    config: &FffConfig,
    routing: SoftRouting,
    x: &Tensor,
    w_in: &Tensor,
    b_in: &Tensor,
    w_out_t: &Tensor,
) -> Result<Tensor> {
    let t = routing.temperature;
    if !(t.is_finite() && t > 0.0) {
        return Err(FffError::InvalidConfig {
            field: "temperature",
            message: format!("soft routing needs a temperature > 0, got {t}"),
        });
    }
    let levels = routing.levels.min(config.depth);
    if levels == 0 {
        return Ok(train_op::forward(config, x, w_in, b_in, w_out_t)?);
    }
    let p = plan(config, levels)?;
    let act = config.activation;
    // The soft top: every node runs, weighted by the probability of reaching it.
    let z_top = x
        .matmul(&w_in.index_select(&p.top_rows, 0)?.t()?)?
        .broadcast_add(&b_in.index_select(&p.top_rows, 0)?)?;
    let scaled = (&z_top / t)?;
    let log_turns = Tensor::cat(&[log_sigmoid(&scaled)?, log_sigmoid(&scaled.neg()?)?], 1)?;
    let reach_top = log_turns.matmul(&p.reach_top)?.exp()?;
    let reach_sub = log_turns.matmul(&p.reach_sub)?.exp()?;
    let a_top = (act.apply_tensor(&z_top)? * reach_top)?;
    let y_top = a_top.matmul(&w_out_t.index_select(&p.top_rows, 0)?)?;
    // The hard subtrees below it, each node's output weighted by its subtree's probability.
    let sc = &p.sub_config;
    let w_in_sub = w_in.index_select(&p.sub_rows, 0)?;
    let b_in_sub = b_in.index_select(&p.sub_rows, 0)?;
    let w_out_sub = w_out_t.index_select(&p.sub_rows, 0)?;
    let z =
        x.contiguous()?
            .apply_op3(&w_in_sub, &b_in_sub, train_op::NodeLogits { config: *sc })?;
    let a = act
        .apply_tensor(&z)?
        .broadcast_mul(&reach_sub.unsqueeze(D::Minus1)?)?;
    let y_sub = a.apply_op3(&w_out_sub, &z, train_op::NodeOutputs { config: *sc })?;
    Ok((y_top + y_sub)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_covers_every_node_once() {
        for (k, d, l) in [(1, 3, 1), (2, 4, 2), (3, 2, 2), (1, 1, 1)] {
            let c = FffConfig::new(5, 3, d, k);
            let p = plan(&c, l).unwrap();
            let mut rows: Vec<u32> = p.top_rows.to_vec1().unwrap();
            rows.extend(p.sub_rows.to_vec1::<u32>().unwrap());
            rows.sort_unstable();
            let all: Vec<u32> = (0..c.total_nodes() as u32).collect();
            assert_eq!(rows, all, "k{k} d{d} l{l}");
            // Every soft node but the roots has `level` ancestors; every subtree root `l`.
            let sums: Vec<f32> = p.reach_sub.sum(0).unwrap().to_vec1().unwrap();
            assert!(sums.iter().all(|&s| s == l as f32), "{sums:?}");
        }
    }
}
