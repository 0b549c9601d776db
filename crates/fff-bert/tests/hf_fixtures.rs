//! Hugging Face BERT in this engine against transformers and sentence-transformers themselves:
//! fixtures written by `tools/hf_bert_fixtures.py` (small random `BertModel`,
//! `BertForMaskedLM` and `BertForSequenceClassification` checkpoints with their outputs, and
//! the outputs of the real all-MiniLM-L6-v2, whose weights are read from `../shared/models`
//! where present). Token ids must be identical; final hidden states within 1e-4 of
//! transformers' `last_hidden_state`; pooled, normalised embeddings within 1e-5 of
//! `SentenceTransformer.encode`; in packed and in padded batches.

use candle_core::{Device, Tensor};
use fff_bert::{Pipeline, Pooling, PoolingConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const HIDDEN_TOL: f32 = 1e-4;
const EMBEDDING_TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// One input of a fixture, as transformers tokenized it.
struct Case {
    text: String,
    pair: Option<String>,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    untruncated_len: usize,
}

struct Expected {
    cases: Vec<Case>,
    tensors: HashMap<String, Tensor>,
}

impl Expected {
    fn read(dir: &Path) -> Expected {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let u32s = |v: &Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let cases = json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Case {
                text: c["text"].as_str().unwrap().to_string(),
                pair: c["pair"].as_str().map(str::to_string),
                ids: u32s(&c["ids"]),
                type_ids: u32s(&c["type_ids"]),
                untruncated_len: c["untruncated_len"].as_u64().unwrap() as usize,
            })
            .collect();
        let tensors =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        Expected { cases, tensors }
    }

    fn get(&self, name: &str) -> Option<Vec<f32>> {
        self.tensors.get(name).map(|t| {
            t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
    }
}

/// Largest |a - b|, asserting equal lengths.
fn max_diff(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Tokenizes every case with the pipeline, checking ids, token types and the truncated count
/// against transformers'.
fn encodings(p: &Pipeline, e: &Expected) -> Vec<fff_bert::tokenizer::Encoding> {
    e.cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let enc = match &c.pair {
                Some(b) => p.tokenizer.encode_classify(&c.text, Some(b)).unwrap(),
                None => p.tokenizer.encode_text(&c.text).unwrap(),
            };
            assert_eq!(enc.ids, c.ids, "case {i} {:?}: token ids", c.text);
            assert_eq!(enc.type_ids, c.type_ids, "case {i}: token types");
            assert_eq!(
                enc.truncated,
                c.untruncated_len - c.ids.len(),
                "case {i}: truncated tokens"
            );
            enc
        })
        .collect()
}

/// Final hidden states of every case, packed and padded, against `case{i}.hidden` (or its
/// stored head and tail rows); returns the packed states and each case's rows.
fn check_hidden(
    p: &Pipeline,
    e: &Expected,
    encs: &[fff_bert::tokenizer::Encoding],
) -> (Vec<f32>, Vec<std::ops::Range<usize>>) {
    let h = p.model.config().hidden;
    let packed = fff_bert::BertTokenizer::pack(encs);
    let states = p.model.encode_packed(&packed).unwrap().hidden;
    let states = states.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let padded = p.model.encode(&p.tokenizer.batch(encs)).unwrap();
    let seq = padded.seq;
    let padded = padded
        .hidden
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let rows: Vec<_> = (0..encs.len()).map(|b| packed.rows(b)).collect();
    let mut worst = 0f32;
    for (i, r) in rows.iter().enumerate() {
        let got = &states[r.start * h..r.end * h];
        let got_padded = &padded[i * seq * h..(i * seq + r.len()) * h];
        let mut compare = |what: &str, got: &[f32], want: &[f32]| {
            let d = max_diff(what, got, want);
            assert!(d <= HIDDEN_TOL, "case {i} {what}: max |diff| {d}");
            worst = worst.max(d);
        };
        if let Some(want) = e.get(&format!("case{i}.hidden")) {
            compare("hidden (packed)", got, &want);
            compare("hidden (padded)", got_padded, &want);
        } else {
            let head = e.get(&format!("case{i}.hidden_head")).expect("head rows");
            let tail = e.get(&format!("case{i}.hidden_tail")).expect("tail rows");
            compare("hidden head", &got[..head.len()], &head);
            compare("hidden tail", &got[got.len() - tail.len()..], &tail);
        }
    }
    eprintln!("largest |hidden - transformers|: {worst:.2e}");
    (states, rows)
}

/// Embeddings of the single-text cases through the pipeline against `case{i}.embedding`.
fn check_embeddings(p: &Pipeline, e: &Expected) -> usize {
    let singles: Vec<usize> = (0..e.cases.len())
        .filter(|&i| e.cases[i].pair.is_none())
        .collect();
    let texts: Vec<String> = singles.iter().map(|&i| e.cases[i].text.clone()).collect();
    let got = p.embed(&texts, &p.pooling(None, None), 4).unwrap();
    let mut checked = 0;
    for (&i, g) in singles.iter().zip(&got) {
        if let Some(want) = e.get(&format!("case{i}.embedding")) {
            let d = max_diff("embedding", &g.value, &want);
            assert!(d <= EMBEDDING_TOL, "case {i}: embedding max |diff| {d}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn sentence_transformers_model_matches_transformers() {
    let dir = fixture("tiny-st");
    let p = Pipeline::load(&dir).unwrap();
    assert_eq!(p.model.config().family, fff_bert::Family::Bert);
    assert_eq!(
        p.tokenizer.max_len, 20,
        "sentence_bert_config.json's max_seq_length"
    );
    assert_eq!(
        p.embedding.pooling,
        PoolingConfig::single(Pooling::Mean, true)
    );
    let e = Expected::read(&dir);
    let encs = encodings(&p, &e);
    assert!(
        e.cases
            .iter()
            .any(|c| c.untruncated_len > c.ids.len() && c.pair.is_none())
            && e.cases
                .iter()
                .any(|c| c.untruncated_len > c.ids.len() && c.pair.is_some()),
        "the fixture truncates a single text and a pair"
    );
    let (states, rows) = check_hidden(&p, &e, &encs);
    assert!(check_embeddings(&p, &e) >= 8);
    // Every pooling mode, on the engine's own states, against sentence-transformers' Pooling.
    let h = p.model.config().hidden;
    let mut modes = 0;
    for mode in Pooling::ALL {
        let name = match mode {
            Pooling::MeanSqrtLen => "mean_sqrt_len",
            other => other.name(),
        };
        for (i, r) in rows.iter().enumerate() {
            let Some(want) = e.get(&format!("case{i}.pool.{name}")) else {
                continue;
            };
            let got = PoolingConfig::single(mode, false).pool(&states, h, r.clone());
            let d = max_diff(name, &got, &want);
            assert!(d <= HIDDEN_TOL, "case {i} pooling {name}: max |diff| {d}");
            modes += 1;
        }
    }
    assert!(modes >= 6 * 8, "pooled vectors checked: {modes}");
}

#[test]
fn sentence_transformers_saved_folder_loads_the_same() {
    // The same model as saved by SentenceTransformer.save() of a recent version.
    let p = Pipeline::load(&fixture("tiny-st6")).unwrap();
    let e = Expected::read(&fixture("tiny-st"));
    assert_eq!(
        p.embedding.pooling,
        PoolingConfig::single(Pooling::Mean, true)
    );
    encodings(&p, &e);
    assert!(check_embeddings(&p, &e) >= 8);
}

#[test]
fn masked_lm_checkpoint_matches_transformers() {
    let dir = fixture("tiny-mlm");
    let p = Pipeline::load(&dir).unwrap();
    assert!(p.model.has_mlm_head() && !p.model.has_classification_head());
    let e = Expected::read(&dir);
    let encs: Vec<_> = e
        .cases
        .iter()
        .map(|c| {
            let enc = match &c.pair {
                Some(b) => p.tokenizer.encode_classify(&c.text, Some(b)).unwrap(),
                None => p.tokenizer.encode_mlm(&c.text).unwrap(),
            };
            assert_eq!(enc.ids, c.ids, "{:?}", c.text);
            enc
        })
        .collect();
    let packed = fff_bert::BertTokenizer::pack(&encs);
    let hidden = p.model.encode_packed(&packed).unwrap().hidden;
    let logits = p.model.mlm_logits(&hidden).unwrap();
    let vocab = logits.dim(1).unwrap();
    let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, _) in e.cases.iter().enumerate() {
        let r = packed.rows(i);
        let want = e.get(&format!("case{i}.logits")).unwrap();
        let d = max_diff("logits", &logits[r.start * vocab..r.end * vocab], &want);
        assert!(d <= HIDDEN_TOL, "case {i}: logits max |diff| {d}");
    }
    // fill-mask finds the [MASK] of the first case.
    let out = p.fill_mask(&e.cases[0].text, 3).unwrap();
    assert_eq!(out.value.len(), 1);
    assert_eq!(
        out.value[0].position,
        e.cases[0].ids.iter().position(|&t| t == 103).unwrap()
    );
}

#[test]
fn classification_checkpoint_matches_transformers() {
    let dir = fixture("tiny-cls");
    let p = Pipeline::load(&dir).unwrap();
    assert_eq!(p.model.config().labels, ["negative", "neutral", "positive"]);
    let e = Expected::read(&dir);
    let encs = encodings(&p, &e);
    check_hidden(&p, &e, &encs);
    let inputs: Vec<(String, Option<String>)> = e
        .cases
        .iter()
        .map(|c| (c.text.clone(), c.pair.clone()))
        .collect();
    let probs = p.classify(&inputs, 4).unwrap();
    for (i, got) in probs.iter().enumerate() {
        let want = e.get(&format!("case{i}.probs")).unwrap();
        let d = max_diff("probs", &got.value, &want);
        assert!(d <= EMBEDDING_TOL, "case {i}: probabilities max |diff| {d}");
    }
}

#[test]
fn all_minilm_l6_v2_matches_transformers_where_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    let p = Pipeline::load(&dir).unwrap();
    assert_eq!(p.tokenizer.max_len, 256);
    assert_eq!(
        p.embedding.pooling,
        PoolingConfig::single(Pooling::Mean, true)
    );
    let e = Expected::read(&fixture("minilm"));
    let encs = encodings(&p, &e);
    check_hidden(&p, &e, &encs);
    assert!(check_embeddings(&p, &e) >= 6);
}
