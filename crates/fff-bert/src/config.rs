//! The crammedBERT settings, read from the `arch` object of an HF-style `config.json`.
//!
//! Every key of `arch` is either understood, or known to matter only for training (dropout,
//! init, loss) and skipped; any other key is an error, so that a checkpoint using a variant this
//! implementation does not run (rotary embeddings, another attention type, ...) fails loudly
//! instead of producing wrong numbers.

use crate::error::{BertError, Result};
use crate::section::Section;
use serde_json::Value;
use std::path::Path;

/// The feedforward block of each transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntermedType {
    /// UltraFastBERT's FFF: `trees` trees of depth `depth`.
    Fff {
        /// Number of trees (`intermed_size` in the config).
        trees: usize,
        /// Tree depth (`intermed_depth`).
        depth: usize,
    },
    /// crammedBERT's dense FF of width `width` (`intermed_size`); with `glu` the nonlinearity
    /// gates half of the width with the other half.
    Dense {
        /// Width of `dense_in`'s output.
        width: usize,
        /// Whether the nonlinearity is a GLU (`nonlin: "GELUglu"`).
        glu: bool,
    },
}

/// Nonlinearities the config may name (`nonlin`, `classification_head.nonlin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nonlin {
    /// Exact (erf) GELU, PyTorch's `nn.GELU()` default.
    Gelu,
    /// `nn.ReLU`.
    Relu,
    /// `nn.Tanh`.
    Tanh,
    /// `nn.Identity`.
    Identity,
}

impl Nonlin {
    fn parse(name: &str) -> Option<Nonlin> {
        Some(match name {
            "GELU" => Nonlin::Gelu,
            "ReLU" => Nonlin::Relu,
            "Tanh" => Nonlin::Tanh,
            "Identity" => Nonlin::Identity,
            _ => return None,
        })
    }

    /// The same function as the FFF crate's node activation.
    pub fn as_activation(self) -> fastfeedforward::Activation {
        match self {
            Nonlin::Gelu => fastfeedforward::Activation::Gelu,
            Nonlin::Relu => fastfeedforward::Activation::Relu,
            Nonlin::Tanh => fastfeedforward::Activation::Tanh,
            Nonlin::Identity => fastfeedforward::Activation::Identity,
        }
    }
}

/// Positional embedding schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PosEmbedding {
    /// A learned scalar times the fixed sinusoid table (`scale_factor`).
    ScaledSinusoidal,
    /// The fixed sinusoid table.
    Sinusoidal,
    /// A learned table `pos_embedding.embedding.weight`.
    Learned,
    /// No positional embedding.
    None,
}

/// Pooling of the classification head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooler {
    /// The first token (`zero_index`).
    ZeroIndex,
    /// Mean over the sequence (`avg`; like the original, padded positions included).
    Avg,
    /// Elementwise max over the sequence (`max`).
    Max,
}

/// The classification head (`classification_head` in the config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassificationHead {
    /// Pooling scheme.
    pub pooler: Pooler,
    /// Whether a `pooler.dense` layer (hidden → head_dim) precedes the nonlinearity.
    pub include_ff_layer: bool,
    /// Width of the pooled vector.
    pub head_dim: usize,
    /// Nonlinearity after the pooler's dense layer.
    pub nonlin: Nonlin,
}

/// Model settings, as far as inference needs them.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Number of transformer blocks.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence the positional table covers.
    pub max_seq_length: usize,
    /// Feedforward block.
    pub intermed: IntermedType,
    /// Nonlinearity of the feedforward block.
    pub nonlin: Nonlin,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// Positional embedding.
    pub pos_embedding: PosEmbedding,
    /// Whether the embedding is followed by a LayerNorm.
    pub embedding_norm: bool,
    /// Whether `query_key_value` has a bias.
    pub qkv_bias: bool,
    /// Whether the attention output projection and dense FF layers have biases.
    pub use_bias: bool,
    /// Whether a final LayerNorm follows the last block.
    pub final_norm: bool,
    /// Whether the MLM decoder has a bias.
    pub decoder_bias: bool,
    /// Whether the MLM head has the dense + nonlin + norm transform before the decoder.
    pub head_transform: bool,
    /// Number of labels of a sequence-classification checkpoint.
    pub num_labels: Option<usize>,
    /// Classification head settings.
    pub classification_head: Option<ClassificationHead>,
    /// Label names by index (`id2label`), when the config has them.
    pub labels: Vec<String>,
}

impl BertConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| BertError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the model config: {e}"),
        })?;
        Self::from_json(&text, path)
    }

    /// Parses the text of `config.json`; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<BertConfig> {
        let root: Value = serde_json::from_str(text).map_err(|e| BertError::Io {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let root = root.as_object().ok_or_else(|| BertError::Config {
            path: path.to_path_buf(),
            key: "(top level)".into(),
            message: "must be a JSON object".into(),
        })?;
        // The HF wrapper adds many top-level keys of its own; the model lives in `arch`.
        let arch = root.get("arch").ok_or_else(|| BertError::Config {
            path: path.to_path_buf(),
            key: "arch".into(),
            message: "is missing: this is not a crammedBERT / UltraFastBERT config".into(),
        })?;
        let mut a = Section::new(path, "arch", arch)?;
        let config = parse_arch(&mut a, path)?;
        a.finish()?;
        let labels = crate::section::parse_labels(path, root.get("id2label"), config.num_labels)?;
        Ok(BertConfig { labels, ..config })
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// A full-size UltraFastBERT-1x11 (`trees`=1, `depth`=11) or, with `IntermedType::Dense`,
    /// a crammedBERT of the same shape; used by the benchmark with random weights.
    pub fn base(intermed: IntermedType, vocab_size: usize) -> BertConfig {
        BertConfig {
            layers: 16,
            hidden: 768,
            heads: 12,
            vocab_size,
            max_seq_length: 128,
            intermed,
            nonlin: Nonlin::Gelu,
            norm_eps: 1e-12,
            pos_embedding: PosEmbedding::ScaledSinusoidal,
            embedding_norm: true,
            qkv_bias: false,
            use_bias: false,
            final_norm: true,
            decoder_bias: false,
            head_transform: false,
            num_labels: None,
            classification_head: None,
            labels: Vec::new(),
        }
    }
}

fn parse_arch(a: &mut Section<'_>, path: &Path) -> Result<BertConfig> {
    // Settings that only matter for training.
    a.skip(&[
        "architectures",
        "hidden_dropout_prob",
        "sparse_prediction",
        "loss",
        "objective_layout",
        "init",
        "tie_weights",
    ]);
    a.expect_str("norm", &["LayerNorm"], Some("LayerNorm"))?;
    a.expect_str("norm_scheme", &["pre"], Some("pre"))?;
    let freq = a.opt_usize("ffn_layer_frequency")?.unwrap_or(1);
    if freq != 1 {
        return Err(a.unsupported("ffn_layer_frequency", &freq.to_string(), "1"));
    }
    let layers = a.usize("num_transformer_layers")?;
    let hidden = a.usize("hidden_size")?;
    // Checked here, before `embedding_dim` is compared with it, so the message names this key.
    if hidden == 0 {
        return Err(a.error("hidden_size", "= 0 must be at least 1".into()));
    }
    let norm_eps = a.opt_f64("norm_eps")?.unwrap_or(1e-12);
    let nonlin_name = a.opt_str("nonlin")?.unwrap_or_else(|| "GELU".into());
    let (nonlin_base, glu) = match nonlin_name.strip_suffix("glu") {
        Some(base) => (base.to_string(), true),
        None => (nonlin_name.clone(), false),
    };
    let nonlin = Nonlin::parse(&nonlin_base).ok_or_else(|| {
        a.unsupported(
            "nonlin",
            &nonlin_name,
            "GELU, ReLU, Tanh, Identity, or GELUglu/ReLUglu for dense FF",
        )
    })?;
    let intermed_type = a.opt_str("intermed_type")?;
    let intermed_size = a.usize("intermed_size")?;
    if intermed_size == 0 {
        return Err(a.error(
            "intermed_size",
            "= 0 must be at least 1 (the FF width, or the number of FFF trees)".into(),
        ));
    }
    let depth = a.opt_usize("intermed_depth")?;
    if let Some(d) = depth.filter(|&d| d > fastfeedforward::MAX_DEPTH) {
        return Err(a.error(
            "intermed_depth",
            format!(
                "= {d} is too deep: expected 0..={}",
                fastfeedforward::MAX_DEPTH
            ),
        ));
    }
    let intermed = match intermed_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("fff") => {
            if glu {
                return Err(a.unsupported(
                    "nonlin",
                    &nonlin_name,
                    "a non-GLU nonlinearity for fff",
                ));
            }
            let depth = depth.ok_or_else(|| a.missing("intermed_depth"))?;
            IntermedType::Fff {
                trees: intermed_size,
                depth,
            }
        }
        // The original builds a dense FF when `intermed_type` is absent.
        Some("ff") | None => IntermedType::Dense {
            width: intermed_size,
            glu,
        },
        Some(_) => {
            return Err(a.unsupported(
                "intermed_type",
                intermed_type.as_deref().unwrap_or_default(),
                "\"fff\" or \"ff\"",
            ))
        }
    };
    if let IntermedType::Dense { width, glu: true } = intermed {
        if width % 2 != 0 {
            return Err(a.unsupported(
                "intermed_size",
                &width.to_string(),
                "an even width for a GLU",
            ));
        }
    }
    let use_bias = a.opt_bool("use_bias")?.unwrap_or(false);
    let final_norm = a.opt_bool("final_norm")?.unwrap_or(true);
    let decoder_bias = a.opt_bool("decoder_bias")?.unwrap_or(false);
    let head_transform = !a.opt_bool("skip_head_transform")?.unwrap_or(true);

    // embedding
    let mut e = a.section("embedding")?;
    e.skip(&["dropout_prob", "stable_low_precision"]);
    let vocab_size = e.usize("vocab_size")?;
    if let Some(pad) = e.opt_usize("pad_token_id")?.filter(|&p| p >= vocab_size) {
        return Err(e.error(
            "pad_token_id",
            format!("= {pad} is outside the vocabulary of vocab_size = {vocab_size} tokens"),
        ));
    }
    let max_seq_length = e.usize("max_seq_length")?;
    let pos_name = e
        .opt_str("pos_embedding")?
        .unwrap_or_else(|| "scaled-sinusoidal".into());
    let pos_embedding = match pos_name.as_str() {
        "scaled-sinusoidal" => PosEmbedding::ScaledSinusoidal,
        "sinusoidal" => PosEmbedding::Sinusoidal,
        "learned" => PosEmbedding::Learned,
        "none" => PosEmbedding::None,
        other => {
            return Err(e.unsupported(
                "pos_embedding",
                other,
                "scaled-sinusoidal, sinusoidal, learned or none",
            ))
        }
    };
    if let Some(dim) = e.opt_usize("embedding_dim")? {
        if dim != hidden {
            return Err(e.unsupported(
                "embedding_dim",
                &dim.to_string(),
                &format!("{hidden} (= hidden_size)"),
            ));
        }
    }
    let embedding_norm = e.opt_bool("normalization")?.unwrap_or(true);
    e.finish()?;

    // attention
    let mut t = a.section("attention")?;
    t.skip(&[
        "dropout_prob",
        "seq_op_in_fp32",
        "high_level_fusion",
        "low_level_fusion",
    ]);
    t.expect_str("type", &["self-attention"], Some("self-attention"))?;
    t.expect_str("sequence_op", &["torch-softmax"], Some("torch-softmax"))?;
    t.expect_false("causal_attention")?;
    t.expect_false("skip_output_projection")?;
    t.expect_false("rotary_embedding")?;
    let heads = t.usize("num_attention_heads")?;
    let qkv_bias = t.opt_bool("qkv_bias")?.unwrap_or(false);
    t.finish()?;
    for (key, v) in [
        ("arch.hidden_size", hidden),
        ("arch.embedding.vocab_size", vocab_size),
        ("arch.embedding.max_seq_length", max_seq_length),
    ] {
        if v == 0 {
            return Err(BertError::Config {
                path: path.to_path_buf(),
                key: key.into(),
                message: "= 0 must be at least 1".into(),
            });
        }
    }
    if heads == 0 || hidden % heads != 0 {
        return Err(BertError::Config {
            path: path.to_path_buf(),
            key: "arch.attention.num_attention_heads".into(),
            message: format!("= {heads} must divide hidden_size = {hidden}"),
        });
    }

    let num_labels = a.opt_usize("num_labels")?;
    let classification_head = if a.has("classification_head") {
        let mut c = a.section("classification_head")?;
        c.skip(&["classifier_dropout"]);
        let pooler_name = c.opt_str("pooler")?.unwrap_or_else(|| "zero_index".into());
        let pooler = match pooler_name.as_str() {
            "zero_index" => Pooler::ZeroIndex,
            "avg" => Pooler::Avg,
            "max" => Pooler::Max,
            other => return Err(c.unsupported("pooler", other, "zero_index, avg or max")),
        };
        let include_ff_layer = c.opt_bool("include_ff_layer")?.unwrap_or(true);
        let head_dim = c.opt_usize("head_dim")?.unwrap_or(hidden);
        let nl = c.opt_str("nonlin")?.unwrap_or_else(|| "Tanh".into());
        let nonlin = Nonlin::parse(&nl)
            .ok_or_else(|| c.unsupported("nonlin", &nl, "GELU, ReLU, Tanh or Identity"))?;
        c.finish()?;
        Some(ClassificationHead {
            pooler,
            include_ff_layer,
            head_dim: if include_ff_layer { head_dim } else { hidden },
            nonlin,
        })
    } else {
        None
    };
    check_sizes(
        path,
        &[
            ("arch.num_transformer_layers", layers, 1),
            ("arch.hidden_size", hidden, hidden.saturating_mul(3)),
            ("arch.embedding.vocab_size", vocab_size, hidden),
            ("arch.embedding.max_seq_length", max_seq_length, hidden),
            ("arch.num_labels", num_labels.unwrap_or(0), hidden),
            (
                "arch.intermed_size",
                match intermed {
                    IntermedType::Dense { width, .. } => width,
                    IntermedType::Fff { .. } => 0,
                },
                hidden,
            ),
        ],
    )?;
    if let IntermedType::Fff { trees, depth } = intermed {
        // depth ≤ MAX_DEPTH was checked above, so the shift cannot overflow.
        let nodes = trees.checked_mul((2usize << depth) - 1);
        if nodes
            .and_then(|n| n.checked_mul(hidden))
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(BertError::Config {
                path: path.to_path_buf(),
                key: "arch.intermed_size".into(),
                message: format!(
                    "= {trees} trees of depth {depth} is too large: {} nodes of {hidden} floats \
                     exceed the limit of {MAX_ELEMENTS} elements per matrix",
                    nodes.map_or_else(|| "more than 2^64".into(), |n| n.to_string())
                ),
            });
        }
    }
    if !(norm_eps.is_finite() && norm_eps > 0.0) {
        return Err(BertError::Config {
            path: path.to_path_buf(),
            key: "arch.norm_eps".into(),
            message: format!("= {norm_eps} must be a positive number"),
        });
    }
    Ok(BertConfig {
        layers,
        hidden,
        heads,
        vocab_size,
        max_seq_length,
        intermed,
        nonlin,
        norm_eps,
        pos_embedding,
        embedding_norm,
        qkv_bias,
        use_bias,
        final_norm,
        decoder_bias,
        head_transform,
        num_labels,
        classification_head,
        labels: Vec::new(),
    })
}

/// Most elements one size may span, alone or times the row width it multiplies: 2^31 `f32`s
/// (8 GiB) per matrix, past every released model and small enough to refuse before allocating.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Checks each `(key, value, row width)`: `value · row width` must stay within [`MAX_ELEMENTS`].
pub(crate) fn check_sizes(path: &Path, sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(key, value, width) in sizes {
        if value
            .checked_mul(width.max(1))
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(BertError::Config {
                path: path.to_path_buf(),
                key: key.into(),
                message: format!(
                    "= {value} is too large: {value} rows of {width} floats exceed the limit of \
                     {MAX_ELEMENTS} elements per matrix"
                ),
            });
        }
    }
    Ok(())
}
