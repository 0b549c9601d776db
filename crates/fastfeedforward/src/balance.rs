//! Load balancing: an auxiliary loss that pushes every node to split the inputs reaching it
//! evenly between its children, so that inputs spread over the leaves instead of crowding a
//! few (after "Enhancing Fast Feed Forward Networks with Load Balancing and a Master Leaf
//! Node", arXiv 2405.16836, which balances leaf usage).
//!
//! Hard routing has no gradient, so the loss acts on each decision's soft version `σ(z)`: for a
//! node `n` reached by `c_n` inputs of the batch, `p_n` is the mean of `σ(z)` over them, and
//! the loss is `Σ_n (c_n / C) · 4 (p_n − ½)²` over the nodes above the leaves (`C` their visits
//! in all). It is 0 when every node sends half its inputs right, 1 when every node sends all
//! of them one way.

use crate::config::FffConfig;
use crate::error::Result;
use crate::tree::recorded_visits;
use candle_core::{Device, Tensor};

/// The load-balancing loss of the node logits `z` (`[B, K, D+1]`, as
/// [`crate::train_op::NodeLogits`] returns them); a scalar, 0 for depth 0 or an empty batch.
pub fn loss(config: &FffConfig, z: &Tensor) -> Result<Tensor> {
    let levels = config.depth + 1;
    let used = config.used_nodes();
    let values = z.flatten_all()?.to_vec1::<f32>()?;
    let batch = values.len() / used.max(1);
    // The decisions that matter (not the leaves'), and the node each one belongs to.
    let (mut picks, mut rows) = (Vec::new(), Vec::new());
    for b in 0..batch {
        let zb = &values[b * used..(b + 1) * used];
        for v in recorded_visits(config.trees, levels, zb) {
            if v.level < config.depth {
                picks.push((b * used + v.index) as u32);
                rows.push(v.row as u32);
            }
        }
    }
    let dev = &Device::Cpu;
    if picks.is_empty() {
        return Ok(Tensor::zeros((), candle_core::DType::F32, dev)?);
    }
    let visits = picks.len();
    let mut counts = vec![0f32; config.total_nodes()];
    for &r in &rows {
        counts[r as usize] += 1.0;
    }
    let picks = Tensor::from_vec(picks, visits, dev)?;
    let rows = Tensor::from_vec(rows, visits, dev)?;
    let right = sigmoid(&z.flatten_all()?.index_select(&picks, 0)?)?;
    let sums = Tensor::zeros(config.total_nodes(), candle_core::DType::F32, dev)?
        .index_add(&rows, &right, 0)?;
    let weights: Vec<f32> = counts.iter().map(|&c| c / visits as f32).collect();
    let inverse: Vec<f32> = counts
        .iter()
        .map(|&c| if c > 0.0 { 1.0 / c } else { 0.0 })
        .collect();
    let n = counts.len();
    let p = (sums * Tensor::from_vec(inverse, n, dev)?)?;
    let off = ((p - 0.5)?.sqr()? * 4.0)?;
    Ok((off * Tensor::from_vec(weights, n, dev)?)?.sum_all()?)
}

/// `σ(u) = 1 / (1 + e^(−u))` in candle ops (differentiable).
fn sigmoid(u: &Tensor) -> candle_core::Result<Tensor> {
    (u.neg()?.exp()? + 1.0)?.recip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn balanced_routing_costs_nothing_and_one_sided_routing_costs_one() {
        // Depth 1, one tree: only the root decides. z is [B, 1, 2].
        let c = FffConfig::new(2, 2, 1, 1);
        let z = |v: Vec<f32>| Tensor::from_vec(v.clone(), (v.len() / 2, 1, 2), &Device::Cpu);
        let l = |v: Vec<f32>| {
            loss(&c, &z(v).unwrap())
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // Two inputs, one far right and one far left: p = ½.
        assert!(l(vec![50.0, 0.0, -50.0, 0.0]).abs() < 1e-6);
        // Both far right: p = 1.
        assert!((l(vec![50.0, 0.0, 60.0, 0.0]) - 1.0).abs() < 1e-6);
        // The gradient pushes a lopsided root back toward the middle.
        let var = Var::from_tensor(&z(vec![1.0, 0.0, 2.0, 0.0]).unwrap()).unwrap();
        let g = loss(&c, var.as_tensor()).unwrap().backward().unwrap();
        let g = g
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(g[0] > 0.0 && g[2] > 0.0, "{g:?}");
        // The leaves' logits carry no loss.
        assert_eq!((g[1], g[3]), (0.0, 0.0));
        // Depth 0: nothing to balance.
        let c0 = FffConfig::new(2, 2, 0, 1);
        let t = Tensor::from_vec(vec![1.0f32, 2.0], (2, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(loss(&c0, &t).unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn each_node_is_weighed_by_its_own_visitors() {
        // Depth 2: inputs 0, 1 go right at the root (node 2), input 2 left (node 1).
        let c = FffConfig::new(2, 2, 2, 1);
        let z = Tensor::from_vec(
            vec![50.0f32, 50.0, 0.0, 50.0, -50.0, 0.0, -50.0, 50.0, 0.0],
            (3, 1, 3),
            &Device::Cpu,
        )
        .unwrap();
        // Root: 2 of 3 right, p = 2/3, weight 3/6. Node 2: one right, one left, p = ½, weight
        // 2/6. Node 1: one input, right, p = 1, weight 1/6.
        let want = 0.5 * 4.0 * (2.0f32 / 3.0 - 0.5).powi(2) + 1.0 / 6.0 * 4.0 * 0.25;
        let got = loss(&c, &z).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
