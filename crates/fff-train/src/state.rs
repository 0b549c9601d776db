//! The types a training run is described and recorded by: its settings, the figures of each
//! epoch, and what a checkpoint's `state.json` holds. Shared by the training loop and the
//! checkpoints, which depend on this module and not on each other's.

use crate::optim::OptimizerKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Training inputs held out (the last ones) as the validation set, evaluated after every
    /// epoch; with a validation set the test set is evaluated once, after the last epoch.
    #[serde(default)]
    pub validation: usize,
    /// Label smoothing ε of the cross-entropy: the target puts `ε / classes` on every class.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Input augmentation: shift each training image by up to this many pixels in each
    /// direction (square images only; the uncovered border takes the image's corner value).
    #[serde(default)]
    pub shift: usize,
    /// Distillation from a trained teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distillation>,
}

/// Distillation's α when none is given.
pub const DEFAULT_DISTILL_ALPHA: f64 = 0.5;
/// Distillation's temperature when none is given.
pub const DEFAULT_DISTILL_TEMPERATURE: f64 = 4.0;

/// Knowledge distillation: the loss is `α·CE + (1−α)·T²·KL(teacher ‖ student)` with both
/// distributions softened by temperature `T` (Hinton et al.).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distillation {
    /// Checkpoint folder of the teacher (written by `fff train --out`).
    pub teacher: std::path::PathBuf,
    /// Weight α of the cross-entropy with the labels.
    pub alpha: f64,
    /// Softening temperature T.
    pub temperature: f64,
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
            validation: 0,
            label_smoothing: 0.0,
            shift: 0,
            distill: None,
        }
    }
}

/// Largest augmentation shift in pixels.
pub const MAX_SHIFT: usize = 8;

/// Most epochs a run may ask for: far beyond any real run, small enough that a corrupt or
/// careless value is caught before it plans a run of years.
pub const MAX_EPOCHS: usize = 100_000;

impl TrainConfig {
    /// Checks every value's range; the error names the setting and what it expects.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(
            (1..=MAX_EPOCHS).contains(&self.epochs),
            "epochs must lie in 1..={MAX_EPOCHS}, got {}",
            self.epochs
        );
        ensure!(self.batch_size > 0, "batch_size must be at least 1, got 0");
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr (learning rate) must be a positive number, got {}",
            self.lr
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight_decay must be a number >= 0, got {}",
            self.weight_decay
        );
        match self.optimizer {
            OptimizerKind::AdamW { beta1, beta2, eps } => {
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    ensure!(
                        (0.0..1.0).contains(&b),
                        "{name} must lie in [0, 1), got {b}"
                    );
                }
                ensure!(
                    eps.is_finite() && eps > 0.0,
                    "eps must be a positive number, got {eps}"
                );
            }
            OptimizerKind::Sgd { momentum } => ensure!(
                (0.0..1.0).contains(&momentum),
                "momentum must lie in [0, 1), got {momentum}"
            ),
        }
        ensure!(
            (0.0..1.0).contains(&self.label_smoothing),
            "label_smoothing must lie in [0, 1), got {}",
            self.label_smoothing
        );
        ensure!(
            self.shift <= MAX_SHIFT,
            "shift must lie in 0..={MAX_SHIFT} pixels, got {}",
            self.shift
        );
        if let Some(d) = &self.distill {
            ensure!(
                (0.0..=1.0).contains(&d.alpha),
                "distill alpha must lie in [0, 1], got {}",
                d.alpha
            );
            ensure!(
                d.temperature.is_finite() && d.temperature > 0.0,
                "distill temperature must be a positive number, got {}",
                d.temperature
            );
        }
        if let Some(c) = self.clip_norm {
            ensure!(
                c.is_finite() && c > 0.0,
                "the clip norm (clip_norm) must be a positive number, got {c}"
            );
        }
        Ok(())
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
    /// Validation loss after the epoch (runs with a validation set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation accuracy after the epoch (runs with a validation set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Test loss after the epoch: every epoch without a validation set, the last one only with
    /// one.
    #[serde(default)]
    pub test_loss: Option<f64>,
    /// Test accuracy after the epoch (as `test_loss`).
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    /// Seconds spent training (without evaluation).
    pub train_seconds: f64,
    /// Seconds spent evaluating (validation and test sets).
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
    /// Where an interrupted epoch stopped (`None` at an epoch boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
    /// Size and SHA-256 of each file of the checkpoint set, so that loading can tell that the
    /// files belong together (empty in checkpoints written before this was recorded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileDigest>,
}

impl TrainState {
    /// Checks that the recorded figures agree with each other and the settings are in range.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::{ensure, Context};
        self.config.validate().context("config")?;
        ensure!(
            self.epoch <= self.config.epochs,
            "epoch is {}, past config.epochs {}",
            self.epoch,
            self.config.epochs
        );
        ensure!(
            self.history.len() == self.epoch
                && self
                    .history
                    .iter()
                    .enumerate()
                    .all(|(i, m)| m.epoch == i + 1),
            "epoch is {} but history holds {} epochs (numbered {:?})",
            self.epoch,
            self.history.len(),
            self.history.iter().map(|m| m.epoch).collect::<Vec<_>>()
        );
        if let Some(p) = &self.partial {
            ensure!(
                self.epoch < self.config.epochs,
                "partial: an interrupted epoch after the last one ({})",
                self.config.epochs
            );
            ensure!(
                p.steps_done > 0
                    && p.seen >= p.steps_done
                    && p.right <= p.seen
                    && p.loss_sum.is_finite()
                    && p.loss_sum >= 0.0
                    && p.train_seconds.is_finite(),
                "partial: inconsistent figures {p:?}"
            );
        }
        Ok(())
    }

    /// Where this state's run stands.
    pub fn progress(&self) -> TrainProgress {
        TrainProgress {
            history: self.history.clone(),
            partial: self.partial.clone(),
        }
    }
}

/// How far an interrupted epoch got: enough to resume it at the next step and report the same
/// epoch figures as an uninterrupted run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Steps of the epoch already taken.
    pub steps_done: usize,
    /// Sum of the per-input losses so far.
    pub loss_sum: f64,
    /// Inputs classified right so far.
    pub right: usize,
    /// Inputs seen so far.
    pub seen: usize,
    /// Training seconds spent on the epoch so far.
    pub train_seconds: f64,
}

/// Size and SHA-256 (lowercase hex) of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents.
    pub sha256: String,
}

/// Where a run starts: the epochs done, and the interrupted one if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainProgress {
    /// Figures of every completed epoch.
    pub history: Vec<EpochMetrics>,
    /// The interrupted epoch after them.
    pub partial: Option<PartialEpoch>,
}

impl From<Vec<EpochMetrics>> for TrainProgress {
    fn from(history: Vec<EpochMetrics>) -> Self {
        TrainProgress {
            history,
            partial: None,
        }
    }
}
