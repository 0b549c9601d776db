//! Model + tokenizer: fill-mask, sentence embeddings and classification on text.

use crate::config::{BertConfig, IntermedType};
use crate::error::{BertError, Result};
use crate::model::{Family, Model, PackedEncoded};
use crate::pooling::{Pooling, PoolingConfig};
use crate::sentence_transformers::EmbeddingSpec;
use crate::tokenizer::{BertTokenizer, Encoding};
use candle_core::{Tensor, D};
use std::path::Path;

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

/// A loaded model with its tokenizer and its sentence-embedding settings.
pub struct Pipeline {
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: BertTokenizer,
    /// How it pools and normalises sentence embeddings, and the longest input it takes.
    pub embedding: EmbeddingSpec,
}

impl Pipeline {
    /// Loads `config.json`, the weights and `tokenizer.json` from `dir`, with the
    /// sentence-transformers files where the folder has them (`modules.json`, the pooling
    /// config, `sentence_bert_config.json`).
    pub fn load(dir: &Path) -> Result<Pipeline> {
        let model = Model::load(dir)?;
        let c = model.config();
        let embedding = EmbeddingSpec::from_dir(dir, c.hidden)?;
        let tokenizer = match c.family {
            Family::Crammed => {
                BertTokenizer::from_file(&dir.join("tokenizer.json"), c.max_seq_length)?
            }
            Family::Bert => {
                let max_len = hf_max_len(dir, &embedding, c.max_seq_length)?;
                BertTokenizer::from_hf_dir(dir, max_len, embedding.do_lower_case)?
            }
        };
        let path = tokenizer.path().to_path_buf();
        if tokenizer.vocab_size() > c.vocab_size {
            return Err(BertError::Tokenizer {
                path,
                message: format!(
                    "the tokenizer has {} tokens but the model's vocab_size is {}",
                    tokenizer.vocab_size(),
                    c.vocab_size
                ),
            });
        }
        if let Some((name, id)) = tokenizer
            .special_ids()
            .into_iter()
            .find(|&(_, id)| id as usize >= c.vocab_size)
        {
            return Err(BertError::Tokenizer {
                path,
                message: format!(
                    "the {name} token has id {id}, outside the model's vocabulary of {} tokens",
                    c.vocab_size
                ),
            });
        }
        Ok(Pipeline {
            model,
            tokenizer,
            embedding,
        })
    }

    /// A full-size model (16 layers, hidden 768, sequence 128) with random weights and the
    /// built-in character tokenizer, for benchmarks: `intermed` chooses UltraFastBERT's FFF or
    /// crammedBERT's dense FF.
    pub fn random(intermed: IntermedType, seed: u64) -> Result<Pipeline> {
        let tokenizer = BertTokenizer::char_level(128)?;
        let config = BertConfig::base(intermed, tokenizer.vocab_size());
        let model = Model::random(config, seed)?;
        Ok(Pipeline {
            model,
            tokenizer,
            embedding: EmbeddingSpec::default(),
        })
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

    /// The error for an input without a mask token, saying when truncation removed it.
    pub fn no_mask(&self, text: &str, enc: &Encoding) -> BertError {
        let mask = &self.tokenizer.mask_token;
        const SHOWN: usize = 200;
        let shown: String = text.chars().take(SHOWN).collect();
        let more = if text.chars().count() > SHOWN {
            "..."
        } else {
            ""
        };
        BertError::Input(if enc.truncated > 0 && text.contains(mask.as_str()) {
            format!(
                "the `{mask}` in {shown:?}{more} lies beyond max_seq_length ({} tokens); \
                 {} tokens were cut",
                self.tokenizer.max_len, enc.truncated
            )
        } else {
            format!("no `{mask}` token in {shown:?}{more}")
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

    /// The model's own pooling and normalisation, with `mode` and `normalize` overriding
    /// them where given (a mode replaces all of the model's modes).
    pub fn pooling(&self, mode: Option<Pooling>, normalize: Option<bool>) -> PoolingConfig {
        let own = &self.embedding.pooling;
        PoolingConfig {
            modes: mode.map_or_else(|| own.modes.clone(), |m| vec![m]),
            normalize: normalize.unwrap_or(own.normalize),
        }
    }

    /// One embedding per text (the model's embedding layout), in batches of `batch_size`.
    pub fn embed(
        &self,
        texts: &[String],
        pooling: &PoolingConfig,
        batch_size: usize,
    ) -> Result<Vec<Output<Vec<f32>>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let encs = chunk
                .iter()
                .map(|t| self.tokenizer.encode_text(t))
                .collect::<Result<Vec<_>>>()?;
            let pooled = self.embed_encodings(&encs, pooling)?;
            out.extend(pooled.into_iter().zip(&encs).map(|(value, e)| Output {
                value,
                truncated: e.truncated,
            }));
        }
        Ok(out)
    }

    /// One embedding per encoding, all in one packed batch.
    pub fn embed_encodings(
        &self,
        encodings: &[Encoding],
        pooling: &PoolingConfig,
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
pub fn pool_packed(encoded: &PackedEncoded, pooling: &PoolingConfig) -> Result<Vec<Vec<f32>>> {
    let hidden = encoded.hidden.dim(D::Minus1)?;
    let states = encoded.hidden.flatten_all()?.to_vec1::<f32>()?;
    Ok(crate::batch::segments(&encoded.offsets)
        .map(|rows| pooling.pool(&states, hidden, rows))
        .collect())
}

/// The longest input of a BERT folder, specials included: sentence-transformers'
/// `max_seq_length` where set, else the smaller of the positions the model has and the
/// tokenizer's `model_max_length` (transformers' limit), as sentence-transformers chooses.
fn hf_max_len(dir: &Path, embedding: &EmbeddingSpec, positions: usize) -> Result<usize> {
    if let Some(max) = embedding.max_seq_length {
        if max > positions {
            return Err(BertError::Config {
                path: dir.join("sentence_bert_config.json"),
                key: "max_seq_length".into(),
                message: format!(
                    "= {max} is longer than the model's max_position_embeddings = {positions}"
                ),
            });
        }
        return Ok(max);
    }
    let path = dir.join("tokenizer_config.json");
    let model_max = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("model_max_length")
                .and_then(serde_json::Value::as_f64)
        });
    // transformers writes a huge sentinel (1e30) when there is no limit.
    Ok(match model_max {
        Some(m) if m >= 1.0 && m < positions as f64 => m as usize,
        _ => positions,
    })
}
