//! The crammedBERT / UltraFastBERT loader: the released checkpoint's tensor names (cramming's
//! `crammed_bert.py` as modified by UltraFastBERT) into the shared encoder. Pre-LN blocks,
//! attention without biases whose `query_key_value` rows are already interleaved per head,
//! scaled-sinusoidal positions, a final LayerNorm, and a tied MLM decoder or a classifier.

use crate::config::{BertConfig, IntermedType, PosEmbedding};
use crate::error::Result;
use crate::model::{
    layer_norm, linear, sinusoid_table, table, Attention, Block, ClsHead, Embedding, EncoderConfig,
    Family, Ffn, FfnMode, MlmHead, Model, NormPlacement,
};
use crate::ops::{Dense, SegmentAttention};
use crate::weights::check_layer_count;
use crate::weights::Weights;
use candle_core::Tensor;
use fastfeedforward::{Fff, FffConfig, WeightFormat};
use std::collections::HashMap;

/// The shared encoder's settings of a crammedBERT config.
fn encoder_config(c: &BertConfig) -> EncoderConfig {
    EncoderConfig {
        family: Family::Crammed,
        layers: c.layers,
        hidden: c.hidden,
        heads: c.heads,
        vocab_size: c.vocab_size,
        max_seq_length: c.max_seq_length,
        type_vocab_size: 0,
        placement: NormPlacement::Pre,
        labels: c.labels.clone(),
    }
}

/// Loads the embedding; also returns the word matrix as a tensor for the tied decoder.
fn embedding(w: &Weights, c: &BertConfig) -> Result<(Embedding, Tensor)> {
    let p = "encoder.embedding";
    let word_name = format!("{p}.word_embedding.weight");
    // MLM checkpoints may store the tied matrix only as `decoder.weight`.
    let word = match w.get_opt(&word_name, &[c.vocab_size, c.hidden])? {
        Some(t) => t,
        None if w.contains("decoder.weight") => {
            w.get("decoder.weight", &[c.vocab_size, c.hidden])?
        }
        None => w.get(&word_name, &[c.vocab_size, c.hidden])?,
    };
    let (n, h) = (c.max_seq_length, c.hidden);
    let positions = match c.pos_embedding {
        PosEmbedding::ScaledSinusoidal => {
            let name = format!("{p}.pos_embedding.scale_factor");
            let scale = w.scalar(&name, 1.0 / (h as f64).sqrt())? as f32;
            let mut table = sinusoid_table(n, h);
            table.iter_mut().for_each(|v| *v *= scale);
            Some(table)
        }
        PosEmbedding::Sinusoidal => Some(sinusoid_table(n, h)),
        PosEmbedding::Learned => Some(table(
            &w.get(&format!("{p}.pos_embedding.embedding.weight"), &[n, h])?,
        )?),
        PosEmbedding::None => None,
    };
    let norm = if c.embedding_norm {
        Some(layer_norm(w, &format!("{p}.norm"), h, c.norm_eps)?)
    } else {
        None
    };
    let emb = Embedding {
        word: table(&word)?,
        hidden: h,
        positions,
        token_types: None,
        norm,
    };
    Ok((emb, word))
}

fn attention(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Attention> {
    let h = c.hidden;
    let sa = format!("{prefix}.self_attention");
    Ok(Attention {
        qkv: linear(w, &format!("{sa}.query_key_value"), 3 * h, h, c.qkv_bias)?,
        dense: linear(w, &format!("{prefix}.dense"), h, h, c.use_bias)?,
        core: SegmentAttention {
            heads: c.heads,
            head_dim: c.head_dim(),
            // A buffer, so checkpoints saved without buffers lack it; it is always
            // 1/√head_dim.
            norm_factor: {
                let name = format!("{sa}.norm_factor");
                let default = 1.0 / (c.head_dim() as f64).sqrt();
                if w.contains(&name) {
                    w.scalar(&name, default)? as f32
                } else {
                    default as f32
                }
            },
        },
    })
}

fn ffn(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Ffn> {
    let h = c.hidden;
    Ok(match c.intermed {
        IntermedType::Fff { trees, depth } => {
            let config =
                FffConfig::new(h, h, depth, trees).with_activation(c.nonlin.as_activation());
            config.validate()?;
            let rows = config.total_nodes();
            let names = [
                (fastfeedforward::W_IN, vec![rows, h]),
                (fastfeedforward::B_IN, vec![rows]),
                (fastfeedforward::W_OUT, vec![h, rows]),
            ];
            let mut tensors = HashMap::new();
            for (name, shape) in names {
                let full = format!("{prefix}.{name}");
                let t = w.get(&full, &shape)?;
                tensors.insert(full, t);
            }
            let layer = Fff::from_tensors(config, &tensors, &format!("{prefix}."), w.path())?;
            Ffn::fff(layer, None)
        }
        IntermedType::Dense { width, glu } => Ffn::Dense {
            dense_in: linear(w, &format!("{prefix}.dense_in"), width, h, c.use_bias)?,
            dense_out: linear(
                w,
                &format!("{prefix}.dense_out"),
                h,
                if glu { width / 2 } else { width },
                c.use_bias,
            )?,
            act: c.nonlin,
            glu,
        },
    })
}

/// Builds the model from `config` and `weights` (tensor names as saved by the original).
pub(crate) fn load(config: &BertConfig, w: &Weights) -> Result<Model> {
    let c = config;
    let h = c.hidden;
    check_layer_count(
        w,
        "encoder.layers.",
        c.layers,
        "arch.num_transformer_layers",
    )?;
    let (embedding, word) = embedding(w, c)?;
    let blocks = (0..c.layers)
        .map(|i| {
            let p = format!("encoder.layers.{i}");
            Ok(Block {
                norm1: layer_norm(w, &format!("{p}.norm1"), h, c.norm_eps)?,
                attn: attention(w, &format!("{p}.attn"), c)?,
                norm2: layer_norm(w, &format!("{p}.norm2"), h, c.norm_eps)?,
                ffn: ffn(w, &format!("{p}.ffn"), c)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let final_norm = if c.final_norm {
        Some(layer_norm(w, "encoder.final_norm", h, c.norm_eps)?)
    } else {
        None
    };
    let cls = match (c.num_labels, &c.classification_head) {
        (Some(labels), Some(head)) if labels > 0 => Some(ClsHead {
            config: *head,
            pooler: if head.include_ff_layer {
                Some(linear(w, "pooler.dense", head.head_dim, h, true)?)
            } else {
                None
            },
            head: linear(w, "head", labels, head.head_dim, true)?,
        }),
        _ => None,
    };
    // A classification checkpoint has no decoder; an MLM one shares the word embedding.
    let mlm = if cls.is_none() {
        let transform = if c.head_transform {
            Some((
                linear(w, "prediction_head.dense", h, h, c.use_bias)?,
                c.nonlin,
                layer_norm(w, "prediction_head.norm", h, c.norm_eps)?,
            ))
        } else {
            None
        };
        let weight = w
            .get_opt("decoder.weight", &[c.vocab_size, h])?
            .unwrap_or(word);
        let bias = if c.decoder_bias {
            Some(w.get("decoder.bias", &[c.vocab_size])?)
        } else {
            None
        };
        Some(MlmHead {
            transform,
            decoder: Dense::from_tensors(&weight, bias.as_ref())?,
        })
    } else {
        None
    };
    Ok(Model {
        config: encoder_config(c),
        embedding,
        blocks,
        final_norm,
        mlm,
        cls,
        ffn_mode: FfnMode::default(),
        weight_format: WeightFormat::F32,
    })
}
