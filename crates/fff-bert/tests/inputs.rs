//! Bad inputs (missing files, wrong shapes, unknown or unsupported config keys, corrupt
//! weights) give errors that name the file and the problem; and the mask, the positional table
//! and truncation behave as the original model's.

use candle_core::{Device, Tensor};
use fff_bert::model::sinusoid_table;
use fff_bert::{Batch, BertError, FfnMode, Packed, Pipeline};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A scratch copy of a fixture folder that the test may break.
struct Scratch(PathBuf);

impl Scratch {
    fn of(name: &str, tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fff-bert-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
        }
        Scratch(dir)
    }

    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let path = self.0.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    fn edit_weights(&self, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
        let path = self.0.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        f(&mut t);
        candle_core::safetensors::save(&t, &path).unwrap();
    }

    fn load_err(&self) -> String {
        match Pipeline::load(&self.0) {
            Ok(_) => panic!("loading {} should fail", self.0.display()),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_files_are_named() {
    for (file, expect) in [
        ("config.json", "config.json"),
        (
            "model.safetensors",
            "model.safetensors or pytorch_model.bin",
        ),
        ("tokenizer.json", "tokenizer.json"),
    ] {
        let s = Scratch::of("tiny-fff", &format!("missing-{file}"));
        std::fs::remove_file(s.0.join(file)).unwrap();
        let err = s.load_err();
        assert!(err.contains(expect), "{file}: {err}");
    }
}

#[test]
fn unknown_and_unsupported_config_keys_are_named_with_their_value() {
    let s = Scratch::of("tiny-fff", "unknown-key");
    s.edit_config(|v| v["arch"]["attention"]["flash"] = true.into());
    let err = s.load_err();
    assert!(
        err.contains("arch.attention.flash") && err.contains("unknown"),
        "{err}"
    );

    let s = Scratch::of("tiny-fff", "rotary");
    s.edit_config(|v| v["arch"]["attention"]["rotary_embedding"] = true.into());
    let err = s.load_err();
    assert!(
        err.contains("arch.attention.rotary_embedding") && err.contains("true"),
        "{err}"
    );
    assert!(err.contains("config.json"), "{err}");

    let s = Scratch::of("tiny-fff", "intermed");
    s.edit_config(|v| v["arch"]["intermed_type"] = "moe".into());
    let err = s.load_err();
    assert!(
        err.contains("arch.intermed_type") && err.contains("moe"),
        "{err}"
    );

    let s = Scratch::of("tiny-fff", "heads");
    s.edit_config(|v| v["arch"]["attention"]["num_attention_heads"] = 5.into());
    let err = s.load_err();
    assert!(
        err.contains("num_attention_heads") && err.contains('5'),
        "{err}"
    );

    let s = Scratch::of("tiny-fff", "no-arch");
    s.edit_config(|v| {
        v.as_object_mut().unwrap().remove("arch");
    });
    assert!(s.load_err().contains("`arch` is missing"));
}

#[test]
fn wrong_shapes_missing_tensors_and_nan_are_named() {
    let s = Scratch::of("tiny-fff", "shape");
    s.edit_weights(|t| {
        t.insert(
            "encoder.layers.1.ffn.linear_in.weight".into(),
            Tensor::zeros((7, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = s.load_err();
    assert!(
        err.contains("encoder.layers.1.ffn.linear_in.weight")
            && err.contains("[7, 64]")
            && err.contains("[15, 64]")
            && err.contains("model.safetensors"),
        "{err}"
    );

    let s = Scratch::of("tiny-fff", "missing");
    s.edit_weights(|t| {
        t.remove("encoder.layers.0.attn.dense.weight");
    });
    let err = s.load_err();
    assert!(
        err.contains("encoder.layers.0.attn.dense.weight") && err.contains("missing"),
        "{err}"
    );

    let s = Scratch::of("tiny-fff", "nan");
    s.edit_weights(|t| {
        let name = "encoder.layers.0.norm2.weight";
        let mut v = t[name].to_vec1::<f32>().unwrap();
        v[3] = f32::NAN;
        t.insert(name.into(), Tensor::new(v, &Device::Cpu).unwrap());
    });
    let err = s.load_err();
    assert!(
        err.contains("encoder.layers.0.norm2.weight") && err.contains("non-finite"),
        "{err}"
    );
}

#[test]
fn truncated_and_garbage_files_are_errors_not_panics() {
    let s = Scratch::of("tiny-fff", "truncated");
    let path = s.0.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = s.load_err();
    assert!(err.contains("model.safetensors"), "{err}");

    let s = Scratch::of("tiny-fff", "garbage-config");
    std::fs::write(s.0.join("config.json"), "{ not json").unwrap();
    assert!(s.load_err().contains("not valid JSON"));

    let s = Scratch::of("tiny-fff", "garbage-tokenizer");
    std::fs::write(s.0.join("tokenizer.json"), "[]").unwrap();
    assert!(s.load_err().contains("tokenizer.json"));
}

#[test]
fn fill_mask_without_a_mask_and_heads_the_checkpoint_lacks_are_errors() {
    let p = Pipeline::load(&fixture("tiny-fff")).unwrap();
    assert!(matches!(
        p.fill_mask("no mask here", 3),
        Err(BertError::Input(_))
    ));
    assert!(p.classify(&[("a".into(), None)], 1).is_err());
    let bad = Batch::pad(&[vec![1, 2, 999]], 0);
    let err = p.model.encode(&bad).err().unwrap().to_string();
    assert!(err.contains("999") && err.contains("vocabulary"), "{err}");
    let cls = Pipeline::load(&fixture("tiny-fff-cls")).unwrap();
    assert!(cls.fill_mask("a <mask>", 3).is_err());
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn padding_does_not_change_the_real_tokens_outputs() {
    let p = Pipeline::load(&fixture("tiny-fff")).unwrap();
    let short = p.tokenizer.encode_mlm("the cat sat").unwrap().ids;
    let long = p
        .tokenizer
        .encode_mlm("the dog walked along the river bank")
        .unwrap()
        .ids;
    let alone = p
        .model
        .encode(&Batch::pad(std::slice::from_ref(&short), 0))
        .unwrap();
    let padded_batch = Batch::pad(&[short.clone(), long], 0);
    let padded = p.model.encode(&padded_batch).unwrap();
    let n = short.len();
    let a = alone.hidden.narrow(0, 0, n).unwrap();
    let b = padded.hidden.narrow(0, 0, n).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-5, "padding changed real outputs by {d}");
    // Changing what sits in the padded positions changes nothing either.
    let mut other = padded_batch.clone();
    for (id, m) in other.ids.iter_mut().zip(&other.mask) {
        if *m == 0 {
            *id = 7;
        }
    }
    let c = p
        .model
        .encode(&other)
        .unwrap()
        .hidden
        .narrow(0, 0, n)
        .unwrap();
    let b = padded.hidden.narrow(0, 0, n).unwrap();
    let d = max_abs_diff(&c, &b);
    assert!(d < 1e-5, "padded ids leaked into real outputs: {d}");
}

#[test]
fn the_positional_table_is_sin_on_even_and_cos_on_odd_features() {
    let (n, h) = (10, 8);
    let t = sinusoid_table(n, h);
    for p in 0..n {
        for i in 0..h / 2 {
            let freq = (-(2.0 * i as f64) * (10000f64).ln() / h as f64).exp();
            let angle = p as f64 * freq;
            assert!((t[p * h + 2 * i] as f64 - angle.sin()).abs() < 1e-5);
            assert!((t[p * h + 2 * i + 1] as f64 - angle.cos()).abs() < 1e-5);
        }
    }
    assert_eq!(t[1], 1.0, "cos(0) at position 0");
}

#[test]
fn truncation_keeps_the_specials_and_reports_what_it_dropped() {
    let p = Pipeline::load(&fixture("tiny-fff")).unwrap();
    let long = "the cat ".repeat(40);
    let mlm = p.tokenizer.encode_mlm(&long).unwrap();
    assert_eq!(mlm.ids.len(), p.tokenizer.max_len);
    assert_eq!(*mlm.ids.last().unwrap(), p.tokenizer.sep);
    assert_eq!(mlm.truncated, 80 - (p.tokenizer.max_len - 1));
    let pair = p.tokenizer.encode_classify(&long, Some("a dog")).unwrap();
    assert_eq!(pair.ids.len(), p.tokenizer.max_len);
    assert_eq!(pair.ids[0], p.tokenizer.cls);
    let seps = pair.ids.iter().filter(|&&t| t == p.tokenizer.sep).count();
    assert_eq!(seps, 2, "both separators survive: {:?}", pair.ids);
    let short = p.tokenizer.encode_classify("a dog", None).unwrap();
    assert_eq!(short.truncated, 0);
}

#[test]
fn empty_sequences_are_errors_and_avg_pooling_does_not_depend_on_the_batch() {
    let p = Pipeline::load(&fixture("tiny-fff")).unwrap();
    let err = p
        .model
        .encode(&Batch::pad(&[vec![], vec![]], 0))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("empty"), "{err}");

    // With `avg` pooling (which, as in the original, includes padded positions), a text's
    // probabilities must not change with the texts batched beside it.
    let s = Scratch::of("tiny-fff-cls", "avg-pool");
    s.edit_config(|v| v["arch"]["classification_head"]["pooler"] = "avg".into());
    let p = Pipeline::load(&s.0).unwrap();
    let inputs: Vec<(String, Option<String>)> = vec![
        ("a cat".into(), None),
        (
            "the small dog walked along the river bank".into(),
            Some("a cat".into()),
        ),
    ];
    let together = p.classify(&inputs, 8).unwrap();
    let alone = p.classify(&inputs[..1], 8).unwrap();
    for (a, b) in together[0].value.iter().zip(&alone[0].value) {
        assert!((a - b).abs() < 1e-6, "batched {a} vs alone {b}");
    }
    // And alone it is the padded path's figure: the original's pooling over a batch of one.
    let enc = p.tokenizer.encode_classify("a cat", None).unwrap();
    let padded = p
        .model
        .classify(&p.model.encode(&p.tokenizer.batch(&[enc])).unwrap())
        .unwrap();
    let padded = candle_nn::ops::softmax(&padded, 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (a, b) in alone[0].value.iter().zip(&padded[0]) {
        assert!((a - b).abs() < 1e-6, "packed {a} vs padded {b}");
    }
}

#[test]
fn a_packed_batch_gives_the_padded_batchs_real_token_states() {
    for name in ["tiny-fff", "tiny-ff", "tiny-fff-forest"] {
        for mode in [FfnMode::Kernel, FfnMode::Masked] {
            let mut p = Pipeline::load(&fixture(name)).unwrap();
            p.model.set_ffn_mode(mode);
            let texts = [
                "the cat sat",
                "a",
                "the dog walked along the river bank",
                "cat",
            ];
            let seqs: Vec<Vec<u32>> = texts
                .iter()
                .map(|t| p.tokenizer.encode_mlm(t).unwrap().ids)
                .collect();
            let padded_batch = Batch::pad(&seqs, 0);
            let padded = p.model.encode(&padded_batch).unwrap();
            let packed = Packed::new(&seqs);
            let got = p.model.encode_packed(&packed).unwrap();
            assert_eq!(got.offsets, packed.offsets);
            assert_eq!(got.hidden.dim(0).unwrap(), packed.ids.len());
            for (b, s) in seqs.iter().enumerate() {
                let want = padded
                    .hidden
                    .narrow(0, b * padded_batch.seq, s.len())
                    .unwrap();
                let have = got.hidden.narrow(0, packed.offsets[b], s.len()).unwrap();
                let d = max_abs_diff(&want, &have);
                assert!(
                    d < 1e-5,
                    "{name} {mode:?} sequence {b}: packed differs by {d}"
                );
            }
        }
    }
}

#[test]
fn malformed_packed_batches_are_errors() {
    let p = Pipeline::load(&fixture("tiny-fff")).unwrap();
    let bad = |packed: Packed| p.model.encode_packed(&packed).err().unwrap().to_string();
    let mut gap = Packed::new(&[vec![1u32, 2], vec![3]]);
    gap.offsets[1] = 5;
    assert!(bad(gap).contains("offsets"));
    let empty = Packed::new(&[vec![1u32, 2], vec![]]);
    assert!(bad(empty).contains("empty"));
    let long = Packed::new(&[vec![1u32; p.model.config().max_seq_length + 1]]);
    assert!(bad(long).contains("max_seq_length"));
    let oov = Packed::new(&[vec![1u32, 999_999]]);
    assert!(bad(oov).contains("vocabulary"));
    let none = p
        .model
        .encode_packed(&Packed::new::<Vec<u32>>(&[]))
        .unwrap();
    assert_eq!(none.hidden.dim(0).unwrap(), 0);
}

#[test]
fn sizes_past_the_limit_and_bad_norm_eps_are_refused_before_allocating() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 9] = [
        ("arch.embedding.max_seq_length", |v| {
            v["arch"]["embedding"]["max_seq_length"] = 1_000_000_000u64.into()
        }),
        ("arch.num_labels", |v| {
            v["arch"]["num_labels"] = 10_000_000_000u64.into()
        }),
        ("arch.hidden_size", |v| {
            v["arch"]["hidden_size"] = 4_611_686_018_427_387_904u64.into();
            v["arch"]["embedding"]["embedding_dim"] = 4_611_686_018_427_387_904u64.into();
        }),
        ("arch.embedding.vocab_size", |v| {
            v["arch"]["embedding"]["vocab_size"] = 100_000_000_000u64.into()
        }),
        ("arch.norm_eps", |v| v["arch"]["norm_eps"] = (-1.0).into()),
        // Each zero or depth names its own key, not a later one compared with it.
        ("arch.hidden_size", |v| v["arch"]["hidden_size"] = 0.into()),
        ("arch.intermed_size", |v| {
            v["arch"]["intermed_size"] = 0.into()
        }),
        ("arch.intermed_depth", |v| {
            v["arch"]["intermed_depth"] = 99.into()
        }),
        ("arch.intermed_size", |v| {
            v["arch"]["intermed_size"] = 1_000_000_000_000_000u64.into()
        }),
    ];
    for (key, edit) in cases {
        let s = Scratch::of("tiny-fff", "limits");
        s.edit_config(edit);
        let err = Pipeline::load(&s.0).err().expect("refused").to_string();
        assert!(
            err.contains(key) && err.contains("config.json"),
            "{key}: {err}"
        );
    }
}

#[test]
fn weights_that_overflow_are_an_error_not_nan_scores() {
    let s = Scratch::of("tiny-fff", "overflow");
    s.edit_weights(|t| {
        let names: Vec<String> = t
            .keys()
            .filter(|k| k.contains("norm") && k.ends_with(".weight"))
            .cloned()
            .collect();
        assert!(!names.is_empty(), "no LayerNorm weights in {:?}", t.keys());
        for name in names {
            let w = (&t[&name] * 1e38).unwrap();
            t.insert(name, w);
        }
    });
    let p = Pipeline::load(&s.0).unwrap();
    let err = p
        .fill_mask("the cat <mask> down", 3)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("NaN or infinite"), "{err}");
    let err = p
        .embed(&["the cat".to_string()], &Default::default(), 8)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("NaN or infinite"), "{err}");
}

/// Peak resident memory of this process in bytes, where Linux reports it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_huge_safetensors_file_is_refused_from_its_header_before_its_data_is_read() {
    // The fixture's word embeddings renamed aside, and under their name a 4 GB tensor appended
    // after the data; the file is extended sparsely, so its bytes exist but were never written.
    let s = Scratch::of("tiny-fff", "huge");
    let path = s.0.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "encoder.embedding.word_embedding.weight";
    let old = header.remove(name).unwrap();
    header.insert("aside".into(), old);
    let data_len = (bytes.len() - 8 - n) as u64;
    let huge: u64 = 4 << 30;
    header.insert(
        name.into(),
        serde_json::json!({"dtype": "F32", "shape": [1u64 << 20, 1024], "data_offsets": [data_len, data_len + huge]}),
    );
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, &out).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(out.len() as u64 + huge).unwrap();
    drop(file);

    let err = s.load_err();
    assert!(
        err.contains("model.safetensors") && err.contains(name) && err.contains("1048576"),
        "{err}"
    );
    if let Some(peak) = peak_rss() {
        assert!(
            peak < 2 << 30,
            "peak memory {peak} bytes: the tensor was read"
        );
    }

    // Offsets past the end of the file: refused when the file is opened, naming it.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(out.len() as u64 + 1000).unwrap();
    drop(file);
    let err = s.load_err();
    assert!(err.contains("model.safetensors"), "{err}");
}
