//! The O(depth) training op against the dense masked reference: values and every gradient,
//! plus a finite-difference check of the gradients themselves.

mod common;

use candle_core::{Tensor, Var};
use common::*;
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{Activation, Fff, FffConfig};

/// Inputs whose paths stay at least `margin` away from every decision boundary, so that the
/// dense GEMM and the per-node dots cannot route them differently.
fn inputs_away_from_ties(layer: &Fff, seed: u64, batch: usize, margin: f32) -> Vec<f32> {
    let width = layer.config().input_width;
    let mut rng = rng(seed);
    let mut x = Vec::with_capacity(batch * width);
    while x.len() < batch * width {
        let row = normal_vec(&mut rng, width);
        if min_abs_logit_on_path(layer, &row) > margin {
            x.extend(row);
        }
    }
    x
}

struct Grads {
    y: Vec<f32>,
    x: Vec<f32>,
    w_in: Vec<f32>,
    b_in: Vec<f32>,
    w_out_t: Vec<f32>,
}

/// Gradients of `sum(y ⊙ r)` through either forward.
fn grads(layer: &Fff, x: &[f32], r: &Tensor, batch: usize, train_op: bool) -> Grads {
    let c = layer.config();
    let xv = Var::from_tensor(&tensor(x.to_vec(), batch, c.input_width)).unwrap();
    let y = if train_op {
        layer.forward_train(xv.as_tensor()).unwrap()
    } else {
        layer.forward_reference(xv.as_tensor()).unwrap()
    };
    let loss = (&y * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    // candle records no gradient through an empty batch: that is a zero gradient.
    let get = |t: &Tensor| match g.get(t) {
        Some(grad) => flat(grad),
        None if batch == 0 => vec![0.0; t.elem_count()],
        None => panic!("no gradient (batch {batch}, train op {train_op})"),
    };
    Grads {
        y: flat(&y),
        x: get(xv.as_tensor()),
        w_in: get(layer.w_in()),
        b_in: get(layer.b_in()),
        w_out_t: get(layer.w_out_t()),
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale + 1e-6,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn values_and_gradients_match_dense_masked_reference() {
    let mut rng = rng(21);
    for case in 0..40u64 {
        let config = random_config(&mut rng, 10, 6);
        let layer = random_layer(config, case);
        let batch = [0, 1, 3, 17, 64][case as usize % 5];
        let x = inputs_away_from_ties(&layer, case, batch, 1e-3);
        let r = tensor(
            normal_vec(&mut rng, batch * config.output_width),
            batch,
            config.output_width,
        );
        let ours = grads(&layer, &x, &r, batch, true);
        let reference = grads(&layer, &x, &r, batch, false);
        let what = |n: &str| format!("case {case} {config:?}: {n}");
        assert_close(&ours.y, &reference.y, &what("y"));
        assert_close(&ours.x, &reference.x, &what("dx"));
        assert_close(&ours.w_in, &reference.w_in, &what("dw_in"));
        assert_close(&ours.b_in, &reference.b_in, &what("db_in"));
        assert_close(&ours.w_out_t, &reference.w_out_t, &what("dw_out"));
    }
}

#[test]
fn only_visited_rows_get_gradient() {
    let config = FffConfig::new(12, 5, 6, 2).with_activation(Activation::Identity);
    let layer = random_layer(config, 3);
    let x = inputs_away_from_ties(&layer, 3, 1, 1e-3);
    let r = tensor(vec![1.0; 5], 1, 5);
    let g = grads(&layer, &x, &r, 1, true);
    let path = layer.route(&x).unwrap();
    let m = config.nodes_per_tree();
    let visited: Vec<usize> = path
        .iter()
        .enumerate()
        .map(|(i, &n)| (i / (config.depth + 1)) * m + n as usize)
        .collect();
    for row in 0..config.total_nodes() {
        let row_grad = &g.w_in[row * 12..(row + 1) * 12];
        let nonzero = row_grad.iter().any(|v| *v != 0.0);
        assert_eq!(nonzero, visited.contains(&row), "row {row}");
        assert_eq!(g.b_in[row] != 0.0, visited.contains(&row), "bias {row}");
    }
}

/// Central differences of `sum(y ⊙ r)` against the op's analytic gradients.
#[test]
fn finite_difference_gradients() {
    for activation in Activation::ALL {
        let config = FffConfig::new(5, 3, 2, 2).with_activation(activation);
        let layer = random_layer(config, 8);
        let batch = 4;
        let x = inputs_away_from_ties(&layer, 8, batch, 0.05);
        let r_vals = normal_vec(&mut rng(9), batch * 3);
        let r = tensor(r_vals.clone(), batch, 3);
        let g = grads(&layer, &x, &r, batch, true);
        let loss = |l: &Fff, x: &[f32]| -> f64 {
            let y = flat(&l.forward_train(&tensor(x.to_vec(), batch, 5)).unwrap());
            y.iter()
                .zip(&r_vals)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let eps = 1e-2f32;
        let check = |numeric: f64, analytic: f32, what: String| {
            let tol = 2e-2 * (1.0 + analytic.abs() as f64);
            assert!(
                (numeric - analytic as f64).abs() <= tol,
                "{activation} {what}: numeric {numeric} analytic {analytic}"
            );
        };
        // Inputs.
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += eps;
            xm[i] -= eps;
            let numeric = (loss(&layer, &xp) - loss(&layer, &xm)) / (2.0 * eps as f64);
            check(numeric, g.x[i], format!("dx[{i}]"));
        }
        // Every parameter of the three tensors.
        let params = [
            flat(layer.w_in()),
            flat(layer.b_in()),
            flat(layer.w_out_t()),
        ];
        let analytic = [&g.w_in, &g.b_in, &g.w_out_t];
        for p in 0..3 {
            for i in 0..params[p].len() {
                let perturbed = |delta: f32| {
                    let mut v = params.clone();
                    v[p][i] += delta;
                    let [a, b, c] = v;
                    Fff::from_node_major(config, a, b, c).unwrap()
                };
                let numeric =
                    (loss(&perturbed(eps), &x) - loss(&perturbed(-eps), &x)) / (2.0 * eps as f64);
                check(numeric, analytic[p][i], format!("param {p}[{i}]"));
            }
        }
    }
}

#[test]
fn leading_dimensions_are_kept() {
    let config = FffConfig::new(6, 4, 3, 2);
    let layer = random_layer(config, 1);
    let x = Tensor::from_vec(
        normal_vec(&mut rng(1), 2 * 3 * 6),
        (2, 3, 6),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(layer.forward_train(&x).unwrap().dims(), &[2, 3, 4]);
    assert_eq!(layer.forward_infer(&x).unwrap().dims(), &[2, 3, 4]);
    assert_eq!(layer.forward_reference(&x).unwrap().dims(), &[2, 3, 4]);
    let bad = Tensor::zeros((2, 5), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = layer.forward_train(&bad).unwrap_err().to_string();
    assert!(err.contains("input") && err.contains("[2, 6]"), "{err}");
}
