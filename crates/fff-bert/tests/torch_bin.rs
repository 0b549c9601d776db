//! The `pytorch_model.bin` path: `tiny-fff-bin` holds tiny-fff's weights as a `torch.save` zip
//! (written by `tools/safetensors_to_torch_bin.py`, without torch: `module.` prefix on every
//! name, the decoder tied to the word embedding's storage, 0-d `norm_factor` buffers,
//! `state_dict()._metadata`), and must load and run exactly as tiny-fff's `model.safetensors`.

use candle_core::{Device, Tensor};
use fff_bert::{FfnMode, Pipeline, PoolingConfig};
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
        let dir = folder_with_bin(&format!("truncated-bin-{keep}"), &bytes[..keep]);
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

/// A scratch model folder holding tiny-fff-bin's config and tokenizer and `weights` as
/// `pytorch_model.bin`.
fn folder_with_bin(tag: &str, weights: &[u8]) -> PathBuf {
    let src = fixture("tiny-fff-bin");
    let dir = std::env::temp_dir().join(format!("fff-bert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("pytorch_model.bin"), weights).unwrap();
    dir
}

/// tiny-fff-bin's `pytorch_model.bin` written again entry by entry with `method`, each entry's
/// bytes passed through `edit` first.
fn rezip_fixture(method: zip::CompressionMethod, edit: impl Fn(&str, &mut Vec<u8>)) -> Vec<u8> {
    use std::io::{Read, Write};
    let src = fixture("tiny-fff-bin").join("pytorch_model.bin");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        edit(&name, &mut bytes);
        out.start_file(name, options).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn a_pytorch_model_bin_rezipped_with_deflate_loads_as_the_stored_one() {
    let bytes = rezip_fixture(zip::CompressionMethod::Deflated, |_, _| {});
    let dir = folder_with_bin("deflated-bin", &bytes);
    let loaded = Pipeline::load(&dir);
    let stored = Pipeline::load(&fixture("tiny-fff-bin")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let loaded = loaded.unwrap();
    let (texts, _) = fixture_texts();
    let a = loaded.embed(&texts, &PoolingConfig::default(), 8).unwrap();
    let b = stored.embed(&texts, &PoolingConfig::default(), 8).unwrap();
    let values =
        |o: Vec<fff_bert::pipeline::Output<Vec<f32>>>| o.into_iter().map(|o| o.value).collect();
    let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (values(a), values(b));
    assert_eq!(a, b);
}

#[test]
fn a_legacy_torch_save_file_and_a_non_zip_are_refused_with_what_to_do() {
    // The start of a pre-1.6 torch.save stream: pickle protocol 2, the magic number as a long.
    let mut legacy = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    legacy.extend_from_slice(&[0; 64]);
    for (tag, bytes, want) in [
        ("legacy-bin", legacy, "legacy torch.save format"),
        (
            "garbage-bin",
            b"not a checkpoint at all".to_vec(),
            "neither a PyTorch zip",
        ),
    ] {
        let dir = folder_with_bin(tag, &bytes);
        let result = Pipeline::load(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let err = match result {
            Ok(_) => panic!("{tag} should not load"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("pytorch_model.bin") && err.contains(want) && err.contains("safetensors"),
            "{tag}: {err}"
        );
    }
}

/// A torch zip holding `pickle` as its `archive/data.pkl`, and nothing else.
fn zip_with_pickle(pickle: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    out.start_file("archive/data.pkl", stored).unwrap();
    out.write_all(pickle).unwrap();
    out.finish().unwrap().into_inner()
}

#[test]
fn hostile_pickles_are_refused_without_allocating_or_panicking() {
    // {"w": _rebuild_tensor_v2()}: a tensor with no arguments, which candle's reader indexes
    // without checking (a panic there is caught and reported).
    let mut no_args = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n".to_vec();
    no_args.extend_from_slice(b")Rs.");
    // A string claiming 4 GB in a 20-byte pickle: candle would allocate it before reading.
    let huge_string = b"\x80\x02}X\xfe\xff\xff\xffw".to_vec();
    // A long of 200 bytes: shifted past 64 bits by candle's reader.
    let mut long = b"\x80\x02\x8a\xc8".to_vec();
    long.extend_from_slice(&[1; 200]);
    long.push(b'.');
    for (tag, pickle, want) in [
        ("no-args", no_args, "malformed"),
        ("huge-string", huge_string, "claims 4294967294 bytes"),
        ("long-long", long, "at most 8 fit"),
        ("unknown-op", b"\x80\x02\xff.".to_vec(), "opcode 0xff"),
        ("no-stop", b"\x80\x02}".to_vec(), "no STOP"),
    ] {
        let dir = folder_with_bin(tag, &zip_with_pickle(&pickle));
        let result = Pipeline::load(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let err = match result {
            Ok(_) => panic!("{tag} should not load"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("pytorch_model.bin") && err.contains(want),
            "{tag}: {err}"
        );
    }
}

#[test]
fn a_torch_tensor_whose_storage_is_short_is_refused_before_reading() {
    // Every storage cut to 4 bytes: each tensor's bytes are missing, which is found from the
    // zip's entry sizes before a tensor is allocated.
    let short = rezip_fixture(zip::CompressionMethod::Stored, |name, bytes| {
        if name.contains("/data/") {
            bytes.truncate(4);
        }
    });
    let dir = folder_with_bin("short-storage", &short);
    let result = Pipeline::load(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let err = match result {
        Ok(_) => panic!("short storages should not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("pytorch_model.bin") && err.contains("holds 4 bytes"),
        "{err}"
    );
}
