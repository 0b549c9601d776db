//! The `pytorch_model.bin` path: `tiny-fff-bin` holds tiny-fff's weights as a `torch.save` zip
//! (written by `tools/safetensors_to_torch_bin.py`, without torch: `module.` prefix on every
//! name, the decoder tied to the word embedding's storage, 0-d `norm_factor` buffers,
//! `state_dict()._metadata`), and must load and run exactly as tiny-fff's `model.safetensors`.

use candle_core::{Device, Tensor};
use fff_bert::{FfnMode, Pipeline};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |a - b| over all elements, asserting equal shapes.
fn max_diff(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    flat(got)
        .iter()
        .zip(flat(want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// The texts of tiny-fff's `expected.json`, which its `expected.safetensors` was computed on,
/// and the tolerance against that float64 reference.
fn fixture_texts() -> (Vec<String>, f32) {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-fff").join("expected.json")).unwrap(),
    )
    .unwrap();
    let texts = json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    (texts, json["tolerance"].as_f64().unwrap() as f32)
}

#[test]
fn torch_zip_holds_the_same_tensors_as_the_safetensors_file() {
    let bin =
        candle_core::pickle::read_all(fixture("tiny-fff-bin").join("pytorch_model.bin")).unwrap();
    let st =
        candle_core::safetensors::load(fixture("tiny-fff").join("model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(bin.len(), st.len(), "tensor count");
    let bin: HashMap<String, Tensor> = bin.into_iter().collect();
    let mut scalars = 0;
    for (name, want) in &st {
        let got = &bin[&format!("module.{name}")];
        assert_eq!(got.dtype(), want.dtype(), "{name}");
        // Exact shapes: the 0-d `norm_factor` buffers stay 0-d.
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(flat(got), flat(want), "{name}");
        scalars += usize::from(want.rank() == 0);
    }
    assert_eq!(scalars, 2, "the fixture has a 0-d norm_factor per layer");
}

#[test]
fn pytorch_model_bin_runs_exactly_as_model_safetensors() {
    let mut from_bin = Pipeline::load(&fixture("tiny-fff-bin")).unwrap();
    let mut from_st = Pipeline::load(&fixture("tiny-fff")).unwrap();
    let (texts, tol) = fixture_texts();
    let encs: Vec<_> = texts
        .iter()
        .map(|t| from_bin.tokenizer.encode_mlm(t).unwrap())
        .collect();
    assert!(texts.iter().any(|t| t.contains("<mask>")));
    let batch = from_bin.tokenizer.batch(&encs);
    let reference = candle_core::safetensors::load(
        fixture("tiny-fff").join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for mode in [FfnMode::Kernel, FfnMode::Masked] {
        from_bin.model.set_ffn_mode(mode);
        from_st.model.set_ffn_mode(mode);
        let a = from_bin.model.encode(&batch).unwrap();
        let b = from_st.model.encode(&batch).unwrap();
        let d = max_diff("hidden", &a.hidden, &b.hidden);
        assert_eq!(d, 0.0, "{mode:?}: hidden states differ by {d}");
        let la = from_bin.model.mlm_logits(&a.hidden).unwrap();
        let lb = from_st.model.mlm_logits(&b.hidden).unwrap();
        let d = max_diff("mlm_logits", &la, &lb);
        assert_eq!(d, 0.0, "{mode:?}: MLM logits differ by {d}");
        // The reference keeps [batch, seq, vocab]; the model gives [batch * seq, vocab].
        let want = reference["mlm_logits"].reshape(la.dims()).unwrap();
        let d = max_diff("mlm_logits vs reference", &la, &want);
        assert!(d < tol, "{mode:?}: MLM logits vs the reference: {d}");
    }
    // And the pipeline's fill-mask gives the same answer from either file.
    let text = &texts[0];
    let pa = from_bin.fill_mask(text, 3).unwrap();
    let pb = from_st.fill_mask(text, 3).unwrap();
    assert_eq!(pa.value[0].top, pb.value[0].top);
}

#[test]
fn truncated_pytorch_model_bin_is_named_in_the_error() {
    let src = fixture("tiny-fff-bin");
    let bytes = std::fs::read(src.join("pytorch_model.bin")).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 10] {
        let dir = std::env::temp_dir().join(format!(
            "fff-bert-truncated-bin-{keep}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("pytorch_model.bin"), &bytes[..keep]).unwrap();
        let result = Pipeline::load(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let err = match result {
            Ok(_) => panic!("a pytorch_model.bin cut to {keep} bytes should not load"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("pytorch_model.bin") && err.contains("cannot read the checkpoint"),
            "cut to {keep} of {} bytes: {err}",
            bytes.len()
        );
    }
}
