//! Training of models built from FFF and dense layers on the O(depth) training op.
//!
//! - [`spec`]: the model description language
//!   (`fff:784-500:d8:identity, relu, linear:500-10`);
//! - [`model`]: the model a description builds, a list of conditional layers;
//! - [`trainer`]: mini-batch training with AdamW and cross-entropy, per-epoch evaluation;
//! - [`frontier`]: the accuracy-against-compute sweep (grid, resumable runs, summaries);
//! - [`inspect`]: routing statistics of conditional layers (region usage, |z|, path changes);
//! - [`memory`]: the memory a training run holds at once, estimated before it starts.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod frontier;
pub mod inspect;
pub mod memory;
pub mod model;
pub mod optim;
pub mod spec;
pub mod state;
pub mod study;
pub mod trainer;

pub use model::Model;
pub use spec::{LayerSpec, ModelSpec};
pub use state::{EpochMetrics, Schedule, TrainConfig};
pub use trainer::{train, OnEpoch, TrainObserver};
