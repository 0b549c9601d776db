//! # fastfeedforward
//!
//! Fast Feedforward Networks (FFF), the conditional feedforward layer of UltraFastBERT
//! ("Exponentially Faster Language Modelling", Belcak & Wattenhofer, 2023): `K` binary trees of
//! depth `D`, each input visiting one root-to-leaf path of `D+1` neurons per tree.
//!
//! - [`config`]: the layer's shape and node activation;
//! - [`reference`]: the dense masked formulation (UltraFastBERT's training), the test oracle;
//! - [`train_op`]: the O(K·(D+1))-per-input training op with exact gradients (candle custom ops);
//! - [`kernels`]: the plain reference descent and the fast batched SIMD inference kernel;
//! - [`dense`]: a dense feedforward layer on candle's SGEMM, the speed baseline;
//! - [`layer`]: the [`Fff`] layer type, with PyTorch-compatible safetensors save/load;
//! - [`alloc`]: [`AlignedAlloc`], the global allocator wrapper that lets the kernels load
//!   aligned vectors.
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

pub mod alloc;
pub mod checkpoint;
pub mod conditional;
pub mod config;
pub mod dense;
pub mod error;
pub mod flat;
pub mod kernels;
pub mod layer;
pub mod math;
pub mod original;
pub mod reference;
pub mod train_op;
pub mod tree;

pub use alloc::AlignedAlloc;
pub use conditional::{ConditionalLayer, Elementwise, Linear, Route, Routing, TrainStep};
pub use config::{Activation, FffConfig, Init};
pub use dense::DenseFf;
pub use error::{FffError, Result};
pub use flat::{FlatFff, FlatFffConfig};
pub use kernels::{InferOptions, SimdLevel, Strategy, Workspace};
pub use layer::Fff;
pub use original::{OriginalFff, OriginalFffConfig};
