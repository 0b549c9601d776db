//! UltraFastBERT (crammedBERT with Fast Feedforward layers) in Rust.
//!
//! Loads the released checkpoint format (`config.json` with an `arch` object, `model.safetensors`
//! or `pytorch_model.bin`, `tokenizer.json`) and runs it with real conditional execution: each
//! FFF layer evaluates `K·(D+1)` neurons per token through `fastfeedforward`'s kernel, where the
//! original PyTorch code computes all `K·M` and masks.
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

pub mod config;
pub mod error;
pub mod hub;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod tokenizer;
pub mod weights;

pub use config::{BertConfig, IntermedType};
pub use error::{BertError, Result};
pub use fastfeedforward::WeightFormat;
pub use hub::resolve_model;
pub use model::{Batch, CrammedBert, Encoded, FfnMode, Packed, PackedEncoded};
pub use pipeline::{Pipeline, Pooling};
pub use tokenizer::BertTokenizer;
pub use weights::Weights;
