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
use crate::ops::{self, AttentionShape, Dense, LayerNorm};
use crate::weights::Weights;
use candle_core::{Device, Tensor};
use fastfeedforward::tree::forest_visits;
use fastfeedforward::{Fff, FffConfig, InferOptions, Workspace};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// How FFF blocks are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum FfnMode {
    /// The conditional kernel: `K·(D+1)` neurons per token.
    #[default]
    #[cfg_attr(feature = "clap", value(alias = "fff"))]
    Kernel,
    /// The dense masked formulation: all `K·M` neurons computed (on the same faer projections as
    /// the dense FF), all but the path masked, as the original PyTorch code does.
    Masked,
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

fn layer_norm(w: &Weights, prefix: &str, hidden: usize, eps: f64) -> Result<LayerNorm> {
    LayerNorm::from_tensors(
        &w.get(&format!("{prefix}.weight"), &[hidden])?,
        &w.get(&format!("{prefix}.bias"), &[hidden])?,
        eps,
    )
}

fn linear(w: &Weights, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Dense> {
    let weight = w.get(&format!("{prefix}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Dense::from_tensors(&weight, bias.as_ref())
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
    /// `[vocab, hidden]` row-major.
    word: Vec<f32>,
    hidden: usize,
    /// Positional rows `[max_seq_length, hidden]`, already scaled; `None` without positions.
    positions: Option<Vec<f32>>,
    norm: Option<LayerNorm>,
}

impl Embedding {
    /// Loads the embedding; also returns the word matrix as a tensor for the tied decoder.
    fn load(w: &Weights, c: &BertConfig) -> Result<(Self, Tensor)> {
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
            PosEmbedding::Learned => Some(
                w.get(&format!("{p}.pos_embedding.embedding.weight"), &[n, h])?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            PosEmbedding::None => None,
        };
        let norm = if c.embedding_norm {
            Some(layer_norm(w, &format!("{p}.norm"), h, c.norm_eps)?)
        } else {
            None
        };
        let emb = Embedding {
            word: word.flatten_all()?.to_vec1::<f32>()?,
            hidden: h,
            positions,
            norm,
        };
        Ok((emb, word))
    }

    /// `[batch·seq, hidden]` embeddings of the batch's ids.
    fn forward(&self, batch: &Batch) -> Vec<f32> {
        let h = self.hidden;
        let mut x = vec![0f32; batch.ids.len() * h];
        for (i, (row, &id)) in x.chunks_mut(h).zip(&batch.ids).enumerate() {
            row.copy_from_slice(&self.word[id as usize * h..][..h]);
            if let Some(pos) = &self.positions {
                let t = i % batch.seq;
                row.iter_mut()
                    .zip(&pos[t * h..(t + 1) * h])
                    .for_each(|(v, p)| *v += p);
            }
        }
        match &self.norm {
            Some(n) => n.apply(&x),
            None => x,
        }
    }
}

struct Attention {
    qkv: Dense,
    dense: Dense,
    norm_factor: f32,
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
            // A buffer, so checkpoints saved without buffers lack it; it is always 1/√head_dim.
            norm_factor: {
                let name = format!("{sa}.norm_factor");
                let default = 1.0 / (c.head_dim() as f64).sqrt();
                if w.contains(&name) {
                    w.scalar(&name, default)? as f32
                } else {
                    default as f32
                }
            },
            heads: c.heads,
            head_dim: c.head_dim(),
        })
    }

    /// `x` and `out` are `[batch·seq, hidden]`; writes the projected context into `out`.
    fn forward(&self, x: &[f32], batch: &Batch, scratch: &mut Scratch, out: &mut [f32]) {
        let n = batch.batch * batch.seq;
        let qkv = scratch.qkv.sized(n * self.qkv.out);
        self.qkv.forward(x, n, qkv);
        let shape = AttentionShape {
            batch: batch.batch,
            seq: batch.seq,
            heads: self.heads,
            head_dim: self.head_dim,
        };
        let context = scratch.context.sized(n * self.dense.inp);
        ops::attention_into(qkv, &batch.mask, shape, self.norm_factor, context);
        self.dense.forward(context, n, out);
    }
}

struct FffBlock {
    layer: Fff,
    workspace: Mutex<Workspace>,
    /// Dense copies of the weights for `FfnMode::Masked`, made on first use.
    masked: OnceLock<MaskedFff>,
}

/// The original code's FFF: all `K·M` neurons through two dense projections (faer, like the
/// dense FF), the activation on all of them, then everything off the hard path masked to 0.
struct MaskedFff {
    linear_in: Dense,
    linear_out: Dense,
}

impl MaskedFff {
    fn new(layer: &Fff) -> Result<MaskedFff> {
        Ok(MaskedFff {
            linear_in: Dense::from_tensors(layer.w_in(), Some(layer.b_in()))?,
            linear_out: Dense::from_tensors(&layer.w_out_t().t()?.contiguous()?, None)?,
        })
    }

    fn forward(&self, layer: &Fff, x: &[f32], n: usize, mid: &mut Buffer, out: &mut [f32]) {
        let c = layer.config();
        let km = c.total_nodes();
        let act = c.activation;
        let z = mid.sized(n * km);
        self.linear_in.forward(x, n, z);
        z.par_chunks_mut(km).for_each(|row| {
            let mut on_path = vec![false; km];
            for v in forest_visits(c.trees, c.depth + 1, |r| row[r]) {
                on_path[v.row] = true;
            }
            for (v, keep) in row.iter_mut().zip(on_path) {
                *v = if keep { act.apply(*v) } else { 0.0 };
            }
        });
        self.linear_out.forward(z, n, out);
    }
}

enum Ffn {
    Fff(Box<FffBlock>),
    Dense {
        dense_in: Dense,
        dense_out: Dense,
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
                Ffn::Fff(Box::new(FffBlock {
                    layer,
                    workspace: Mutex::new(Workspace::new()),
                    masked: OnceLock::new(),
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

    /// `x` and `out` are `[n, hidden]`; `mid` holds the hidden activations of dense forms.
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        nonlin: Nonlin,
        mode: FfnMode,
        mid: &mut Buffer,
        out: &mut [f32],
    ) -> Result<()> {
        match self {
            Ffn::Fff(block) => {
                let layer = &block.layer;
                let cin = layer.config().input_width;
                match mode {
                    FfnMode::Masked => {
                        if block.masked.get().is_none() {
                            // A race here only builds the copy twice; `set` keeps one.
                            let _ = block.masked.set(MaskedFff::new(layer)?);
                        }
                        let masked = block.masked.get().expect("set above");
                        debug_assert_eq!(cin, x.len() / n.max(1));
                        masked.forward(layer, x, n, mid, out);
                        Ok(())
                    }
                    FfnMode::Kernel => {
                        // A poisoned lock only means another thread panicked mid-call; the
                        // workspace holds scratch space, not state, so it is still usable.
                        let mut ws = block.workspace.lock().unwrap_or_else(|e| e.into_inner());
                        layer.forward_infer_with(x, n, out, &mut ws, InferOptions::default())?;
                        Ok(())
                    }
                }
            }
            Ffn::Dense {
                dense_in,
                dense_out,
                glu,
            } => {
                let z = mid.sized(n * dense_in.out);
                dense_in.forward(x, n, z);
                if *glu {
                    // The original's GLU: the first half is the value, the second the gate.
                    let half = dense_in.out / 2;
                    let mut a = vec![0f32; n * half];
                    let act = nonlin.as_activation();
                    a.par_chunks_mut(half)
                        .zip(z.par_chunks(2 * half))
                        .for_each(|(a, z)| {
                            let (value, gate) = z.split_at(half);
                            for ((a, v), g) in a.iter_mut().zip(value).zip(gate) {
                                *a = act.apply(*g) * v;
                            }
                        });
                    dense_out.forward(&a, n, out);
                } else {
                    ops::activate(z, nonlin);
                    dense_out.forward(z, n, out);
                }
                Ok(())
            }
        }
    }
}

/// A reusable `f32` buffer that grows to the largest size asked of it.
#[derive(Default)]
struct Buffer(Vec<f32>);

impl Buffer {
    /// The first `len` elements (contents unspecified; callers overwrite them).
    fn sized(&mut self, len: usize) -> &mut [f32] {
        if self.0.len() < len {
            self.0.resize(len, 0.0);
        }
        &mut self.0[..len]
    }
}

/// Intermediate buffers of one encoder call, reused by every block.
#[derive(Default)]
struct Scratch {
    /// Fused projection `[n, 3·hidden]`.
    qkv: Buffer,
    /// Attention context `[n, hidden]`.
    context: Buffer,
    /// Hidden activations of a dense or masked FFN `[n, width]`.
    mid: Buffer,
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    ffn: Ffn,
}

struct MlmHead {
    transform: Option<(Dense, LayerNorm)>,
    decoder: Dense,
}

struct ClsHead {
    config: ClassificationHead,
    pooler: Option<Dense>,
    head: Dense,
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
        let (embedding, word) = Embedding::load(w, c)?;
        let blocks = (0..c.layers)
            .map(|i| {
                let p = format!("encoder.layers.{i}");
                Ok(Block {
                    norm1: layer_norm(w, &format!("{p}.norm1"), h, c.norm_eps)?,
                    attn: Attention::load(w, &format!("{p}.attn"), c)?,
                    norm2: layer_norm(w, &format!("{p}.norm2"), h, c.norm_eps)?,
                    ffn: Ffn::load(w, &format!("{p}.ffn"), c)?,
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

    /// Runs the encoder and calls `tap(name, states)` with `[batch·seq, hidden]` row-major
    /// states after the embedding (`"embedding"`), on each FFN's input (`"ffn_input{i}"`) and
    /// after each block (`"layer{i}"`), for tests, routing statistics and profiling.
    pub fn encode_with(
        &self,
        batch: &Batch,
        mut tap: impl FnMut(&str, &[f32]) -> Result<()>,
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
        if batch.seq == 0 && batch.batch > 0 {
            return Err(BertError::Input(
                "empty sequences: every input needs at least one token".into(),
            ));
        }
        let n = batch.batch * batch.seq;
        let mut h = self.embedding.forward(batch);
        if n > 0 {
            tap("embedding", &h)?;
            // Buffers live for the whole call: fresh multi-megabyte vectors per layer cost
            // more in page faults than the attention core itself.
            let mut scratch = Scratch::default();
            let mut x = vec![0f32; h.len()];
            let mut branch = vec![0f32; h.len()];
            if let Some(first) = self.blocks.first() {
                first.norm1.forward(&h, &mut x);
            }
            for (i, block) in self.blocks.iter().enumerate() {
                block.attn.forward(&x, batch, &mut scratch, &mut branch);
                block.norm2.add_forward(&mut h, &branch, &mut x);
                tap(&format!("ffn_input{i}"), &x)?;
                let mid = &mut scratch.mid;
                (block.ffn).forward(&x, n, c.nonlin, self.ffn_mode, mid, &mut branch)?;
                match self.blocks.get(i + 1) {
                    Some(next) => next.norm1.add_forward(&mut h, &branch, &mut x),
                    None => ops::add_assign(&mut h, &branch),
                }
                tap(&format!("layer{i}"), &h)?;
            }
            if let Some(norm) = &self.final_norm {
                norm.forward(&h, &mut x);
                h = x;
            }
        }
        Ok(Encoded {
            hidden: Tensor::from_vec(h, (n, c.hidden), &Device::Cpu)?,
            batch: batch.batch,
            seq: batch.seq,
        })
    }

    /// MLM logits `[rows, vocab]` of hidden-state rows `[rows, hidden]`.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.mlm.as_ref().ok_or_else(|| {
            BertError::Input("this checkpoint has no MLM head (it is a classifier)".into())
        })?;
        let (rows, _) = hidden.dims2()?;
        let mut x = hidden.flatten_all()?.to_vec1::<f32>()?;
        if let Some((dense, norm)) = &head.transform {
            let mut t = dense.apply(&x, rows);
            ops::activate(&mut t, self.config.nonlin);
            x = norm.apply(&t);
        }
        let logits = head.decoder.apply(&x, rows);
        Ok(Tensor::from_vec(
            logits,
            (rows, head.decoder.out),
            &Device::Cpu,
        )?)
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
        let b = encoded.batch;
        let mut pooled = pooled.flatten_all()?.to_vec1::<f32>()?;
        if let Some(dense) = &head.pooler {
            pooled = dense.apply(&pooled, b);
        }
        ops::activate(&mut pooled, head.config.nonlin);
        let logits = head.head.apply(&pooled, b);
        Ok(Tensor::from_vec(logits, (b, head.head.out), &Device::Cpu)?)
    }
}
