//! Progress bars for long runs: the CLI's observer of a training run.

use fff_train::trainer::{StepProgress, TrainObserver};
use fff_train::EpochMetrics;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Draws a bar per epoch (hidden when stderr is not a terminal) and hands each finished epoch to
/// `on_epoch`.
pub struct EpochProgress<F> {
    bar: Option<ProgressBar>,
    on_epoch: F,
    stop: Option<Arc<AtomicBool>>,
}

impl<F: FnMut(&EpochMetrics)> EpochProgress<F> {
    /// Bars, with `on_epoch` called after each epoch.
    pub fn new(on_epoch: F) -> Self {
        EpochProgress {
            bar: None,
            on_epoch,
            stop: None,
        }
    }

    /// Asks the run to stop once `flag` is set (by a signal handler).
    pub fn with_stop(self, flag: Arc<AtomicBool>) -> Self {
        EpochProgress {
            stop: Some(flag),
            ..self
        }
    }
}

impl<F: FnMut(&EpochMetrics)> TrainObserver for EpochProgress<F> {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps: usize) {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:25}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn step_finished(&mut self, p: &StepProgress) {
        let Some(bar) = &self.bar else { return };
        // A message every 20 steps: redrawing costs more than the small steps themselves.
        if p.step % 20 == 1 {
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% {:.0} inputs/s",
                p.mean_loss,
                100.0 * p.accuracy,
                p.inputs_per_second
            ));
        }
        bar.inc(1);
    }

    fn stop_requested(&mut self) -> bool {
        let stop = self
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if stop {
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
        }
        stop
    }

    fn epoch_finished(&mut self, metrics: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        (self.on_epoch)(metrics);
    }
}

/// One bar over all measurements of `fff bench layer`.
#[derive(Default)]
pub struct MeasurementProgress {
    bar: Option<ProgressBar>,
}

impl MeasurementProgress {
    /// A bar, drawn once the total is known.
    pub fn new() -> Self {
        MeasurementProgress { bar: None }
    }
}

impl fff_bench::runner::BenchObserver for MeasurementProgress {
    fn measuring(&mut self, done: usize, total: usize, message: &str) {
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        });
        bar.set_position(done as u64);
        if done == total {
            bar.finish_and_clear();
        } else {
            bar.set_message(message.to_string());
        }
    }
}

/// A flag the first SIGINT or SIGTERM sets, asking a long run to stop after its current step
/// with a checkpoint; a second one, with the flag already set, ends the process at once (exit
/// status 130).
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}
