//! The transformer encoder every model family shares, for inference: embeddings (words,
//! positions, optional token types, optional LayerNorm), blocks of self-attention and a
//! feedforward block with their LayerNorms before (crammedBERT) or after (BERT) each residual
//! branch, an optional final LayerNorm, and the MLM and classification heads. The feedforward
//! block is a dense FF, or an FFF run by this project's conditional kernel (or, for comparison,
//! by the dense masked reference that UltraFastBERT's code uses).
//!
//! What differs between families is data decided when a checkpoint loads (the `crammed` and
//! `hf_bert` loaders fill these structs); the forward pass here never asks which family it runs.

use crate::batch::{segments, Batch, Packed};
use crate::config::{BertConfig, ClassificationHead, Nonlin, Pooler};
use crate::error::{BertError, Result};
use crate::hf_bert::HfBertConfig;
use crate::ops::{self, Dense, LayerNorm, SegmentAttention};
use crate::pooling::{pool_rows, Pooling};
use crate::weights::Weights;
use candle_core::{Device, Tensor};
use fastfeedforward::tree::forest_visits;
use fastfeedforward::{Fff, InferOptions, QuantizedFff, WeightFormat, Workspace};
use rayon::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// The model families the encoder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// crammedBERT / UltraFastBERT (`config.json` with an `arch` object).
    Crammed,
    /// Hugging Face BERT (`model_type: "bert"`), sentence-transformers models included.
    Bert,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Crammed => "crammedBERT",
            Family::Bert => "BERT",
        })
    }
}

/// A checkpoint's `config.json`, by family.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// crammedBERT / UltraFastBERT.
    Crammed(BertConfig),
    /// Hugging Face BERT.
    Bert(HfBertConfig),
}

impl ModelConfig {
    /// Parses the text of `config.json` (`path` names it in errors), deciding the family once:
    /// an `arch` object or `model_type: "crammedBERT"` is crammedBERT's, `model_type: "bert"`
    /// Hugging Face BERT's.
    pub fn from_json(text: &str, path: &Path) -> Result<ModelConfig> {
        let root: serde_json::Value = serde_json::from_str(text).map_err(|e| BertError::Io {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let model_type = root.get("model_type").and_then(|v| v.as_str());
        if root.get("arch").is_some() || model_type == Some("crammedBERT") {
            return Ok(ModelConfig::Crammed(BertConfig::from_json(text, path)?));
        }
        match model_type {
            Some("bert") => Ok(ModelConfig::Bert(HfBertConfig::from_value(&root, path)?)),
            found => Err(BertError::Config {
                path: path.to_path_buf(),
                key: "model_type".into(),
                message: match found {
                    Some(other) => format!(
                        "= {other:?} is not supported (expected \"bert\", or a crammedBERT \
                         config with an `arch` object)"
                    ),
                    None => "is missing, and there is no crammedBERT `arch` object: expected a \
                             BERT or crammedBERT / UltraFastBERT config"
                        .into(),
                },
            }),
        }
    }

    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| BertError::Io {
            path: path.to_path_buf(),
            message: format!("cannot read the model config: {e}"),
        })?;
        Self::from_json(&text, path)
    }
}

/// Where each block's LayerNorms sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// `h += f(LN(h))` for each branch (crammedBERT).
    Pre,
    /// `h = LN(h + f(h))` for each branch (BERT).
    Post,
}

/// The encoder's shape and settings, whichever family it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// The family the checkpoint belongs to.
    pub family: Family,
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
    /// Number of token types (0: the model has no token type embedding).
    pub type_vocab_size: usize,
    /// Where the LayerNorms sit.
    pub placement: NormPlacement,
    /// Label names by index, for a classification checkpoint.
    pub labels: Vec<String>,
}

/// Where each sequence's rows lie in one encoder call, and which of its keys are real.
pub(crate) struct Layout<'a> {
    ids: &'a [u32],
    type_ids: Option<&'a [u32]>,
    /// Row ranges, one per sequence, tiling `0..ids.len()`.
    segments: Vec<Range<usize>>,
    /// One byte per row for padded batches (0 = padding); `None` when every row is a token.
    mask: Option<&'a [u8]>,
}

/// Where encoder calls spent their time, summed over calls and blocks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Encoder calls measured.
    pub calls: usize,
    /// Token rows encoded.
    pub tokens: usize,
    /// Embedding lookup, sums and their LayerNorm.
    pub embedding: Duration,
    /// The fused q, k, v projection.
    pub qkv: Duration,
    /// Scores, softmax and context (the attention core).
    pub attention: Duration,
    /// The attention output projection.
    pub attention_out: Duration,
    /// Residual adds and LayerNorms.
    pub norms: Duration,
    /// Dense FFN input projection (with its bias).
    pub ffn_in: Duration,
    /// Dense FFN activation.
    pub activation: Duration,
    /// Dense FFN output projection (with its bias).
    pub ffn_out: Duration,
    /// FFF blocks (kernel or masked), whole.
    pub fff: Duration,
    /// Checks of the output.
    pub other: Duration,
}

impl Profile {
    /// Every phase with its name, in the order the encoder runs them.
    pub fn phases(&self) -> [(&'static str, Duration); 10] {
        [
            ("embedding", self.embedding),
            ("qkv projection", self.qkv),
            ("attention core", self.attention),
            ("attention output", self.attention_out),
            ("residual + LayerNorm", self.norms),
            ("FFN in", self.ffn_in),
            ("FFN activation", self.activation),
            ("FFN out", self.ffn_out),
            ("FFF", self.fff),
            ("other", self.other),
        ]
    }

    /// The sum of the phases.
    pub fn total(&self) -> Duration {
        self.phases().iter().map(|(_, d)| *d).sum()
    }
}

/// Charges the time since the last lap to a phase of a [`Profile`], when there is one: the
/// encoder's phases run back to back, so laps tile its time.
struct Clock<'a> {
    profile: Option<&'a mut Profile>,
    last: Instant,
}

impl<'a> Clock<'a> {
    fn new(profile: Option<&'a mut Profile>) -> Self {
        Clock {
            profile,
            last: Instant::now(),
        }
    }

    /// Adds the time since the previous lap to `phase` of the profile.
    #[inline]
    fn lap(&mut self, phase: fn(&mut Profile) -> &mut Duration) {
        if let Some(p) = self.profile.as_deref_mut() {
            let now = Instant::now();
            *phase(p) += now - self.last;
            self.last = now;
        }
    }
}

/// LayerNorm `{prefix}.weight` / `{prefix}.bias` of width `hidden`.
pub(crate) fn layer_norm(w: &Weights, prefix: &str, hidden: usize, eps: f64) -> Result<LayerNorm> {
    LayerNorm::from_tensors(
        &w.get(&format!("{prefix}.weight"), &[hidden])?,
        &w.get(&format!("{prefix}.bias"), &[hidden])?,
        eps,
    )
}

/// Linear layer `{prefix}.weight` (`[out, inp]`) with `{prefix}.bias` where `bias`.
pub(crate) fn linear(
    w: &Weights,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Dense> {
    let weight = w.get(&format!("{prefix}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Dense::from_tensors(&weight, bias.as_ref())
}

/// `[rows, hidden]` row-major table from a `[rows, hidden]` tensor.
pub(crate) fn table(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
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

/// Word, position and token type embeddings, summed, then optionally normalised.
pub(crate) struct Embedding {
    /// `[vocab, hidden]` row-major.
    pub(crate) word: Vec<f32>,
    pub(crate) hidden: usize,
    /// Positional rows `[max_seq_length, hidden]`, already scaled; `None` without positions.
    pub(crate) positions: Option<Vec<f32>>,
    /// Token type rows `[type_vocab_size, hidden]`; `None` when the model has none.
    pub(crate) token_types: Option<Vec<f32>>,
    pub(crate) norm: Option<LayerNorm>,
}

impl Embedding {
    /// `[rows, hidden]` embeddings of the layout's ids, positions counted within each segment.
    /// Summed as BERT sums them: word + token type, then + position.
    fn forward(&self, layout: &Layout) -> Vec<f32> {
        let h = self.hidden;
        let mut x = vec![0f32; layout.ids.len() * h];
        let add = |row: &mut [f32], table: &[f32], i: usize| {
            row.iter_mut()
                .zip(&table[i * h..(i + 1) * h])
                .for_each(|(v, p)| *v += p);
        };
        for segment in &layout.segments {
            let rows = &mut x[segment.start * h..segment.end * h];
            let ids = &layout.ids[segment.clone()];
            for (t, (row, &id)) in rows.chunks_mut(h).zip(ids).enumerate() {
                row.copy_from_slice(&self.word[id as usize * h..][..h]);
                if let Some(types) = &self.token_types {
                    let kind = layout.type_ids.map_or(0, |k| k[segment.start + t]);
                    add(row, types, kind as usize);
                }
                if let Some(pos) = &self.positions {
                    add(row, pos, t);
                }
            }
        }
        match &self.norm {
            Some(n) => n.apply(&x),
            None => x,
        }
    }
}

/// Self-attention with its output projection.
pub(crate) struct Attention {
    /// The fused projection, each head's `[q | k | v]` rows side by side (see
    /// [`SegmentAttention`]).
    pub(crate) qkv: Dense,
    pub(crate) dense: Dense,
    pub(crate) core: SegmentAttention,
}

impl Attention {
    /// `x` and `out` are `[rows, hidden]`; writes the projected context into `out`.
    fn forward(
        &self,
        x: &[f32],
        layout: &Layout,
        scratch: &mut Scratch,
        out: &mut [f32],
        clock: &mut Clock,
    ) {
        let n = layout.ids.len();
        let qkv = scratch.qkv.sized(n * self.qkv.out);
        self.qkv.forward(x, n, qkv);
        clock.lap(|p| &mut p.qkv);
        let context = scratch.context.sized(n * self.dense.inp);
        self.core
            .forward(qkv, &layout.segments, layout.mask, context);
        clock.lap(|p| &mut p.attention);
        self.dense.forward(context, n, out);
        clock.lap(|p| &mut p.attention_out);
    }
}

pub(crate) struct FffBlock {
    pub(crate) layer: Fff,
    /// The layer in a narrower weight format for `FfnMode::Kernel`, set by
    /// [`Model::set_weight_format`]; `None` runs `layer` (f32).
    pub(crate) quantized: Option<QuantizedFff>,
    pub(crate) workspace: Mutex<Workspace>,
    /// Dense copies of the weights for `FfnMode::Masked`, made on first use.
    pub(crate) masked: OnceLock<MaskedFff>,
    /// A bias added to the layer's output (a BERT block's FFN output bias, kept when its FFN
    /// became an FFF); `None` in UltraFastBERT.
    pub(crate) out_bias: Option<Vec<f32>>,
    /// A dense FFN every token runs beside the trees, as a forest of depth-0 trees (one per
    /// neuron, on the same kernel: an SGEMM in and out), always f32.
    pub(crate) branch: Option<Fff>,
}

impl FffBlock {
    /// An FFF block's layer on `x`, without its output bias.
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        mode: FfnMode,
        mid: &mut Buffer,
        out: &mut [f32],
    ) -> Result<()> {
        let (block, layer) = (self, &self.layer);
        // A poisoned lock only means another thread panicked mid-call; the workspace holds
        // scratch space, not state, so it is still usable.
        let mut ws = block.workspace.lock().unwrap_or_else(|e| e.into_inner());
        match mode {
            FfnMode::Masked => {
                if block.masked.get().is_none() {
                    // A race here only builds the copy twice; `set` keeps one.
                    let _ = block.masked.set(MaskedFff::new(layer)?);
                }
                let masked = block.masked.get().expect("set above");
                masked.forward(layer, x, n, mid, out);
            }
            FfnMode::Kernel => {
                let opts = InferOptions::default();
                match &block.quantized {
                    Some(q) => q.forward_infer_with(x, n, out, &mut ws, opts)?,
                    None => layer.forward_infer_with(x, n, out, &mut ws, opts)?,
                }
            }
        }
        if let Some(branch) = &block.branch {
            let y = mid.sized(out.len());
            branch.forward_infer_with(x, n, y, &mut ws, InferOptions::default())?;
            let width = out.len() / n.max(1);
            out.par_chunks_mut(width * 16)
                .zip(y.par_chunks(width * 16))
                .for_each(|(o, y)| o.iter_mut().zip(y).for_each(|(o, y)| *o += y));
        }
        Ok(())
    }
}

/// The original code's FFF: all `K·M` neurons through two dense projections (faer, like the
/// dense FF), the activation on all of them, then everything off the hard path masked to 0.
pub(crate) struct MaskedFff {
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

/// A block's feedforward part.
pub(crate) enum Ffn {
    /// An FFF layer.
    Fff(Box<FffBlock>),
    /// A dense FF: `dense_out(act(dense_in(x)))`; with `glu`, the first half of `dense_in`'s
    /// output is the value and `act` of the second half its gate.
    Dense {
        dense_in: Dense,
        dense_out: Dense,
        act: Nonlin,
        glu: bool,
    },
}

impl Ffn {
    /// An FFF block around `layer`, with a bias on its output where given.
    pub(crate) fn fff(layer: Fff, out_bias: Option<Vec<f32>>) -> Ffn {
        Ffn::fff_with_branch(layer, None, out_bias)
    }

    /// An FFF block around `layer` with a dense `branch` (a forest of depth-0 trees) beside it.
    pub(crate) fn fff_with_branch(
        layer: Fff,
        branch: Option<Fff>,
        out_bias: Option<Vec<f32>>,
    ) -> Ffn {
        Ffn::Fff(Box::new(FffBlock {
            layer,
            quantized: None,
            workspace: Mutex::new(Workspace::new()),
            masked: OnceLock::new(),
            out_bias,
            branch,
        }))
    }

    /// `x` and `out` are `[n, hidden]`; `mid` holds the hidden activations of dense forms.
    fn forward(
        &self,
        x: &[f32],
        n: usize,
        mode: FfnMode,
        mid: &mut Buffer,
        out: &mut [f32],
        clock: &mut Clock,
    ) -> Result<()> {
        let result = self.forward_timed(x, n, mode, mid, out, clock);
        if let Ffn::Fff(_) = self {
            clock.lap(|p| &mut p.fff);
        }
        result
    }

    /// [`Ffn::forward`]; dense forms lap their own phases, so what is left is an FFF's.
    fn forward_timed(
        &self,
        x: &[f32],
        n: usize,
        mode: FfnMode,
        mid: &mut Buffer,
        out: &mut [f32],
        clock: &mut Clock,
    ) -> Result<()> {
        match self {
            Ffn::Fff(block) => {
                block.forward(x, n, mode, mid, out)?;
                if let Some(b) = &block.out_bias {
                    out.par_chunks_mut(b.len() * 16).for_each(|rows| {
                        for row in rows.chunks_mut(b.len()) {
                            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                        }
                    });
                }
                Ok(())
            }
            Ffn::Dense {
                dense_in,
                dense_out,
                act,
                glu,
            } => {
                let z = mid.sized(n * dense_in.out);
                if *glu {
                    dense_in.forward(x, n, z);
                    clock.lap(|p| &mut p.ffn_in);
                    // The first half of each row is the value, the second half its gate.
                    let half = dense_in.out / 2;
                    let mut a = vec![0f32; n * half];
                    let act = act.as_activation();
                    a.par_chunks_mut(half)
                        .zip(z.par_chunks(2 * half))
                        .for_each(|(a, z)| {
                            let (value, gate) = z.split_at(half);
                            for ((a, v), g) in a.iter_mut().zip(value).zip(gate) {
                                *a = act.apply(*g) * v;
                            }
                        });
                    clock.lap(|p| &mut p.activation);
                    dense_out.forward(&a, n, out);
                } else {
                    // The activation is fused into the projection's pass over its output.
                    dense_in.forward_act(x, n, z, *act);
                    clock.lap(|p| &mut p.ffn_in);
                    dense_out.forward(z, n, out);
                }
                clock.lap(|p| &mut p.ffn_out);
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

/// One transformer block: `norm1` belongs to the attention branch, `norm2` to the
/// feedforward branch (before them in pre-LN, after them in post-LN).
pub(crate) struct Block {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) ffn: Ffn,
}

/// The masked-language-model head: an optional transform (dense, activation, LayerNorm), then
/// the decoder onto the vocabulary.
pub(crate) struct MlmHead {
    pub(crate) transform: Option<(Dense, Nonlin, LayerNorm)>,
    pub(crate) decoder: Dense,
}

/// The sequence-classification head: pooling, an optional dense layer, the nonlinearity, and
/// the classifier.
pub(crate) struct ClsHead {
    pub(crate) config: ClassificationHead,
    pub(crate) pooler: Option<Dense>,
    pub(crate) head: Dense,
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

/// A transformer encoder with its heads, ready for inference: crammedBERT / UltraFastBERT or
/// Hugging Face BERT, as the checkpoint's `config.json` says.
pub struct Model {
    pub(crate) config: EncoderConfig,
    pub(crate) embedding: Embedding,
    pub(crate) blocks: Vec<Block>,
    pub(crate) final_norm: Option<LayerNorm>,
    pub(crate) mlm: Option<MlmHead>,
    pub(crate) cls: Option<ClsHead>,
    pub(crate) ffn_mode: FfnMode,
    pub(crate) weight_format: WeightFormat,
}

impl Model {
    /// Loads `config.json` and the weights from a model folder: a crammedBERT / UltraFastBERT
    /// checkpoint (its config has an `arch` object) or a Hugging Face BERT one
    /// (`model_type: "bert"`).
    pub fn load(dir: &Path) -> Result<Model> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir)?;
        Model::from_weights(&config, &weights)
    }

    /// Builds the model from `config` and `weights` (tensor names as the family saves them).
    pub fn from_weights(config: &ModelConfig, w: &Weights) -> Result<Model> {
        match config {
            ModelConfig::Crammed(c) => crate::crammed::load(c, w),
            ModelConfig::Bert(c) => crate::hf_bert::load(c, w),
        }
    }

    /// A crammedBERT / UltraFastBERT model of `config` with random weights (for benchmarks).
    pub fn random(config: BertConfig, seed: u64) -> Result<Model> {
        crate::crammed::load(&config, &Weights::random(seed))
    }

    /// The model's shape and settings.
    pub fn config(&self) -> &EncoderConfig {
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
    /// weights, and so does an FFF block's dense branch. The f32 layers are kept (for the
    /// masked path and for switching back), so a narrower format adds its bytes to the model's
    /// memory rather than saving them.
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

    /// Puts `layer` (with `out_bias` added to its output, and `branch`, a dense FFN as a
    /// forest of depth-0 trees, beside it) in place of block `i`'s FFN. The layers' variables
    /// are shared, not copied: an optimizer stepping them changes what this model computes,
    /// which is how a student being distilled runs on the inference engine.
    pub fn set_ffn_fff(
        &mut self,
        i: usize,
        layer: Fff,
        branch: Option<Fff>,
        out_bias: Vec<f32>,
    ) -> Result<()> {
        let (hidden, layers) = (self.config.hidden, self.blocks.len());
        let c = *layer.config();
        if (c.input_width, c.output_width, out_bias.len()) != (hidden, hidden, hidden) {
            return Err(BertError::Input(format!(
                "an FFF block must map {hidden} to {hidden} with a bias of {hidden}; got \
                 {}-{} with a bias of {}",
                c.input_width,
                c.output_width,
                out_bias.len()
            )));
        }
        if let Some(b) = branch.as_ref().map(|b| *b.config()) {
            if (b.input_width, b.output_width, b.depth) != (hidden, hidden, 0) {
                return Err(BertError::Input(format!(
                    "a dense branch must be depth-0 trees mapping {hidden} to {hidden}; got \
                     {}-{} of depth {}",
                    b.input_width, b.output_width, b.depth
                )));
            }
        }
        let block = self.blocks.get_mut(i).ok_or_else(|| {
            BertError::Input(format!("block {i} does not exist (the model has {layers})"))
        })?;
        block.ffn = Ffn::fff_with_branch(layer, branch, Some(out_bias));
        Ok(())
    }

    /// The dense branch beside block `i`'s FFF layer (depth-0 trees), if it has one.
    pub fn fff_branch(&self, i: usize) -> Option<&Fff> {
        match &self.blocks.get(i)?.ffn {
            Ffn::Fff(block) => block.branch.as_ref(),
            Ffn::Dense { .. } => None,
        }
    }

    /// Replaces the output bias of block `i`'s FFF layer (one value per hidden unit).
    pub fn set_fff_out_bias(&mut self, i: usize, bias: &[f32]) -> Result<()> {
        let hidden = self.config.hidden;
        match self.blocks.get_mut(i).map(|b| &mut b.ffn) {
            Some(Ffn::Fff(block)) if bias.len() == hidden => {
                block.out_bias = Some(bias.to_vec());
                Ok(())
            }
            _ => Err(BertError::Input(format!(
                "block {i} has no FFF layer, or the bias has {} values, not {hidden}",
                bias.len()
            ))),
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
    /// output (`"ffn_output{i}"`) and after each block (`"layer{i}"`), for tests, routing
    /// statistics, distillation and profiling.
    pub fn encode_with(
        &self,
        batch: &Batch,
        tap: impl FnMut(&str, &[f32]) -> Result<()>,
    ) -> Result<Encoded> {
        let types_ok = batch
            .type_ids
            .as_ref()
            .is_none_or(|t| t.len() == batch.ids.len());
        if batch.ids.len() != batch.batch * batch.seq
            || batch.mask.len() != batch.ids.len()
            || !types_ok
        {
            return Err(BertError::Input(format!(
                "batch of {}x{} has {} ids, {} mask entries and {} type ids",
                batch.batch,
                batch.seq,
                batch.ids.len(),
                batch.mask.len(),
                batch.type_ids.as_ref().map_or(0, Vec::len)
            )));
        }
        if batch.seq == 0 && batch.batch > 0 {
            return Err(BertError::Input(
                "empty sequences: every input needs at least one token".into(),
            ));
        }
        self.check_sequences(&batch.ids, batch.type_ids.as_deref(), batch.seq)?;
        let layout = Layout {
            ids: &batch.ids,
            type_ids: batch.type_ids.as_deref(),
            segments: (0..batch.batch)
                .map(|b| b * batch.seq..(b + 1) * batch.seq)
                .collect(),
            mask: Some(&batch.mask),
        };
        Ok(Encoded {
            hidden: self.run(&layout, tap, None)?,
            batch: batch.batch,
            seq: batch.seq,
        })
    }

    /// Runs the encoder on sequences laid end to end: the same per-token results as a padded
    /// batch (within float rounding), without computing any padding.
    pub fn encode_packed(&self, packed: &Packed) -> Result<PackedEncoded> {
        self.encode_packed_with(packed, |_, _| Ok(()))
    }

    /// [`encode_packed`](Self::encode_packed), adding the time of each phase to `profile`.
    pub fn encode_packed_profiled(
        &self,
        packed: &Packed,
        profile: &mut Profile,
    ) -> Result<PackedEncoded> {
        self.encode_packed_inner(packed, |_, _| Ok(()), Some(profile))
    }

    /// [`encode_packed`](Self::encode_packed) with `tap` as in [`encode_with`](Self::encode_with),
    /// on `[tokens, hidden]` states.
    pub fn encode_packed_with(
        &self,
        packed: &Packed,
        tap: impl FnMut(&str, &[f32]) -> Result<()>,
    ) -> Result<PackedEncoded> {
        self.encode_packed_inner(packed, tap, None)
    }

    fn encode_packed_inner(
        &self,
        packed: &Packed,
        tap: impl FnMut(&str, &[f32]) -> Result<()>,
        profile: Option<&mut Profile>,
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
        if let Some(t) = packed
            .type_ids
            .as_ref()
            .filter(|t| t.len() != packed.ids.len())
        {
            return Err(BertError::Input(format!(
                "packed batch: {} type ids for {} ids",
                t.len(),
                packed.ids.len()
            )));
        }
        let segments: Vec<Range<usize>> = segments(&packed.offsets).collect();
        if segments.iter().any(Range::is_empty) {
            return Err(BertError::Input(
                "empty sequences: every input needs at least one token".into(),
            ));
        }
        let longest = segments.iter().map(Range::len).max().unwrap_or(0);
        self.check_sequences(&packed.ids, packed.type_ids.as_deref(), longest)?;
        let layout = Layout {
            ids: &packed.ids,
            type_ids: packed.type_ids.as_deref(),
            segments,
            mask: None,
        };
        Ok(PackedEncoded {
            hidden: self.run(&layout, tap, profile)?,
            offsets: packed.offsets.clone(),
        })
    }

    /// Checks the longest sequence against `max_seq_length`, every id against the vocabulary
    /// and every token type against the model's types.
    fn check_sequences(&self, ids: &[u32], type_ids: Option<&[u32]>, longest: usize) -> Result<()> {
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
        // A model without a token type embedding treats every token as type 0.
        let types = c.type_vocab_size.max(1);
        if let Some(&bad) = type_ids.and_then(|t| t.iter().find(|&&k| k as usize >= types)) {
            return Err(BertError::Input(format!(
                "token type {bad} is outside the model's {types} token types"
            )));
        }
        Ok(())
    }

    /// The encoder on a checked layout: `[rows, hidden]` final states.
    fn run(
        &self,
        layout: &Layout,
        mut tap: impl FnMut(&str, &[f32]) -> Result<()>,
        profile: Option<&mut Profile>,
    ) -> Result<Tensor> {
        let n = layout.ids.len();
        let mode = self.ffn_mode;
        let mut clock = Clock::new(profile);
        let mut h = self.embedding.forward(layout);
        clock.lap(|p| &mut p.embedding);
        if n > 0 {
            tap("embedding", &h)?;
            // Buffers live for the whole call: fresh multi-megabyte vectors per layer cost
            // more in page faults than the attention core itself.
            let mut scratch = Scratch::default();
            let mut x = vec![0f32; h.len()];
            let mut branch = vec![0f32; h.len()];
            match self.config.placement {
                NormPlacement::Pre => {
                    if let Some(first) = self.blocks.first() {
                        first.norm1.forward(&h, &mut x);
                    }
                    for (i, block) in self.blocks.iter().enumerate() {
                        clock.lap(|p| &mut p.norms);
                        let (scratch, branch) = (&mut scratch, &mut branch);
                        block.attn.forward(&x, layout, scratch, branch, &mut clock);
                        block.norm2.add_forward(&mut h, branch, &mut x);
                        clock.lap(|p| &mut p.norms);
                        tap(&format!("ffn_input{i}"), &x)?;
                        (block.ffn).forward(&x, n, mode, &mut scratch.mid, branch, &mut clock)?;
                        tap(&format!("ffn_output{i}"), branch)?;
                        clock.lap(|p| &mut p.other);
                        match self.blocks.get(i + 1) {
                            Some(next) => next.norm1.add_forward(&mut h, branch, &mut x),
                            None => ops::add_assign(&mut h, branch),
                        }
                        tap(&format!("layer{i}"), &h)?;
                    }
                }
                NormPlacement::Post => {
                    for (i, block) in self.blocks.iter().enumerate() {
                        // `add_forward` leaves h + branch in `h` and its norm in `x`; the norm
                        // is the new residual stream.
                        let (scratch, branch) = (&mut scratch, &mut branch);
                        clock.lap(|p| &mut p.other);
                        block.attn.forward(&h, layout, scratch, branch, &mut clock);
                        block.norm1.add_forward(&mut h, branch, &mut x);
                        std::mem::swap(&mut h, &mut x);
                        clock.lap(|p| &mut p.norms);
                        tap(&format!("ffn_input{i}"), &h)?;
                        clock.lap(|p| &mut p.other);
                        (block.ffn).forward(&h, n, mode, &mut scratch.mid, branch, &mut clock)?;
                        tap(&format!("ffn_output{i}"), branch)?;
                        clock.lap(|p| &mut p.other);
                        block.norm2.add_forward(&mut h, branch, &mut x);
                        std::mem::swap(&mut h, &mut x);
                        clock.lap(|p| &mut p.norms);
                        tap(&format!("layer{i}"), &h)?;
                    }
                }
            }
            clock.lap(|p| &mut p.other);
            if let Some(norm) = &self.final_norm {
                norm.forward(&h, &mut x);
                h = x;
            }
            clock.lap(|p| &mut p.norms);
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
        let out = Tensor::from_vec(h, (n, self.config.hidden), &Device::Cpu)?;
        clock.lap(|p| &mut p.other);
        if let Some(p) = clock.profile {
            p.calls += 1;
            p.tokens += n;
        }
        Ok(out)
    }

    /// MLM logits `[rows, vocab]` of hidden-state rows `[rows, hidden]`.
    pub fn mlm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self
            .mlm
            .as_ref()
            .ok_or_else(|| BertError::Input("this checkpoint has no MLM head".into()))?;
        let (rows, _) = hidden.dims2()?;
        let mut x = hidden.flatten_all()?.to_vec1::<f32>()?;
        if let Some((dense, act, norm)) = &head.transform {
            x = norm.apply(&dense.apply_act(&x, rows, *act));
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
        let head = self
            .cls
            .as_ref()
            .ok_or_else(|| BertError::Input("this checkpoint has no classification head".into()))?;
        let width = self.config.hidden;
        let states = hidden.flatten_all()?.to_vec1::<f32>()?;
        let b = rows.len();
        let mode = match head.config.pooler {
            Pooler::ZeroIndex => Pooling::First,
            Pooler::Avg => Pooling::Mean,
            Pooler::Max => Pooling::Max,
        };
        let mut pooled = Vec::with_capacity(b * width);
        for r in rows {
            match r.is_empty() {
                true => pooled.resize(pooled.len() + width, 0.0),
                false => pooled.extend(pool_rows(&states, width, r.clone(), mode)),
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
