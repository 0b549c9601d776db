//! `Model::set_weight_format`: f32 leaves every output bit as loaded; bf16 and int8 run
//! the kernel on the narrower FFF weights (outputs move, by a small relative error); the masked
//! path and dense models stay f32.

use fff_bert::{Batch, BertConfig, FfnMode, IntermedType, Model, Pipeline, WeightFormat};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's texts (from its `expected.json`), tokenized for MLM and padded.
fn fixture_batch(p: &Pipeline, name: &str) -> Batch {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    let encs: Vec<_> = json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| p.tokenizer.encode_mlm(t.as_str().unwrap()).unwrap())
        .collect();
    p.tokenizer.batch(&encs)
}

/// Final hidden states and MLM logits, flattened.
fn run(model: &Model, batch: &Batch) -> (Vec<f32>, Vec<f32>) {
    let enc = model.encode(batch).unwrap();
    let logits = model.mlm_logits(&enc.hidden).unwrap();
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(&enc.hidden), flat(&logits))
}

/// `||a - b|| / ||b||`.
fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den).sqrt()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The checks on one FFF model; `bounds` are the largest relative errors of the final hidden
/// states allowed for bf16 and int8.
fn check_formats(model: &mut Model, batch: &Batch, what: &str, bounds: [f64; 2]) {
    assert_eq!(model.weight_format(), WeightFormat::F32);
    let (hidden, logits) = run(model, batch);
    // f32 explicitly: not a bit moves.
    model.set_weight_format(WeightFormat::F32).unwrap();
    assert!(model.quantized_fff_layer(0).is_none());
    let (h, l) = run(model, batch);
    assert_eq!(bits(&h), bits(&hidden), "{what}: f32 hidden states changed");
    assert_eq!(bits(&l), bits(&logits), "{what}: f32 logits changed");
    let layers = model.config().layers;
    for (format, bound) in [WeightFormat::Bf16, WeightFormat::Int8]
        .into_iter()
        .zip(bounds)
    {
        model.set_weight_format(format).unwrap();
        assert_eq!(model.weight_format(), format);
        for i in 0..layers {
            let q = model.quantized_fff_layer(i).expect("a quantized FFF layer");
            assert_eq!(q.format(), format);
            assert_eq!(q.config(), model.fff_layer(i).unwrap().config());
        }
        let (h, l) = run(model, batch);
        let err = rel_error(&h, &hidden);
        let max_abs = h
            .iter()
            .zip(&hidden)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{what} {format}: hidden rel error {err:.3e}, max |diff| {max_abs:.3e}, \
             logits rel error {:.3e}",
            rel_error(&l, &logits)
        );
        assert!(
            h.iter().all(|v| v.is_finite()),
            "{what} {format}: non-finite"
        );
        assert_ne!(
            bits(&h),
            bits(&hidden),
            "{what} {format}: hidden states are the f32 ones bit for bit; the quantized \
             layers did not run"
        );
        assert!(
            err > 0.0 && err < bound,
            "{what} {format}: hidden states' relative error {err:.3e} over {bound:.1e}"
        );
        // The masked path computes with the f32 weights whatever the format.
        model.set_ffn_mode(FfnMode::Masked);
        let (masked_q, _) = run(model, batch);
        model.set_weight_format(WeightFormat::F32).unwrap();
        let (masked_f32, _) = run(model, batch);
        model.set_ffn_mode(FfnMode::Kernel);
        assert_eq!(
            bits(&masked_q),
            bits(&masked_f32),
            "{what} {format}: the masked path moved with the weight format"
        );
        // Back to f32: the loaded weights again, bit for bit.
        let (h, l) = run(model, batch);
        assert_eq!(bits(&h), bits(&hidden), "{what}: f32 after {format}");
        assert_eq!(bits(&l), bits(&logits), "{what}: f32 logits after {format}");
    }
}

#[test]
fn weight_formats_on_the_fff_fixtures() {
    // Measured (relative error of the final hidden states): bf16 8.0e-4 on both, int8 2.8e-3
    // (tiny-fff) and 2.6e-3 (tiny-fff-forest); the bounds leave 5x.
    for name in ["tiny-fff", "tiny-fff-forest"] {
        let mut p = Pipeline::load(&fixture(name)).unwrap();
        let batch = fixture_batch(&p, name);
        check_formats(&mut p.model, &batch, name, [4e-3, 1.5e-2]);
    }
}

#[test]
fn weight_formats_on_a_random_deeper_model() {
    // Wider and deeper trees than the fixtures': 3 layers, hidden 128, two trees of depth 6.
    let mut config = BertConfig::base(IntermedType::Fff { trees: 2, depth: 6 }, 300);
    config.layers = 3;
    config.hidden = 128;
    config.heads = 4;
    config.max_seq_length = 32;
    let mut model = Model::random(config, 7).unwrap();
    let seqs: Vec<Vec<u32>> = (0..4u32)
        .map(|b| {
            (0..20 + 3 * b)
                .map(|t| 5 + (t * 37 + b * 11) % 290)
                .collect()
        })
        .collect();
    let batch = Batch::pad(&seqs, 0);
    // Measured: bf16 3.7e-4, int8 1.0e-3; the bounds leave 5x.
    check_formats(&mut model, &batch, "random 128-wide", [2e-3, 5e-3]);
}

#[test]
fn dense_models_ignore_the_weight_format() {
    let name = "tiny-ff";
    let mut p = Pipeline::load(&fixture(name)).unwrap();
    let batch = fixture_batch(&p, name);
    let (hidden, logits) = run(&p.model, &batch);
    p.model.set_weight_format(WeightFormat::Int8).unwrap();
    assert!(p.model.fff_layer(0).is_none() && p.model.quantized_fff_layer(0).is_none());
    let (h, l) = run(&p.model, &batch);
    assert_eq!(bits(&h), bits(&hidden));
    assert_eq!(bits(&l), bits(&logits));
}
