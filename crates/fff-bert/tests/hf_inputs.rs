//! Hostile and malformed model folders of both families: each is refused with an error that
//! names the file and what was wrong, instead of loading and computing nonsense.

use candle_core::{DType, Device, Tensor};
use fff_bert::Pipeline;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of a fixture folder in a temporary folder.
struct Folder(tempfile::TempDir);

impl Folder {
    fn of(name: &str) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixtures().join(name), dir.path());
        Folder(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.path().join(file)
    }

    fn edit_json(&self, file: &str, f: impl FnOnce(&mut Value)) {
        let path = self.path(file);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    fn edit_weights(&self, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
        let path = self.path("model.safetensors");
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        f(&mut t);
        candle_core::safetensors::save(&t, &path).unwrap();
    }

    /// The load error, which must name `file`.
    fn error(&self, file: &str) -> String {
        let err = match Pipeline::load(self.0.path()) {
            Ok(_) => panic!("loading the edited folder should fail"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(file), "the error names {file}: {err}");
        err
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_fixtures_load_unedited() {
    for name in ["hf/tiny-st", "hf/tiny-cls", "tiny-fff"] {
        Pipeline::load(Folder::of(name).0.path()).unwrap();
    }
}

#[test]
fn a_layer_count_that_disagrees_with_the_weights_is_refused() {
    let f = Folder::of("hf/tiny-st");
    f.edit_json("config.json", |v| v["num_hidden_layers"] = 1.into());
    let err = f.error("model.safetensors");
    assert!(
        err.contains("layer 1") && err.contains("num_hidden_layers"),
        "{err}"
    );
    // crammedBERT: the same check under its own key.
    let f = Folder::of("tiny-fff");
    f.edit_json("config.json", |v| {
        v["arch"]["num_transformer_layers"] = 1.into()
    });
    let err = f.error("model.safetensors");
    assert!(err.contains("num_transformer_layers"), "{err}");
    // Fewer layers in the weights than the config names: the first missing tensor is named.
    let f = Folder::of("hf/tiny-st");
    f.edit_json("config.json", |v| v["num_hidden_layers"] = 3.into());
    let err = f.error("model.safetensors");
    assert!(err.contains("encoder.layer.2."), "{err}");
}

#[test]
fn pad_and_special_ids_outside_the_vocabulary_are_refused() {
    let f = Folder::of("hf/tiny-st");
    f.edit_json("config.json", |v| v["pad_token_id"] = 100_000.into());
    let err = f.error("config.json");
    assert!(
        err.contains("pad_token_id") && err.contains("100000"),
        "{err}"
    );
    let f = Folder::of("tiny-fff");
    f.edit_json("config.json", |v| {
        v["arch"]["embedding"]["pad_token_id"] = 1_000_000.into()
    });
    assert!(f.error("config.json").contains("pad_token_id"));
    // A tokenizer whose [MASK] has an id past the model's vocabulary (its vocabulary has a gap,
    // so its size alone does not show it).
    let f = Folder::of("hf/tiny-st");
    f.edit_json("tokenizer.json", |v| {
        v["model"]["vocab"]["[MASK]"] = 5000.into();
        for t in v["added_tokens"].as_array_mut().unwrap() {
            if t["content"] == "[MASK]" {
                t["id"] = 5000.into();
            }
        }
    });
    let err = f.error("tokenizer.json");
    assert!(err.contains("mask token has id 5000"), "{err}");
}

#[test]
fn integer_weight_tensors_are_refused() {
    let f = Folder::of("hf/tiny-st");
    let name = "embeddings.word_embeddings.weight";
    f.edit_weights(|t| {
        let w = t[name].to_dtype(DType::I64).unwrap();
        t.insert(name.into(), w);
    });
    let err = f.error("model.safetensors");
    assert!(err.contains(name) && err.contains("I64"), "{err}");
}

#[test]
fn a_vocabulary_with_a_shared_id_is_refused() {
    let f = Folder::of("hf/tiny-st");
    f.edit_json("tokenizer.json", |v| {
        let id = v["model"]["vocab"]["the"].clone();
        v["model"]["vocab"]["quick"] = id;
    });
    let err = f.error("tokenizer.json");
    assert!(err.contains("gives id") && err.contains("the"), "{err}");
}

#[test]
fn id2label_must_name_every_label_by_index() {
    for (labels, needle) in [
        (serde_json::json!({"0": "a", "x": "b", "2": "c"}), "\"x\""),
        (serde_json::json!({"0": "a", "2": "c"}), "label index 2"),
        (
            serde_json::json!({"0": "a", "1": 5, "2": "c"}),
            "must be a string",
        ),
    ] {
        let f = Folder::of("hf/tiny-cls");
        f.edit_json("config.json", |v| v["id2label"] = labels.clone());
        let err = f.error("config.json");
        assert!(
            err.contains("id2label") && err.contains(needle),
            "{needle}: {err}"
        );
    }
    // crammedBERT: id2label must agree with num_labels.
    let f = Folder::of("tiny-fff-cls");
    f.edit_json("config.json", |v| {
        let n = v["arch"]["num_labels"].as_u64().unwrap();
        let map: serde_json::Map<String, Value> = (0..n + 1)
            .map(|i| (i.to_string(), format!("L{i}").into()))
            .collect();
        v["id2label"] = Value::Object(map);
    });
    assert!(f.error("config.json").contains("num_labels"));
}

#[test]
fn unsupported_settings_are_refused_by_name() {
    for (key, value) in [
        ("position_embedding_type", Value::from("relative_key")),
        ("hidden_act", Value::from("gelu_new")),
        ("is_decoder", Value::from(true)),
        ("model_type", Value::from("roberta")),
        ("problem_type", Value::from("multi_label_classification")),
    ] {
        let f = Folder::of("hf/tiny-st");
        f.edit_json("config.json", |v| v[key] = value.clone());
        let err = f.error("config.json");
        assert!(err.contains(key), "{key}: {err}");
    }
    // A module sentence-transformers runs that this crate does not.
    let f = Folder::of("hf/tiny-st");
    f.edit_json("modules.json", |v| {
        v.as_array_mut().unwrap().push(serde_json::json!(
            {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
        ))
    });
    assert!(f.error("modules.json").contains("Dense"));
}
