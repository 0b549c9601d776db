//! Mini-batch training with cross-entropy, fused AdamW or SGD, learning-rate schedules and
//! gradient clipping, evaluated after every epoch.

use crate::model::Model;
use crate::optim::Optimizer;
use crate::state::{EpochMetrics, PartialEpoch, Schedule, TrainConfig, TrainProgress, TrainState};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};
use fff_data::{Dataset, Split};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

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

/// Two models compared on one dataset: each one's accuracy, and how often they predict the same
/// class (as for a model and its bf16 or int8 copy).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Agreement {
    /// Accuracy of the first model.
    pub accuracy_a: f64,
    /// Accuracy of the second model.
    pub accuracy_b: f64,
    /// Fraction of inputs on which both predict the same class.
    pub same_prediction: f64,
    /// Largest |logit difference| over all inputs and classes.
    pub max_logit_diff: f64,
    /// Inputs compared.
    pub inputs: usize,
}

/// Compares `a` and `b` on `data` with the inference kernels.
pub fn compare(a: &Model, b: &Model, data: &Dataset) -> Result<Agreement> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let (mut right_a, mut right_b, mut same, mut max_diff) = (0, 0, 0, 0f64);
    for chunk in idx.chunks(1024) {
        let (x, y) = gather(data, chunk)?;
        let (la, lb) = (a.forward_infer(&x)?, b.forward_infer(&x)?);
        right_a += correct(&la, &y)?;
        right_b += correct(&lb, &y)?;
        same += correct(&la, &lb.argmax(D::Minus1)?)?;
        let d = (&la - &lb)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        max_diff = max_diff.max(if d.is_nan() { f64::INFINITY } else { d });
    }
    let n = data.len().max(1) as f64;
    Ok(Agreement {
        accuracy_a: right_a as f64 / n,
        accuracy_b: right_b as f64 / n,
        same_prediction: same as f64 / n,
        max_logit_diff: max_diff,
        inputs: data.len(),
    })
}

/// The optimizer `cfg` asks for, over `model`'s parameters.
pub fn optimizer_for(model: &Model, cfg: &TrainConfig) -> Optimizer {
    Optimizer::new(model.vars(), cfg.optimizer, cfg.lr, cfg.weight_decay)
}

/// Where a step of an epoch stands.
#[derive(Clone, Copy, Debug)]
pub struct StepProgress {
    /// 1-based epoch.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps in this epoch.
    pub steps: usize,
    /// Mean training loss of the epoch so far.
    pub mean_loss: f64,
    /// Training accuracy of the epoch so far.
    pub accuracy: f64,
    /// Training inputs per second in this epoch.
    pub inputs_per_second: f64,
}

/// What a training run reports as it goes (a progress display, routing trackers); every method
/// does nothing by default. `()` observes nothing; [`OnEpoch`] wraps a closure over finished
/// epochs.
pub trait TrainObserver {
    /// Epoch `epoch` of `epochs`, with `steps` steps, begins.
    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps: usize) {
        let _ = (epoch, epochs, steps);
    }

    /// A step finished.
    fn step_finished(&mut self, progress: &StepProgress) {
        let _ = progress;
    }

    /// An epoch finished and was evaluated (and, with a checkpoint folder, saved).
    fn epoch_finished(&mut self, metrics: &EpochMetrics) {
        let _ = metrics;
    }

    /// Asked after every step: `true` stops the run there (after checkpointing it, where the
    /// run has a checkpoint folder) with an [`Interrupted`] error.
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// The error of a run stopped by [`TrainObserver::stop_requested`]: where it stopped, and
/// whether a checkpoint of that point was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// The epoch it stopped in.
    pub epoch: usize,
    /// Steps of that epoch done.
    pub step: usize,
    /// Steps in the epoch.
    pub steps: usize,
    /// Whether the point was checkpointed.
    pub checkpointed: bool,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted after step {} of {} in epoch {}",
            self.step, self.steps, self.epoch
        )
    }
}

impl std::error::Error for Interrupted {}

impl TrainObserver for () {}

/// An observer that calls its closure with each finished epoch.
pub struct OnEpoch<F>(pub F);

impl<F: FnMut(&EpochMetrics)> TrainObserver for OnEpoch<F> {
    fn epoch_finished(&mut self, metrics: &EpochMetrics) {
        (self.0)(metrics)
    }
}

/// Trains a fresh `model` on `data.train`, evaluating on `data.test` after each epoch;
/// `observer` sees the run as it goes.
pub fn train(
    model: &Model,
    data: &Split,
    cfg: &TrainConfig,
    observer: impl TrainObserver,
) -> Result<Vec<EpochMetrics>> {
    let mut opt = optimizer_for(model, cfg);
    train_from(
        model,
        &mut opt,
        data,
        cfg,
        TrainProgress::default(),
        None,
        observer,
    )
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

/// Continues training from `progress` (the epochs done and an interrupted one; empty for a
/// fresh run) with optimizer `opt`, up to `cfg.epochs`. With `checkpoint = Some((dir,
/// model_seed))`, saves a checkpoint set (with `metrics.json`) into `dir` after every epoch,
/// before the observer hears of it, and when the observer asks to stop. A resumed run takes the
/// same steps, with the same data order and noise, as an uninterrupted one.
pub fn train_from(
    model: &Model,
    opt: &mut Optimizer,
    data: &Split,
    cfg: &TrainConfig,
    progress: TrainProgress,
    checkpoint: Option<(&Path, u64)>,
    mut observer: impl TrainObserver,
) -> Result<Vec<EpochMetrics>> {
    cfg.validate()?;
    ensure!(
        data.train.dim == model.input_width(),
        "dataset {} has {} features per input, the model takes {}",
        data.train.name,
        data.train.dim,
        model.input_width()
    );
    ensure!(
        data.train.classes == model.output_width(),
        "dataset {} has {} classes, the model outputs {}; end the model with {} outputs",
        data.train.name,
        data.train.classes,
        model.output_width(),
        data.train.classes
    );
    ensure!(
        !data.train.is_empty(),
        "dataset {} is empty",
        data.train.name
    );
    let TrainProgress {
        mut history,
        mut partial,
    } = progress;
    let steps = data.train.len().div_ceil(cfg.batch_size);
    let done = history.len() * steps + partial.as_ref().map_or(0, |p| p.steps_done);
    ensure!(
        opt.step_count() == done as u64,
        "optimizer_step is {}, but {} epochs and {} steps of {} per epoch make {done}; the \
         state does not belong to this data and batch size",
        opt.step_count(),
        history.len(),
        partial.as_ref().map_or(0, |p| p.steps_done),
        steps
    );
    if let Some(p) = &partial {
        ensure!(
            p.steps_done < steps,
            "partial: {} steps done of an epoch of {steps}",
            p.steps_done
        );
    }
    let save = |history: &[EpochMetrics], opt: &Optimizer, partial: Option<PartialEpoch>| {
        let Some((dir, model_seed)) = checkpoint else {
            return Ok(false);
        };
        let state = TrainState {
            model: model.spec.to_string(),
            model_seed,
            dataset: data.train.name.clone(),
            config: cfg.clone(),
            epoch: history.len(),
            optimizer_step: opt.step_count(),
            history: history.to_vec(),
            partial,
            files: Default::default(),
        };
        crate::checkpoint::save(dir, model, opt, &state).map(|()| true)
    };
    for epoch in history.len() + 1..=cfg.epochs {
        let order = epoch_order(data.train.len(), cfg.seed, epoch);
        observer.epoch_started(epoch, cfg.epochs, steps);
        let start = Instant::now();
        let resumed = partial.take();
        let first_step = resumed.as_ref().map_or(0, |p| p.steps_done);
        let (mut loss_sum, mut right, mut seen, earlier_seconds) = resumed
            .map_or((0.0, 0, 0, 0.0), |p| {
                (p.loss_sum, p.right, p.seen, p.train_seconds)
            });
        for (step, batch) in order.chunks(cfg.batch_size).enumerate().skip(first_step) {
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
            let l = loss.to_scalar::<f32>()? as f64;
            ensure!(
                l.is_finite(),
                "training diverged: loss is {l} at epoch {epoch}, step {step}"
            );
            let grads = loss.backward()?;
            opt.set_learning_rate(learning_rate(cfg, global, cfg.epochs * steps));
            let scale = match cfg.clip_norm {
                Some(max) => {
                    let norm = opt.grad_norm(&grads)?;
                    ensure!(
                        norm.is_finite(),
                        "training diverged: gradient norm is {norm} at epoch {epoch}, step {step}"
                    );
                    if norm > max {
                        (max / norm) as f32
                    } else {
                        1.0
                    }
                }
                None => 1.0,
            };
            opt.step(&grads, scale)?;
            loss_sum += l * batch.len() as f64;
            right += correct(&logits, &y)?;
            seen += batch.len();
            let train_seconds = earlier_seconds + start.elapsed().as_secs_f64();
            observer.step_finished(&StepProgress {
                epoch,
                step: step + 1,
                steps,
                mean_loss: loss_sum / seen as f64,
                accuracy: right as f64 / seen as f64,
                inputs_per_second: seen as f64 / train_seconds,
            });
            if observer.stop_requested() {
                let point = (step + 1 < steps).then(|| PartialEpoch {
                    steps_done: step + 1,
                    loss_sum,
                    right,
                    seen,
                    train_seconds,
                });
                // The last step of an epoch is saved at the epoch's end, after its evaluation.
                if let Some(point) = point {
                    let checkpointed = save(&history, opt, Some(point))?;
                    return Err(Interrupted {
                        epoch,
                        step: step + 1,
                        steps,
                        checkpointed,
                    }
                    .into());
                }
            }
        }
        let train_seconds = earlier_seconds + start.elapsed().as_secs_f64();
        let eval_start = Instant::now();
        let (test_loss, test_accuracy) = evaluate(model, &data.test)?;
        ensure!(
            test_loss.is_finite(),
            "the model's test loss is {test_loss} after epoch {epoch}: its outputs are not finite"
        );
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: right as f64 / seen as f64,
            test_loss,
            test_accuracy,
            train_seconds,
            eval_seconds: eval_start.elapsed().as_secs_f64(),
        };
        history.push(m.clone());
        let checkpointed = save(&history, opt, None)?;
        observer.epoch_finished(&m);
        if epoch < cfg.epochs && observer.stop_requested() {
            return Err(Interrupted {
                epoch,
                step: steps,
                steps,
                checkpointed,
            }
            .into());
        }
    }
    Ok(history)
}
