//! What bf16 and int8 FFF weights (`Model::set_weight_format`) cost in accuracy against
//! f32, on the test fixtures and on a random full-size UltraFastBERT-1x11: the relative and
//! largest error of the final hidden states, MLM top-1 agreement (also with each position's
//! own input id left out of the ranking: with random weights the tied decoder ranks the input
//! id first everywhere, which makes plain top-1 agreement trivially 100%), and the fraction of
//! FFF tree paths (one per token, layer and tree) that changed. Writes
//! `docs/quantization_bert.json` (or the path given) and prints a markdown table:
//! `cargo run --release -p fff-bert --example quantization_bert [out.json]`.
//!
//! Paths are compared two ways: end to end (each model routes its own layer inputs, so
//! upstream changes count), and on the same input (the quantized layer on the f32 model's
//! layer input, the narrower weights' effect alone).

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use fastfeedforward::{InferOptions, Workspace};
use fff_bert::tokenizer::Encoding;
use fff_bert::{BertConfig, BertTokenizer, IntermedType, Model, Packed, Pipeline, WeightFormat};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

// Large blocks on 64-byte boundaries, as in the `fff` binary (see `AlignedAlloc`).
#[global_allocator]
static ALLOC: fastfeedforward::AlignedAlloc = fastfeedforward::AlignedAlloc(std::alloc::System);

/// One encoder run: final hidden states `[tokens, hidden]` and each FFF layer's input.
struct Run {
    hidden: Vec<f32>,
    ffn_inputs: Vec<Vec<f32>>,
}

fn encode(model: &Model, packed: &Packed) -> Result<Run> {
    let mut ffn_inputs = Vec::new();
    let enc = model.encode_packed_with(packed, |name, x| {
        if name.starts_with("ffn_input") {
            ffn_inputs.push(x.to_vec());
        }
        Ok(())
    })?;
    Ok(Run {
        hidden: enc.hidden.flatten_all()?.to_vec1()?,
        ffn_inputs,
    })
}

/// The kernel's paths through layer `i` for `x` (`[rows, hidden]`), with the model's current
/// weight format (`quantized` true) or its f32 weights.
fn routes(model: &Model, i: usize, x: &[f32], quantized: bool) -> Result<Vec<u32>> {
    let f32_layer = model.fff_layer(i).context("an FFF layer")?;
    let rows = x.len() / f32_layer.config().input_width;
    let mut y = vec![0f32; rows * f32_layer.config().output_width];
    let (ws, opts) = (&mut Workspace::new(), InferOptions::default());
    Ok(match (quantized, model.quantized_fff_layer(i)) {
        (true, Some(q)) => q.forward_infer_routed(x, rows, &mut y, ws, opts)?,
        _ => f32_layer.forward_infer_routed(x, rows, &mut y, ws, opts)?,
    })
}

/// Top-1 MLM token at each of `rows` of `hidden`, and the top-1 among the tokens other than
/// the row's input id (`ids[row]`); None without an MLM head.
fn mlm_top1(
    model: &Model,
    hidden: &[f32],
    rows: &[usize],
    ids: &[u32],
) -> Result<Option<(Vec<u32>, Vec<u32>)>> {
    if !model.has_mlm_head() {
        return Ok(None);
    }
    let h = model.config().hidden;
    let picked: Vec<f32> = rows
        .iter()
        .flat_map(|&r| hidden[r * h..(r + 1) * h].iter().copied())
        .collect();
    let logits = model.mlm_logits(&Tensor::from_vec(picked, (rows.len(), h), &Device::Cpu)?)?;
    let mut logits = logits.to_vec2::<f32>()?;
    let top1 = argmax_rows(&logits);
    for (l, &r) in logits.iter_mut().zip(rows) {
        l[ids[r] as usize] = f32::NEG_INFINITY;
    }
    Ok(Some((top1, argmax_rows(&logits))))
}

fn argmax_rows(rows: &[Vec<f32>]) -> Vec<u32> {
    rows.iter()
        .map(|l| {
            (0..l.len())
                .max_by(|&a, &b| l[a].total_cmp(&l[b]))
                .unwrap_or(0) as u32
        })
        .collect()
}

/// Top-1 class of each sequence, or None without a classification head.
fn classes(model: &Model, hidden: &[f32], packed: &Packed) -> Result<Option<Vec<u32>>> {
    if !model.has_classification_head() {
        return Ok(None);
    }
    let h = model.config().hidden;
    let enc = fff_bert::PackedEncoded {
        hidden: Tensor::from_slice(hidden, (hidden.len() / h, h), &Device::Cpu)?,
        offsets: packed.offsets.clone(),
    };
    Ok(Some(argmax_rows(
        &model.classify_packed(&enc)?.to_vec2::<f32>()?,
    )))
}

fn agreement(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Fraction of tree paths (`path_len` nodes each) that differ between `a` and `b`.
fn paths_changed(a: &[Vec<u32>], b: &[Vec<u32>], path_len: usize) -> f64 {
    let (mut changed, mut total) = (0usize, 0usize);
    for (a, b) in a.iter().zip(b) {
        for (p, q) in a.chunks(path_len).zip(b.chunks(path_len)) {
            changed += usize::from(p != q);
            total += 1;
        }
    }
    changed as f64 / total.max(1) as f64
}

/// The rows of `model` on `packed` for every format; MLM agreement at `mlm_rows`.
fn measure(
    name: &str,
    model: &mut Model,
    packed: &Packed,
    mlm_rows: &[usize],
    notes: &str,
) -> Result<Vec<Value>> {
    model.set_weight_format(WeightFormat::F32)?;
    let base = encode(model, packed)?;
    let layers = model.config().layers;
    let path_len = model.fff_layer(0).context("an FFF model")?.config().depth + 1;
    let base_routes = (0..layers)
        .map(|i| routes(model, i, &base.ffn_inputs[i], false))
        .collect::<Result<Vec<_>>>()?;
    let base_mlm = mlm_top1(model, &base.hidden, mlm_rows, &packed.ids)?;
    let mut notes = notes.to_string();
    if let Some((m, _)) = &base_mlm {
        let own = m
            .iter()
            .zip(mlm_rows)
            .filter(|(&t, &r)| t == packed.ids[r])
            .count();
        notes.push_str(&format!(
            "; the f32 top-1 is the position's own input id at {own} of {} positions",
            m.len()
        ));
    }
    let base_cls = classes(model, &base.hidden, packed)?;
    let norm = base.hidden.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
    let mut out = Vec::new();
    for format in WeightFormat::ALL {
        model.set_weight_format(format)?;
        let run = encode(model, packed)?;
        let (mut diff2, mut max_abs) = (0f64, 0f32);
        for (&q, &f) in run.hidden.iter().zip(&base.hidden) {
            diff2 += (q as f64 - f as f64).powi(2);
            max_abs = max_abs.max((q - f).abs());
        }
        let own = (0..layers)
            .map(|i| routes(model, i, &run.ffn_inputs[i], true))
            .collect::<Result<Vec<_>>>()?;
        let same_input = (0..layers)
            .map(|i| routes(model, i, &base.ffn_inputs[i], true))
            .collect::<Result<Vec<_>>>()?;
        let (mlm, mlm_other) = match (
            &base_mlm,
            mlm_top1(model, &run.hidden, mlm_rows, &packed.ids)?,
        ) {
            (Some((b, bo)), Some((q, qo))) => (Some(agreement(b, &q)), Some(agreement(bo, &qo))),
            _ => (None, None),
        };
        let mut note = notes.clone();
        if let (Some(b), Some(q)) = (&base_cls, classes(model, &run.hidden, packed)?) {
            note.push_str(&format!(
                "; no MLM head: classification top-1 agreement {:.3} over {} sequences",
                agreement(b, &q),
                b.len()
            ));
        }
        out.push(json!({
            "model": name,
            "format": format.name(),
            "hidden_rel_error": (diff2 / norm).sqrt(),
            "hidden_max_abs_error": max_abs,
            "mlm_top1_agreement": mlm,
            "mlm_top1_agreement_excluding_input_id": mlm_other,
            "positions": if mlm.is_some() { mlm_rows.len() } else { 0 },
            "route_changed_fraction": paths_changed(&base_routes, &own, path_len),
            "route_changed_fraction_same_input": paths_changed(&base_routes, &same_input, path_len),
            "tokens": packed.ids.len(),
            "notes": note,
        }));
    }
    model.set_weight_format(WeightFormat::F32)?;
    Ok(out)
}

/// A fixture's texts (its `expected.json`), tokenized as its reference test does.
fn fixture_encodings(dir: &Path, tok: &BertTokenizer, classify: bool) -> Result<Vec<Encoding>> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let texts = json["texts"].as_array().context("texts")?;
    texts
        .iter()
        .map(|t| {
            Ok(if classify {
                let parts = t.as_array().context("a text pair")?;
                let a = parts[0].as_str().context("text")?;
                tok.encode_classify(a, parts.get(1).and_then(Value::as_str))?
            } else {
                tok.encode_mlm(t.as_str().context("text")?)?
            })
        })
        .collect()
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_path = std::env::args().nth(1).map_or_else(
        || root.join("../../docs/quantization_bert.json"),
        PathBuf::from,
    );
    let start = Instant::now();
    let mut rows = Vec::new();

    for name in ["tiny-fff", "tiny-fff-forest", "tiny-fff-cls"] {
        let dir = root.join("tests/fixtures").join(name);
        let mut p = Pipeline::load(&dir)?;
        let encs = fixture_encodings(&dir, &p.tokenizer, p.model.has_classification_head())?;
        let packed = BertTokenizer::pack(&encs);
        let all: Vec<usize> = (0..packed.ids.len()).collect();
        let c = p.model.config();
        let notes = format!(
            "fixture tests/fixtures/{name} ({} layers, hidden {}, FFF {}), its {} texts \
             packed{}",
            c.layers,
            c.hidden,
            p.model.fff_layer(0).map_or("dense".into(), |l| {
                format!("{}x{}", l.config().trees, l.config().depth)
            }),
            encs.len(),
            if p.model.has_mlm_head() {
                "; MLM agreement at every token position (the texts' own <mask>s included)"
            } else {
                ""
            }
        );
        rows.extend(measure(name, &mut p.model, &packed, &all, &notes)?);
    }

    // A random full-size UltraFastBERT-1x11 (the released shape: 16 layers, hidden 768, one
    // tree of depth 11, vocabulary 32768), 8 sequences of 128 random ids with ~15% masked.
    let (batch, seq, vocab, mask_id) = (8usize, 128usize, 32768usize, 4u32);
    let config = BertConfig::base(
        IntermedType::Fff {
            trees: 1,
            depth: 11,
        },
        vocab,
    );
    let layers = config.layers;
    let mut model = Model::random(config, 0)?;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    let mut masked = Vec::new();
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..seq)
                .map(|t| {
                    let id = 7 + (next() % (vocab - 7)) as u32;
                    if next() % 100 < 15 {
                        masked.push(b * seq + t);
                        mask_id
                    } else {
                        id
                    }
                })
                .collect()
        })
        .collect();
    let packed = Packed::new(&seqs);
    let notes = format!(
        "random weights (N(0, 0.02), seed 0), {layers} layers, hidden 768, FFF 1x11, vocab \
         {vocab}; {batch}x{seq} random ids, {} positions (~15%) set to id {mask_id}; MLM \
         agreement at those masked positions (both columns)",
        masked.len()
    );
    rows.extend(measure(
        "random UltraFastBERT-1x11",
        &mut model,
        &packed,
        &masked,
        &notes,
    )?);

    let text = serde_json::to_string_pretty(&rows)? + "\n";
    fff_util::fs::write_atomic(&out_path, text.as_bytes())?;

    println!(
        "| model | format | hidden rel. error | hidden max abs error | MLM top-1 agreement | \
         MLM top-1 agreement, input id excluded | positions | paths changed | paths changed, \
         same input |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let pct = |k: &str| {
            r[k].as_f64()
                .map_or("n/a".to_string(), |a| format!("{:.2}%", 100.0 * a))
        };
        println!(
            "| {} | {} | {:.2e} | {:.2e} | {} | {} | {} | {:.2}% | {:.2}% |",
            r["model"].as_str().unwrap_or(""),
            r["format"].as_str().unwrap_or(""),
            f("hidden_rel_error"),
            f("hidden_max_abs_error"),
            pct("mlm_top1_agreement"),
            pct("mlm_top1_agreement_excluding_input_id"),
            r["positions"],
            100.0 * f("route_changed_fraction"),
            100.0 * f("route_changed_fraction_same_input"),
        );
    }
    for r in &rows {
        if r["format"] == "f32" {
            println!(
                "- {}: {}",
                r["model"].as_str().unwrap_or(""),
                r["notes"].as_str().unwrap_or("")
            );
        }
    }
    eprintln!(
        "wrote {} in {:.1} s",
        out_path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
