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
use crate::ops::{self, Dense, LayerNorm, SegmentAttention};
use crate::weights::Weights;
use candle_core::{Device, Tensor};
use fastfeedforward::tree::forest_visits;
use fastfeedforward::{Fff, FffConfig, InferOptions, QuantizedFff, WeightFormat, Workspace};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;
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

/// Token sequences laid end to end without padding: sequence `b` is
/// `ids[offsets[b]..offsets[b + 1]]`. Each row attends to its own sequence only, so nothing is
/// spent on padding and a sequence's result does not depend on what it is batched with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    /// Token ids of every sequence, one after the other.
    pub ids: Vec<u32>,
    /// `batch + 1` row offsets, from 0 to `ids.len()`.
    pub offsets: Vec<usize>,
}

impl Packed {
    /// Lays `sequences` end to end.
    pub fn new<S: AsRef<[u32]>>(sequences: &[S]) -> Packed {
        let mut ids = Vec::with_capacity(sequences.iter().map(|s| s.as_ref().len()).sum());
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for s in sequences {
            ids.extend_from_slice(s.as_ref());
            offsets.push(ids.len());
        }
        Packed { ids, offsets }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of sequence `b`.
    pub fn rows(&self, b: usize) -> Range<usize> {
        self.offsets[b]..self.offsets[b + 1]
    }
}

/// The row ranges of consecutive `offsets` (`batch + 1` of them): one per sequence.
pub(crate) fn segments(offsets: &[usize]) -> impl Iterator<Item = Range<usize>> + '_ {
    offsets.windows(2).map(|w| w[0]..w[1])
}

/// Where each sequence's rows lie in one encoder call, and which of its keys are real.
struct Layout<'a> {
    ids: &'a [u32],
    /// Row ranges, one per sequence, tiling `0..ids.len()`.
    segments: Vec<Range<usize>>,
    /// One byte per row for padded batches (0 = padding); `None` when every row is a token.
    mask: Option<&'a [u8]>,
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

    /// `[rows, hidden]` embeddings of the layout's ids, positions counted within each segment.
    fn forward(&self, layout: &Layout) -> Vec<f32> {
        let h = self.hidden;
        let mut x = vec![0f32; layout.ids.len() * h];
        for segment in &layout.segments {
            let rows = &mut x[segment.start * h..segment.end * h];
            let ids = &layout.ids[segment.clone()];
            for (t, (row, &id)) in rows.chunks_mut(h).zip(ids).enumerate() {
                row.copy_from_slice(&self.word[id as usize * h..][..h]);
                if let Some(pos) = &self.positions {
                    row.iter_mut()
                        .zip(&pos[t * h..(t + 1) * h])
                        .for_each(|(v, p)| *v += p);
                }
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
    core: SegmentAttention,
}

impl Attention {
    fn load(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Self> {
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

    /// `x` and `out` are `[rows, hidden]`; writes the projected context into `out`.
    fn forward(&self, x: &[f32], layout: &Layout, scratch: &mut Scratch, out: &mut [f32]) {
        let n = layout.ids.len();
        let qkv = scratch.qkv.sized(n * self.qkv.out);
        self.qkv.forward(x, n, qkv);
        let context = scratch.context.sized(n * self.dense.inp);
        self.core
            .forward(qkv, &layout.segments, layout.mask, context);
        self.dense.forward(context, n, out);
    }
}

struct FffBlock {
    layer: Fff,
    /// The layer in a narrower weight format for `FfnMode::Kernel`, set by
    /// [`CrammedBert::set_weight_format`]; `None` runs `layer` (f32).
    quantized: Option<QuantizedFff>,
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
                    quantized: None,
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
                        let opts = InferOptions::default();
                        match &block.quantized {
                            Some(q) => q.forward_infer_with(x, n, out, &mut ws, opts)?,
                            None => layer.forward_infer_with(x, n, out, &mut ws, opts)?,
                        }
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

/// Hidden states of a [`Packed`] batch, `[tokens, hidden]`: sequence `b` is rows
/// `offsets[b]..offsets[b + 1]`.
pub struct PackedEncoded {
    /// Final hidden states (after the final LayerNorm when the model has one).
    pub hidden: Tensor,
    /// `batch + 1` row offsets, as in the [`Packed`] batch.
    pub offsets: Vec<usize>,
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
    weight_format: WeightFormat,
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
            weight_format: WeightFormat::F32,
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

    /// Selects how FFF blocks run (no effect on dense models). [`FfnMode::Masked`] computes with
    /// the f32 weights whatever [`set_weight_format`](Self::set_weight_format) chose.
    pub fn set_ffn_mode(&mut self, mode: FfnMode) {
        self.ffn_mode = mode;
    }

    /// Stores the weights of every FFF layer in `format` for the kernel path
    /// ([`FfnMode::Kernel`]): bf16 or int8 make a quantized copy of each layer
    /// ([`Fff::quantize`]) that the kernel then runs; f32 drops any copy and runs the loaded
    /// weights, exactly as before the first call. Only the FFF layers change: embeddings,
    /// attention, LayerNorms, the heads and dense FF blocks stay f32 (a dense model is left as
    /// it is). The dense masked path ([`FfnMode::Masked`]) always computes with the f32
    /// weights. The f32 layers are kept (for the masked path and for switching back), so a
    /// narrower format adds its bytes to the model's memory rather than saving them.
    pub fn set_weight_format(&mut self, format: WeightFormat) -> Result<()> {
        // Quantize every layer before changing any, so an error leaves the model as it was.
        let mut copies = Vec::new();
        for block in &self.blocks {
            if let Ffn::Fff(b) = &block.ffn {
                copies.push(match format {
                    WeightFormat::F32 => None,
                    _ => Some(b.layer.quantize(format)?),
                });
            }
        }
        let blocks = self.blocks.iter_mut().filter_map(|b| match &mut b.ffn {
            Ffn::Fff(block) => Some(block),
            Ffn::Dense { .. } => None,
        });
        for (block, copy) in blocks.zip(copies) {
            block.quantized = copy;
        }
        self.weight_format = format;
        Ok(())
    }

    /// The weight format of the FFF layers on the kernel path (f32 unless
    /// [`set_weight_format`](Self::set_weight_format) chose another).
    pub fn weight_format(&self) -> WeightFormat {
        self.weight_format
    }

    /// The FFF layer of block `i` as loaded (f32), if that block has one.
    pub fn fff_layer(&self, i: usize) -> Option<&Fff> {
        match &self.blocks.get(i)?.ffn {
            Ffn::Fff(block) => Some(&block.layer),
            Ffn::Dense { .. } => None,
        }
    }

    /// The quantized copy of block `i`'s FFF layer that the kernel path runs, if that block
    /// has an FFF layer and [`set_weight_format`](Self::set_weight_format) chose bf16 or int8.
    pub fn quantized_fff_layer(&self, i: usize) -> Option<&QuantizedFff> {
        match &self.blocks.get(i)?.ffn {
            Ffn::Fff(block) => block.quantized.as_ref(),
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
        tap: impl FnMut(&str, &[f32]) -> Result<()>,
    ) -> Result<Encoded> {
        if batch.ids.len() != batch.batch * batch.seq || batch.mask.len() != batch.ids.len() {
            return Err(BertError::Input(format!(
                "batch of {}x{} has {} ids and {} mask entries",
                batch.batch,
                batch.seq,
                batch.ids.len(),
                batch.mask.len()
            )));
        }
        if batch.seq == 0 && batch.batch > 0 {
            return Err(BertError::Input(
                "empty sequences: every input needs at least one token".into(),
            ));
        }
        self.check_sequences(&batch.ids, batch.seq)?;
        let layout = Layout {
            ids: &batch.ids,
            segments: (0..batch.batch)
                .map(|b| b * batch.seq..(b + 1) * batch.seq)
                .collect(),
            mask: Some(&batch.mask),
        };
        Ok(Encoded {
            hidden: self.run(&layout, tap)?,
            batch: batch.batch,
            seq: batch.seq,
        })
    }

    /// Runs the encoder on sequences laid end to end: the same per-token results as a padded
    /// batch (within float rounding), without computing any padding.
    pub fn encode_packed(&self, packed: &Packed) -> Result<PackedEncoded> {
        self.encode_packed_with(packed, |_, _| Ok(()))
    }

    /// [`encode_packed`](Self::encode_packed) with `tap` as in [`encode_with`](Self::encode_with),
    /// on `[tokens, hidden]` states.
    pub fn encode_packed_with(
        &self,
        packed: &Packed,
        tap: impl FnMut(&str, &[f32]) -> Result<()>,
    ) -> Result<PackedEncoded> {
        let o = &packed.offsets;
        if o.first() != Some(&0)
            || o.last() != Some(&packed.ids.len())
            || o.windows(2).any(|w| w[0] > w[1])
        {
            return Err(BertError::Input(format!(
                "packed batch: offsets must rise from 0 to the {} ids, got {} offsets",
                packed.ids.len(),
                o.len()
            )));
        }
        let segments: Vec<Range<usize>> = segments(&packed.offsets).collect();
        if segments.iter().any(Range::is_empty) {
            return Err(BertError::Input(
                "empty sequences: every input needs at least one token".into(),
            ));
        }
        let longest = segments.iter().map(Range::len).max().unwrap_or(0);
        self.check_sequences(&packed.ids, longest)?;
        let layout = Layout {
            ids: &packed.ids,
            segments,
            mask: None,
        };
        Ok(PackedEncoded {
            hidden: self.run(&layout, tap)?,
            offsets: packed.offsets.clone(),
        })
    }

    /// Checks the longest sequence against `max_seq_length` and every id against the vocabulary.
    fn check_sequences(&self, ids: &[u32], longest: usize) -> Result<()> {
        let c = &self.config;
        if longest > c.max_seq_length {
            return Err(BertError::Input(format!(
                "sequence of {longest} tokens is longer than the model's max_seq_length {}",
                c.max_seq_length
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(BertError::Input(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        Ok(())
    }

    /// The encoder on a checked layout: `[rows, hidden]` final states.
    fn run(
        &self,
        layout: &Layout,
        mut tap: impl FnMut(&str, &[f32]) -> Result<()>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = layout.ids.len();
        let mut h = self.embedding.forward(layout);
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
                block.attn.forward(&x, layout, &mut scratch, &mut branch);
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
        // Finite ids went in, so a NaN or infinity here comes from the weights or the config;
        // a score computed from it would look like any other.
        let non_finite = h.par_iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            return Err(BertError::Input(format!(
                "the encoder's output holds {non_finite} values that are NaN or infinite: the \
                 model's weights or config (norm_eps, LayerNorm weights) overflow float32"
            )));
        }
        Ok(Tensor::from_vec(h, (n, c.hidden), &Device::Cpu)?)
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

    /// Classification logits `[batch, num_labels]`. Like the original, `avg` and `max` pool
    /// over all positions of the padded batch, padding included.
    pub fn classify(&self, encoded: &Encoded) -> Result<Tensor> {
        let seq = encoded.seq;
        let rows: Vec<Range<usize>> = (0..encoded.batch).map(|b| b * seq..(b + 1) * seq).collect();
        self.classify_rows(&encoded.hidden, &rows)
    }

    /// Classification logits `[batch, num_labels]` of a packed batch, each sequence pooled over
    /// its own tokens: what [`classify`](Self::classify) gives for the sequence alone.
    pub fn classify_packed(&self, encoded: &PackedEncoded) -> Result<Tensor> {
        let rows: Vec<Range<usize>> = segments(&encoded.offsets).collect();
        self.classify_rows(&encoded.hidden, &rows)
    }

    /// The head on each sequence's rows of `hidden` (`[rows, hidden]`).
    fn classify_rows(&self, hidden: &Tensor, rows: &[Range<usize>]) -> Result<Tensor> {
        let head = self.cls.as_ref().ok_or_else(|| {
            BertError::Input(
                "this checkpoint has no classification head (num_labels and \
                 classification_head are not set in its config)"
                    .into(),
            )
        })?;
        let width = self.config.hidden;
        let states = hidden.flatten_all()?.to_vec1::<f32>()?;
        let b = rows.len();
        let mut pooled = vec![0f32; b * width];
        for (out, r) in pooled.chunks_mut(width).zip(rows) {
            if r.is_empty() {
                continue;
            }
            let row = |t: usize| &states[t * width..(t + 1) * width];
            match head.config.pooler {
                Pooler::ZeroIndex => out.copy_from_slice(row(r.start)),
                Pooler::Avg => {
                    for t in r.clone() {
                        out.iter_mut().zip(row(t)).for_each(|(a, v)| *a += v);
                    }
                    let n = r.len() as f32;
                    out.iter_mut().for_each(|a| *a /= n);
                }
                Pooler::Max => {
                    out.copy_from_slice(row(r.start));
                    for t in r.start + 1..r.end {
                        out.iter_mut().zip(row(t)).for_each(|(a, v)| *a = a.max(*v));
                    }
                }
            }
        }
        if let Some(dense) = &head.pooler {
            pooled = dense.apply(&pooled, b);
        }
        ops::activate(&mut pooled, head.config.nonlin);
        let logits = head.head.apply(&pooled, b);
        Ok(Tensor::from_vec(logits, (b, head.head.out), &Device::Cpu)?)
    }
}
