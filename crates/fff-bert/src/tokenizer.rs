//! The model's `tokenizer.json` through the `tokenizers` crate, with each family's input
//! layouts. crammedBERT: `A <sep>` for masked-language modelling and embeddings,
//! `<cls> A <sep> B <sep>` (B possibly empty) for classification, special tokens looked up by
//! their text. Hugging Face BERT: the file's own post-processor (`[CLS] A [SEP]`,
//! `[CLS] A [SEP] B [SEP]` with token type 1 for B), truncated longest-first as transformers
//! truncates, with the special tokens and normaliser settings of `tokenizer_config.json`.

use crate::batch::{Batch, Packed};
use crate::error::{BertError, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tokenizers::{PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy};

/// The special tokens crammedBERT uses, looked up by these texts.
pub const SPECIAL_TOKENS: [&str; 7] = ["<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>"];

/// One tokenized input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, specials included.
    pub ids: Vec<u32>,
    /// Token type ids beside `ids` (0 for the first text and its specials, 1 for the second).
    pub type_ids: Vec<u32>,
    /// How many content tokens were dropped to fit `max_len` (0 when none).
    pub truncated: usize,
}

/// How special tokens frame the texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputLayout {
    /// crammedBERT's: `A <sep>` (MLM, embeddings), `<cls> A <sep> B <sep>` (classification).
    Crammed,
    /// The tokenizer file's post-processor (BERT: `[CLS] A [SEP]`, `[CLS] A [SEP] B [SEP]`).
    Template,
}

/// A tokenizer with its model's special tokens and input layouts.
pub struct BertTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    layout: InputLayout,
    /// Whether texts are lower-cased before tokenizing (sentence-transformers' `do_lower_case`).
    lower_case: bool,
    /// The mask token's text (`<mask>`, `[MASK]`).
    pub mask_token: String,
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
    /// Reads a crammedBERT `tokenizer.json`; `max_len` is the model's `max_seq_length`.
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
        check_unique_ids(&inner, path)?;
        Ok(BertTokenizer {
            pad: id("<pad>")?,
            cls: id("<cls>")?,
            sep: id("<sep>")?,
            mask: id("<mask>")?,
            mask_token: "<mask>".into(),
            inner,
            path: path.to_path_buf(),
            layout: InputLayout::Crammed,
            lower_case: false,
            max_len,
        })
    }

    /// Reads a Hugging Face BERT tokenizer from a model folder: `tokenizer.json`, with the
    /// special tokens and the normaliser settings (`do_lower_case`, `strip_accents`,
    /// `tokenize_chinese_chars`) of `tokenizer_config.json` and `special_tokens_map.json`
    /// where present, as transformers' `BertTokenizerFast` applies them. Inputs longer than
    /// `max_len` tokens (specials included) are truncated longest-first; `lower_case`
    /// lower-cases every text first (sentence-transformers' `do_lower_case`).
    pub fn from_hf_dir(dir: &Path, max_len: usize, lower_case: bool) -> Result<BertTokenizer> {
        let path = dir.join("tokenizer.json");
        let err = |message: String| BertError::Tokenizer {
            path: path.clone(),
            message,
        };
        if !path.is_file() {
            return Err(err(
                "tokenizer file not found (a vocab.txt alone is not read; save the tokenizer \
                 with a recent transformers to get tokenizer.json)"
                    .into(),
            ));
        }
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| err(format!("cannot parse the tokenizer: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| err(format!("cannot turn off the file's truncation: {e}")))?;
        inner.with_padding(None);
        let settings = HfTokenizerSettings::read(dir)?;
        settings.apply_normalizer(&mut inner, &path)?;
        let id = |token: &str, key: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                err(format!(
                    "special token `{token}` ({key}) is not in the vocabulary"
                ))
            })
        };
        let cls = id(&settings.cls, "cls_token")?;
        let sep = id(&settings.sep, "sep_token")?;
        let pad = id(&settings.pad, "pad_token")?;
        let mask = id(&settings.mask, "mask_token")?;
        if inner.get_post_processor().is_none() {
            // Old files may lack one; BERT's layout is what transformers would build.
            let template = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{}:0 $A:0 {}:0", settings.cls, settings.sep))
                .and_then(|b| {
                    b.try_pair(format!(
                        "{}:0 $A:0 {}:0 $B:1 {}:1",
                        settings.cls, settings.sep, settings.sep
                    ))
                })
                .map_err(|e| err(format!("cannot build BERT's input layout: {e}")))?
                .special_tokens(vec![
                    (settings.cls.as_str(), cls),
                    (settings.sep.as_str(), sep),
                ])
                .build()
                .map_err(|e| err(format!("cannot build BERT's input layout: {e}")))?;
            inner.with_post_processor(Some(template));
        }
        let processor = inner.get_post_processor().expect("set above");
        let most_added = processor
            .added_tokens(true)
            .max(processor.added_tokens(false));
        if max_len <= most_added {
            return Err(err(format!(
                "the longest input, {max_len} tokens, leaves no room for text beside the \
                 {most_added} special tokens"
            )));
        }
        check_unique_ids(&inner, &path)?;
        Ok(BertTokenizer {
            inner,
            path: path.clone(),
            layout: InputLayout::Template,
            lower_case,
            mask_token: settings.mask,
            pad,
            cls,
            sep,
            mask,
            max_len,
        })
    }

    /// The input layout.
    pub fn layout(&self) -> InputLayout {
        self.layout
    }

    /// The tokenizer file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The special tokens' ids with their names: `[("pad", id), ("cls", id), ...]`.
    pub fn special_ids(&self) -> [(&'static str, u32); 4] {
        [
            ("pad", self.pad),
            ("cls", self.cls),
            ("sep", self.sep),
            ("mask", self.mask),
        ]
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
        Ok(self.raw(text)?.get_ids().to_vec())
    }

    /// The file's tokenization of `text` without specials or truncation.
    fn raw(&self, text: &str) -> Result<tokenizers::Encoding> {
        let lowered;
        let text = if self.lower_case {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        self.inner
            .encode(text, false)
            .map_err(|e| BertError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot tokenize {text:?}: {e}"),
            })
    }

    /// `a` (and `b`) framed by the file's post-processor, truncated longest-first to
    /// `max_len` tokens, specials included, as transformers' fast tokenizers truncate.
    fn template(&self, a: &str, b: Option<&str>) -> Result<Encoding> {
        let err = |e: tokenizers::Error| BertError::Tokenizer {
            path: self.path.clone(),
            message: format!("cannot tokenize {a:?}: {e}"),
        };
        let processor = self.inner.get_post_processor().expect("checked at load");
        let ea = self.raw(a)?;
        let eb = b.map(|b| self.raw(b)).transpose()?;
        let content = ea.len() + eb.as_ref().map_or(0, |e| e.len());
        let params = TruncationParams {
            max_length: self.max_len - processor.added_tokens(eb.is_some()),
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        let (ea, eb) = tokenizers::truncate_encodings(ea, eb, &params).map_err(err)?;
        let enc = processor.process(ea, eb, true).map_err(err)?;
        let specials = enc
            .get_special_tokens_mask()
            .iter()
            .filter(|&&m| m != 0)
            .count();
        Ok(Encoding {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: content - (enc.len() - specials),
        })
    }

    /// The layout for embeddings: `A <sep>` (crammedBERT), the file's single-text layout
    /// (BERT: `[CLS] A [SEP]`, the text stripped of surrounding whitespace first, as
    /// sentence-transformers does).
    pub fn encode_text(&self, text: &str) -> Result<Encoding> {
        match self.layout {
            InputLayout::Crammed => self.encode_mlm(text),
            InputLayout::Template => self.template(text.trim(), None),
        }
    }

    /// The MLM layout: `A <sep>` (crammedBERT), the file's single-text layout (BERT). Too
    /// long: the end of `A` is dropped so that the whole fits.
    pub fn encode_mlm(&self, text: &str) -> Result<Encoding> {
        if self.layout == InputLayout::Template {
            return self.template(text, None);
        }
        let mut a = self.tokens(text)?;
        let keep = self.max_len - 1;
        let truncated = a.len().saturating_sub(keep);
        a.truncate(keep);
        a.push(self.sep);
        Ok(Encoding {
            type_ids: vec![0; a.len()],
            ids: a,
            truncated,
        })
    }

    /// `<cls> A <sep> B <sep>`, the classification layout, with `B` empty for a single text:
    /// cramming's downstream preparation encodes a single text as a pair with an empty second
    /// text, so fine-tuned checkpoints saw `<cls> A <sep> <sep>`. Too long: tokens are dropped
    /// from the end of the longer text, one at a time (from `A` on a tie), until the whole fits.
    /// With the template layout (BERT): `[CLS] A [SEP]`, or `[CLS] A [SEP] B [SEP]` with token
    /// type 1 for `B [SEP]`, truncated longest-first.
    pub fn encode_classify(&self, a: &str, b: Option<&str>) -> Result<Encoding> {
        if self.layout == InputLayout::Template {
            return self.template(a, b);
        }
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
        Ok(Encoding {
            type_ids: vec![0; ids.len()],
            ids,
            truncated,
        })
    }

    /// Pads encodings into one batch, with their token types.
    pub fn batch(&self, encodings: &[Encoding]) -> Batch {
        let seqs: Vec<Vec<u32>> = encodings.iter().map(|e| e.ids.clone()).collect();
        let types: Vec<Vec<u32>> = encodings.iter().map(|e| e.type_ids.clone()).collect();
        Batch::pad_with_types(&seqs, &types, self.pad)
    }

    /// Lays encodings end to end, without padding, with their token types.
    pub fn pack(encodings: &[Encoding]) -> Packed {
        let seqs: Vec<&[u32]> = encodings.iter().map(|e| e.ids.as_slice()).collect();
        let types: Vec<&[u32]> = encodings.iter().map(|e| e.type_ids.as_slice()).collect();
        Packed::with_types(&seqs, &types)
    }
}

/// Refuses a vocabulary in which two tokens share an id: decoding would be ambiguous and one
/// of them could never be produced as the model saw it in training.
fn check_unique_ids(inner: &tokenizers::Tokenizer, path: &Path) -> Result<()> {
    let vocab = inner.get_vocab(true);
    let mut seen: HashSet<u32> = HashSet::with_capacity(vocab.len());
    let shared: Vec<(&String, u32)> = vocab
        .iter()
        .filter(|&(_, &id)| !seen.insert(id))
        .map(|(t, &id)| (t, id))
        .collect();
    let Some(&(token, id)) = shared.iter().min_by_key(|(_, id)| *id) else {
        return Ok(());
    };
    let other = vocab
        .iter()
        .find(|&(t, &i)| i == id && t != token)
        .map_or("another token", |(t, _)| t.as_str());
    Err(BertError::Tokenizer {
        path: path.to_path_buf(),
        message: format!(
            "the vocabulary gives id {id} to both {other:?} and {token:?} ({} ids are shared): \
             every token needs its own id",
            shared.len()
        ),
    })
}

/// The settings transformers reads beside `tokenizer.json`.
struct HfTokenizerSettings {
    cls: String,
    sep: String,
    pad: String,
    mask: String,
    /// `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` where the file sets them.
    lowercase: Option<bool>,
    strip_accents: Option<Option<bool>>,
    chinese_chars: Option<bool>,
}

impl HfTokenizerSettings {
    /// `tokenizer_config.json`, then `special_tokens_map.json` (which wins for the special
    /// tokens), each optional; BERT's `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]` by default.
    fn read(dir: &Path) -> Result<HfTokenizerSettings> {
        let mut s = HfTokenizerSettings {
            cls: "[CLS]".into(),
            sep: "[SEP]".into(),
            pad: "[PAD]".into(),
            mask: "[MASK]".into(),
            lowercase: None,
            strip_accents: None,
            chinese_chars: None,
        };
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let err = |message: String| BertError::Tokenizer {
                path: path.clone(),
                message,
            };
            let text =
                std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read: {e}")))?;
            let json: Value =
                serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
            let token = |key: &str| -> Result<Option<String>> {
                match json.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(t)) => Ok(Some(t.clone())),
                    Some(v) => match v.get("content").and_then(Value::as_str) {
                        Some(t) => Ok(Some(t.to_string())),
                        None => Err(err(format!(
                            "`{key}` = {v} must be a token text or an object with `content`"
                        ))),
                    },
                }
            };
            for (key, slot) in [
                ("cls_token", &mut s.cls),
                ("sep_token", &mut s.sep),
                ("pad_token", &mut s.pad),
                ("mask_token", &mut s.mask),
            ] {
                if let Some(t) = token(key)? {
                    *slot = t;
                }
            }
            let flag = |key: &str| -> Result<Option<Option<bool>>> {
                match json.get(key) {
                    None => Ok(None),
                    Some(Value::Null) => Ok(Some(None)),
                    Some(Value::Bool(b)) => Ok(Some(Some(*b))),
                    Some(v) => Err(err(format!("`{key}` = {v} must be true, false or null"))),
                }
            };
            if name == "tokenizer_config.json" {
                s.lowercase = flag("do_lower_case")?.map(|v| v.unwrap_or(false));
                s.strip_accents = flag("strip_accents")?;
                s.chinese_chars = flag("tokenize_chinese_chars")?.map(|v| v.unwrap_or(false));
            }
        }
        Ok(s)
    }

    /// Sets the BERT normaliser's options to those `tokenizer_config.json` names, as
    /// `BertTokenizerFast` does when they disagree with `tokenizer.json`.
    fn apply_normalizer(&self, inner: &mut tokenizers::Tokenizer, path: &Path) -> Result<()> {
        let Some(tokenizers::NormalizerWrapper::BertNormalizer(n)) = inner.get_normalizer() else {
            return Ok(());
        };
        let mut n = *n;
        if let Some(v) = self.lowercase {
            n.lowercase = v;
        }
        if let Some(v) = self.strip_accents {
            n.strip_accents = v;
        }
        if let Some(v) = self.chinese_chars {
            n.handle_chinese_chars = v;
        }
        inner
            .with_normalizer(Some(n))
            .map_err(|e| BertError::Tokenizer {
                path: path.to_path_buf(),
                message: format!("cannot set the normaliser's options: {e}"),
            })?;
        Ok(())
    }
}
