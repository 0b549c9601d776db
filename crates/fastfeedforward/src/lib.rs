//! # fastfeedforward
//!
//! Fast Feedforward Networks (FFF), the conditional feedforward layer of UltraFastBERT
//! ("Exponentially Faster Language Modelling", Belcak & Wattenhofer, 2023): `K` binary trees of
//! depth `D`, each input visiting one root-to-leaf path of `D+1` neurons per tree.
//!
//! The layers, all behind one interface, [`ConditionalLayer`]:
//!
//! - [`Fff`] ([`FffConfig`], [`Activation`], [`Init`]): the UltraFastBERT FFF. Training runs
//!   an O(K·(D+1))-per-input op whose gradients are exactly those of the dense masked
//!   formulation ([`mod@reference`]); inference runs a batched, multithreaded SIMD kernel
//!   ([`kernels`], tuned by [`InferOptions`]); parameters save and load as safetensors under
//!   UltraFastBERT's PyTorch names ([`checkpoint`]).
//! - [`QuantizedFff`]: an FFF for inference with bf16 or int8 weights ([`WeightFormat`]),
//!   made by [`Fff::quantize`]; f32 accumulation, one scale per int8 row.
//! - [`OriginalFff`]: the original FFF (a routing tree over leaf MLPs); [`FlatFff`]: one
//!   hyperplane per level.
//! - [`Linear`] and [`Elementwise`]: the dense and activation layers a model mixes in.
//! - [`DenseFf`]: a dense feedforward layer on SGEMM, the speed baseline.
//! - [`train_op`]: the O(depth) training op, as candle ops and as slice kernels.
//! - [`tree`]: the descent rule (ties and NaN go left) and the path iterators.
//! - [`AlignedAlloc`]: a global allocator wrapper that starts large blocks on 64-byte
//!   boundaries, where the kernels' vector loads are fastest.
//!
//! ```
//! use fastfeedforward::{ConditionalLayer, Fff, FffConfig, Init};
//! use candle_core::{Device, Tensor};
//!
//! let layer = Fff::new(FffConfig::new(16, 8, 3, 2), Init::default(), 42)?;
//! let x = Tensor::randn(0f32, 1.0, (5, 16), &Device::Cpu)?;
//! let y_fast = layer.forward_infer(&x)?; // inference kernel
//! let y_train = layer.forward_train(&x)?; // differentiable, O(depth) per input
//! assert_eq!(y_fast.dims(), &[5, 8]);
//! # let d = (y_fast - y_train)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! # assert!(d < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod alloc;
pub mod balance;
pub mod checkpoint;
mod conditional;
mod config;
mod dense;
mod error;
mod flat;
pub mod internal;
pub mod kernels;
mod layer;
mod master;
mod math;
mod original;
mod quantized;
pub mod reference;
pub mod soft;
pub mod train_op;
pub mod tree;

pub use alloc::AlignedAlloc;
pub use conditional::{ConditionalLayer, Elementwise, Linear, Route, Routing, TrainStep};
pub use config::{Activation, FffConfig, Init, MAX_DEPTH};
pub use dense::DenseFf;
pub use error::{FffError, Result};
pub use flat::{FlatFff, FlatFffConfig, FLAT_NAMES};
pub use kernels::{InferOptions, SimdLevel, Strategy, WeightFormat, Workspace};
pub use layer::{Fff, B_IN, W_IN, W_OUT};
pub use master::{MasterLeafFff, MASTER_HIDDEN, MASTER_OUTPUT};
pub use original::{OriginalFff, OriginalFffConfig, SoftForward, ORIGINAL_NAMES};
pub use quantized::{QuantizedFff, FORMAT_KEY, W_IN_SCALE, W_OUT_SCALE};
pub use soft::SoftRouting;
