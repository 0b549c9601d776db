//! Hugging Face BERT (`model_type: "bert"`): its `config.json` and its checkpoints
//! (`BertModel`, `BertForMaskedLM`, `BertForSequenceClassification`, with or without the
//! `bert.` prefix) into the shared encoder. Post-LN blocks, learned absolute positions, token
//! types, biases everywhere, and separate `query`, `key`, `value` projections, whose rows are
//! interleaved per head at load time so that the attention kernel reads them as crammedBERT's.
//!
//! Settings that change the computation and that this crate does not run (relative positions,
//! decoders, cross-attention, tanh-approximated GELU, multi-label heads) are refused by name;
//! keys transformers itself does not read for a BERT encoder are ignored, as transformers
//! ignores them.

use crate::config::{ClassificationHead, Nonlin, Pooler};
use crate::error::{BertError, Result};
use crate::model::{
    layer_norm, linear, table, Attention, Block, ClsHead, Embedding, EncoderConfig, Family, Ffn,
    FfnMode, MlmHead, Model, NormPlacement,
};
use crate::ops::{Dense, LayerNorm, SegmentAttention};
use crate::section::Section;
use crate::weights::{check_layer_count, Weights};
use fastfeedforward::WeightFormat;
use serde_json::Value;
use std::path::Path;

/// The settings of a Hugging Face `BertConfig` that inference needs.
#[derive(Clone, Debug, PartialEq)]
pub struct HfBertConfig {
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `intermediate_size`: the FFN's width.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `type_vocab_size`.
    pub type_vocab_size: usize,
    /// `layer_norm_eps`.
    pub norm_eps: f64,
    /// `hidden_act`: the FFN's and the MLM transform's activation.
    pub act: Nonlin,
    /// `pad_token_id`, checked to lie in the vocabulary.
    pub pad_token_id: Option<u32>,
    /// Label names by index (`id2label`; `LABEL_0`, `LABEL_1` when absent, as transformers).
    pub labels: Vec<String>,
    /// FFF blocks in place of some layers' dense FFNs (the `fff` key), if any.
    pub fff: Option<FffBlocks>,
}

/// The `fff` key of a BERT `config.json`: the listed layers' FFNs (`intermediate.dense` and
/// `output.dense.weight`) are FFF layers of `trees` trees of depth `depth`, stored under
/// UltraFastBERT's names at `encoder.layer.{i}.fff.` (`linear_in.weight`, `linear_in.bias`,
/// `linear_out.weight`), the block's `output.dense.bias` kept as the FFF's output bias. With
/// `dense_branch` = `n` > 0 each such block also keeps a dense FFN of `n` neurons (the model's
/// `hidden_act`) that every token runs beside the trees, under the block's own FFN names
/// (`intermediate.dense` `[n, hidden]`, `output.dense.weight` `[hidden, n]`).
#[derive(Clone, Debug, PartialEq)]
pub struct FffBlocks {
    /// Trees per layer.
    pub trees: usize,
    /// Depth of each tree.
    pub depth: usize,
    /// The node activation.
    pub activation: fastfeedforward::Activation,
    /// The layers whose FFN is an FFF, ascending.
    pub layers: Vec<usize>,
    /// Neurons of the dense branch beside the trees (0: none).
    pub dense_branch: usize,
}

impl FffBlocks {
    /// The JSON object of the `fff` key.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "trees": self.trees,
            "depth": self.depth,
            "node_activation": self.activation.name(),
            "layers": self.layers,
        });
        if self.dense_branch > 0 {
            v["dense_branch"] = self.dense_branch.into();
        }
        v
    }
}

impl HfBertConfig {
    /// Parses the object of a `config.json` whose `model_type` is `bert`; `path` names it in
    /// errors.
    pub fn from_value(root: &Value, path: &Path) -> Result<HfBertConfig> {
        let mut c = Section::new(path, "", root)?;
        c.expect_str("model_type", &["bert"], None)?;
        c.expect_str("position_embedding_type", &["absolute"], Some("absolute"))?;
        c.expect_false("is_decoder")?;
        c.expect_false("add_cross_attention")?;
        match c.opt_str("problem_type")?.as_deref() {
            None | Some("single_label_classification") => {}
            Some(other) => {
                return Err(c.unsupported(
                    "problem_type",
                    other,
                    "single_label_classification (softmax over the labels)",
                ))
            }
        }
        let act_name = c.opt_str("hidden_act")?.unwrap_or_else(|| "gelu".into());
        let act = match act_name.as_str() {
            "gelu" => Nonlin::Gelu,
            "relu" => Nonlin::Relu,
            "tanh" => Nonlin::Tanh,
            other => {
                return Err(c.unsupported(
                    "hidden_act",
                    other,
                    "gelu (exact, erf), relu or tanh; tanh-approximated GELUs are not run",
                ))
            }
        };
        let layers = c.usize("num_hidden_layers")?;
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        let intermediate = c.usize("intermediate_size")?;
        let vocab_size = c.usize("vocab_size")?;
        let max_positions = c.opt_usize("max_position_embeddings")?.unwrap_or(512);
        let type_vocab_size = c.opt_usize("type_vocab_size")?.unwrap_or(2);
        let norm_eps = c.opt_f64("layer_norm_eps")?.unwrap_or(1e-12);
        for (key, v) in [
            ("num_hidden_layers", layers),
            ("hidden_size", hidden),
            ("intermediate_size", intermediate),
            ("vocab_size", vocab_size),
            ("max_position_embeddings", max_positions),
        ] {
            if v == 0 {
                return Err(c.error(key, "= 0 must be at least 1".into()));
            }
        }
        if heads == 0 || hidden % heads != 0 {
            return Err(c.error(
                "num_attention_heads",
                format!("= {heads} must divide hidden_size = {hidden}"),
            ));
        }
        if !(norm_eps.is_finite() && norm_eps > 0.0) {
            return Err(c.error(
                "layer_norm_eps",
                format!("= {norm_eps} must be a positive number"),
            ));
        }
        let pad_token_id = c.opt_usize("pad_token_id")?;
        if let Some(pad) = pad_token_id.filter(|&p| p >= vocab_size) {
            return Err(c.error(
                "pad_token_id",
                format!("= {pad} is outside the vocabulary of vocab_size = {vocab_size} tokens"),
            ));
        }
        let fff = match c.get("fff") {
            None => None,
            Some(v) => Some(parse_fff(v, path, layers, hidden)?),
        };
        let num_labels = c.opt_usize("num_labels")?;
        let labels = crate::section::parse_labels(path, root.get("id2label"), num_labels)?;
        let labels = if labels.is_empty() {
            vec!["LABEL_0".into(), "LABEL_1".into()]
        } else {
            labels
        };
        crate::config::check_sizes(
            path,
            &[
                ("num_hidden_layers", layers, 1),
                ("hidden_size", hidden, hidden.saturating_mul(4)),
                ("vocab_size", vocab_size, hidden),
                ("max_position_embeddings", max_positions, hidden),
                ("type_vocab_size", type_vocab_size, hidden),
                ("intermediate_size", intermediate, hidden),
                ("id2label", labels.len(), hidden),
            ],
        )?;
        Ok(HfBertConfig {
            layers,
            hidden,
            heads,
            intermediate,
            vocab_size,
            max_positions,
            type_vocab_size,
            norm_eps,
            act,
            pad_token_id: pad_token_id.map(|p| p as u32),
            labels,
            fff,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// The `fff` object: `trees`, `depth`, `node_activation`, optionally `layers` (all by
/// default) and `dense_branch` (0 by default), every key checked.
fn parse_fff(v: &Value, path: &Path, layers: usize, hidden: usize) -> Result<FffBlocks> {
    let mut f = Section::new(path, "fff", v)?;
    let trees = f.usize("trees")?;
    let depth = f.usize("depth")?;
    let act = f
        .opt_str("node_activation")?
        .ok_or_else(|| f.missing("node_activation"))?;
    let activation: fastfeedforward::Activation = act
        .parse()
        .map_err(|_| f.unsupported("node_activation", &act, "gelu, identity, relu or tanh"))?;
    let list = match f.get("layers") {
        None => (0..layers).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_u64().map(|i| i as usize).filter(|&i| i < layers))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                f.error(
                    "layers",
                    format!("= {v} must list layer indices below num_hidden_layers = {layers}"),
                )
            })?,
        Some(other) => return Err(f.error("layers", format!("= {other} must be a list"))),
    };
    let dense_branch = f.opt_usize("dense_branch")?.unwrap_or(0);
    if dense_branch.saturating_mul(hidden) > crate::config::MAX_ELEMENTS {
        return Err(f.error(
            "dense_branch",
            format!("= {dense_branch} neurons is too large"),
        ));
    }
    let mut sorted = list.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != list.len() {
        return Err(f.error("layers", "lists a layer twice".into()));
    }
    if trees == 0 || depth > fastfeedforward::MAX_DEPTH {
        return Err(f.error(
            "trees",
            format!(
                "trees = {trees}, depth = {depth}: expected at least 1 tree of depth 0..={}",
                fastfeedforward::MAX_DEPTH
            ),
        ));
    }
    let nodes = trees.checked_mul((2usize << depth) - 1);
    if nodes
        .and_then(|n| n.checked_mul(hidden))
        .is_none_or(|n| n > crate::config::MAX_ELEMENTS)
    {
        return Err(f.error(
            "trees",
            format!("{trees} trees of depth {depth} are too large"),
        ));
    }
    f.finish()?;
    Ok(FffBlocks {
        trees,
        depth,
        activation,
        layers: sorted,
        dense_branch,
    })
}

/// Layer `l`'s FFF block (see [`FffBlocks`]).
fn fff_block(w: &Weights, l: &str, c: &HfBertConfig, spec: &FffBlocks) -> Result<Ffn> {
    let h = c.hidden;
    let config = fastfeedforward::FffConfig::new(h, h, spec.depth, spec.trees)
        .with_activation(spec.activation);
    config.validate()?;
    let rows = config.total_nodes();
    let prefix = format!("{l}.fff.");
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in [
        (fastfeedforward::W_IN, vec![rows, h]),
        (fastfeedforward::B_IN, vec![rows]),
        (fastfeedforward::W_OUT, vec![h, rows]),
    ] {
        let full = format!("{prefix}{name}");
        tensors.insert(full.clone(), w.get(&full, &shape)?);
    }
    let layer = fastfeedforward::Fff::from_tensors(config, &tensors, &prefix, w.path())?;
    let bias = table(&w.get(&format!("{l}.output.dense.bias"), &[h])?)?;
    let branch = match spec.dense_branch {
        0 => None,
        n => Some(dense_as_forest(w, l, n, h, c.act.as_activation())?),
    };
    Ok(Ffn::fff_with_branch(layer, branch, Some(bias)))
}

/// The dense FFN at layer prefix `l` (`intermediate.dense` of `width` neurons in,
/// `output.dense.weight` out; its output bias apart) as `width` trees of depth 0 with `act`
/// nodes, tree `n` neuron `n`: it computes what the dense FFN computes.
pub(crate) fn dense_as_forest(
    w: &Weights,
    l: &str,
    width: usize,
    h: usize,
    act: fastfeedforward::Activation,
) -> Result<fastfeedforward::Fff> {
    let config = fastfeedforward::FffConfig::new(h, h, 0, width).with_activation(act);
    let tensors = std::collections::HashMap::from([
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
    Ok(fastfeedforward::Fff::from_tensors(
        config,
        &tensors,
        "",
        w.path(),
    )?)
}

/// LayerNorm at `prefix`, under today's names (`weight`, `bias`) or the `gamma` / `beta` of
/// checkpoints converted from TensorFlow, which transformers renames when it loads them.
fn norm(w: &Weights, prefix: &str, c: &HfBertConfig) -> Result<LayerNorm> {
    if !w.contains(&format!("{prefix}.weight")) && w.contains(&format!("{prefix}.gamma")) {
        return LayerNorm::from_tensors(
            &w.get(&format!("{prefix}.gamma"), &[c.hidden])?,
            &w.get(&format!("{prefix}.beta"), &[c.hidden])?,
            c.norm_eps,
        );
    }
    layer_norm(w, prefix, c.hidden, c.norm_eps)
}

/// `query`, `key` and `value` of `{prefix}` as one projection whose rows are each head's
/// `[q | k | v]` side by side, the layout [`SegmentAttention`] reads (a plain concatenation
/// would give all queries, then all keys, then all values).
fn fused_qkv(w: &Weights, prefix: &str, c: &HfBertConfig) -> Result<Dense> {
    let (h, d) = (c.hidden, c.head_dim());
    let mut parts = Vec::with_capacity(3);
    for part in ["query", "key", "value"] {
        let weight = table(&w.get(&format!("{prefix}.{part}.weight"), &[h, h])?)?;
        let bias = table(&w.get(&format!("{prefix}.{part}.bias"), &[h])?)?;
        parts.push((weight, bias));
    }
    let mut weight = Vec::with_capacity(3 * h * h);
    let mut bias = Vec::with_capacity(3 * h);
    for head in 0..c.heads {
        for (pw, pb) in &parts {
            weight.extend_from_slice(&pw[head * d * h..(head + 1) * d * h]);
            bias.extend_from_slice(&pb[head * d..(head + 1) * d]);
        }
    }
    Ok(Dense::new(weight, Some(bias), 3 * h, h))
}

/// The weight prefix of the encoder: `bert.` in task checkpoints (`BertForMaskedLM`, ...),
/// none in a saved `BertModel`.
pub(crate) fn encoder_prefix(w: &Weights) -> Result<&'static str> {
    const WORD: &str = "embeddings.word_embeddings.weight";
    if w.contains(&format!("bert.{WORD}")) {
        Ok("bert.")
    } else if w.contains(WORD) {
        Ok("")
    } else {
        Err(BertError::MissingTensor {
            path: w.path().to_path_buf(),
            name: format!("{WORD}` or `bert.{WORD}"),
            hint: format!(
                "is this a BERT checkpoint? The file has {} tensors{}",
                w.len(),
                w.names()
                    .first()
                    .map_or(String::new(), |n| format!(", such as `{n}`"))
            ),
        })
    }
}

/// Builds the model from `config` and a Hugging Face BERT checkpoint.
pub(crate) fn load(c: &HfBertConfig, w: &Weights) -> Result<Model> {
    let p = encoder_prefix(w)?;
    let h = c.hidden;
    check_layer_count(
        w,
        &format!("{p}encoder.layer."),
        c.layers,
        "num_hidden_layers",
    )?;
    let e = format!("{p}embeddings");
    let word = w.get(&format!("{e}.word_embeddings.weight"), &[c.vocab_size, h])?;
    let embedding = Embedding {
        word: table(&word)?,
        hidden: h,
        positions: Some(table(&w.get(
            &format!("{e}.position_embeddings.weight"),
            &[c.max_positions, h],
        )?)?),
        token_types: match c.type_vocab_size {
            0 => None,
            types => Some(table(
                &w.get(&format!("{e}.token_type_embeddings.weight"), &[types, h])?,
            )?),
        },
        norm: Some(norm(w, &format!("{e}.LayerNorm"), c)?),
    };
    let blocks = (0..c.layers)
        .map(|i| {
            let l = format!("{p}encoder.layer.{i}");
            Ok(Block {
                attn: Attention {
                    qkv: fused_qkv(w, &format!("{l}.attention.self"), c)?,
                    dense: linear(w, &format!("{l}.attention.output.dense"), h, h, true)?,
                    core: SegmentAttention {
                        heads: c.heads,
                        head_dim: c.head_dim(),
                        norm_factor: (1.0 / (c.head_dim() as f64).sqrt()) as f32,
                    },
                },
                norm1: norm(w, &format!("{l}.attention.output.LayerNorm"), c)?,
                ffn: match &c.fff {
                    Some(spec) if spec.layers.contains(&i) => fff_block(w, &l, c, spec)?,
                    _ => Ffn::Dense {
                        dense_in: linear(
                            w,
                            &format!("{l}.intermediate.dense"),
                            c.intermediate,
                            h,
                            true,
                        )?,
                        dense_out: linear(
                            w,
                            &format!("{l}.output.dense"),
                            h,
                            c.intermediate,
                            true,
                        )?,
                        act: c.act,
                        glu: false,
                    },
                },
                norm2: norm(w, &format!("{l}.output.LayerNorm"), c)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Heads by the tensors present: a saved BertModel has neither.
    let mlm = if w.contains("cls.predictions.transform.dense.weight") {
        let t = "cls.predictions.transform";
        // The decoder is tied to the word embedding; checkpoints may or may not store it.
        let decoder = w
            .get_opt("cls.predictions.decoder.weight", &[c.vocab_size, h])?
            .unwrap_or(word);
        let bias_name = ["cls.predictions.bias", "cls.predictions.decoder.bias"]
            .into_iter()
            .find(|n| w.contains(n))
            .unwrap_or("cls.predictions.bias");
        Some(MlmHead {
            transform: Some((
                linear(w, &format!("{t}.dense"), h, h, true)?,
                c.act,
                norm(w, &format!("{t}.LayerNorm"), c)?,
            )),
            decoder: Dense::from_tensors(&decoder, Some(&w.get(bias_name, &[c.vocab_size])?))?,
        })
    } else {
        None
    };
    let cls = if w.contains("classifier.weight") {
        Some(ClsHead {
            config: ClassificationHead {
                pooler: Pooler::ZeroIndex,
                include_ff_layer: true,
                head_dim: h,
                nonlin: Nonlin::Tanh,
            },
            pooler: Some(linear(w, &format!("{p}pooler.dense"), h, h, true)?),
            head: linear(w, "classifier", c.labels.len(), h, true)?,
        })
    } else {
        None
    };
    Ok(Model {
        config: EncoderConfig {
            family: Family::Bert,
            layers: c.layers,
            hidden: h,
            heads: c.heads,
            vocab_size: c.vocab_size,
            max_seq_length: c.max_positions,
            type_vocab_size: c.type_vocab_size,
            placement: NormPlacement::Post,
            labels: match cls {
                Some(_) => c.labels.clone(),
                None => Vec::new(),
            },
        },
        embedding,
        blocks,
        final_norm: None,
        mlm,
        cls,
        ffn_mode: FfnMode::default(),
        weight_format: WeightFormat::F32,
    })
}
