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
    /// Soft-to-hard routing of the FFF layers, annealed to hard over training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_routing: Option<SoftSchedule>,
    /// Weight of the FFF layers' load-balancing loss ([`fastfeedforward::balance`]; 0: none).
    #[serde(default)]
    pub load_balance: f64,
}

/// Soft-to-hard training ([`fastfeedforward::soft`]): the FFF layers route their top `levels`
/// levels softly, the temperature falling geometrically from `start_temperature` to
/// `end_temperature` over the first `1 − hard_fraction` of the steps; the last
/// `hard_fraction` train hard, so that the net trained is the net deployed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SoftSchedule {
    /// Levels routed softly.
    pub levels: usize,
    /// Temperature at the first step.
    pub start_temperature: f64,
    /// Temperature at the last soft step.
    pub end_temperature: f64,
    /// Fraction of the steps, at the end, trained with hard routing.
    pub hard_fraction: f64,
}

impl std::fmt::Display for SoftSchedule {
    /// `LEVELS:T0:T1:HARD_FRACTION`, as [`SoftSchedule::from_str`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.levels, self.start_temperature, self.end_temperature, self.hard_fraction
        )
    }
}

impl std::str::FromStr for SoftSchedule {
    type Err = anyhow::Error;

    /// `LEVELS:T0:T1:HARD_FRACTION`, e.g. `1:1:0.01:0.2`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let parts: Vec<&str> = s.split(':').collect();
        let [levels, t0, t1, hard] = parts[..] else {
            anyhow::bail!(
                "soft routing `{s}`: expected LEVELS:T0:T1:HARD_FRACTION, e.g. 1:1:0.01:0.2"
            );
        };
        let num = |v: &str, what: &str| -> anyhow::Result<f64> {
            v.parse()
                .with_context(|| format!("soft routing `{s}`: {what} `{v}` is not a number"))
        };
        Ok(SoftSchedule {
            levels: levels
                .parse()
                .with_context(|| format!("soft routing `{s}`: levels `{levels}` is not a count"))?,
            start_temperature: num(t0, "start temperature")?,
            end_temperature: num(t1, "end temperature")?,
            hard_fraction: num(hard, "hard fraction")?,
        })
    }
}

impl SoftSchedule {
    /// The soft routing of 0-based `step` of `total`, or None once training is hard.
    pub fn at(&self, step: usize, total: usize) -> Option<fastfeedforward::SoftRouting> {
        let soft_steps = ((1.0 - self.hard_fraction) * total as f64).round() as usize;
        if step >= soft_steps || self.levels == 0 {
            return None;
        }
        let p = step as f64 / soft_steps.saturating_sub(1).max(1) as f64;
        let ratio = self.end_temperature / self.start_temperature;
        Some(fastfeedforward::SoftRouting {
            levels: self.levels,
            temperature: self.start_temperature * ratio.powf(p),
        })
    }
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
            soft_routing: None,
            load_balance: 0.0,
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
        ensure!(
            self.load_balance.is_finite() && self.load_balance >= 0.0,
            "load_balance must be a number >= 0, got {}",
            self.load_balance
        );
        if let Some(s) = &self.soft_routing {
            for (name, t) in [
                ("start temperature", s.start_temperature),
                ("end temperature", s.end_temperature),
            ] {
                ensure!(
                    t.is_finite() && t > 0.0,
                    "soft routing {name} must be a positive number, got {t}"
                );
            }
            ensure!(
                (0.0..=1.0).contains(&s.hard_fraction),
                "soft routing hard fraction must lie in [0, 1], got {}",
                s.hard_fraction
            );
            ensure!(
                s.levels <= fastfeedforward::MAX_DEPTH,
                "soft routing levels must lie in 0..={}, got {}",
                fastfeedforward::MAX_DEPTH,
                s.levels
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
    /// Soft routing's temperature at the epoch's last step (epochs trained softly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Validation accuracy of the training forward (soft routing at `temperature`) minus that
    /// of the deployed, hard-routed forward (epochs trained softly, with a validation set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_gap: Option<f64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_schedule_anneals_geometrically_then_goes_hard() {
        let s: SoftSchedule = "2:1:0.01:0.25".parse().unwrap();
        assert_eq!(s.to_string(), "2:1:0.01:0.25");
        let t = |step| s.at(step, 100).map(|r| r.temperature);
        // 75 soft steps: T goes 1 → 0.01 over steps 0..=74, geometrically.
        assert_eq!(t(0), Some(1.0));
        assert!((t(37).unwrap() - 0.1).abs() < 1e-9, "{:?}", t(37));
        assert!((t(74).unwrap() - 0.01).abs() < 1e-12);
        assert_eq!((t(75), t(99)), (None, None));
        assert_eq!(s.at(0, 100).unwrap().levels, 2);
        for bad in ["1:1:0.1", "x:1:0.1:0", "1:hot:0.1:0"] {
            assert!(bad.parse::<SoftSchedule>().is_err(), "{bad}");
        }
        let cfg = TrainConfig {
            soft_routing: Some("1:0:0.1:0".parse().unwrap()),
            ..TrainConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("start temperature"), "{err}");
    }
}
