//! Model descriptions, and training that really learns, deterministically.

use fastfeedforward::{Fff, OriginalFff};
use fff_data::synthetic::spirals;
use fff_train::LayerSpec;
use fff_train::{train, Model, TrainConfig};

#[test]
fn descriptions_build_the_described_layers() {
    let m = Model::new("fff:784-500:d8:identity, relu, fff:500-10:d8:identity", 0).unwrap();
    assert_eq!((m.input_width(), m.output_width()), (784, 10));
    assert_eq!(m.layers.len(), 3);
    assert_eq!(m.neurons_per_input(), 18);
    let f = m.layer_as::<Fff>(0).expect("first layer is an FFF");
    assert_eq!((f.config().depth, f.config().trees), (8, 1));
    assert_eq!(f.config().activation, fastfeedforward::Activation::Identity);
    // 511 nodes: w_in 511·784 + b_in 511 + w_out 511·500, then 511·500 + 511 + 511·10.
    assert_eq!(
        m.parameter_count(),
        511 * 784 + 511 + 511 * 500 + 511 * 500 + 511 + 511 * 10
    );

    let d = Model::new("linear:784-500, relu, linear:500-10", 0).unwrap();
    assert_eq!(d.parameter_count(), 784 * 500 + 500 + 500 * 10 + 10);
    assert_eq!(d.neurons_per_input(), 510);

    let k = Model::new("fff:8-4:d2:k3:tanh:init=hyperspherical", 0).unwrap();
    let f = k.layer_as::<Fff>(0).expect("first layer is an FFF");
    assert_eq!(f.config().trees, 3);
}

#[test]
fn multiply_adds_per_input_match_a_hand_count() {
    for (spec, want) in [
        ("linear:784-500, relu, linear:500-10", 784 * 500 + 500 * 10),
        // 9 visited nodes per tree, each a 784-wide input row and a 500-wide output row.
        (
            "fff:784-500:d8:identity, relu, linear:500-10",
            9 * (784 + 500) + 500 * 10,
        ),
        ("fff:784-500:d8:k4", 4 * 9 * (784 + 500)),
        // 3 routing nodes, then one leaf: 784 -> 36 -> 500.
        ("orig:784-500:d3:l36", 3 * 784 + 36 * 784 + 36 * 500),
        // 4 hyperplanes and 4 output rows.
        ("flat:784-10:d4", 4 * 784 + 4 * 10),
    ] {
        let m = Model::new(spec, 0).unwrap();
        assert_eq!(m.multiply_adds_per_input(), want, "{spec}");
    }
}

#[test]
fn bad_descriptions_name_the_layer_and_the_problem() {
    for (spec, want) in [
        ("linear:784-500, relu, linear:400-10", "layer 2"),
        ("fff:784-500:identity", "missing depth"),
        ("fff:784-500:d8:swish", "swish"),
        ("conv:3-3", "unknown layer"),
        ("linear:784", "IN-OUT"),
        ("linear:0-3", "at least 1"),
        ("relu", "no linear, fff, orig or flat layer"),
        ("linear:2-3,,relu", "empty item"),
        ("fff:4-4:d30", "depth"),
    ] {
        let err = format!("{:#}", Model::new(spec, 0).unwrap_err());
        assert!(err.contains(want), "`{spec}`: {err}");
    }
}

fn quiet(epochs: usize, lr: f64, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr,
        seed,
        ..TrainConfig::default()
    }
}

#[test]
fn an_fff_net_learns_spirals() {
    let data = spirals(3, 400, 0.03, 1);
    let model = Model::new("fff:2-32:d4:k4:identity, relu, linear:32-3", 1).unwrap();
    let history = train(&model, &data, &quiet(40, 1e-2, 1), ()).unwrap();
    let first = &history[0];
    let last = history.last().unwrap();
    assert!(
        last.train_loss < 0.5 * first.train_loss,
        "{first:?} -> {last:?}"
    );
    // Chance is 33%; a linear model cannot separate spirals either.
    assert!(last.test_accuracy.unwrap() > 0.85, "{last:?}");
}

#[test]
fn same_seed_same_metrics_and_different_seed_differs() {
    let data = spirals(3, 200, 0.05, 2);
    let run = |seed| {
        let model = Model::new("fff:2-16:d3:k2:gelu, relu, linear:16-3", seed).unwrap();
        train(&model, &data, &quiet(3, 5e-3, seed), ()).unwrap()
    };
    let (a, b, c) = (run(5), run(5), run(6));
    let strip = |h: &[fff_train::EpochMetrics]| {
        h.iter()
            .map(|m| (m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_ne!(strip(&a), strip(&c));
}

#[test]
fn mismatched_data_and_settings_are_errors() {
    let data = spirals(3, 50, 0.05, 2);
    let model = Model::new("linear:3-3", 0).unwrap();
    let err = train(&model, &data, &quiet(1, 1e-3, 0), ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 features") && err.contains("takes 3"),
        "{err}"
    );
    let model = Model::new("linear:2-3", 0).unwrap();
    let err = train(&model, &data, &quiet(1, f64::NAN, 0), ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("learning rate"), "{err}");
}

/// The fused AdamW takes the same steps as candle-nn's.
#[test]
fn fused_adamw_matches_candle_nn() {
    use candle_nn::Optimizer;
    let data = spirals(3, 40, 0.05, 3);
    let params = fff_train::optim::ParamsAdamW {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    };
    let a = Model::new("fff:2-8:d2:k2:tanh, relu, linear:8-3", 9).unwrap();
    let b = Model::new("fff:2-8:d2:k2:tanh, relu, linear:8-3", 9).unwrap();
    let mut fused = fff_train::optim::Optimizer::adamw(a.vars(), params.clone());
    let mut reference = candle_nn::AdamW::new(b.vars(), params).unwrap();
    let x = candle_core::Tensor::from_vec(
        data.train.features.clone(),
        (data.train.len(), 2),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let y = candle_core::Tensor::from_vec(
        data.train.labels.clone(),
        data.train.len(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for _ in 0..5 {
        let la = candle_nn::loss::cross_entropy(&a.forward(&x).unwrap(), &y).unwrap();
        fused.step(&la.backward().unwrap(), 1.0).unwrap();
        let lb = candle_nn::loss::cross_entropy(&b.forward(&x).unwrap(), &y).unwrap();
        reference.backward_step(&lb).unwrap();
    }
    for (va, vb) in a.vars().iter().zip(b.vars()) {
        let pa = va.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pb = vb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in pa.iter().zip(&pb) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
    assert_eq!(fused.step_count(), 5);
}

/// Two epochs, a checkpoint, two more from the checkpoint: the same figures and parameters as
/// four epochs in one go.
#[test]
fn resume_matches_an_uninterrupted_run() {
    use fff_train::checkpoint::{load_model, load_optimizer, load_state};
    use fff_train::trainer::{optimizer_for, train_from};
    let data = spirals(3, 150, 0.05, 4);
    let spec = "fff:2-16:d3:k2:identity, relu, linear:16-3";
    let base = std::env::temp_dir().join(format!("fff-train-resume-{}", std::process::id()));
    let (dir_a, dir_b) = (base.join("a"), base.join("b"));
    let cfg = |epochs| TrainConfig {
        epochs,
        ..quiet(epochs, 5e-3, 11)
    };
    let fresh = |dir: &std::path::Path, epochs| {
        let model = Model::new(spec, 3).unwrap();
        let mut opt = optimizer_for(&model, &cfg(epochs));
        let h = train_from(
            &model,
            &mut opt,
            &data,
            &cfg(epochs),
            vec![].into(),
            Some((dir, 3)),
            (),
        )
        .unwrap();
        (model, h)
    };
    let (model_a, straight) = fresh(&dir_a, 4);
    fresh(&dir_b, 2);
    let state = load_state(&dir_b).unwrap();
    assert_eq!((state.epoch, state.dataset.as_str()), (2, "spirals3/train"));
    let model_b = load_model(&dir_b, &state).unwrap();
    let mut opt = optimizer_for(&model_b, &state.config);
    load_optimizer(&dir_b, &state, &mut opt, model_b.vars().len()).unwrap();
    let resumed = train_from(
        &model_b,
        &mut opt,
        &data,
        &cfg(4),
        state.progress(),
        Some((&dir_b, 3)),
        (),
    )
    .unwrap();
    let figures = |h: &[fff_train::EpochMetrics]| {
        h.iter()
            .map(|m| (m.epoch, m.train_loss, m.test_loss, m.test_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&resumed), figures(&straight));
    for (a, b) in model_a.vars().iter().zip(model_b.vars()) {
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir_b.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics.as_array().unwrap().len(), 4);

    // A damaged checkpoint is an error that names the file.
    std::fs::write(dir_b.join("model.safetensors"), b"garbage").unwrap();
    let err = format!(
        "{:#}",
        load_model(&dir_b, &load_state(&dir_b).unwrap()).unwrap_err()
    );
    assert!(err.contains("model.safetensors"), "{err}");
    let err = format!("{:#}", load_state(&base.join("nowhere")).unwrap_err());
    assert!(err.contains("state.json"), "{err}");
}

#[test]
fn sgd_without_momentum_matches_candle_nn_and_momentum_accumulates() {
    use candle_nn::Optimizer as _;
    use fff_train::optim::{Optimizer, OptimizerKind};
    let data = spirals(3, 40, 0.05, 3);
    let x = candle_core::Tensor::from_vec(
        data.train.features.clone(),
        (data.train.len(), 2),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let y = candle_core::Tensor::from_vec(
        data.train.labels.clone(),
        data.train.len(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let spec = "fff:2-8:d2:k2:tanh, relu, linear:8-3";
    let (a, b) = (Model::new(spec, 4).unwrap(), Model::new(spec, 4).unwrap());
    let mut ours = Optimizer::new(a.vars(), OptimizerKind::Sgd { momentum: 0.0 }, 0.1, 0.0);
    let mut reference = candle_nn::SGD::new(b.vars(), 0.1).unwrap();
    for _ in 0..4 {
        let la = candle_nn::loss::cross_entropy(&a.forward(&x).unwrap(), &y).unwrap();
        ours.step(&la.backward().unwrap(), 1.0).unwrap();
        let lb = candle_nn::loss::cross_entropy(&b.forward(&x).unwrap(), &y).unwrap();
        reference.backward_step(&lb).unwrap();
    }
    for (va, vb) in a.vars().iter().zip(b.vars()) {
        let pa = va.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pb = vb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (p, q) in pa.iter().zip(&pb) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
    }
    // With momentum, two identical gradients move the parameter by lr·g·(1 + (1 + μ)).
    let v = candle_core::Var::new(&[1.0f32], &candle_core::Device::Cpu).unwrap();
    let mut opt = Optimizer::new(
        vec![v.clone()],
        OptimizerKind::Sgd { momentum: 0.5 },
        0.1,
        0.0,
    );
    for _ in 0..2 {
        let loss = (v.as_tensor() * 2.0).unwrap().sum_all().unwrap(); // gradient 2
        opt.step(&loss.backward().unwrap(), 1.0).unwrap();
    }
    let p = v.as_tensor().to_vec1::<f32>().unwrap()[0];
    assert!((p - (1.0 - 0.1 * 2.0 - 0.1 * 3.0)).abs() < 1e-6, "{p}");
    // Clipping scales the gradient: half the gradient, half the (first) SGD step.
    let w = candle_core::Var::new(&[0.0f32], &candle_core::Device::Cpu).unwrap();
    let mut opt = Optimizer::new(
        vec![w.clone()],
        OptimizerKind::Sgd { momentum: 0.0 },
        1.0,
        0.0,
    );
    let loss = (w.as_tensor() * 4.0).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!((opt.grad_norm(&grads).unwrap() - 4.0).abs() < 1e-9);
    opt.step(&grads, 0.5).unwrap();
    assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap()[0], -2.0);
}

#[test]
fn schedules_warm_up_and_decay() {
    use fff_train::trainer::learning_rate;
    use fff_train::Schedule;
    let mut cfg = TrainConfig {
        lr: 1.0,
        warmup_steps: 10,
        schedule: Schedule::Cosine,
        ..TrainConfig::default()
    };
    assert!((learning_rate(&cfg, 0, 110) - 0.1).abs() < 1e-12);
    assert!((learning_rate(&cfg, 9, 110) - 1.0).abs() < 1e-12);
    assert!((learning_rate(&cfg, 10, 110) - 1.0).abs() < 1e-12);
    assert!((learning_rate(&cfg, 60, 110) - 0.5).abs() < 1e-12);
    assert!(learning_rate(&cfg, 109, 110) < 1e-3);
    cfg.schedule = Schedule::Linear;
    assert!((learning_rate(&cfg, 60, 110) - 0.5).abs() < 1e-12);
    cfg.schedule = Schedule::Constant;
    assert_eq!(learning_rate(&cfg, 100, 110), 1.0);
}

#[test]
fn original_and_flat_fff_layers_build_train_and_round_trip() {
    let m = Model::new(
        "orig:2-16:d3:l8:harden=0.5:leak=0.05, relu, flat:16-3:d4",
        3,
    )
    .unwrap();
    let layer = m
        .layer_as::<OriginalFff>(0)
        .expect("first layer is an original FFF");
    assert!(matches!(m.spec.layers()[0], LayerSpec::Original(c) if c.hardening == 0.5));
    assert_eq!((layer.config().depth, layer.config().leaf_width), (3, 8));
    assert_eq!(layer.config().hardening, 0.5);
    assert_eq!(layer.config().region_leak, 0.05);
    // 7 nodes · (2 + 1), 8 leaves · (2·8 + 8 + 8·16 + 16); flat: 16·4 + 15·3.
    assert_eq!(
        m.parameter_count(),
        7 * 3 + 8 * (16 + 8 + 128 + 16) + 16 * 4 + 15 * 3
    );
    assert_eq!(m.neurons_per_input(), 3 + 8 + 16 + 4);

    let data = spirals(3, 400, 0.03, 1);
    let history = train(&m, &data, &quiet(30, 1e-2, 1), ()).unwrap();
    let (first, last) = (&history[0], history.last().unwrap());
    assert!(
        last.train_loss < 0.7 * first.train_loss,
        "{first:?} -> {last:?}"
    );
    assert!(last.test_accuracy.unwrap() > 0.6, "{last:?}");

    // Save and load through the named tensors; the reloaded model predicts the same.
    let named: std::collections::HashMap<_, _> = m.named_tensors().unwrap().into_iter().collect();
    assert!(named.contains_key("layers.0.node_weights") && named.contains_key("layers.2.Y"));
    let mut other = Model::from_spec(m.spec.clone(), 99).unwrap();
    other
        .load_tensors(&named, std::path::Path::new("mem"))
        .unwrap();
    let x = candle_core::Tensor::randn(0f32, 1.0, (5, 2), &candle_core::Device::Cpu).unwrap();
    let a = m.forward_infer(&x).unwrap().to_vec2::<f32>().unwrap();
    let b = other.forward_infer(&x).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(a, b);

    for (spec, want) in [
        ("orig:4-4:l8", "missing depth"),
        ("orig:4-4:d2", "missing leaf width"),
        ("orig:4-4:d2:l3:leak=2", "region_leak"),
        ("orig:4-4:d2:l3:leak=x", "non-negative number"),
        ("flat:4-4", "missing depth"),
        ("flat:4-4:d2:k3", "flat takes dD"),
    ] {
        let err = format!("{:#}", Model::new(spec, 0).unwrap_err());
        assert!(err.contains(want), "`{spec}`: {err}");
    }
}

#[test]
fn the_variants_study_builds_and_its_original_fff_matches_dense_in_size() {
    let vs = fff_train::study::variants_study();
    let count = |name: &str| {
        let v = vs.iter().find(|v| v.name == name).unwrap();
        Model::new(&v.spec, 0).unwrap().parameter_count()
    };
    let dense = count("dense");
    for name in ["orig", "orig-hardened"] {
        let rel = (count(name) as f64 - dense as f64).abs() / dense as f64;
        assert!(rel < 0.01, "{name}: {} vs dense {dense}", count(name));
    }
    for v in &vs {
        let m = Model::new(&v.spec, 0).unwrap();
        assert_eq!((m.input_width(), m.output_width()), (784, 10), "{}", v.name);
    }
}

/// `Model::quantize` swaps every FFF layer for its bf16 / int8 copy and nothing else; the copy
/// predicts nearly what the f32 model does, and `trainer::compare` counts it.
#[test]
fn quantized_models_keep_their_predictions() {
    use fastfeedforward::{QuantizedFff, WeightFormat};
    let data = spirals(3, 400, 0.1, 5);
    let spec = "fff:2-16:d3:identity, relu, linear:16-3";
    let base = Model::new(spec, 1).unwrap();
    let mut same = Model::new(spec, 1).unwrap();
    assert_eq!(same.quantize(WeightFormat::F32).unwrap(), 0);
    for format in [WeightFormat::Bf16, WeightFormat::Int8] {
        let mut q = Model::new(spec, 1).unwrap();
        assert_eq!(q.quantize(format).unwrap(), 1, "{format}");
        let layer = q
            .layer_as::<QuantizedFff>(0)
            .expect("the FFF layer is quantized");
        assert_eq!(layer.format(), format);
        assert!(q.layer_as::<fastfeedforward::Linear>(2).is_some());
        let a = fff_train::trainer::compare(&base, &q, &data.test).unwrap();
        assert!(a.same_prediction > 0.95, "{format}: {a:?}");
        assert!(a.max_logit_diff > 0.0, "{format}: the copy changed nothing");
        assert!(q
            .forward(
                &candle_core::Tensor::zeros(
                    (1, 2),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu
                )
                .unwrap()
            )
            .is_err());
    }
    let a = fff_train::trainer::compare(&base, &same, &data.test).unwrap();
    assert_eq!((a.same_prediction, a.max_logit_diff), (1.0, 0.0));
}
