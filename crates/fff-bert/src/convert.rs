//! BERT checkpoints with FFF blocks: a layer's dense FFN written as a forest of depth-0 trees
//! (one tree per neuron, which computes exactly what the dense FFN computes, the starting point
//! of compressing it), and a model folder written with some layers' FFNs replaced by FFF layers
//! (the kept tensors under their Hugging Face names, the FFF ones under UltraFastBERT's, the FFF
//! shape in `config.json`'s `fff` key; see [`FffBlocks`]), loadable everywhere a model goes.

use crate::error::{BertError, Result};
use crate::hf_bert::{encoder_prefix, FffBlocks, HfBertConfig};
use crate::weights::Weights;
use candle_core::{Device, Tensor};
use fastfeedforward::{Activation, ConditionalLayer, Fff};
use std::collections::HashMap;
use std::path::Path;

/// Weight files of a model folder, replaced by the written `model.safetensors`.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Layer `layer`'s dense FFN of a BERT checkpoint as a forest of `intermediate_size` trees of
/// depth 0 with `act` nodes: tree `n` is neuron `n` (`intermediate.dense` row `n` in, column
/// `n` of `output.dense.weight` out), so with the checkpoint's own activation it computes the
/// dense FFN exactly (less its output bias, which the FFF block keeps).
pub fn ffn_as_forest(c: &HfBertConfig, w: &Weights, layer: usize, act: Activation) -> Result<Fff> {
    let l = format!("{}encoder.layer.{layer}", encoder_prefix(w)?);
    crate::hf_bert::dense_as_forest(w, &l, c.intermediate, c.hidden, act)
}

/// A layer's dense FFN as the teacher of a compression: the forest of
/// [`ffn_as_forest`] with the checkpoint's own activation, and the output bias.
pub fn teacher_ffn(c: &HfBertConfig, w: &Weights, layer: usize) -> Result<(Fff, Vec<f32>)> {
    let forest = ffn_as_forest(c, w, layer, c.act.as_activation())?;
    let l = format!("{}encoder.layer.{layer}", encoder_prefix(w)?);
    let bias = w
        .get(&format!("{l}.output.dense.bias"), &[c.hidden])?
        .to_vec1::<f32>()?;
    Ok((forest, bias))
}

/// The prefix of a BERT checkpoint's encoder tensors: `bert.` in a checkpoint saved with a
/// head, empty in a bare `BertModel`'s.
pub fn encoder_prefix_of(w: &Weights) -> Result<String> {
    Ok(encoder_prefix(w)?.to_string())
}

/// One layer written by [`write_with_fff`] or [`write_with_dense`].
#[derive(Clone, Copy)]
pub struct WrittenLayer<'a> {
    /// The layer's index.
    pub index: usize,
    /// Its FFF (for [`write_with_dense`], a forest of depth-0 trees).
    pub fff: &'a Fff,
    /// The dense branch beside the FFF (depth-0 trees), where the spec has one.
    pub branch: Option<&'a Fff>,
    /// The bias added to the FFN's output (`output.dense.bias`).
    pub out_bias: &'a [f32],
}

/// Writes the model folder `src` to `dst` with the FFNs of the layers in `layers` replaced by
/// FFF layers (all of `spec`'s shape, with its dense branch where it has one) and their output
/// biases: `model.safetensors` (written to a temporary name and renamed), `config.json` with
/// `spec` under `fff`, and every other file and folder of `src` (tokenizer,
/// sentence-transformers files) copied. `retuned` gives kept tensors new values (by their
/// names in `src`, e.g. LayerNorms tuned while compressing).
pub fn write_with_fff(
    src: &Path,
    dst: &Path,
    spec: &FffBlocks,
    layers: &[WrittenLayer<'_>],
    retuned: &HashMap<String, Tensor>,
) -> Result<()> {
    let listed: Vec<usize> = layers.iter().map(|l| l.index).collect();
    if listed != spec.layers {
        return Err(BertError::Input(format!(
            "FFF layers {listed:?} do not match the config's layers {:?}",
            spec.layers
        )));
    }
    // A dense branch runs the model's own activation, as its loader reads it.
    let model_act = match spec.dense_branch {
        0 => None,
        _ => match crate::ModelConfig::from_file(&src.join("config.json"))? {
            crate::ModelConfig::Bert(c) => Some(c.act.as_activation()),
            crate::ModelConfig::Crammed(_) => {
                return Err(BertError::Input(
                    "a dense branch is written for Hugging Face BERT models only".into(),
                ))
            }
        },
    };
    for l in layers {
        let (i, c) = (l.index, l.fff.config());
        let branch = l.branch.map(|b| *b.config());
        let width = branch.map_or(0, |b| b.trees);
        let fits = branch.is_none_or(|b| b.depth == 0 && Some(b.activation) == model_act);
        if width != spec.dense_branch || !fits {
            return Err(BertError::Input(format!(
                "layer {i}: a dense branch of {width} neurons{}; the config's has {} (depth-0 \
                 trees with the model's hidden_act)",
                branch.map_or(String::new(), |b| format!(
                    ", depth {} ({})",
                    b.depth,
                    b.activation.name()
                )),
                spec.dense_branch
            )));
        }
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
    let json = spec.to_json();
    write_replaced(
        src,
        dst,
        layers,
        retuned,
        |config| config["fff"] = json,
        |at, l| {
            let mut out = Vec::new();
            for (name, t) in l.fff.named_tensors(&format!("{at}fff."))? {
                out.push((name, t.to_device(&Device::Cpu)?));
            }
            if let Some(b) = l.branch {
                out.extend(dense_tensors(at, b)?);
            }
            Ok(out)
        },
    )
}

/// A forest of depth-0 trees as a BERT block's dense FFN tensors (`intermediate.dense`,
/// `output.dense.weight`) at the layer prefix `at`.
fn dense_tensors(at: &str, fff: &Fff) -> Result<Vec<(String, Tensor)>> {
    Ok(vec![
        (
            format!("{at}intermediate.dense.weight"),
            fff.w_in().to_device(&Device::Cpu)?,
        ),
        (
            format!("{at}intermediate.dense.bias"),
            fff.b_in().to_device(&Device::Cpu)?,
        ),
        (
            format!("{at}output.dense.weight"),
            fff.w_out_t().t()?.contiguous()?,
        ),
    ])
}

/// Writes the model folder `src` to `dst` with every layer's FFN replaced by the depth-0
/// forest in `layers` written as a plain, narrower dense FFN (`intermediate_size` = the
/// forest's tree count): the form a pruned FFN takes, loadable by any BERT implementation.
/// Every layer must be listed, with forests of one width whose node activation is the
/// model's `hidden_act`. `retuned` as for [`write_with_fff`].
pub fn write_with_dense(
    src: &Path,
    dst: &Path,
    layers: &[WrittenLayer<'_>],
    retuned: &HashMap<String, Tensor>,
) -> Result<()> {
    let c = match crate::ModelConfig::from_file(&src.join("config.json"))? {
        crate::ModelConfig::Bert(c) => c,
        crate::ModelConfig::Crammed(_) => {
            return Err(BertError::Input(
                "a narrower dense FFN is written for Hugging Face BERT models only".into(),
            ))
        }
    };
    let listed: Vec<usize> = layers.iter().map(|l| l.index).collect();
    if listed != (0..c.layers).collect::<Vec<_>>() {
        return Err(BertError::Input(format!(
            "a dense FFN is written for every layer (0..{}); got layers {listed:?}",
            c.layers
        )));
    }
    let width = layers.first().map_or(0, |l| l.fff.config().trees);
    for l in layers {
        let (i, fc) = (l.index, l.fff.config());
        if l.branch.is_some() {
            return Err(BertError::Input(format!(
                "layer {i}: a dense FFN is written without a branch"
            )));
        }
        if fc.depth != 0 || fc.trees != width || fc.activation != c.act.as_activation() {
            return Err(BertError::Input(format!(
                "layer {i}: a dense FFN is written from a forest of {width} depth-0 trees with \
                 the model's activation ({}); got {} trees of depth {} ({})",
                c.act.as_activation().name(),
                fc.trees,
                fc.depth,
                fc.activation.name()
            )));
        }
    }
    write_replaced(
        src,
        dst,
        layers,
        retuned,
        |config| config["intermediate_size"] = width.into(),
        |at, l| dense_tensors(at, l.fff),
    )
}

/// The writer under [`write_with_fff`] and [`write_with_dense`]: every tensor of `src` but the
/// listed layers' FFN weights (the `retuned` ones with their new values), plus
/// `tensors(layer prefix, layer)` and the new output biases; `edit` changes `config.json`.
fn write_replaced(
    src: &Path,
    dst: &Path,
    layers: &[WrittenLayer<'_>],
    retuned: &HashMap<String, Tensor>,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl Fn(&str, &WrittenLayer<'_>) -> Result<Vec<(String, Tensor)>>,
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
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| BertError::Io {
        path: config_path.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    edit(&mut config);
    let w = Weights::from_dir(src)?.with_replaced(retuned.clone())?;
    let p = encoder_prefix(&w)?;
    let replaced = |name: &str| {
        layers.iter().any(|l| {
            let l = format!("{p}encoder.layer.{}.", l.index);
            name.strip_prefix(&l).is_some_and(|rest| {
                rest.starts_with("intermediate.dense.") || rest.starts_with("output.dense.")
            })
        })
    };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for name in w.names() {
        if !replaced(name) {
            out.insert(name.to_string(), w.get_as_stored(name)?);
        }
    }
    for l in layers {
        let (i, bias) = (l.index, l.out_bias);
        let at = format!("{p}encoder.layer.{i}.");
        let hidden = l.fff.config().output_width;
        if bias.len() != hidden {
            return Err(BertError::Input(format!(
                "layer {i}: an output bias of {} values for a hidden size of {hidden}",
                bias.len()
            )));
        }
        for (name, t) in tensors(&at, l)? {
            out.insert(name, t);
        }
        let bias = Tensor::from_slice(bias, hidden, &Device::Cpu)?;
        out.insert(format!("{at}output.dense.bias"), bias);
    }
    std::fs::create_dir_all(dst).map_err(|e| io(dst, e))?;
    copy_other_files(src, dst, true)?;
    let weights = dst.join("model.safetensors");
    fff_util::fs::write_with(&weights, |tmp| {
        candle_core::safetensors::save(&out, tmp).map_err(std::io::Error::other)
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
