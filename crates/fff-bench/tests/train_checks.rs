//! `fff bench train`: its dense masked baseline agrees with the library's oracle and with the
//! O(depth) op, outputs and every gradient, and the check catches a side that is wrong.

use anyhow::Result;
use candle_core::Tensor;
use fastfeedforward::{Activation, ConditionalLayer, Fff, FffConfig, Init};
use fff_bench::train::{check_train_sides, masked_dense, masked_dense_forward, TrainSide};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

const TOL: f64 = 1e-4;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn layer(activation: Activation) -> Fff {
    let config = FffConfig::new(16, 12, 4, 2).with_activation(activation);
    Fff::new(config, Init::Uniform, 5).unwrap()
}

const BATCH: usize = 96;

fn oracle(l: &Fff, x: &Tensor) -> Result<Tensor> {
    Ok(l.forward_reference(x)?)
}

fn o_depth(l: &Fff, x: &Tensor) -> Result<Tensor> {
    Ok(l.forward_train(x)?)
}

#[test]
fn the_masked_baseline_matches_the_oracle_and_the_o_depth_op() {
    for activation in Activation::ALL {
        let l = layer(activation);
        let x = data(BATCH * 16, 1);
        let target = data(BATCH * 12, 2);
        let baseline: TrainSide = &masked_dense_forward;
        let check = check_train_sides(&l, &x, &target, baseline, &oracle, TOL).unwrap();
        assert!(check.passed(), "{activation}: {check:?}");
        assert_eq!(check.rows, BATCH);
        let check = check_train_sides(&l, &x, &target, &o_depth, baseline, TOL).unwrap();
        assert!(check.passed(), "{activation}: {check:?}");
    }
}

#[test]
fn right_outputs_with_wrong_gradients_are_caught() {
    let l = layer(Activation::Gelu);
    let (x, target) = (data(BATCH * 16, 3), data(BATCH * 12, 4));
    // The value of the baseline, twice its gradient.
    let doubled = |l: &Fff, x: &Tensor| -> Result<Tensor> {
        let y2 = (masked_dense_forward(l, x)? * 2.0)?;
        Ok(((&y2 - y2.detach())? + (y2.detach() * 0.5)?)?)
    };
    let check = check_train_sides(&l, &x, &target, &doubled, &oracle, TOL).unwrap();
    assert!(check.max_err[0] < TOL, "{check:?}");
    let why = check.failure.unwrap();
    assert!(why.starts_with("dL/dx"), "{why}");
}

#[test]
fn a_missing_parameter_gradient_is_caught() {
    let l = layer(Activation::Gelu);
    let (x, target) = (data(BATCH * 16, 5), data(BATCH * 12, 6));
    let frozen_bias = |l: &Fff, x: &Tensor| -> Result<Tensor> {
        masked_dense(l.config(), x, l.w_in(), &l.b_in().detach(), l.w_out_t())
    };
    let check = check_train_sides(&l, &x, &target, &frozen_bias, &oracle, TOL).unwrap();
    let why = check.failure.unwrap();
    assert!(why.contains("no dL/db_in"), "{why}");
}

#[test]
fn wrong_outputs_are_caught() {
    let l = layer(Activation::Relu);
    let (x, target) = (data(BATCH * 16, 7), data(BATCH * 12, 8));
    let scaled = |l: &Fff, x: &Tensor| -> Result<Tensor> { Ok((o_depth(l, x)? * 1.01)?) };
    let check = check_train_sides(&l, &x, &target, &scaled, &oracle, TOL).unwrap();
    let why = check.failure.unwrap();
    assert!(why.starts_with("output"), "{why}");
    // A shape that cannot be the layer's output fails too, instead of panicking.
    let short = |l: &Fff, x: &Tensor| -> Result<Tensor> { Ok(o_depth(l, x)?.narrow(0, 0, 2)?) };
    let check = check_train_sides(&l, &x, &target, &short, &oracle, TOL).unwrap();
    assert!(check.failure.unwrap().contains("output shape"));
}
