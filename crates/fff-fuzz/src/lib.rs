//! Fuzz entry points: one function per loader that takes arbitrary bytes and must return (with
//! an error or a value) without panicking, aborting or allocating without bound. The cargo-fuzz
//! targets in `fuzz/` call these, and `tests/corpus.rs` replays every committed corpus through
//! them on stable Rust, so CI keeps every input that once found a bug.
//!
//! Inputs that parse are also used a little further (a model built, an input run), because a
//! value that parses but cannot be used is the bug fuzzing should find.

#![warn(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/*.rs` file and corpus folder.
pub const TARGETS: [(&str, Target); 6] = [
    ("weights", weights),
    ("bert_config", bert_config),
    ("model_spec", model_spec),
    ("idx", idx),
    ("train_config", train_config),
    ("train_state", train_state),
];

/// Most parameters a parsed description may have for the target to build and run it: large
/// enough for every shape the parsers treat specially, small enough for thousands of runs a
/// second.
const BUILD_LIMIT: usize = 1 << 16;

/// The crammedBERT configuration the `weights` target loads checkpoints against: tiny-fff's,
/// shrunk (1 layer, width 8, 2 heads, vocabulary 16, one tree of depth 1), so that a whole
/// checkpoint is 2 KB and the fuzzer mutates headers and tensors alike.
pub const TINY_CONFIG: &str = include_str!("tiny_config.json");

/// The model description the `weights` target loads `fff train` checkpoints against.
pub const TRAIN_MODEL: &str = "fff:4-8:d2:k2:identity, relu, linear:8-3";

/// `bytes` written to a scratch file of this process and thread named `name`; loaders that
/// take a path (memory maps, zip readers) see a real file.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fff-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let path = dir.join(format!("{thread}-{name}"));
    let mut f = std::fs::File::create(&path).expect("scratch file");
    f.write_all(bytes).expect("scratch file");
    path
}

/// One input row of ones, `[1, width]`.
fn ones(width: usize) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::{DType, Device, Tensor};
    Tensor::ones((1, width), DType::F32, &Device::Cpu)
}

/// Checkpoint weights: the first byte picks the reader, the rest is the file. 0: crammedBERT
/// `model.safetensors` against the tiny config; 1: the same as `pytorch_model.bin` (a torch zip
/// and its pickle); 2: an FFF layer checkpoint (config in the metadata); 3: a `fff train` model
/// checkpoint for a fixed small model.
pub fn weights(data: &[u8]) {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 | 1 => {
            let name = if which % 4 == 0 {
                "model.safetensors"
            } else {
                "pytorch_model.bin"
            };
            let path = scratch_file(name, file);
            let Ok(w) = fff_bert::Weights::from_file(&path) else {
                return;
            };
            let config = fff_bert::BertConfig::from_json(TINY_CONFIG, Path::new("config.json"))
                .expect("the fixture config parses");
            if let Ok(model) =
                fff_bert::Model::from_weights(&fff_bert::ModelConfig::Crammed(config), &w)
            {
                let batch = fff_bert::Packed::new(&[[2u32, 5, 7, 3]]);
                let _ = model.encode_packed(&batch);
            }
        }
        2 => {
            let path = scratch_file("layer.safetensors", file);
            if let Ok(layer) = fastfeedforward::Fff::load(&path, None) {
                use fastfeedforward::ConditionalLayer;
                let width = layer.config().input_width;
                if let Ok(x) = ones(width) {
                    let _ = layer.forward_infer(&x);
                }
            }
        }
        _ => {
            let path = scratch_file("model.safetensors", file);
            let Ok((tensors, _)) = fastfeedforward::checkpoint::load(&path) else {
                return;
            };
            let mut model = fff_train::Model::new(TRAIN_MODEL, 1).expect("spec");
            if model.load_tensors(&tensors, &path).is_ok() {
                let _ = model.forward_infer(&ones(4).expect("tensor"));
            }
        }
    }
}

/// `config.json` of a crammedBERT / UltraFastBERT model; a small config that parses is built
/// with random weights and run on one short input.
pub fn bert_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = fff_bert::BertConfig::from_json(text, Path::new("config.json")) else {
        return;
    };
    let nodes = match config.intermed {
        fff_bert::IntermedType::Dense { width, .. } => width,
        fff_bert::IntermedType::Fff { trees, depth } => trees.saturating_mul((2 << depth) - 1),
    };
    let size = config
        .hidden
        .saturating_mul(config.vocab_size.saturating_add(nodes.saturating_mul(2)))
        .saturating_mul(config.layers.max(1));
    if size <= BUILD_LIMIT && config.max_seq_length <= 64 {
        let vocab = config.vocab_size as u32;
        if let Ok(model) = fff_bert::Model::from_weights(
            &fff_bert::ModelConfig::Crammed(config),
            &fff_bert::Weights::random(1),
        ) {
            let ids: Vec<u32> = (0..4).map(|i| i % vocab.max(1)).collect();
            let _ = model.encode_packed(&fff_bert::Packed::new(&[ids]));
        }
    }
}

/// A model description (`fff:784-500:d8, relu, ...`); a small one that parses is built and run
/// on one input.
pub fn model_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = text.parse::<fff_train::ModelSpec>() else {
        return;
    };
    let _ = spec.to_string();
    let small = spec
        .layers()
        .iter()
        .try_fold(0usize, |sum, l| sum.checked_add(l.parameter_bound()?))
        .is_some_and(|n| n <= BUILD_LIMIT);
    if small {
        let width = spec.input_width();
        if let Ok(model) = fff_train::Model::from_spec(spec, 1) {
            if let Ok(x) = ones(width) {
                let _ = model.forward_infer(&x);
                let _ = model.forward_step(&x, 3, None, 0.0);
            }
        }
    }
}

/// An IDX file: the first byte picks raw bytes (even) or a file read through the gzip reader
/// with a 1 MiB bound (odd); what decompresses is parsed.
pub fn idx(data: &[u8]) {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    let path = Path::new("data.idx");
    if which % 2 == 0 {
        let _ = fff_data::idx::parse_u8(file, path);
    } else {
        let scratch = scratch_file("data.idx.gz", file);
        if let Ok(bytes) = fff_data::idx::read_maybe_gzip(&scratch, 1 << 20) {
            let _ = fff_data::idx::parse_u8(&bytes, path);
        }
    }
}

/// A TOML `fff train --config` file, and the training configuration it gives.
pub fn train_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = fff_cli::train_config::TrainSettings::parse(text, Path::new("run.toml")) {
        let _ = settings.train_config();
    }
}

/// A checkpoint's `state.json`.
pub fn train_state(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(state) = fff_train::checkpoint::parse_state(text, Path::new("state.json")) {
        let _ = state.progress();
    }
}
