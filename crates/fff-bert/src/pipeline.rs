//! Model + tokenizer: fill-mask, sentence embeddings and classification on text.

use crate::error::{BertError, Result};
use crate::model::{Batch, CrammedBert, Encoded};
use crate::tokenizer::{BertTokenizer, Encoding};
use candle_core::{Tensor, D};
use std::path::Path;

/// How token states become one vector per text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Pooling {
    /// Mean over the text's tokens (padding excluded).
    #[default]
    Mean,
    /// The first token's state.
    #[cfg_attr(feature = "clap", value(alias = "cls"))]
    First,
    /// Elementwise max over the text's tokens (padding excluded).
    Max,
}

/// The top predictions for one `<mask>`.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskPrediction {
    /// Position of the mask in the token sequence.
    pub position: usize,
    /// `(token id, token text, probability)`, most likely first.
    pub top: Vec<(u32, String, f32)>,
}

/// A result with the number of tokens truncation dropped from its input.
#[derive(Clone, Debug, PartialEq)]
pub struct Output<T> {
    /// The result.
    pub value: T,
    /// Content tokens dropped to fit `max_seq_length` (0 when none).
    pub truncated: usize,
}

/// A loaded model with its tokenizer.
pub struct Pipeline {
    /// The model.
    pub model: CrammedBert,
    /// Its tokenizer.
    pub tokenizer: BertTokenizer,
}

impl Pipeline {
    /// Loads `config.json`, the weights and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Pipeline> {
        let model = CrammedBert::load(dir)?;
        let path = dir.join("tokenizer.json");
        let tokenizer = BertTokenizer::from_file(&path, model.config().max_seq_length)?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(BertError::Tokenizer {
                path,
                message: format!(
                    "the tokenizer has {} tokens but the model's vocab_size is {}",
                    tokenizer.vocab_size(),
                    model.config().vocab_size
                ),
            });
        }
        Ok(Pipeline { model, tokenizer })
    }

    /// The `top_k` most likely tokens at each `<mask>` of `text`.
    pub fn fill_mask(&self, text: &str, top_k: usize) -> Result<Output<Vec<MaskPrediction>>> {
        let enc = self.tokenizer.encode_mlm(text)?;
        let positions: Vec<usize> = (0..enc.ids.len())
            .filter(|&i| enc.ids[i] == self.tokenizer.mask)
            .collect();
        if positions.is_empty() {
            return Err(BertError::Input(format!(
                "no `<mask>` token in {text:?}{}",
                if enc.truncated > 0 {
                    " (after truncation to max_seq_length)"
                } else {
                    ""
                }
            )));
        }
        let batch = self.tokenizer.batch(std::slice::from_ref(&enc));
        let encoded = self.model.encode(&batch)?;
        let rows = Tensor::from_vec(
            positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            positions.len(),
            encoded.hidden.device(),
        )?;
        let logits = self
            .model
            .mlm_logits(&encoded.hidden.index_select(&rows, 0)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        let value = positions
            .iter()
            .zip(probs)
            .map(|(&position, p)| {
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                let top = order
                    .into_iter()
                    .take(top_k)
                    .map(|i| (i as u32, self.tokenizer.token(i as u32), p[i]))
                    .collect();
                MaskPrediction { position, top }
            })
            .collect();
        Ok(Output {
            value,
            truncated: enc.truncated,
        })
    }

    /// One pooled vector per text (MLM layout `A <sep>`), in batches of `batch_size`.
    pub fn embed(
        &self,
        texts: &[String],
        pooling: Pooling,
        batch_size: usize,
    ) -> Result<Vec<Output<Vec<f32>>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let encs = chunk
                .iter()
                .map(|t| self.tokenizer.encode_mlm(t))
                .collect::<Result<Vec<_>>>()?;
            let batch = self.tokenizer.batch(&encs);
            let encoded = self.model.encode(&batch)?;
            let pooled = pool(&encoded, &batch, pooling)?;
            out.extend(pooled.into_iter().zip(&encs).map(|(value, e)| Output {
                value,
                truncated: e.truncated,
            }));
        }
        Ok(out)
    }

    /// Label probabilities for each `(A, optional B)` input, in batches of `batch_size`. With
    /// `avg` or `max` pooling, which (as in the original) pool over every position, padding
    /// included, each input runs alone so that its result does not depend on its batch.
    pub fn classify(
        &self,
        inputs: &[(String, Option<String>)],
        batch_size: usize,
    ) -> Result<Vec<Output<Vec<f32>>>> {
        let pools_padding = self
            .model
            .config()
            .classification_head
            .is_some_and(|h| h.pooler != crate::config::Pooler::ZeroIndex);
        let batch_size = if pools_padding { 1 } else { batch_size.max(1) };
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(batch_size) {
            let encs: Vec<Encoding> = chunk
                .iter()
                .map(|(a, b)| self.tokenizer.encode_classify(a, b.as_deref()))
                .collect::<Result<_>>()?;
            let batch = self.tokenizer.batch(&encs);
            let logits = self.model.classify(&self.model.encode(&batch)?)?;
            let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
            out.extend(probs.into_iter().zip(&encs).map(|(value, e)| Output {
                value,
                truncated: e.truncated,
            }));
        }
        Ok(out)
    }
}

/// Pools each sequence's token states into one vector, ignoring padded positions.
pub fn pool(encoded: &Encoded, batch: &Batch, pooling: Pooling) -> Result<Vec<Vec<f32>>> {
    let hidden = encoded.hidden.dim(D::Minus1)?;
    let states = encoded.hidden.flatten_all()?.to_vec1::<f32>()?;
    Ok((0..batch.batch)
        .map(|b| {
            let n = batch.length(b).max(1);
            let row = |t: usize| {
                let start = (b * batch.seq + t) * hidden;
                &states[start..start + hidden]
            };
            match pooling {
                Pooling::First => row(0).to_vec(),
                Pooling::Mean => {
                    let mut acc = vec![0f32; hidden];
                    for t in 0..n {
                        acc.iter_mut().zip(row(t)).for_each(|(a, v)| *a += v);
                    }
                    acc.iter_mut().for_each(|a| *a /= n as f32);
                    acc
                }
                Pooling::Max => {
                    let mut acc = row(0).to_vec();
                    for t in 1..n {
                        acc.iter_mut().zip(row(t)).for_each(|(a, v)| *a = a.max(*v));
                    }
                    acc
                }
            }
        })
        .collect())
}
