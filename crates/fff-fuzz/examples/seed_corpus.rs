//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/` with the project's
//! own writers (checkpoints, IDX, configs), so each seed is a valid input the fuzzer mutates:
//!
//!     cargo run --release -p fff-fuzz --example seed_corpus
//!
//! The torch zip seed of `weights` is made from the safetensors seed by
//! `tools/safetensors_to_torch_bin.py` (printed at the end).

use candle_core::{Device, Tensor};
use fastfeedforward::{Fff, FffConfig, Init};
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        Ok(path)
    };
    let scratch = std::env::temp_dir().join(format!("fff-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let with_selector = |selector: u8, file: &Path| -> anyhow::Result<Vec<u8>> {
        let mut bytes = vec![selector];
        bytes.extend(std::fs::read(file)?);
        Ok(bytes)
    };

    // weights 0: a crammedBERT model.safetensors for the tiny config, names as the original's.
    let h = 8;
    let (vocab, nodes) = (16, 3);
    let mut tensors = vec![
        ("decoder.weight", vec![vocab, h]),
        ("encoder.embedding.norm.bias", vec![h]),
        ("encoder.embedding.norm.weight", vec![h]),
        ("encoder.embedding.pos_embedding.scale_factor", vec![1]),
        ("encoder.embedding.word_embedding.weight", vec![vocab, h]),
        ("encoder.final_norm.bias", vec![h]),
        ("encoder.final_norm.weight", vec![h]),
        ("encoder.layers.0.attn.dense.weight", vec![h, h]),
        ("encoder.layers.0.attn.self_attention.norm_factor", vec![]),
        (
            "encoder.layers.0.attn.self_attention.query_key_value.weight",
            vec![3 * h, h],
        ),
        ("encoder.layers.0.ffn.linear_in.bias", vec![nodes]),
        ("encoder.layers.0.ffn.linear_in.weight", vec![nodes, h]),
        ("encoder.layers.0.ffn.linear_out.weight", vec![h, nodes]),
        ("encoder.layers.0.norm1.bias", vec![h]),
        ("encoder.layers.0.norm1.weight", vec![h]),
        ("encoder.layers.0.norm2.bias", vec![h]),
        ("encoder.layers.0.norm2.weight", vec![h]),
    ]
    .into_iter()
    .map(|(name, shape)| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        Ok((name.to_string(), t))
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let bert = scratch.join("model.safetensors");
    candle_core::safetensors::save(&tensors.iter().cloned().collect(), &bert)?;
    // The seed must load: a corpus of files the loader refuses would fuzz only the refusals.
    let config = fff_bert::BertConfig::from_json(fff_fuzz::TINY_CONFIG, Path::new("config"))?;
    fff_bert::Model::from_weights(
        &fff_bert::ModelConfig::Crammed(config),
        &fff_bert::Weights::from_file(&bert)?,
    )?;
    write("weights", "bert-safetensors", &with_selector(0, &bert)?)?;

    // weights 2: an FFF layer checkpoint; 3: a `fff train` model checkpoint.
    let layer_path = scratch.join("layer.safetensors");
    let layer = Fff::new(FffConfig::new(5, 3, 2, 2), Init::Uniform, 7)?;
    layer.save(&layer_path)?;
    write("weights", "fff-layer", &with_selector(2, &layer_path)?)?;
    let model = fff_train::Model::new(fff_fuzz::TRAIN_MODEL, 3)?;
    let model_path = scratch.join("train-model.safetensors");
    fastfeedforward::checkpoint::save(&model_path, &model.named_tensors()?, Default::default())?;
    write("weights", "train-model", &with_selector(3, &model_path)?)?;

    // bert_config: the tiny config and the fixtures' configs.
    write("bert_config", "tiny", fff_fuzz::TINY_CONFIG.as_bytes())?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fff-bert/tests/fixtures");
    for name in ["tiny-ff", "tiny-fff-cls", "tiny-fff-forest"] {
        write(
            "bert_config",
            name,
            &std::fs::read(fixtures.join(name).join("config.json"))?,
        )?;
    }

    // model_spec: every layer kind and option the language has.
    let specs = [
        "fff:2-3:d2",
        "fff:784-500:d8:identity, relu, fff:500-10:d8:identity",
        "fff:8-4:d2:k3:gelu:init=normal(0.05)",
        "orig:784-500:d3:l36:harden=1:leak=0.1:hard, relu, flat:500-10:d4",
        "orig:2-3:d2:l4:gelu",
        "linear:4-8, tanh, linear:8-2, identity",
        "flat:6-2:d3",
    ];
    for (i, s) in specs.iter().enumerate() {
        write("model_spec", &format!("spec-{i}"), s.as_bytes())?;
    }

    // idx: raw and gzip IDX files of images and labels.
    let images = fff_data::idx::encode_u8(
        &[2, 2, 3],
        &[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
    );
    let labels = fff_data::idx::encode_u8(&[2], &[3, 7]);
    for (name, bytes) in [("images", &images), ("labels", &labels)] {
        let mut raw = vec![0u8];
        raw.extend_from_slice(bytes);
        write("idx", &format!("{name}-raw"), &raw)?;
        let mut gz = vec![1u8];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, bytes)?;
        gz.extend(enc.finish()?);
        write("idx", &format!("{name}-gzip"), &gz)?;
    }

    // train_config: a file with every key, and a minimal one.
    let full = r#"dataset = "fashion-mnist"
data-dir = "data"
model = "fff:784-500:d8:identity, relu, fff:500-10:d8:identity"
epochs = 3
batch-size = 128
optimizer = "adamw"
lr = 2e-3
weight-decay = 0.01
betas = [0.8, 0.99]
momentum = 0.5
schedule = "cosine"
warmup-steps = 100
clip-norm = 1.0
seed = 7
threads = 2
out = "runs/a"
"#;
    write("train_config", "full", full.as_bytes())?;
    write(
        "train_config",
        "sgd",
        b"optimizer = \"sgd\"\nmomentum = 0.9\nepochs = 1\n",
    )?;

    // train_state: the state.json of a real (one-step) training run.
    let state_dir = scratch.join("run");
    let data = fff_data::synthetic::spirals(3, 30, 0.1, 1);
    let cfg = fff_train::TrainConfig {
        epochs: 1,
        batch_size: 16,
        seed: 5,
        ..Default::default()
    };
    let model = fff_train::Model::new("fff:2-3:d2", 5)?;
    let mut opt = fff_train::trainer::optimizer_for(&model, &cfg);
    fff_train::trainer::train_from(
        &model,
        &mut opt,
        &data,
        &cfg,
        Default::default(),
        Some((&state_dir, 5)),
        (),
    )?;
    write(
        "train_state",
        "one-epoch",
        &std::fs::read(state_dir.join("state.json"))?,
    )?;

    std::fs::remove_dir_all(&scratch)?;
    println!(
        "wrote {}; for the torch zip seed of `weights`, run\n  python3 tools/safetensors_to_torch_bin.py <bert seed without its first byte> OUT.bin",
        root.display()
    );
    Ok(())
}
