//! BERT checkpoints with FFF blocks: a folder written with every layer's FFN as a forest of
//! depth-0 GELU trees initialised from the teacher's own neurons loads everywhere a model goes
//! and reproduces the teacher (a check that cannot pass by accident: the same forest with
//! identity nodes, or with another layer's neurons, is far off); bad `fff` settings are
//! refused by name.

use fastfeedforward::Activation;
use fff_bert::convert::{ffn_as_forest, teacher_ffn, write_with_fff, WrittenLayer};
use fff_bert::{FffBlocks, HfBertConfig, ModelConfig, Pipeline, Weights};
use std::path::{Path, PathBuf};

fn teacher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/tiny-st")
}

fn config(dir: &Path) -> HfBertConfig {
    match ModelConfig::from_file(&dir.join("config.json")).unwrap() {
        ModelConfig::Bert(c) => c,
        other => panic!("a BERT config: {other:?}"),
    }
}

const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello World! This is a TEST of the Tokenizer.",
    "a",
    "Café naïve résumé",
];

/// Largest |a - b| between two pipelines' embeddings (without normalisation) of `TEXTS`.
fn embedding_gap(a: &Pipeline, b: &Pipeline) -> f32 {
    let texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let pooling = fff_bert::PoolingConfig::single(fff_bert::Pooling::Mean, false);
    let ea = a.embed(&texts, &pooling, 4).unwrap();
    let eb = b.embed(&texts, &pooling, 4).unwrap();
    ea.iter()
        .zip(&eb)
        .flat_map(|(x, y)| x.value.iter().zip(&y.value).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max)
}

/// Writes the teacher with every layer's FFN as a depth-0 forest of `act` nodes taken from
/// layer `source(i)`'s neurons, and loads it.
fn converted(dir: &Path, act: Activation, source: impl Fn(usize) -> usize) -> Pipeline {
    let c = config(&teacher());
    let w = Weights::from_dir(&teacher()).unwrap();
    let forests: Vec<_> = (0..c.layers)
        .map(|i| ffn_as_forest(&c, &w, source(i), act).unwrap())
        .collect();
    let spec = FffBlocks {
        trees: c.intermediate,
        depth: 0,
        activation: act,
        layers: (0..c.layers).collect(),
        dense_branch: 0,
    };
    let biases: Vec<Vec<f32>> = (0..c.layers)
        .map(|i| teacher_ffn(&c, &w, source(i)).unwrap().1)
        .collect();
    let layers: Vec<_> = forests
        .iter()
        .zip(&biases)
        .enumerate()
        .map(|(i, (f, b))| WrittenLayer {
            index: i,
            fff: f,
            branch: None,
            out_bias: b.as_slice(),
        })
        .collect();
    write_with_fff(&teacher(), dir, &spec, &layers, &Default::default()).unwrap();
    Pipeline::load(dir).unwrap()
}

#[test]
fn a_teacher_initialised_gelu_forest_reproduces_the_teacher() {
    let original = Pipeline::load(&teacher()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let student = converted(out.path(), Activation::Gelu, |i| i);
    for i in 0..original.model.config().layers {
        assert!(
            student.model.fff_layer(i).is_some(),
            "layer {i} runs an FFF"
        );
        assert!(original.model.fff_layer(i).is_none());
    }
    let gap = embedding_gap(&original, &student);
    eprintln!("teacher vs its own neurons as a forest: largest embedding difference {gap:.2e}");
    assert!(gap < 1e-5, "teacher vs its own neurons as a forest: {gap}");
    // The sentence-transformers files came along: the embedding is pooled and normalised.
    assert_eq!(student.embedding.pooling, original.embedding.pooling);
    assert_eq!(student.tokenizer.max_len, original.tokenizer.max_len);
    let e = student
        .embed(&["a dog".to_string()], &student.pooling(None, None), 1)
        .unwrap();
    let norm: f32 = e[0].value.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);

    // The check has teeth: identity nodes, or the neighbouring layer's neurons, are far off.
    let other = tempfile::tempdir().unwrap();
    let identity = converted(other.path(), Activation::Identity, |i| i);
    assert!(embedding_gap(&original, &identity) > 1e-2);
    let shifted_dir = tempfile::tempdir().unwrap();
    let layers = original.model.config().layers;
    let shifted = converted(shifted_dir.path(), Activation::Gelu, |i| (i + 1) % layers);
    assert!(embedding_gap(&original, &shifted) > 1e-2);
}

#[test]
fn bad_fff_settings_are_refused_by_name() {
    let out = tempfile::tempdir().unwrap();
    converted(out.path(), Activation::Gelu, |i| i);
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let path = out.path().join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let saved = v.clone();
        f(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        let err = Pipeline::load(out.path())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        std::fs::write(&path, saved.to_string()).unwrap();
        err
    };
    let err = edit(&|v| v["fff"]["layers"] = serde_json::json!([0, 7]));
    assert!(err.contains("fff.layers"), "{err}");
    let err = edit(&|v| v["fff"]["node_activation"] = "swish".into());
    assert!(
        err.contains("fff.node_activation") && err.contains("swish"),
        "{err}"
    );
    let err = edit(&|v| v["fff"]["depth"] = 40.into());
    assert!(err.contains("depth"), "{err}");
    let err = edit(&|v| v["fff"]["width"] = 3.into());
    assert!(err.contains("fff.width"), "{err}");
    // A shape that disagrees with the stored tensors names the tensor.
    let err = edit(&|v| v["fff"]["trees"] = 7.into());
    assert!(err.contains("fff.linear_in.weight"), "{err}");
    // Unedited, it loads.
    Pipeline::load(out.path()).unwrap();
}

/// Weights with tensors replaced read the new values under the old names, leave the others,
/// and refuse a name the checkpoint lacks or a shape it does not have.
#[test]
fn replaced_tensors_are_read_in_place_of_the_stored_ones() {
    let w = Weights::from_dir(&teacher()).unwrap();
    let name = "encoder.layer.0.output.LayerNorm.weight";
    let h = config(&teacher()).hidden;
    let new = candle_core::Tensor::full(0.5f32, h, &candle_core::Device::Cpu).unwrap();
    let replaced = w
        .clone()
        .with_replaced([(name.to_string(), new)].into())
        .unwrap();
    assert_eq!(replaced.len(), w.len());
    assert_eq!(
        replaced.get(name, &[h]).unwrap().to_vec1::<f32>().unwrap(),
        vec![0.5; h]
    );
    let other = "encoder.layer.1.output.LayerNorm.weight";
    assert_eq!(
        replaced.get(other, &[h]).unwrap().to_vec1::<f32>().unwrap(),
        w.get(other, &[h]).unwrap().to_vec1::<f32>().unwrap()
    );
    let wrong =
        candle_core::Tensor::zeros(h + 1, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let e = w
        .clone()
        .with_replaced([(name.to_string(), wrong.clone())].into())
        .unwrap_err()
        .to_string();
    assert!(e.contains(name), "{e}");
    let e = w
        .with_replaced([("no.such.tensor".to_string(), wrong)].into())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no.such.tensor"), "{e}");
}
