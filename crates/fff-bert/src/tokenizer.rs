//! The model's `tokenizer.json` through the `tokenizers` crate, with crammedBERT's input
//! layouts: `A <sep>` for masked-language modelling, `<cls> A <sep> B <sep>` (B possibly empty)
//! for classification. Special tokens are looked up in the file by their text.

use crate::error::{BertError, Result};
use crate::model::{Batch, Packed};
use std::path::{Path, PathBuf};

/// The special tokens crammedBERT uses, looked up by these texts.
pub const SPECIAL_TOKENS: [&str; 7] = ["<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>"];

/// One tokenized input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, specials included.
    pub ids: Vec<u32>,
    /// How many content tokens were dropped to fit `max_len` (0 when none).
    pub truncated: usize,
}

/// A tokenizer with crammedBERT's special tokens and input layouts.
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// `<pad>` id.
    pub pad: u32,
    /// `<cls>` id.
    pub cls: u32,
    /// `<sep>` id.
    pub sep: u32,
    /// `<mask>` id.
    pub mask: u32,
    /// Longest sequence the model accepts, specials included.
    pub max_len: usize,
}

impl BertTokenizer {
    /// Reads `tokenizer.json`; `max_len` is the model's `max_seq_length`.
    pub fn from_file(path: &Path, max_len: usize) -> Result<BertTokenizer> {
        let err = |message: String| BertError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(err("tokenizer file not found".into()));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| err(format!("cannot parse the tokenizer: {e}")))?;
        Self::from_tokenizer(inner, path, max_len)
    }

    /// A character-level WordPiece tokenizer built in (lower-cased printable ASCII, every
    /// character one token, the crammedBERT specials first), for models with random weights
    /// that come without a `tokenizer.json`.
    pub fn char_level(max_len: usize) -> Result<BertTokenizer> {
        let mut vocab = serde_json::Map::new();
        let mut add = |t: String| {
            let id = vocab.len();
            vocab.insert(t, id.into());
        };
        SPECIAL_TOKENS.iter().for_each(|t| add(t.to_string()));
        let chars: Vec<char> = (' '..='~')
            .filter(|c| !c.is_ascii_uppercase() && *c != ' ')
            .collect();
        chars.iter().for_each(|c| add(c.to_string()));
        chars.iter().for_each(|c| add(format!("##{c}")));
        let added: Vec<serde_json::Value> = SPECIAL_TOKENS
            .iter()
            .enumerate()
            .map(|(id, t)| {
                serde_json::json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 1000, "vocab": vocab},
        });
        let path = Path::new("<built-in character tokenizer>");
        let inner: tokenizers::Tokenizer =
            json.to_string().parse().map_err(|e| BertError::Tokenizer {
                path: path.to_path_buf(),
                message: format!("cannot build: {e}"),
            })?;
        Self::from_tokenizer(inner, path, max_len)
    }

    /// Wraps a loaded tokenizer (`path` names it in errors): looks up the specials, turns off
    /// the file's own truncation and padding.
    fn from_tokenizer(
        mut inner: tokenizers::Tokenizer,
        path: &Path,
        max_len: usize,
    ) -> Result<BertTokenizer> {
        let err = |message: String| BertError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        // The layouts and truncation are ours; settings saved in the file must not add padding
        // inside a text or cut it silently.
        inner
            .with_truncation(None)
            .map_err(|e| err(format!("cannot turn off the file's truncation: {e}")))?;
        inner.with_padding(None);
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                err(format!(
                    "special token `{token}` is not in the vocabulary (crammedBERT needs {})",
                    SPECIAL_TOKENS.join(" ")
                ))
            })
        };
        if max_len < 3 {
            return Err(err(format!(
                "max_seq_length {max_len} leaves no room for text"
            )));
        }
        Ok(BertTokenizer {
            pad: id("<pad>")?,
            cls: id("<cls>")?,
            sep: id("<sep>")?,
            mask: id("<mask>")?,
            inner,
            path: path.to_path_buf(),
            max_len,
        })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The text of token `id`.
    pub fn token(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("[{id}]"))
    }

    /// Content tokens of `text`, no specials added (a literal `<mask>` in the text is the mask
    /// token).
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| BertError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot tokenize {text:?}: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `A <sep>`, the MLM layout. Too long: the end of `A` is dropped so that the whole fits.
    pub fn encode_mlm(&self, text: &str) -> Result<Encoding> {
        let mut a = self.tokens(text)?;
        let keep = self.max_len - 1;
        let truncated = a.len().saturating_sub(keep);
        a.truncate(keep);
        a.push(self.sep);
        Ok(Encoding { ids: a, truncated })
    }

    /// `<cls> A <sep> B <sep>`, the classification layout, with `B` empty for a single text:
    /// cramming's downstream preparation encodes a single text as a pair with an empty second
    /// text, so fine-tuned checkpoints saw `<cls> A <sep> <sep>`. Too long: tokens are dropped
    /// from the end of the longer text, one at a time (from `A` on a tie), until the whole fits.
    pub fn encode_classify(&self, a: &str, b: Option<&str>) -> Result<Encoding> {
        let mut ta = self.tokens(a)?;
        let mut tb = match b {
            Some(b) => self.tokens(b)?,
            None => Vec::new(),
        };
        let budget = self.max_len - 3;
        let mut truncated = 0;
        while ta.len() + tb.len() > budget {
            if ta.len() >= tb.len() {
                ta.pop();
            } else {
                tb.pop();
            }
            truncated += 1;
        }
        let mut ids = Vec::with_capacity(ta.len() + tb.len() + 3);
        ids.push(self.cls);
        ids.extend(ta);
        ids.push(self.sep);
        ids.extend(tb);
        ids.push(self.sep);
        Ok(Encoding { ids, truncated })
    }

    /// Pads encodings into one batch.
    pub fn batch(&self, encodings: &[Encoding]) -> Batch {
        let seqs: Vec<Vec<u32>> = encodings.iter().map(|e| e.ids.clone()).collect();
        Batch::pad(&seqs, self.pad)
    }

    /// Lays encodings end to end, without padding.
    pub fn pack(encodings: &[Encoding]) -> Packed {
        let seqs: Vec<&[u32]> = encodings.iter().map(|e| e.ids.as_slice()).collect();
        Packed::new(&seqs)
    }
}
