//! Save/load in safetensors with PyTorch names, and clear errors for bad files and shapes.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use fastfeedforward::{Activation, Fff, FffConfig, FffError, Init};
use std::collections::HashMap;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fff-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn round_trip_keeps_config_and_weights() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("layer.safetensors");
    let config = FffConfig::new(13, 6, 4, 3).with_activation(Activation::Tanh);
    let layer = Fff::new(config, Init::Hyperspherical, 4).unwrap();
    layer.save(&path).unwrap();
    let loaded = Fff::load(&path, None).unwrap();
    assert_eq!(loaded.config(), &config);
    assert_eq!(flat(loaded.w_in()), flat(layer.w_in()));
    assert_eq!(flat(loaded.b_in()), flat(layer.b_in()));
    assert_eq!(flat(loaded.w_out_t()), flat(layer.w_out_t()));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn files_use_pytorch_names_and_layouts() {
    let dir = temp_dir("names");
    let path = dir.join("layer.safetensors");
    let config = FffConfig::new(5, 3, 2, 2);
    let layer = random_layer(config, 1);
    layer.save(&path).unwrap();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        ["linear_in.bias", "linear_in.weight", "linear_out.weight"]
    );
    assert_eq!(tensors["linear_in.weight"].dims(), &[14, 5]);
    assert_eq!(tensors["linear_in.bias"].dims(), &[14]);
    // PyTorch's nn.Linear(K·M, out).weight is [out, K·M]: the transpose of our node-major rows.
    assert_eq!(tensors["linear_out.weight"].dims(), &[3, 14]);
    let w_out = flat(&tensors["linear_out.weight"]);
    let w_out_t = flat(layer.w_out_t());
    for node in 0..14 {
        for o in 0..3 {
            assert_eq!(w_out[o * 14 + node], w_out_t[node * 3 + o]);
        }
    }
}

#[test]
fn a_plain_pytorch_state_dict_loads_with_an_explicit_config() {
    let dir = temp_dir("plain");
    let path = dir.join("torch.safetensors");
    let config = FffConfig::new(4, 2, 1, 1);
    let mut map = HashMap::new();
    let dev = &Device::Cpu;
    map.insert(
        "linear_in.weight".to_string(),
        Tensor::ones((3, 4), candle_core::DType::F32, dev).unwrap(),
    );
    map.insert(
        "linear_in.bias".to_string(),
        Tensor::zeros(3, candle_core::DType::F32, dev).unwrap(),
    );
    map.insert(
        "linear_out.weight".to_string(),
        Tensor::ones((2, 3), candle_core::DType::F32, dev).unwrap(),
    );
    candle_core::safetensors::save(&map, &path).unwrap();
    let err = Fff::load(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("torch.safetensors") && err.contains("fff.input_width"),
        "{err}"
    );
    let layer = Fff::load(&path, Some(config)).unwrap();
    assert_eq!(layer.route(&[1.0; 4]).unwrap(), vec![0, 2]);
}

#[test]
fn wrong_shapes_name_the_tensor_and_both_shapes() {
    let dir = temp_dir("shape");
    let path = dir.join("layer.safetensors");
    random_layer(FffConfig::new(5, 3, 2, 1), 1)
        .save(&path)
        .unwrap();
    let err = Fff::load(&path, Some(FffConfig::new(6, 3, 2, 1))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FffError::Shape { .. }), "{msg}");
    assert!(
        msg.contains("linear_in.weight") && msg.contains("[7, 6]") && msg.contains("[7, 5]"),
        "{msg}"
    );
    assert!(msg.contains("layer.safetensors"), "{msg}");
    let err = Fff::load(&path, Some(FffConfig::new(5, 3, 3, 1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linear_in.weight") && err.contains("[15, 5]"),
        "{err}"
    );
}

#[test]
fn missing_corrupt_and_truncated_files_are_clear_errors() {
    let dir = temp_dir("corrupt");
    let missing = dir.join("nope.safetensors");
    let err = Fff::load(&missing, None).unwrap_err().to_string();
    assert!(
        err.contains("nope.safetensors") && err.contains("cannot read"),
        "{err}"
    );

    let good = dir.join("good.safetensors");
    random_layer(FffConfig::new(5, 3, 2, 1), 1)
        .save(&good)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let err = Fff::load(&truncated, None).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let err = Fff::load(&garbage, None).unwrap_err().to_string();
    assert!(err.contains("garbage.safetensors"), "{err}");

    // Empty files and folders are read as files that cannot be mapped or parsed, not panics.
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = Fff::load(&empty, None).unwrap_err().to_string();
    assert!(err.contains("empty.safetensors"), "{err}");
    let err = Fff::load(&dir, None).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn missing_tensor_and_non_finite_values_are_named() {
    let dir = temp_dir("missing");
    let path = dir.join("partial.safetensors");
    let dev = &Device::Cpu;
    let mut map = HashMap::new();
    map.insert(
        "linear_in.weight".to_string(),
        Tensor::ones((3, 4), candle_core::DType::F32, dev).unwrap(),
    );
    map.insert(
        "linear_in.bias".to_string(),
        Tensor::zeros(3, candle_core::DType::F32, dev).unwrap(),
    );
    candle_core::safetensors::save(&map, &path).unwrap();
    let err = Fff::load(&path, Some(FffConfig::new(4, 2, 1, 1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linear_out.weight")
            && err.contains("missing")
            && err.contains("linear_in.bias"),
        "{err}"
    );

    let nan_path = dir.join("nan.safetensors");
    let mut w = vec![0.5f32; 12];
    w[7] = f32::NAN;
    map.insert(
        "linear_in.weight".to_string(),
        Tensor::from_vec(w, (3, 4), dev).unwrap(),
    );
    map.insert(
        "linear_out.weight".to_string(),
        Tensor::ones((2, 3), candle_core::DType::F32, dev).unwrap(),
    );
    candle_core::safetensors::save(&map, &nan_path).unwrap();
    let err = Fff::load(&nan_path, Some(FffConfig::new(4, 2, 1, 1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linear_in.weight") && err.contains("non-finite") && err.contains("7"),
        "{err}"
    );
}

#[test]
fn configs_out_of_range_are_rejected() {
    let ok = FffConfig::new(4, 2, 3, 1);
    assert!(ok.validate().is_ok());
    for (bad, field) in [
        (FffConfig { depth: 21, ..ok }, "depth"),
        (FffConfig { trees: 0, ..ok }, "trees"),
        // 3 × this wraps to 2 in a usize: refused, not taken for a 2-node layer.
        (
            FffConfig {
                trees: 6_148_914_691_236_517_206,
                depth: 1,
                ..ok
            },
            "trees",
        ),
        (
            FffConfig {
                input_width: 0,
                ..ok
            },
            "input_width",
        ),
        (
            FffConfig {
                output_width: 0,
                ..ok
            },
            "output_width",
        ),
    ] {
        let err = Fff::new(bad, Init::default(), 0).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
    assert_eq!(FffConfig::new(768, 768, 11, 1).total_nodes(), 4095);
    assert_eq!(FffConfig::new(768, 768, 11, 1).used_nodes(), 12);
    assert_eq!(FffConfig::new(768, 768, 11, 1).name(), "1x11");
    assert!("gelu".parse::<Activation>().is_ok());
    assert!("swish"
        .parse::<Activation>()
        .unwrap_err()
        .to_string()
        .contains("swish"));
    assert!("normal(0.05)".parse::<Init>().is_ok());
    assert!("normal(-1)".parse::<Init>().is_err());
}

#[test]
fn inits_have_the_documented_scales() {
    let config = FffConfig::new(400, 50, 5, 2);
    let rows = config.total_nodes();
    let n = Fff::new(config, Init::Normal { std: 0.02 }, 1).unwrap();
    let w = flat(n.w_in());
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.001, "{std}");
    assert!(flat(n.b_in()).iter().all(|b| *b == 0.0));

    let u = Fff::new(config, Init::Uniform, 1).unwrap();
    let k_in = (1.0f32 / 400.0).sqrt();
    let k_out = (1.0f32 / 12.0).sqrt();
    assert!(flat(u.w_in()).iter().all(|v| v.abs() <= k_in));
    assert!(flat(u.b_in()).iter().all(|v| v.abs() <= k_in));
    assert!(flat(u.w_out_t()).iter().all(|v| v.abs() <= k_out));
    assert!(flat(u.w_out_t()).iter().any(|v| v.abs() > 0.9 * k_out));

    let h = Fff::new(config, Init::Hyperspherical, 1).unwrap();
    for (t, width) in [(h.w_in(), 400usize), (h.w_out_t(), 50)] {
        for row in flat(t).chunks(width).take(rows) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
    }
    // Same seed, same parameters.
    let again = Fff::new(config, Init::Uniform, 1).unwrap();
    assert_eq!(flat(again.w_in()), flat(u.w_in()));
}
