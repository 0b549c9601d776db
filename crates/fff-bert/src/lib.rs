//! BERT-family encoders in Rust: Hugging Face BERT checkpoints (sentence-transformers models
//! included) and UltraFastBERT / crammedBERT, on one shared encoder.
//!
//! Loads a model folder (`config.json`, `model.safetensors` or `pytorch_model.bin`,
//! `tokenizer.json`, and the sentence-transformers files where present) and runs it exactly as
//! transformers does. FFF layers run with real conditional execution: each evaluates
//! `K·(D+1)` neurons per token through `fastfeedforward`'s kernel, where the original PyTorch
//! code computes all `K·M` and masks.
//!
//! ```no_run
//! let pipeline = fff_bert::Pipeline::load(std::path::Path::new("UltraFastBERT-1x11-long"))?;
//! let out = pipeline.fill_mask("Paris is the <mask> of France.", 5)?;
//! for (_id, token, p) in &out.value[0].top {
//!     println!("{token} {p:.3}");
//! }
//! # Ok::<(), fff_bert::BertError>(())
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod convert;
mod crammed;
pub mod error;
pub mod evaluate;
pub mod hf_bert;
pub mod hub;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod pooling;
mod section;
pub mod sentence_transformers;
pub mod tokenizer;
pub mod weights;

pub use batch::{Batch, Packed};
pub use config::{BertConfig, IntermedType};
pub use error::{BertError, Result};
pub use fastfeedforward::WeightFormat;
pub use hf_bert::{FffBlocks, HfBertConfig};
pub use hub::resolve_model;
pub use model::{
    Encoded, EncoderConfig, Family, FfnMode, Model, ModelConfig, NormPlacement, PackedEncoded,
    Profile,
};
pub use pipeline::Pipeline;
pub use pooling::{Pooling, PoolingConfig};
pub use sentence_transformers::EmbeddingSpec;
pub use tokenizer::BertTokenizer;
pub use weights::Weights;
