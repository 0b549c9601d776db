//! The types a training run is described and recorded by: its settings, the figures of each
//! epoch, and what a checkpoint's `state.json` holds. Shared by the training loop and the
//! checkpoints, which depend on this module and not on each other's.

use crate::optim::OptimizerKind;
use serde::{Deserialize, Serialize};

/// Training settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Inputs per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay (decoupled for AdamW, L2 for SGD).
    pub weight_decay: f64,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// Learning-rate schedule after warm-up.
    pub schedule: Schedule,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this value.
    pub clip_norm: Option<f64>,
    /// Seed of the shuffling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.0,
            optimizer: OptimizerKind::default(),
            schedule: Schedule::Constant,
            warmup_steps: 0,
            clip_norm: None,
            seed: 0,
        }
    }
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Schedule {
    /// Constant at `lr`.
    Constant,
    /// Half a cosine from `lr` down to 0 over the remaining steps.
    Cosine,
    /// Straight line from `lr` down to 0 over the remaining steps.
    Linear,
}

/// Figures of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training accuracy measured during the epoch.
    pub train_accuracy: f64,
    /// Test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy after the epoch.
    pub test_accuracy: f64,
    /// Seconds spent training (without evaluation).
    pub train_seconds: f64,
    /// Seconds spent evaluating the test set.
    pub eval_seconds: f64,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// The model description.
    pub model: String,
    /// Seed the model was initialised with.
    pub model_seed: u64,
    /// Training set name (e.g. `mnist/train`).
    pub dataset: String,
    /// Training settings.
    pub config: TrainConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub optimizer_step: u64,
    /// Figures of every completed epoch.
    pub history: Vec<EpochMetrics>,
}
