//! Mini-batch training with cross-entropy, fused AdamW or SGD, learning-rate schedules and
//! gradient clipping, evaluated after every epoch.

use crate::model::Model;
use crate::optim::Optimizer;
use crate::state::{
    Distillation, EpochMetrics, PartialEpoch, Schedule, TrainConfig, TrainProgress, TrainState,
};
use anyhow::{ensure, Context, Result};
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

/// Random shifts of square images, the training-time augmentation of [`TrainConfig::shift`].
struct Shifter {
    side: usize,
    max: usize,
}

impl Shifter {
    /// The augmentation for `data`'s inputs, or None for `max == 0`; an error for inputs that
    /// are not square images.
    fn new(data: &Dataset, max: usize) -> Result<Option<Self>> {
        if max == 0 {
            return Ok(None);
        }
        let side = (data.dim as f64).sqrt().round() as usize;
        ensure!(
            side * side == data.dim && side > max,
            "shift {max}: dataset {} has {} features per input, not a square image wider \
             than the shift",
            data.name,
            data.dim
        );
        Ok(Some(Shifter { side, max }))
    }

    /// `src` moved by (dy, dx) into `dst`; uncovered pixels take the top-left corner's value
    /// (the background of the digit and clothing sets).
    fn shift_into(&self, src: &[f32], dy: isize, dx: isize, dst: &mut [f32]) {
        let n = self.side as isize;
        dst.fill(src[0]);
        for y in 0..n {
            let sy = y - dy;
            if !(0..n).contains(&sy) {
                continue;
            }
            let (x0, x1) = (dx.max(0), (n + dx).min(n));
            let row = (y * n) as usize;
            let srow = (sy * n) as usize;
            dst[row + x0 as usize..row + x1 as usize]
                .copy_from_slice(&src[srow + (x0 - dx) as usize..srow + (x1 - dx) as usize]);
        }
    }

    /// The rows `idx` of `data`, each shifted by a random offset drawn from `rng`.
    fn gather(&self, data: &Dataset, idx: &[usize], rng: &mut StdRng) -> Result<(Tensor, Tensor)> {
        let m = self.max as i64;
        let mut x = vec![0f32; idx.len() * data.dim];
        for (dst, &i) in x.chunks_exact_mut(data.dim).zip(idx) {
            let (dy, dx) = (rng.random_range(-m..=m), rng.random_range(-m..=m));
            let (dy, dx) = (dy as isize, dx as isize);
            self.shift_into(data.row(i), dy, dx, dst);
        }
        let y: Vec<u32> = idx.iter().map(|&i| data.labels[i]).collect();
        Ok((
            Tensor::from_vec(x, (idx.len(), data.dim), &Device::Cpu)?,
            Tensor::from_vec(y, idx.len(), &Device::Cpu)?,
        ))
    }
}

/// A loaded distillation teacher and its settings.
struct Teacher {
    model: Model,
    alpha: f64,
    temperature: f64,
}

impl Teacher {
    /// Loads the teacher checkpoint of `d`, checked against the student's widths.
    fn load(d: &Distillation, student: &Model) -> Result<Self> {
        let dir = &d.teacher;
        let state = crate::checkpoint::load_state(dir)
            .with_context(|| format!("distillation teacher {}", dir.display()))?;
        let model = crate::checkpoint::load_model(dir, &state)
            .with_context(|| format!("distillation teacher {}", dir.display()))?;
        ensure!(
            model.input_width() == student.input_width()
                && model.output_width() == student.output_width(),
            "distillation teacher {}: model `{}` maps {} inputs to {} outputs, the student \
             maps {} to {}",
            dir.display(),
            model.spec,
            model.input_width(),
            model.output_width(),
            student.input_width(),
            student.output_width()
        );
        Ok(Teacher {
            model,
            alpha: d.alpha,
            temperature: d.temperature,
        })
    }
}

/// Cross-entropy of `logits` (`[B, C]`) against `labels` with label smoothing `epsilon`: the
/// target distribution is `(1 − ε)·onehot + ε/C`.
pub fn smoothed_cross_entropy(logits: &Tensor, labels: &Tensor, epsilon: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if epsilon == 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - epsilon))? + (uniform * epsilon)?)?)
}

/// `T²·KL(softmax(teacher/T) ‖ softmax(student/T))`, averaged over the batch; the gradient
/// flows into `student` only.
pub fn distillation_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let t = temperature;
    let log_pt = candle_nn::ops::log_softmax(&(teacher.detach() / t)?, D::Minus1)?;
    let log_ps = candle_nn::ops::log_softmax(&(student / t)?, D::Minus1)?;
    let kl = (log_pt.exp()? * (&log_pt - &log_ps)?)?
        .sum(D::Minus1)?
        .mean_all()?;
    Ok((kl * (t * t))?)
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
    evaluate_rows(model, data, 0..data.len())
}

/// Loss and accuracy of `model` on the rows `rows` of `data`, using the inference kernels.
pub fn evaluate_rows(
    model: &Model,
    data: &Dataset,
    rows: std::ops::Range<usize>,
) -> Result<(f64, f64)> {
    let n = rows.len();
    let idx: Vec<usize> = rows.collect();
    let (mut loss, mut right) = (0.0, 0);
    for chunk in idx.chunks(crate::memory::EVAL_CHUNK) {
        let (x, y) = gather(data, chunk)?;
        let logits = model.forward_infer(&x)?;
        loss += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64
            * chunk.len() as f64;
        right += correct(&logits, &y)?;
    }
    let n = n.max(1) as f64;
    Ok((loss / n, right as f64 / n))
}

/// Accuracy of `model`'s soft-routed training forward on the rows `rows` of `data`.
fn soft_accuracy(
    model: &Model,
    data: &Dataset,
    rows: std::ops::Range<usize>,
    soft: fastfeedforward::SoftRouting,
) -> Result<f64> {
    let n = rows.len();
    let idx: Vec<usize> = rows.collect();
    let mut right = 0;
    for chunk in idx.chunks(crate::memory::EVAL_CHUNK) {
        let (x, y) = gather(data, chunk)?;
        right += correct(&model.forward_soft(&x, soft)?, &y)?;
    }
    Ok(right as f64 / n.max(1) as f64)
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
    for chunk in idx.chunks(crate::memory::EVAL_CHUNK) {
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
    ensure!(
        cfg.validation < data.train.len(),
        "validation {} leaves no training inputs: dataset {} has {}",
        cfg.validation,
        data.train.name,
        data.train.len()
    );
    // The validation set is the last `validation` training rows; training uses the rest.
    let train_rows = data.train.len() - cfg.validation;
    let shifter = Shifter::new(&data.train, cfg.shift)?;
    let teacher = cfg
        .distill
        .as_ref()
        .map(|d| Teacher::load(d, model))
        .transpose()?;
    let TrainProgress {
        mut history,
        mut partial,
    } = progress;
    let steps = train_rows.div_ceil(cfg.batch_size);
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
        let order = epoch_order(train_rows, cfg.seed, epoch);
        observer.epoch_started(epoch, cfg.epochs, steps);
        let start = Instant::now();
        let resumed = partial.take();
        let first_step = resumed.as_ref().map_or(0, |p| p.steps_done);
        let (mut loss_sum, mut right, mut seen, earlier_seconds) = resumed
            .map_or((0.0, 0, 0, 0.0), |p| {
                (p.loss_sum, p.right, p.seen, p.train_seconds)
            });
        for (step, batch) in order.chunks(cfg.batch_size).enumerate().skip(first_step) {
            let global = (epoch - 1) * steps + step;
            // Region leaks and shifts are drawn per step from the seed, so a resumed run
            // repeats them.
            let step_seed = cfg.seed ^ (global as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let (x, y) = match &shifter {
                Some(s) => s.gather(
                    &data.train,
                    batch,
                    &mut StdRng::seed_from_u64(step_seed ^ 0x5851_F42D_4C95_7F2D),
                )?,
                None => gather(&data.train, batch)?,
            };
            let soft = cfg
                .soft_routing
                .and_then(|s| s.at(global, cfg.epochs * steps));
            let (logits, aux) = model.forward_step(&x, step_seed, soft, cfg.load_balance)?;
            let mut ce = smoothed_cross_entropy(&logits, &y, cfg.label_smoothing)?;
            if let Some(t) = &teacher {
                let soft = distillation_loss(&logits, &t.model.forward_infer(&x)?, t.temperature)?;
                ce = ((ce * t.alpha)? + (soft * (1.0 - t.alpha))?)?;
            }
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
        let (val_loss, val_accuracy) = if cfg.validation > 0 {
            let (l, a) = evaluate_rows(model, &data.train, train_rows..data.train.len())?;
            ensure!(
                l.is_finite(),
                "the model's validation loss is {l} after epoch {epoch}: its outputs are not \
                 finite"
            );
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        // The soft routing of the epoch's last step, and what hardening it would cost now.
        let last_soft = cfg
            .soft_routing
            .and_then(|s| s.at(epoch * steps - 1, cfg.epochs * steps));
        let routing_gap = match (last_soft, val_accuracy) {
            (Some(soft), Some(hard)) => {
                let rows = train_rows..data.train.len();
                Some(soft_accuracy(model, &data.train, rows, soft)? - hard)
            }
            _ => None,
        };
        // With a validation set, the test set is read once: after the last epoch.
        let (test_loss, test_accuracy) = if cfg.validation == 0 || epoch == cfg.epochs {
            let (l, a) = evaluate(model, &data.test)?;
            ensure!(
                l.is_finite(),
                "the model's test loss is {l} after epoch {epoch}: its outputs are not finite"
            );
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: right as f64 / seen as f64,
            val_loss,
            val_accuracy,
            temperature: last_soft.map(|s| s.temperature),
            routing_gap,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn shifts_move_the_image_and_fill_with_the_corner() {
        let s = Shifter { side: 3, max: 1 };
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut dst = vec![0f32; 9];
        // Down one row, left one column: row y takes source row y-1, column x takes x+1.
        s.shift_into(&src, 1, -1, &mut dst);
        assert_eq!(dst, [1., 1., 1., 2., 3., 1., 5., 6., 1.]);
        s.shift_into(&src, 0, 0, &mut dst);
        assert_eq!(dst, src);
        s.shift_into(&src, -1, 1, &mut dst);
        assert_eq!(dst, [1., 4., 5., 1., 7., 8., 1., 1., 1.]);
        let data = Dataset {
            name: "odd".into(),
            features: vec![0.0; 10],
            labels: vec![0, 1],
            dim: 5,
            classes: 2,
        };
        let err = Shifter::new(&data, 2).err().unwrap().to_string();
        assert!(err.contains("odd") && err.contains("square"), "{err}");
        assert!(Shifter::new(&data, 0).unwrap().is_none());
    }

    #[test]
    fn smoothed_cross_entropy_matches_its_formula() {
        let logits = tensor(&[2.0, -1.0, 0.5, 0.0, 3.0, -2.0], (2, 3));
        let labels = Tensor::from_vec(vec![0u32, 1], 2, &Device::Cpu).unwrap();
        let plain = candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let at = |e| {
            smoothed_cross_entropy(&logits, &labels, e)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!((at(0.0) - plain).abs() < 1e-6);
        // By hand: -Σ_c target_c · log p_c, target (1-ε)·onehot + ε/3.
        let rows = [[2.0f64, -1.0, 0.5], [0.0, 3.0, -2.0]];
        let want: f64 = rows
            .iter()
            .zip([0, 1])
            .map(|(r, y)| {
                let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
                (0..3)
                    .map(|c| {
                        let t = 0.1 / 3.0 + if c == y { 0.9 } else { 0.0 };
                        -t * (r[c] - lse)
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        assert!(
            (at(0.1) as f64 - want).abs() < 1e-5,
            "{} vs {want}",
            at(0.1)
        );
    }

    #[test]
    fn distillation_loss_is_zero_at_the_teacher_and_matches_its_formula() {
        let s = tensor(&[1.0, 0.0, -1.0], (1, 3));
        let t = tensor(&[0.0, 2.0, 0.0], (1, 3));
        let same = distillation_loss(&s, &s, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(same.abs() < 1e-6, "{same}");
        let softmax = |v: [f64; 3], temp: f64| {
            let e: Vec<f64> = v.iter().map(|x| (x / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        let (ps, pt) = (
            softmax([1.0, 0.0, -1.0], 2.0),
            softmax([0.0, 2.0, 0.0], 2.0),
        );
        let kl: f64 = (0..3).map(|c| pt[c] * (pt[c] / ps[c]).ln()).sum();
        let got = distillation_loss(&s, &t, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (got as f64 - 4.0 * kl).abs() < 1e-5,
            "{got} vs {}",
            4.0 * kl
        );
    }
}
