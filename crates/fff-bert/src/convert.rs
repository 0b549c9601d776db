//! BERT checkpoints with FFF blocks: a layer's dense FFN written as a forest of depth-0 trees
//! (one tree per neuron, which computes exactly what the dense FFN computes, the starting point
//! of compressing it), and a model folder written with some layers' FFNs replaced by FFF layers
//! (the kept tensors under their Hugging Face names, the FFF ones under UltraFastBERT's, the FFF
//! shape in `config.json`'s `fff` key; see [`FffBlocks`]), loadable everywhere a model goes.

use crate::error::{BertError, Result};
use crate::hf_bert::{encoder_prefix, FffBlocks, HfBertConfig};
use crate::weights::Weights;
use candle_core::{Device, Tensor};
use fastfeedforward::{Activation, ConditionalLayer, Fff, FffConfig};
use std::collections::HashMap;
use std::path::Path;

/// Weight files of a model folder, replaced by the written `model.safetensors`.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Layer `layer`'s dense FFN of a BERT checkpoint as a forest of `intermediate_size` trees of
/// depth 0 with `act` nodes: tree `n` is neuron `n` (`intermediate.dense` row `n` in, column
/// `n` of `output.dense.weight` out), so with the checkpoint's own activation it computes the
/// dense FFN exactly (less its output bias, which the FFF block keeps).
pub fn ffn_as_forest(c: &HfBertConfig, w: &Weights, layer: usize, act: Activation) -> Result<Fff> {
    let (h, width) = (c.hidden, c.intermediate);
    let l = format!("{}encoder.layer.{layer}", encoder_prefix(w)?);
    let config = FffConfig::new(h, h, 0, width).with_activation(act);
    let tensors = HashMap::from([
        (
            fastfeedforward::W_IN.to_string(),
            w.get(&format!("{l}.intermediate.dense.weight"), &[width, h])?,
        ),
        (
            fastfeedforward::B_IN.to_string(),
            w.get(&format!("{l}.intermediate.dense.bias"), &[width])?,
        ),
        (
            fastfeedforward::W_OUT.to_string(),
            w.get(&format!("{l}.output.dense.weight"), &[h, width])?,
        ),
    ]);
    Ok(Fff::from_tensors(config, &tensors, "", w.path())?)
}

/// Writes the model folder `src` to `dst` with the FFNs of the layers in `layers` (layer
/// index, FFF layer, all of `spec`'s shape) in place of the dense ones: `model.safetensors`
/// (written to a temporary name and renamed), `config.json` with `spec` under `fff`, and every
/// other file and folder of `src` (tokenizer, sentence-transformers files) copied.
pub fn write_with_fff(
    src: &Path,
    dst: &Path,
    spec: &FffBlocks,
    layers: &[(usize, &Fff)],
) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| BertError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if dst.exists() && dst.canonicalize().ok() == src.canonicalize().ok() {
        return Err(BertError::Io {
            path: dst.to_path_buf(),
            message: "the output folder is the model folder itself; choose another".into(),
        });
    }
    let listed: Vec<usize> = layers.iter().map(|(i, _)| *i).collect();
    if listed != spec.layers {
        return Err(BertError::Input(format!(
            "FFF layers {listed:?} do not match the config's layers {:?}",
            spec.layers
        )));
    }
    for (i, fff) in layers {
        let c = fff.config();
        if (c.trees, c.depth, c.activation) != (spec.trees, spec.depth, spec.activation) {
            return Err(BertError::Input(format!(
                "layer {i}: an FFF of {} trees of depth {} ({}) is not the config's {} trees of \
                 depth {} ({})",
                c.trees,
                c.depth,
                c.activation.name(),
                spec.trees,
                spec.depth,
                spec.activation.name()
            )));
        }
    }
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| BertError::Io {
        path: config_path.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    config["fff"] = spec.to_json();
    let w = Weights::from_dir(src)?;
    let p = encoder_prefix(&w)?;
    let replaced = |name: &str| {
        layers.iter().any(|(i, _)| {
            let l = format!("{p}encoder.layer.{i}.");
            name.strip_prefix(&l).is_some_and(|rest| {
                rest.starts_with("intermediate.dense.") || rest == "output.dense.weight"
            })
        })
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in w.names() {
        if !replaced(name) {
            tensors.insert(name.to_string(), w.get_stored(name)?);
        }
    }
    for (i, fff) in layers {
        let at = format!("{p}encoder.layer.{i}.fff.");
        for (name, t) in fff.named_tensors(&at)? {
            tensors.insert(name, t.to_device(&Device::Cpu)?);
        }
    }
    std::fs::create_dir_all(dst).map_err(|e| io(dst, e))?;
    copy_other_files(src, dst, true)?;
    let weights = dst.join("model.safetensors");
    fff_util::fs::write_with(&weights, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| io(&weights, e))?;
    let json = serde_json::to_string_pretty(&config).expect("a JSON value serializes");
    fff_util::fs::write_atomic(&dst.join("config.json"), json.as_bytes())
        .map_err(|e| io(&dst.join("config.json"), e))?;
    Ok(())
}

/// Copies every file and folder of `src` into `dst`, except, at the `top` level, the weights
/// and `config.json`.
fn copy_other_files(src: &Path, dst: &Path, top: bool) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| BertError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(src).map_err(|e| io(src, e))? {
        let entry = entry.map_err(|e| io(src, e))?;
        let name = entry.file_name();
        let from = entry.path();
        let to = dst.join(&name);
        if from.is_dir() {
            std::fs::create_dir_all(&to).map_err(|e| io(&to, e))?;
            copy_other_files(&from, &to, false)?;
        } else if !top || (!WEIGHT_FILES.iter().any(|w| name == *w) && name != "config.json") {
            std::fs::copy(&from, &to).map_err(|e| io(&to, e))?;
        }
    }
    Ok(())
}
