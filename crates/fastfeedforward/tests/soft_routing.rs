//! Soft-to-hard routing against a plain per-input recursion: values, gradients by finite
//! differences, and the hard limit as the temperature goes to 0.

mod common;

use candle_core::Var;
use common::*;
use fastfeedforward::soft::{forward, SoftRouting};
use fastfeedforward::{Activation, ConditionalLayer, Fff, FffConfig, TrainStep};

/// The soft-to-hard output of one input, in f64, written as the definition reads: the top
/// `levels` levels run both children weighted by σ(±z/T), the levels below descend hard.
fn reference(layer: &Fff, x: &[f32], levels: usize, t: f64) -> Vec<f64> {
    let c = layer.config();
    let (w_in, b_in, w_out) = (
        flat(layer.w_in()),
        flat(layer.b_in()),
        flat(layer.w_out_t()),
    );
    let (cin, cout, m) = (c.input_width, c.output_width, c.nodes_per_tree());
    let mut y = vec![0f64; cout];
    let sigma = |u: f64| 1.0 / (1.0 + (-u).exp());
    #[allow(clippy::too_many_arguments)]
    fn visit(
        row0: usize,
        n: usize,
        level: usize,
        prob: f64,
        ctx: &dyn Fn(usize) -> f64,
        add: &mut dyn FnMut(usize, f64),
        depth: usize,
        levels: usize,
        soft: &dyn Fn(f64) -> f64,
    ) {
        let z = ctx(row0 + n);
        add(row0 + n, prob);
        if level == depth {
            return;
        }
        if level < levels {
            let p = soft(z);
            visit(
                row0,
                2 * n + 2,
                level + 1,
                prob * p,
                ctx,
                add,
                depth,
                levels,
                soft,
            );
            visit(
                row0,
                2 * n + 1,
                level + 1,
                prob * (1.0 - p),
                ctx,
                add,
                depth,
                levels,
                soft,
            );
        } else {
            let next = 2 * n + 1 + usize::from(z > 0.0);
            visit(row0, next, level + 1, prob, ctx, add, depth, levels, soft);
        }
    }
    let logit = |row: usize| -> f64 {
        (0..cin)
            .map(|i| w_in[row * cin + i] as f64 * x[i] as f64)
            .sum::<f64>()
            + b_in[row] as f64
    };
    let act = c.activation;
    for tree in 0..c.trees {
        let mut add = |row: usize, prob: f64| {
            let a = act.apply(logit(row) as f32) as f64;
            for (o, yo) in y.iter_mut().enumerate() {
                *yo += prob * a * w_out[row * cout + o] as f64;
            }
        };
        visit(
            tree * m,
            0,
            0,
            1.0,
            &logit,
            &mut add,
            c.depth,
            levels,
            &|z| sigma(z / t),
        );
    }
    y
}

fn soft_output(layer: &Fff, x: &[f32], batch: usize, routing: SoftRouting) -> Vec<f32> {
    let c = layer.config();
    let xt = tensor(x.to_vec(), batch, c.input_width);
    flat(&forward(c, routing, &xt, layer.w_in(), layer.b_in(), layer.w_out_t()).unwrap())
}

#[test]
fn soft_forward_matches_the_recursion() {
    let mut r = rng(11);
    for (case, (depth, trees, levels, act)) in [
        (3, 1, 1, Activation::Identity),
        (4, 2, 2, Activation::Gelu),
        (2, 3, 2, Activation::Relu),
        (1, 1, 1, Activation::Tanh),
        // More soft levels than the tree has decisions: the whole tree is soft.
        (2, 2, 5, Activation::Identity),
        (5, 1, 3, Activation::Identity),
    ]
    .into_iter()
    .enumerate()
    {
        let mut config = FffConfig::new(7, 5, depth, trees);
        config.activation = act;
        let layer = random_layer(config, case as u64);
        let batch = 9;
        let x = normal_vec(&mut r, batch * 7);
        for t in [0.5, 2.0] {
            let got = soft_output(
                &layer,
                &x,
                batch,
                SoftRouting {
                    levels,
                    temperature: t,
                },
            );
            for b in 0..batch {
                let want = reference(&layer, &x[b * 7..(b + 1) * 7], levels, t);
                for (o, w) in want.iter().enumerate() {
                    let g = got[b * 5 + o] as f64;
                    assert!(
                        (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "case {case} T {t} input {b} output {o}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn at_a_tiny_temperature_soft_routing_is_the_hard_forward() {
    let mut r = rng(12);
    let config = FffConfig::new(6, 4, 4, 2);
    let layer = random_layer(config, 3);
    let batch = 32;
    let x = normal_vec(&mut r, batch * 6);
    let hard = flat(&layer.forward_train(&tensor(x.clone(), batch, 6)).unwrap());
    let soft = soft_output(
        &layer,
        &x,
        batch,
        SoftRouting {
            levels: 2,
            temperature: 1e-6,
        },
    );
    let mut flips = 0;
    for b in 0..batch {
        // An input whose |z| on a soft level is below ~1e-5 may still be mixed: skip it.
        if min_abs_logit_on_path(&layer, &x[b * 6..(b + 1) * 6]) < 1e-4 {
            flips += 1;
            continue;
        }
        for o in 0..4 {
            let (h, s) = (hard[b * 4 + o], soft[b * 4 + o]);
            assert!((h - s).abs() < 1e-4, "input {b}: hard {h}, soft {s}");
        }
    }
    assert!(flips <= 2, "{flips} inputs near a tie");
    // Zero soft levels is the hard op itself.
    let zero = soft_output(
        &layer,
        &x,
        batch,
        SoftRouting {
            levels: 0,
            temperature: 1.0,
        },
    );
    assert_eq!(zero, hard);
    // A bad temperature is named.
    let xt = tensor(x, batch, 6);
    let err = forward(
        layer.config(),
        SoftRouting {
            levels: 1,
            temperature: 0.0,
        },
        &xt,
        layer.w_in(),
        layer.b_in(),
        layer.w_out_t(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("temperature"), "{err}");
}

/// Backward against central differences of the f64 recursion, for the biases (which carry
/// the routing gradient of the soft levels), the output rows and the input.
#[test]
fn soft_gradients_match_finite_differences() {
    let mut r = rng(13);
    let mut config = FffConfig::new(5, 3, 3, 2);
    config.activation = Activation::Gelu;
    let layer = random_layer(config, 4);
    let routing = SoftRouting {
        levels: 2,
        temperature: 0.7,
    };
    let batch = 4;
    let x = normal_vec(&mut r, batch * 5);
    let weights = normal_vec(&mut r, batch * 3);
    let xv = Var::from_tensor(&tensor(x.clone(), batch, 5)).unwrap();
    let y = forward(
        layer.config(),
        routing,
        xv.as_tensor(),
        layer.w_in(),
        layer.b_in(),
        layer.w_out_t(),
    )
    .unwrap();
    let loss = (&y * &tensor(weights.clone(), batch, 3))
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    let objective = |l: &Fff, x: &[f32]| -> f64 {
        (0..batch)
            .map(|b| {
                reference(
                    l,
                    &x[b * 5..(b + 1) * 5],
                    routing.levels,
                    routing.temperature,
                )
                .iter()
                .zip(&weights[b * 3..(b + 1) * 3])
                .map(|(y, w)| y * *w as f64)
                .sum::<f64>()
            })
            .sum()
    };
    let h = 1e-3f32;
    let perturbed = |which: usize, index: usize, delta: f32| -> f64 {
        let mut tensors = vec![
            flat(layer.w_in()),
            flat(layer.b_in()),
            flat(layer.w_out_t()),
        ];
        tensors[which][index] += delta;
        let [w_in, b_in, w_out_t] = tensors.try_into().unwrap();
        let l = Fff::from_node_major(*layer.config(), w_in, b_in, w_out_t).unwrap();
        objective(&l, &x)
    };
    let grads = [
        flat(g.get(layer.w_in()).unwrap()),
        flat(g.get(layer.b_in()).unwrap()),
        flat(g.get(layer.w_out_t()).unwrap()),
    ];
    let mut checked = 0;
    for (which, name) in [(1, "b_in"), (2, "w_out_t"), (0, "w_in")] {
        for index in [0, 1, 2, 5, 9]
            .into_iter()
            .filter(|&i| i < grads[which].len())
        {
            let fd = (perturbed(which, index, h) - perturbed(which, index, -h)) / (2.0 * h as f64);
            let got = grads[which][index] as f64;
            assert!(
                (got - fd).abs() < 2e-2 * (1.0 + fd.abs()),
                "{name}[{index}]: backward {got}, finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12);
    // The soft levels' biases get gradient through the routing probabilities; hard routing
    // gives the root's bias only its own output's.
    let hard_loss = (layer.forward_train(xv.as_tensor()).unwrap() * tensor(weights, batch, 3))
        .unwrap()
        .sum_all()
        .unwrap();
    let hard = flat(hard_loss.backward().unwrap().get(layer.b_in()).unwrap());
    assert!(
        (hard[0] - grads[1][0]).abs() > 1e-3,
        "root bias: hard {} soft {}",
        hard[0],
        grads[1][0]
    );
}

/// The layer routes softly exactly when its training step asks for it.
#[test]
fn the_layer_follows_its_step() {
    let mut r = rng(14);
    let layer = random_layer(FffConfig::new(4, 2, 3, 1), 5);
    let x = tensor(normal_vec(&mut r, 8 * 4), 8, 4);
    let hard = flat(&layer.forward_step(&x, &mut TrainStep::default()).unwrap());
    assert_eq!(hard, flat(&layer.forward_train(&x).unwrap()));
    let routing = SoftRouting {
        levels: 1,
        temperature: 1.0,
    };
    let mut step = TrainStep::default().with_soft_routing(Some(routing));
    let soft = flat(&layer.forward_step(&x, &mut step).unwrap());
    assert_eq!(soft, soft_output(&layer, &flat(&x), 8, routing));
    assert_ne!(soft, hard);
}
