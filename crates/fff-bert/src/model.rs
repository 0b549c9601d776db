//! crammedBERT with FFF feedforward blocks (UltraFastBERT), for inference.
//!
//! The layout follows the original PyTorch code (cramming's `crammed_bert.py` as modified by
//! UltraFastBERT): pre-LN blocks `h += Attn(LN1(h)); h += FFN(LN2(h))`, attention without
//! biases whose `query_key_value` rows are interleaved per head, scaled-sinusoidal positions,
//! a final LayerNorm, and a tied MLM decoder. The FFN is either a dense FF, or an FFF run by
//! this project's conditional kernel (or, for comparison, by the dense masked reference that
//! the original code uses).

use crate::config::{BertConfig, ClassificationHead, IntermedType, Nonlin, Pooler, PosEmbedding};
use crate::error::{BertError, Result};
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;
use fastfeedforward::{Fff, FffConfig, InferOptions, Workspace};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

/// How FFF blocks are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FfnMode {
    /// The conditional kernel: `K·(D+1)` neurons per token.
    #[default]
    Kernel,
    /// The dense masked reference: all `K·M` neurons computed, all but the path masked (what
    /// the original PyTorch code does).
    Masked,
}

impl FromStr for FfnMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "kernel" | "fff" => Ok(FfnMode::Kernel),
            "masked" => Ok(FfnMode::Masked),
            other => Err(format!(
                "unknown FFN mode `{other}` (expected kernel or masked)"
            )),
        }
    }
}

/// A batch of token ids with its attention mask, both `[batch, seq]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Token ids, padded.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u8>,
    /// Number of sequences.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
}

impl Batch {
    /// Pads `sequences` with `pad_id` to the longest one.
    pub fn pad(sequences: &[Vec<u32>], pad_id: u32) -> Batch {
        let seq = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq);
        let mut mask = Vec::with_capacity(sequences.len() * seq);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.resize(ids.len() + seq - s.len(), pad_id);
            mask.extend(std::iter::repeat_n(1u8, s.len()));
            mask.resize(mask.len() + seq - s.len(), 0);
        }
        Batch {
            ids,
            mask,
            batch: sequences.len(),
            seq,
        }
    }

    /// Number of real (unpadded) tokens of sequence `b`.
    pub fn length(&self, b: usize) -> usize {
        self.mask[b * self.seq..(b + 1) * self.seq]
            .iter()
            .filter(|&&m| m != 0)
            .count()
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(w: &Weights, prefix: &str, hidden: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[hidden])?,
            bias: w.get(&format!("{prefix}.bias"), &[hidden])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

fn linear(w: &Weights, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let weight = w.get(&format!("{prefix}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

fn apply(nonlin: Nonlin, x: &Tensor) -> Result<Tensor> {
    Ok(nonlin.as_activation().apply_tensor(x)?)
}

/// The sinusoid table of the original: sin on even features, cos on odd ones, computed in f32
/// as PyTorch does.
pub fn sinusoid_table(positions: usize, hidden: usize) -> Vec<f32> {
    let scale = -(10000f32).ln() / hidden as f32;
    let mut table = vec![0f32; positions * hidden];
    for p in 0..positions {
        for i in (0..hidden).step_by(2) {
            let angle = p as f32 * (i as f32 * scale).exp();
            table[p * hidden + i] = angle.sin();
            if i + 1 < hidden {
                table[p * hidden + i + 1] = angle.cos();
            }
        }
    }
    table
}

struct Embedding {
    word: Tensor,
    /// Positional rows `[max_seq_length, hidden]`, already scaled; `None` without positions.
    positions: Option<Tensor>,
    norm: Option<LayerNorm>,
}

impl Embedding {
    fn load(w: &Weights, c: &BertConfig) -> Result<Self> {
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
        let table = || Tensor::from_vec(sinusoid_table(n, h), (n, h), &Device::Cpu);
        let positions = match c.pos_embedding {
            PosEmbedding::ScaledSinusoidal => {
                let name = format!("{p}.pos_embedding.scale_factor");
                let scale = w.scalar(&name, 1.0 / (h as f64).sqrt())?;
                Some((table()? * scale)?)
            }
            PosEmbedding::Sinusoidal => Some(table()?),
            PosEmbedding::Learned => {
                Some(w.get(&format!("{p}.pos_embedding.embedding.weight"), &[n, h])?)
            }
            PosEmbedding::None => None,
        };
        let norm = if c.embedding_norm {
            Some(LayerNorm::load(w, &format!("{p}.norm"), h, c.norm_eps)?)
        } else {
            None
        };
        Ok(Embedding {
            word,
            positions,
            norm,
        })
    }

    /// `[batch·seq, hidden]` embeddings of `ids`.
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let ids = Tensor::from_slice(&batch.ids, batch.ids.len(), &Device::Cpu)?;
        let mut x = self.word.index_select(&ids, 0)?;
        if let Some(pos) = &self.positions {
            let hidden = self.word.dim(1)?;
            let rows = pos.narrow(0, 0, batch.seq)?;
            x = x
                .reshape((batch.batch, batch.seq, hidden))?
                .broadcast_add(&rows)?
                .reshape((batch.batch * batch.seq, hidden))?;
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }
}

struct Attention {
    qkv: Linear,
    dense: Linear,
    norm_factor: f64,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Self> {
        let h = c.hidden;
        let sa = format!("{prefix}.self_attention");
        Ok(Attention {
            qkv: linear(w, &format!("{sa}.query_key_value"), 3 * h, h, c.qkv_bias)?,
            dense: linear(w, &format!("{prefix}.dense"), h, h, c.use_bias)?,
            norm_factor: w.scalar(
                &format!("{sa}.norm_factor"),
                1.0 / (c.head_dim() as f64).sqrt(),
            )?,
            heads: c.heads,
            head_dim: c.head_dim(),
        })
    }

    /// `x` is `[batch·seq, hidden]`, `mask` the additive key mask `[batch, 1, 1, seq]`.
    fn forward(&self, x: &Tensor, batch: &Batch, mask: &Tensor) -> Result<Tensor> {
        let (b, s, nh, d) = (batch.batch, batch.seq, self.heads, self.head_dim);
        // Rows of query_key_value are [head][q|k|v][d]: view as [b, s, head, 3d] and split.
        let mixed = self.qkv.forward(x)?.reshape((b, s, nh, 3 * d))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(mixed.narrow(3, i * d, d)?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? * self.norm_factor)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * s, nh * d))?;
        Ok(self.dense.forward(&context)?)
    }
}

struct FffBlock {
    layer: Fff,
    workspace: Mutex<Workspace>,
}

enum Ffn {
    Fff(Box<FffBlock>),
    Dense {
        dense_in: Linear,
        dense_out: Linear,
        glu: bool,
    },
}

impl Ffn {
    fn load(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Self> {
        let h = c.hidden;
        Ok(match c.intermed {
            IntermedType::Fff { trees, depth } => {
                let config =
                    FffConfig::new(h, h, depth, trees).with_activation(c.nonlin.as_activation());
                config.validate()?;
                let rows = config.total_nodes();
                let names = [
                    (fastfeedforward::layer::W_IN, vec![rows, h]),
                    (fastfeedforward::layer::B_IN, vec![rows]),
                    (fastfeedforward::layer::W_OUT, vec![h, rows]),
                ];
                let mut tensors = HashMap::new();
                for (name, shape) in names {
                    let full = format!("{prefix}.{name}");
                    let t = w.get(&full, &shape)?;
                    tensors.insert(full, t);
                }
                let layer = Fff::from_tensors(config, &tensors, &format!("{prefix}."), w.path())?;
                Ffn::Fff(Box::new(FffBlock {
                    layer,
                    workspace: Mutex::new(Workspace::new()),
                }))
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
                glu,
            },
        })
    }

    fn forward(&self, x: &Tensor, nonlin: Nonlin, mode: FfnMode) -> Result<Tensor> {
        match self {
            Ffn::Fff(block) => match mode {
                FfnMode::Masked => Ok(block.layer.forward_reference(x)?),
                FfnMode::Kernel => {
                    let layer = &block.layer;
                    let (n, h) = x.dims2()?;
                    let input = x.flatten_all()?.to_vec1::<f32>()?;
                    let mut out = vec![0f32; n * layer.config().output_width];
                    // A poisoned lock only means another thread panicked mid-call; the
                    // workspace holds scratch space, not state, so it is still usable.
                    let mut ws = block.workspace.lock().unwrap_or_else(|e| e.into_inner());
                    layer.forward_infer_into(
                        &input,
                        n,
                        &mut out,
                        &mut ws,
                        InferOptions::default(),
                    )?;
                    debug_assert_eq!(h, layer.config().input_width);
                    Ok(Tensor::from_vec(
                        out,
                        (n, layer.config().output_width),
                        &Device::Cpu,
                    )?)
                }
            },
            Ffn::Dense {
                dense_in,
                dense_out,
                glu,
            } => {
                let z = dense_in.forward(x)?;
                let a = if *glu {
                    // The original's GLU: the first half is the value, the second the gate.
                    let half = z.dim(D::Minus1)? / 2;
                    let value = z.narrow(D::Minus1, 0, half)?;
                    let gate = z.narrow(D::Minus1, half, half)?;
                    (apply(nonlin, &gate)? * value)?
                } else {
                    apply(nonlin, &z)?
                };
                Ok(dense_out.forward(&a)?)
            }
        }
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    ffn: Ffn,
}

struct MlmHead {
    transform: Option<(Linear, LayerNorm)>,
    decoder: Linear,
}

struct ClsHead {
    config: ClassificationHead,
    pooler: Option<Linear>,
    head: Linear,
}

/// Hidden states after the encoder, `[batch·seq, hidden]`, with the batch they came from.
pub struct Encoded {
    /// Final hidden states (after the final LayerNorm when the model has one).
    pub hidden: Tensor,
    /// Batch shape.
    pub batch: usize,
    /// Padded sequence length.
    pub seq: usize,
}

/// A crammedBERT / UltraFastBERT model ready for inference.
pub struct CrammedBert {
    config: BertConfig,
    embedding: Embedding,
    blocks: Vec<Block>,
    final_norm: Option<LayerNorm>,
    mlm: Option<MlmHead>,
    cls: Option<ClsHead>,
    ffn_mode: FfnMode,
}

impl CrammedBert {
    /// Loads `config.json` and the weights from a model folder.
    pub fn load(dir: &Path) -> Result<CrammedBert> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir)?;
        CrammedBert::from_weights(config, &weights)
    }

    /// Builds the model from `config` and `weights` (tensor names as saved by the original).
    pub fn from_weights(config: BertConfig, w: &Weights) -> Result<CrammedBert> {
        let c = &config;
        let h = c.hidden;
        let embedding = Embedding::load(w, c)?;
        let blocks = (0..c.layers)
            .map(|i| {
                let p = format!("encoder.layers.{i}");
                Ok(Block {
                    norm1: LayerNorm::load(w, &format!("{p}.norm1"), h, c.norm_eps)?,
                    attn: Attention::load(w, &format!("{p}.attn"), c)?,
                    norm2: LayerNorm::load(w, &format!("{p}.norm2"), h, c.norm_eps)?,
                    ffn: Ffn::load(w, &format!("{p}.ffn"), c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = if c.final_norm {
            Some(LayerNorm::load(w, "encoder.final_norm", h, c.norm_eps)?)
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
                    LayerNorm::load(w, "prediction_head.norm", h, c.norm_eps)?,
                ))
            } else {
                None
            };
            let weight = match w.get_opt("decoder.weight", &[c.vocab_size, h])? {
                Some(t) => t,
                None => embedding.word.clone(),
            };
            let bias = if c.decoder_bias {
                Some(w.get("decoder.bias", &[c.vocab_size])?)
            } else {
                None
            };
            Some(MlmHead {
                transform,
                decoder: Linear::new(weight, bias),
            })
        } else {
            None
        };
        Ok(CrammedBert {
            config,
            embedding,
            blocks,
            final_norm,
            mlm,
            cls,
            ffn_mode: FfnMode::Kernel,
        })
    }

    /// A model of `config` with random weights (for benchmarks).
    pub fn random(config: BertConfig, seed: u64) -> Result<CrammedBert> {
        CrammedBert::from_weights(config, &Weights::random(seed))
    }

    /// The model's settings.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Selects how FFF blocks run (no effect on dense models).
    pub fn set_ffn_mode(&mut self, mode: FfnMode) {
        self.ffn_mode = mode;
    }

    /// The FFF layer of block `i`, if that block has one.
    pub fn fff_layer(&self, i: usize) -> Option<&Fff> {
        match &self.blocks.get(i)?.ffn {
            Ffn::Fff(block) => Some(&block.layer),
            Ffn::Dense { .. } => None,
        }
    }

    /// Whether the checkpoint has an MLM head.
    pub fn has_mlm_head(&self) -> bool {
        self.mlm.is_some()
    }

    /// Whether the checkpoint has a classification head.
    pub fn has_classification_head(&self) -> bool {
        self.cls.is_some()
    }

    /// Runs the encoder on a padded batch.
    pub fn encode(&self, batch: &Batch) -> Result<Encoded> {
        self.encode_with(batch, |_, _| Ok(()))
    }

    /// Runs the encoder and calls `tap(name, states)` after the embedding (`"embedding"`), on
    /// each FFN's input (`"ffn_input{i}"`) and after each block (`"layer{i}"`), for tests,
    /// routing statistics and debugging.
    pub fn encode_with(
        &self,
        batch: &Batch,
        mut tap: impl FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Encoded> {
        let c = &self.config;
        if batch.ids.len() != batch.batch * batch.seq || batch.mask.len() != batch.ids.len() {
            return Err(BertError::Input(format!(
                "batch of {}x{} has {} ids and {} mask entries",
                batch.batch,
                batch.seq,
                batch.ids.len(),
                batch.mask.len()
            )));
        }
        if batch.seq > c.max_seq_length {
            return Err(BertError::Input(format!(
                "sequence of {} tokens is longer than the model's max_seq_length {}",
                batch.seq, c.max_seq_length
            )));
        }
        if let Some(&bad) = batch.ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(BertError::Input(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if batch.batch == 0 || batch.seq == 0 {
            return Ok(Encoded {
                hidden: Tensor::zeros((0, c.hidden), DType::F32, &Device::Cpu)?,
                batch: batch.batch,
                seq: batch.seq,
            });
        }
        // The original's extended mask: (1 - mask) * -10000 added to the scores of each key.
        let additive: Vec<f32> = batch
            .mask
            .iter()
            .map(|&m| if m != 0 { 0.0 } else { -10000.0 })
            .collect();
        let mask = Tensor::from_vec(additive, (batch.batch, 1, 1, batch.seq), &Device::Cpu)?;
        let mut h = self.embedding.forward(batch)?;
        tap("embedding", &h)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let a = block
                .attn
                .forward(&block.norm1.forward(&h)?, batch, &mask)?;
            h = (h + a)?;
            let x = block.norm2.forward(&h)?;
            tap(&format!("ffn_input{i}"), &x)?;
            let f = block.ffn.forward(&x, c.nonlin, self.ffn_mode)?;
            h = (h + f)?;
            tap(&format!("layer{i}"), &h)?;
        }
        if let Some(n) = &self.final_norm {
            h = n.forward(&h)?;
        }
        Ok(Encoded {
            hidden: h,
            batch: batch.batch,
            seq: batch.seq,
        })
    }

    /// MLM logits `[rows, vocab]` of hidden-state rows `[rows, hidden]`.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.mlm.as_ref().ok_or_else(|| {
            BertError::Input("this checkpoint has no MLM head (it is a classifier)".into())
        })?;
        let mut x = hidden.clone();
        if let Some((dense, norm)) = &head.transform {
            x = norm.forward(&apply(self.config.nonlin, &dense.forward(&x)?)?)?;
        }
        Ok(head.decoder.forward(&x)?)
    }

    /// Classification logits `[batch, num_labels]`.
    pub fn classify(&self, encoded: &Encoded) -> Result<Tensor> {
        let head = self.cls.as_ref().ok_or_else(|| {
            BertError::Input(
                "this checkpoint has no classification head (num_labels and \
                 classification_head are not set in its config)"
                    .into(),
            )
        })?;
        let h3 = encoded
            .hidden
            .reshape((encoded.batch, encoded.seq, self.config.hidden))?;
        // Like the original, `avg` and `max` pool over all positions, padding included.
        let pooled = match head.config.pooler {
            Pooler::ZeroIndex => h3.narrow(1, 0, 1)?.squeeze(1)?,
            Pooler::Avg => h3.mean(1)?,
            Pooler::Max => h3.max(1)?,
        };
        let pooled = match &head.pooler {
            Some(dense) => dense.forward(&pooled)?,
            None => pooled,
        };
        let pooled = apply(head.config.nonlin, &pooled)?;
        Ok(head.head.forward(&pooled)?)
    }
}
