//! Model + tokenizer: fill-mask, sentence embeddings and classification on text.

use crate::config::{BertConfig, IntermedType};
use crate::error::{BertError, Result};
use crate::model::{CrammedBert, PackedEncoded};
use crate::tokenizer::{BertTokenizer, Encoding};
use candle_core::{Tensor, D};
use std::ops::Range;
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

impl std::str::FromStr for Pooling {
    type Err = String;

    /// Parses `mean`, `first` (or `cls`) or `max`.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "mean" => Ok(Pooling::Mean),
            "first" | "cls" => Ok(Pooling::First),
            "max" => Ok(Pooling::Max),
            other => Err(format!(
                "unknown pooling `{other}`; expected mean, first or max"
            )),
        }
    }
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

    /// A full-size model (16 layers, hidden 768, sequence 128) with random weights and the
    /// built-in character tokenizer, for benchmarks: `intermed` chooses UltraFastBERT's FFF or
    /// crammedBERT's dense FF.
    pub fn random(intermed: IntermedType, seed: u64) -> Result<Pipeline> {
        let tokenizer = BertTokenizer::char_level(128)?;
        let config = BertConfig::base(intermed, tokenizer.vocab_size());
        let model = CrammedBert::random(config, seed)?;
        Ok(Pipeline { model, tokenizer })
    }

    /// The `top_k` most likely tokens at each `<mask>` of `text`.
    pub fn fill_mask(&self, text: &str, top_k: usize) -> Result<Output<Vec<MaskPrediction>>> {
        let enc = self.tokenizer.encode_mlm(text)?;
        let value = self
            .fill_mask_encodings(std::slice::from_ref(&enc), top_k)?
            .pop()
            .expect("one input");
        if value.is_empty() {
            return Err(self.no_mask(text, &enc));
        }
        Ok(Output {
            value,
            truncated: enc.truncated,
        })
    }

    /// The error for an input without a `<mask>`, saying when truncation removed it.
    pub fn no_mask(&self, text: &str, enc: &Encoding) -> BertError {
        const SHOWN: usize = 200;
        let shown: String = text.chars().take(SHOWN).collect();
        let more = if text.chars().count() > SHOWN {
            "..."
        } else {
            ""
        };
        BertError::Input(if enc.truncated > 0 && text.contains("<mask>") {
            format!(
                "the `<mask>` in {shown:?}{more} lies beyond max_seq_length ({} tokens); \
                 {} tokens were cut",
                self.tokenizer.max_len, enc.truncated
            )
        } else {
            format!("no `<mask>` token in {shown:?}{more}")
        })
    }

    /// For each MLM-layout encoding (one batch), the `top_k` tokens at each of its `<mask>`
    /// positions (an empty list for an encoding without one).
    pub fn fill_mask_encodings(
        &self,
        encodings: &[Encoding],
        top_k: usize,
    ) -> Result<Vec<Vec<MaskPrediction>>> {
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let packed = BertTokenizer::pack(encodings);
        let positions: Vec<Vec<usize>> = encodings
            .iter()
            .map(|e| {
                (0..e.ids.len())
                    .filter(|&i| e.ids[i] == self.tokenizer.mask)
                    .collect()
            })
            .collect();
        let rows: Vec<u32> = positions
            .iter()
            .enumerate()
            .flat_map(|(b, ps)| {
                let start = packed.offsets[b];
                ps.iter().map(move |&p| (start + p) as u32)
            })
            .collect();
        if rows.is_empty() {
            return Ok(vec![Vec::new(); encodings.len()]);
        }
        let encoded = self.model.encode_packed(&packed)?;
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, encoded.hidden.device())?;
        let logits = self
            .model
            .mlm_logits(&encoded.hidden.index_select(&rows, 0)?)?;
        let mut probs = candle_nn::ops::softmax_last_dim(&logits)?
            .to_vec2::<f32>()?
            .into_iter();
        Ok(positions
            .into_iter()
            .map(|ps| {
                ps.into_iter()
                    .zip(probs.by_ref())
                    .map(|(position, p)| {
                        let mut order: Vec<usize> = (0..p.len()).collect();
                        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                        let top = order
                            .into_iter()
                            .take(top_k)
                            .map(|i| (i as u32, self.tokenizer.token(i as u32), p[i]))
                            .collect();
                        MaskPrediction { position, top }
                    })
                    .collect()
            })
            .collect())
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
            let pooled = self.embed_encodings(&encs, pooling)?;
            out.extend(pooled.into_iter().zip(&encs).map(|(value, e)| Output {
                value,
                truncated: e.truncated,
            }));
        }
        Ok(out)
    }

    /// One pooled vector per MLM-layout encoding, all in one batch.
    pub fn embed_encodings(
        &self,
        encodings: &[Encoding],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = self.model.encode_packed(&BertTokenizer::pack(encodings))?;
        pool_packed(&encoded, pooling)
    }

    /// Label probabilities for each `(A, optional B)` input, in batches of `batch_size` (packed,
    /// so each input's result is what it gets alone).
    pub fn classify(
        &self,
        inputs: &[(String, Option<String>)],
        batch_size: usize,
    ) -> Result<Vec<Output<Vec<f32>>>> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(batch_size.max(1)) {
            let encs: Vec<Encoding> = chunk
                .iter()
                .map(|(a, b)| self.tokenizer.encode_classify(a, b.as_deref()))
                .collect::<Result<_>>()?;
            let probs = self.classify_encodings(&encs)?;
            out.extend(probs.into_iter().zip(&encs).map(|(value, e)| Output {
                value,
                truncated: e.truncated,
            }));
        }
        Ok(out)
    }

    /// Label probabilities for each classification-layout encoding, all in one packed batch:
    /// each input is pooled over its own tokens, so no result depends on its batch.
    pub fn classify_encodings(&self, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>> {
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = self.model.encode_packed(&BertTokenizer::pack(encodings))?;
        let logits = self.model.classify_packed(&encoded)?;
        Ok(candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?)
    }
}

/// Pools each sequence of a packed batch into one vector.
pub fn pool_packed(encoded: &PackedEncoded, pooling: Pooling) -> Result<Vec<Vec<f32>>> {
    let hidden = encoded.hidden.dim(D::Minus1)?;
    let states = encoded.hidden.flatten_all()?.to_vec1::<f32>()?;
    Ok(crate::model::segments(&encoded.offsets)
        .map(|rows| pool_rows(&states, hidden, rows, pooling))
        .collect())
}

/// One vector from rows `rows` (non-empty) of `[_, hidden]` states.
fn pool_rows(states: &[f32], hidden: usize, rows: Range<usize>, pooling: Pooling) -> Vec<f32> {
    let row = |t: usize| &states[t * hidden..(t + 1) * hidden];
    match pooling {
        Pooling::First => row(rows.start).to_vec(),
        Pooling::Mean => {
            let n = rows.len() as f32;
            let mut acc = vec![0f32; hidden];
            for t in rows {
                acc.iter_mut().zip(row(t)).for_each(|(a, v)| *a += v);
            }
            acc.iter_mut().for_each(|a| *a /= n);
            acc
        }
        Pooling::Max => {
            let mut acc = row(rows.start).to_vec();
            for t in rows.start + 1..rows.end {
                acc.iter_mut().zip(row(t)).for_each(|(a, v)| *a = a.max(*v));
            }
            acc
        }
    }
}
