//! The original FFF against the `fastfeedforward` package's formulas (fixture written by
//! `tools/original_fff_reference.py`), and the flat FFF's fast inference against its
//! differentiable form.

use candle_core::{DType, Device, Tensor};
use fastfeedforward::ConditionalLayer;
use fastfeedforward::{FlatFff, FlatFffConfig, OriginalFff, OriginalFffConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Inference on flat buffers through the layer interface.
fn infer(
    layer: &dyn ConditionalLayer,
    x: &[f32],
    batch: usize,
) -> fastfeedforward::Result<Vec<f32>> {
    let mut y = vec![0f32; batch * layer.output_width()];
    layer.forward_infer_into(x, batch, &mut y, &mut fastfeedforward::Workspace::new())?;
    Ok(y)
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/original_fff")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// |got − want| ≤ 1e-5 + 1e-5·|want| everywhere (the fixture's recommended tolerance).
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

struct Case {
    name: String,
    layer: OriginalFff,
    x: Tensor,
    t: HashMap<String, Tensor>,
}

fn cases() -> Vec<Case> {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("index.json")).unwrap())
            .unwrap();
    let list = index["cases"].as_array().expect("cases");
    assert!(list.len() >= 4);
    list.iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let path = fixture_dir().join(format!("case_{name}.safetensors"));
            let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let dims = |k: &str| c[k].as_u64().unwrap() as usize;
            let config = OriginalFffConfig::new(
                dims("input_width"),
                dims("leaf_width"),
                dims("output_width"),
                dims("depth"),
            );
            let layer = OriginalFff::from_tensors(config, &t, "", &path).unwrap();
            let x = t["x"].clone();
            Case { name, layer, x, t }
        })
        .collect()
}

#[test]
fn soft_training_forward_matches_the_package() {
    for c in cases() {
        let out = c.layer.forward_soft(&c.x, false, None).unwrap();
        assert_close(
            &format!("{} soft output", c.name),
            &values(&out.output),
            &values(&c.t["soft_output"]),
        );
        assert_close(
            &format!("{} mixture", c.name),
            &values(&out.mixture),
            &values(&c.t["soft_mixture"]),
        );
        assert_close(
            &format!("{} entropies", c.name),
            &values(&out.node_entropies),
            &values(&c.t["entropies"]),
        );
    }
}

#[test]
fn hard_training_forward_matches_the_package() {
    for c in cases() {
        let out = c.layer.forward_soft(&c.x, true, None).unwrap();
        assert_close(
            &format!("{} hard", c.name),
            &values(&out.output),
            &values(&c.t["hard_train_output"]),
        );
    }
}

#[test]
fn hard_inference_matches_the_package_with_b2_and_routes_alike() {
    for c in cases() {
        let b = c.x.dim(0).unwrap();
        let x = values(&c.x);
        let fast = infer(&c.layer, &x, b).unwrap();
        assert_close(
            &format!("{} eval", c.name),
            &fast,
            &values(&c.t["eval_output"]),
        );
        let reference: Vec<f32> = c
            .layer
            .forward_reference(&x, b)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_close(
            &format!("{} reference", c.name),
            &reference,
            &values(&c.t["eval_output"]),
        );
        // The package's naive evaluation drops b2; ours does not, and the difference is b2.
        let naive = values(&c.t["eval_naive_without_b2"]);
        let leaves = c.t["leaves"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap();
        let b2 = values(&c.t["b2s"]);
        let cout = c.layer.config().output_width;
        let cin = c.layer.config().input_width;
        for i in 0..b {
            let (leaf, _) = c.layer.route(&x[i * cin..(i + 1) * cin]).unwrap();
            assert_eq!(leaf as i64, leaves[i], "{}: input {i} leaf", c.name);
            for o in 0..cout {
                let diff = fast[i * cout + o] - naive[i * cout + o];
                assert!((diff - b2[leaf * cout + o]).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn region_leak_and_hardening_terms_behave() {
    let config = OriginalFffConfig {
        region_leak: 1.0,
        ..OriginalFffConfig::new(6, 3, 2, 3)
    };
    let layer = OriginalFff::new(config, 7).unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, 6), &Device::Cpu).unwrap();
    let plain = layer.forward_soft(&x, false, None).unwrap();
    let leaked = layer.forward_soft(&x, false, Some(1)).unwrap();
    // A leak of 1 flips every decision: the same as negating every node's logit.
    let mut named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    for k in ["node_weights", "node_biases"] {
        let t = named[k].neg().unwrap();
        named.insert(k.into(), t);
    }
    let negated = OriginalFff::from_tensors(config, &named, "", Path::new("mem")).unwrap();
    let mirrored = negated.forward_soft(&x, false, None).unwrap();
    assert_close(
        "leak 1",
        &values(&leaked.mixture),
        &values(&mirrored.mixture),
    );
    assert_close(
        "leak 1 output",
        &values(&leaked.output),
        &values(&mirrored.output),
    );
    let m = values(&plain.mixture);
    assert!(values(&leaked.mixture) != m, "the leak changed nothing");
    // Mixtures are distributions, and entropies are within [0, ln 2].
    for b in 0..5 {
        let s: f32 = m[b * 8..(b + 1) * 8].iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
    for e in values(&plain.node_entropies) {
        assert!((0.0..=std::f32::consts::LN_2 + 1e-6).contains(&e));
    }
    // The soft output is differentiable with respect to every parameter.
    let grads = plain.output.sum_all().unwrap().backward().unwrap();
    for v in layer.vars() {
        assert!(grads.get(v.as_tensor()).is_some());
    }
}

#[test]
fn bad_original_configs_and_shapes_are_errors() {
    assert!(OriginalFff::new(OriginalFffConfig::new(0, 1, 1, 1), 0).is_err());
    let mut c = OriginalFffConfig::new(3, 1, 1, 1);
    c.region_leak = 1.5;
    assert!(OriginalFff::new(c, 0).is_err());
    let layer = OriginalFff::new(OriginalFffConfig::new(3, 2, 2, 2), 0).unwrap();
    assert!(infer(&layer, &[0.0; 5], 2).is_err());
    let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(layer.forward_soft(&x, false, None).is_err());
    let named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    let mut broken = named.clone();
    broken.insert(
        "w1s".into(),
        Tensor::zeros((4, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = OriginalFff::from_tensors(*layer.config(), &broken, "", Path::new("m.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w1s") && err.contains("m.safetensors"),
        "{err}"
    );
    broken.remove("w1s");
    assert!(OriginalFff::from_tensors(*layer.config(), &broken, "", Path::new("m")).is_err());
}

#[test]
fn flat_fff_inference_matches_its_training_forward_and_routes_by_sign() {
    for (cin, cout, depth, batch) in [(1, 1, 1, 1), (7, 5, 3, 9), (33, 17, 6, 40), (64, 10, 8, 0)] {
        let config = FlatFffConfig {
            input_width: cin,
            output_width: cout,
            depth,
        };
        let layer = FlatFff::new(config, 3).unwrap();
        let x = Tensor::randn(0f32, 1.0, (batch, cin), &Device::Cpu).unwrap();
        let xs = values(&x);
        let fast = infer(&layer, &xs, batch).unwrap();
        if batch > 0 {
            let train = values(&layer.forward_train(&x).unwrap());
            for (a, b) in fast.iter().zip(&train) {
                assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        } else {
            assert!(fast.is_empty());
        }
        // Plain check of the routing rule on each input: λ_d > 0 goes right.
        for i in 0..batch {
            let (nodes, lambdas) = layer.route(&xs[i * cin..(i + 1) * cin]).unwrap();
            assert_eq!(nodes[0], 0);
            for d in 1..depth {
                let want = 2 * nodes[d - 1] + 1 + u32::from(lambdas[d - 1] > 0.0);
                assert_eq!(nodes[d], want);
            }
        }
    }
    // A zero input ties every λ at 0: all left, and the output is zero.
    let layer = FlatFff::new(
        FlatFffConfig {
            input_width: 4,
            output_width: 3,
            depth: 3,
        },
        1,
    )
    .unwrap();
    let (nodes, _) = layer.route(&[0.0; 4]).unwrap();
    assert_eq!(nodes, vec![0, 1, 3]);
    assert_eq!(infer(&layer, &[0.0; 4], 1).unwrap(), vec![0.0; 3]);
}

#[test]
fn original_fff_fast_inference_matches_the_f64_reference_on_random_shapes() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for case in 0..24 {
        let config = OriginalFffConfig::new(
            rng.random_range(1..40),
            rng.random_range(1..20),
            rng.random_range(1..35),
            rng.random_range(0..6),
        );
        let layer = OriginalFff::new(config, case).unwrap();
        let batch = [0, 1, 2, 17, 64][case as usize % 5];
        let x: Vec<f32> = (0..batch * config.input_width)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let fast = infer(&layer, &x, batch).unwrap();
        let reference = layer.forward_reference(&x, batch).unwrap();
        assert_eq!(fast.len(), batch * config.output_width);
        for i in 0..batch {
            let (_, zs) = layer
                .route(&x[i * config.input_width..(i + 1) * config.input_width])
                .unwrap();
            // A decision within 1e-4 of its boundary may go either way under another order of
            // summation: such rows are counted, not compared.
            if zs.iter().any(|z| z.abs() < 1e-4) {
                continue;
            }
            for o in 0..config.output_width {
                let (f, r) = (
                    fast[i * config.output_width + o],
                    reference[i * config.output_width + o],
                );
                assert!(
                    (f as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
                    "case {case}: {f} vs {r}"
                );
            }
        }
    }
    // A tie (z = 0 exactly) goes right, as in the package: a zero input with zero biases.
    let config = OriginalFffConfig::new(3, 2, 2, 2);
    let layer = OriginalFff::new(config, 0).unwrap();
    let mut named: HashMap<String, Tensor> = layer.named_tensors("").unwrap().into_iter().collect();
    named.insert(
        "node_biases".into(),
        Tensor::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let tied = OriginalFff::from_tensors(config, &named, "", Path::new("mem")).unwrap();
    assert_eq!(
        tied.route(&[0.0; 3]).unwrap().0,
        3,
        "right, right: the last leaf"
    );
}
