//! The Rust model against outputs of an independent NumPy implementation of the original
//! PyTorch crammedBERT / UltraFastBERT (`tools/ultrafastbert_reference.py`), on small committed
//! checkpoints: an FFF model, a two-tree FFF saved with `torch.compile`'s `_orig_mod.` prefix
//! and no `decoder.weight`, a dense GLU crammedBERT with biases, and an FFF classifier.

use candle_core::{Device, Tensor};
use fastfeedforward::{InferOptions, Workspace};
use fff_bert::{Batch, FfnMode, Model, Pipeline};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expected {
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn expected(name: &str) -> Expected {
    let dir = fixture(name);
    let json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    Expected { json, tensors }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |a - b| over all elements, asserting equal shapes.
fn max_diff(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(
        got.elem_count(),
        want.elem_count(),
        "{what}: {:?} vs {:?}",
        got.dims(),
        want.dims()
    );
    flat(got)
        .iter()
        .zip(flat(want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn json_u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The batch the reference ran, and a check that our tokenizer produces exactly it.
fn tokenized_batch(p: &Pipeline, e: &Expected, classify: bool) -> Batch {
    let encs: Vec<_> = e.json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            if classify {
                let parts = t.as_array().unwrap();
                let b = parts.get(1).map(|b| b.as_str().unwrap());
                p.tokenizer
                    .encode_classify(parts[0].as_str().unwrap(), b)
                    .unwrap()
            } else {
                p.tokenizer.encode_mlm(t.as_str().unwrap()).unwrap()
            }
        })
        .collect();
    assert!(
        encs.iter().any(|e| e.truncated > 0),
        "the fixture must exercise truncation"
    );
    let batch = p.tokenizer.batch(&encs);
    let want_ids: Vec<u32> = e.json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(json_u32s)
        .collect();
    let want_mask: Vec<u8> = e.json["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| json_u32s(r).into_iter().map(|m| m as u8))
        .collect();
    assert_eq!(batch.ids, want_ids, "token ids differ from the reference's");
    assert_eq!(batch.mask, want_mask, "attention mask differs");
    batch
}

/// Runs the encoder (in `mode`, which the model must be set to) with taps and compares every
/// recorded stage with the reference.
fn check_encoder(model: &Model, mode: FfnMode, batch: &Batch, e: &Expected, tol: f32) -> Tensor {
    let mut taps: HashMap<String, Tensor> = HashMap::new();
    let enc = model
        .encode_with(batch, |name, t| {
            let rows = t.len() / model.config().hidden;
            let t = Tensor::from_slice(t, (rows, model.config().hidden), &Device::Cpu)?;
            taps.insert(name.to_string(), t);
            Ok(())
        })
        .unwrap();
    for (ours, theirs) in [("embedding", "embedding"), ("layer0", "layer0")] {
        let d = max_diff(ours, &taps[ours], &e.tensors[theirs]);
        assert!(d < tol, "{ours}: max |diff| {d} over tolerance {tol}");
    }
    let d = max_diff("hidden", &enc.hidden, &e.tensors["hidden"]);
    assert!(d < tol, "final hidden states: max |diff| {d}");
    // Routing, exactly: the fixture keeps every |z| at a routing node above 5e-3.
    if let Some(routes) = e.json.get("routes") {
        for (layer, per_seq) in routes.as_array().unwrap().iter().enumerate() {
            let fff = model.fff_layer(layer).expect("an FFF block");
            let x = flat(&taps[&format!("ffn_input{layer}")]);
            let h = fff.config().input_width;
            let rows = x.len() / h;
            let per_row = fff.config().used_nodes();
            // The kernel's own routes: the encoder's call again (every row at once, default
            // options), which gives the same bits, with the visited nodes recorded. The masked
            // form's routing is not exposed; in that mode the plain f64 descent of its FFN
            // input stands in, and its outputs above hold the masked form to it.
            let taken: Vec<u32> = match mode {
                FfnMode::Kernel => {
                    let mut y = vec![0f32; x.len()];
                    let opts = InferOptions::default();
                    fff.forward_infer_routed(&x, rows, &mut y, &mut Workspace::new(), opts)
                        .unwrap()
                }
                FfnMode::Masked => x.chunks(h).flat_map(|r| fff.route(r).unwrap()).collect(),
            };
            let mut row = 0;
            for per_pos in per_seq.as_array().unwrap() {
                for trees in per_pos.as_array().unwrap() {
                    let want: Vec<u32> = trees
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(json_u32s)
                        .collect();
                    let got = &taken[row * per_row..(row + 1) * per_row];
                    assert_eq!(got, want, "{mode:?}: layer {layer}, token row {row}: route");
                    row += 1;
                }
            }
            assert_eq!(
                row, rows,
                "layer {layer}: the fixture routes every token row"
            );
        }
    }
    enc.hidden
}

fn check_mlm_fixture(name: &str) {
    let e = expected(name);
    let tol = e.json["tolerance"].as_f64().unwrap() as f32;
    let mut p = Pipeline::load(&fixture(name)).unwrap();
    let batch = tokenized_batch(&p, &e, false);
    for mode in [FfnMode::Kernel, FfnMode::Masked] {
        p.model.set_ffn_mode(mode);
        let hidden = check_encoder(&p.model, mode, &batch, &e, tol);
        let logits = p.model.mlm_logits(&hidden).unwrap();
        let d = max_diff("mlm_logits", &logits, &e.tensors["mlm_logits"]);
        assert!(
            d < tol,
            "{name} ({mode:?}): MLM logits max |diff| {d} > {tol}"
        );
    }
}

#[test]
fn fff_model_matches_the_reference() {
    check_mlm_fixture("tiny-fff");
}

#[test]
fn forest_with_compile_prefix_and_no_decoder_matches_the_reference() {
    check_mlm_fixture("tiny-fff-forest");
}

#[test]
fn dense_glu_crammed_bert_with_biases_matches_the_reference() {
    check_mlm_fixture("tiny-ff");
}

#[test]
fn fff_classifier_matches_the_reference() {
    let name = "tiny-fff-cls";
    let e = expected(name);
    let tol = e.json["tolerance"].as_f64().unwrap() as f32;
    let p = Pipeline::load(&fixture(name)).unwrap();
    assert!(p.model.has_classification_head() && !p.model.has_mlm_head());
    let batch = tokenized_batch(&p, &e, true);
    let hidden = check_encoder(&p.model, FfnMode::Kernel, &batch, &e, tol);
    let enc = fff_bert::Encoded {
        hidden,
        batch: batch.batch,
        seq: batch.seq,
    };
    let logits = p.model.classify(&enc).unwrap();
    let d = max_diff("cls_logits", &logits, &e.tensors["cls_logits"]);
    assert!(d < tol, "classifier logits max |diff| {d}");
    // The pipeline gives the same answer through softmax.
    let inputs: Vec<(String, Option<String>)> = e.json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let t = t.as_array().unwrap();
            (
                t[0].as_str().unwrap().to_string(),
                t.get(1).map(|b| b.as_str().unwrap().to_string()),
            )
        })
        .collect();
    let probs = p.classify(&inputs, 2).unwrap();
    let want = logits.to_vec2::<f32>().unwrap();
    for (out, l) in probs.iter().zip(want) {
        let best = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(best(&out.value), best(&l));
        assert!((out.value.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn fill_mask_ranks_by_the_reference_logits() {
    let name = "tiny-fff";
    let e = expected(name);
    let p = Pipeline::load(&fixture(name)).unwrap();
    let text = e.json["texts"][0].as_str().unwrap();
    let out = p.fill_mask(text, 3).unwrap();
    assert_eq!(out.truncated, 0);
    assert_eq!(out.value.len(), 1, "one <mask> in {text:?}");
    let pred = &out.value[0];
    // The reference's logits at that position (sequence 0) give the same winner.
    let logits = e.tensors["mlm_logits"]
        .get(0)
        .unwrap()
        .get(pred.position)
        .unwrap();
    let l = logits.to_vec1::<f32>().unwrap();
    let best = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
    assert_eq!(pred.top[0].0 as usize, best);
    assert!(pred.top[0].2 >= pred.top[1].2 && pred.top[1].2 >= pred.top[2].2);
}
