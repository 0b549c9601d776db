//! Mini-batch training with cross-entropy, fused AdamW or SGD, learning-rate schedules and
//! gradient clipping, evaluated after every epoch.

use crate::model::Model;
use crate::optim::{Optimizer, OptimizerKind};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};
use fff_data::{Dataset, Split};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

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
    /// Show progress bars.
    #[serde(skip)]
    pub progress: bool,
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
            progress: true,
        }
    }
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant at `lr`.
    Constant,
    /// Half a cosine from `lr` down to 0 over the remaining steps.
    Cosine,
    /// Straight line from `lr` down to 0 over the remaining steps.
    Linear,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            "linear" => Ok(Schedule::Linear),
            _ => Err(format!(
                "unknown schedule `{s}`; expected constant, cosine or linear"
            )),
        }
    }
}

/// The learning rate at 0-based `step` of `total` steps.
pub fn learning_rate(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    let w = cfg.warmup_steps;
    if step < w {
        return cfg.lr * (step + 1) as f64 / w as f64;
    }
    let span = total.saturating_sub(w).max(1) as f64;
    let p = ((step - w) as f64 / span).min(1.0);
    cfg.lr
        * match cfg.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Schedule::Linear => 1.0 - p,
        }
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

fn gather(data: &Dataset, idx: &[usize]) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(idx.len() * data.dim);
    for &i in idx {
        x.extend_from_slice(data.row(i));
    }
    let y: Vec<u32> = idx.iter().map(|&i| data.labels[i]).collect();
    Ok((
        Tensor::from_vec(x, (idx.len(), data.dim), &Device::Cpu)?,
        Tensor::from_vec(y, idx.len(), &Device::Cpu)?,
    ))
}

fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    Ok(pred
        .eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}

/// Loss and accuracy of `model` on `data`, using the inference kernels.
pub fn evaluate(model: &Model, data: &Dataset) -> Result<(f64, f64)> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let (mut loss, mut right) = (0.0, 0);
    for chunk in idx.chunks(1024) {
        let (x, y) = gather(data, chunk)?;
        let logits = model.forward_infer(&x)?;
        loss += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64
            * chunk.len() as f64;
        right += correct(&logits, &y)?;
    }
    let n = data.len().max(1) as f64;
    Ok((loss / n, right as f64 / n))
}

/// The optimizer `cfg` asks for, over `model`'s parameters.
pub fn optimizer_for(model: &Model, cfg: &TrainConfig) -> Optimizer {
    Optimizer::new(model.vars(), cfg.optimizer, cfg.lr, cfg.weight_decay)
}

/// Trains a fresh `model` on `data.train`, evaluating on `data.test` after each epoch;
/// `on_epoch` sees each epoch's figures as they come.
pub fn train(
    model: &Model,
    data: &Split,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochMetrics),
) -> Result<Vec<EpochMetrics>> {
    let mut opt = optimizer_for(model, cfg);
    train_from(model, &mut opt, data, cfg, Vec::new(), None, on_epoch)
}

/// The order of the training rows in `epoch`: a permutation drawn from `(seed, epoch)` alone,
/// so a resumed run shuffles exactly as an uninterrupted one.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// Continues training after the epochs in `history` (empty for a fresh run) with optimizer
/// `opt`, up to `cfg.epochs`. With `checkpoint = Some((dir, model_seed))`, writes a checkpoint
/// and `metrics.json` into `dir` after every epoch.
pub fn train_from(
    model: &Model,
    opt: &mut Optimizer,
    data: &Split,
    cfg: &TrainConfig,
    mut history: Vec<EpochMetrics>,
    checkpoint: Option<(&Path, u64)>,
    mut on_epoch: impl FnMut(&EpochMetrics),
) -> Result<Vec<EpochMetrics>> {
    ensure!(cfg.batch_size > 0, "batch size must be at least 1");
    ensure!(
        cfg.lr.is_finite() && cfg.lr > 0.0,
        "learning rate must be a positive number"
    );
    ensure!(
        data.train.dim == model.input_width(),
        "dataset {} has {} features per input, the model takes {}",
        data.train.name,
        data.train.dim,
        model.input_width()
    );
    ensure!(
        data.train.classes <= model.output_width(),
        "dataset {} has {} classes, the model outputs {}",
        data.train.name,
        data.train.classes,
        model.output_width()
    );
    ensure!(
        !data.train.is_empty(),
        "dataset {} is empty",
        data.train.name
    );
    for epoch in history.len() + 1..=cfg.epochs {
        let order = epoch_order(data.train.len(), cfg.seed, epoch);
        let steps = order.len().div_ceil(cfg.batch_size);
        let bar = if cfg.progress {
            let b = ProgressBar::new(steps as u64);
            b.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:25}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(format!("{epoch}/{}", cfg.epochs));
            b
        } else {
            ProgressBar::hidden()
        };
        let start = Instant::now();
        let (mut loss_sum, mut right, mut seen) = (0.0, 0usize, 0usize);
        for (step, batch) in order.chunks(cfg.batch_size).enumerate() {
            let (x, y) = gather(&data.train, batch)?;
            let global = (epoch - 1) * steps + step;
            // Region leaks are drawn per step from the seed, so a resumed run repeats them.
            let step_seed = cfg.seed ^ (global as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let (logits, aux) = model.forward_step(&x, step_seed)?;
            let ce = candle_nn::loss::cross_entropy(&logits, &y)?;
            let loss = match aux {
                Some(a) => (ce + a)?,
                None => ce,
            };
            let grads = loss.backward()?;
            opt.set_learning_rate(learning_rate(cfg, global, cfg.epochs * steps));
            let scale = match cfg.clip_norm {
                Some(max) => {
                    let norm = opt.grad_norm(&grads)?;
                    if norm > max {
                        (max / norm) as f32
                    } else {
                        1.0
                    }
                }
                None => 1.0,
            };
            opt.step(&grads, scale)?;
            let l = loss.to_scalar::<f32>()? as f64;
            ensure!(
                l.is_finite(),
                "training diverged: loss is {l} at epoch {epoch}, step {step}"
            );
            loss_sum += l * batch.len() as f64;
            right += correct(&logits, &y)?;
            seen += batch.len();
            if step % 20 == 0 {
                let rate = seen as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} acc {:.2}% {rate:.0} inputs/s",
                    loss_sum / seen as f64,
                    100.0 * right as f64 / seen as f64
                ));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = start.elapsed().as_secs_f64();
        let eval_start = Instant::now();
        let (test_loss, test_accuracy) = evaluate(model, &data.test)?;
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: right as f64 / seen as f64,
            test_loss,
            test_accuracy,
            train_seconds,
            eval_seconds: eval_start.elapsed().as_secs_f64(),
        };
        on_epoch(&m);
        history.push(m);
        if let Some((dir, model_seed)) = checkpoint {
            let state = crate::checkpoint::TrainState {
                model: model.spec.to_string(),
                model_seed,
                dataset: data.train.name.clone(),
                config: cfg.clone(),
                epoch,
                optimizer_step: opt.step_count(),
                history: history.clone(),
            };
            crate::checkpoint::save(dir, model, opt, &state)?;
            crate::checkpoint::write_atomic(
                &dir.join("metrics.json"),
                serde_json::to_string_pretty(&history)?.as_bytes(),
            )?;
        }
    }
    Ok(history)
}
