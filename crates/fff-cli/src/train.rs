//! `fff train` and `fff eval`: train a model on a dataset, resume it, evaluate a checkpoint.

use crate::data::{load_data, DataArgs, Dataset};
use crate::limits::THREADS;
use crate::progress::EpochProgress;
use crate::train_config::TrainSettings;
use anyhow::{ensure, Context, Result};
use clap::Args;
use fff_data::Split;
use fff_train::checkpoint::{check_dataset, load_model, load_optimizer, load_state};
use fff_train::frontier::{grid_entry, run_one, DEFAULT_FAMILY, TEACHER_FAMILY};
use fff_train::inspect::RoutingTracker;
use fff_train::memory::{training_memory, RunSize};
use fff_train::trainer::{evaluate, optimizer_for, train_from, Interrupted};
use fff_train::{EpochMetrics, Model, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Options of `fff train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Read the settings from this TOML file; its keys are the flags' names without `--`
    /// (`batch-size = 64`), and flags given on the command line override it.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: TrainSettings,
    /// Continue the run checkpointed in this folder, with the settings of its state.json:
    /// --epochs sets the total to reach, --dataset and --data-dir where its data is read (the
    /// dataset must be the checkpoint's), --threads the worker threads; any other setting given
    /// must equal the checkpoint's, or the run is refused.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// After every epoch, route 512 test inputs and print each conditional layer's region
    /// entropy and how many paths and decisions changed since the last epoch (also written to
    /// routing.json in the output folder).
    #[arg(long)]
    track_routing: bool,
    /// Replace the checkpoint already in `--out` with this new run.
    #[arg(long)]
    force: bool,
}

impl TrainArgs {
    /// The flags given, over the `--config` file's settings where there is one.
    pub fn settings(&self) -> Result<TrainSettings> {
        let flags = self.settings.clone();
        Ok(match &self.config {
            Some(path) => flags.or(TrainSettings::read(path)?),
            None => flags,
        })
    }
}

/// Options of `fff eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder written by `fff train --out`.
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Weight format of the FFF layers at inference: with bf16 or int8, the f32 model is
    /// evaluated too and the two compared (accuracy, predictions that agree).
    #[arg(long, default_value = "f32")]
    weights: fastfeedforward::WeightFormat,
    /// Append the result as one JSON row to this file (a JSON list, created if missing).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn print_epoch(m: &EpochMetrics) {
    let part = |name: &str, loss: Option<f64>, acc: Option<f64>| match (loss, acc) {
        (Some(l), Some(a)) => format!(" | {name} loss {l:.4} acc {:6.2}%", 100.0 * a),
        _ => String::new(),
    };
    let soft = match (m.temperature, m.routing_gap) {
        (Some(t), Some(gap)) => format!(" | soft T {t:.3}, gap to hard {:+.2}", 100.0 * gap),
        (Some(t), None) => format!(" | soft T {t:.3}"),
        _ => String::new(),
    };
    outln!(
        "epoch {:>3}: train loss {:.4} acc {:6.2}%{}{}{} | {:.2} s train, {:.2} s eval",
        m.epoch,
        m.train_loss,
        100.0 * m.train_accuracy,
        part("val", m.val_loss, m.val_accuracy),
        soft,
        part("test", m.test_loss, m.test_accuracy),
        m.train_seconds,
        m.eval_seconds
    );
}

fn describe(model: &Model, data: &Split, validation: usize) {
    let train = if validation > 0 {
        format!(
            "{} train + {validation} validation",
            data.train.len().saturating_sub(validation)
        )
    } else {
        format!("{} train", data.train.len())
    };
    outln!(
        "model `{}`: {} parameters, {} neurons per input, {} multiply-adds per input; data {} \
         ({train}, {} test)",
        model.spec,
        model.parameter_count(),
        model.neurons_per_input(),
        model.multiply_adds_per_input(),
        data.train.name,
        data.test.len()
    );
}

fn tracker_for(on: bool, data: &Split) -> Result<Option<RoutingTracker>> {
    on.then(|| RoutingTracker::new(data)).transpose()
}

fn on_epoch(m: &EpochMetrics, model: &fff_train::Model, tracker: Option<&mut RoutingTracker>) {
    print_epoch(m);
    if let Some(t) = tracker {
        // Statistics are a report, not part of training: a failure is printed, not fatal.
        match t.record(model, m.epoch) {
            Ok(lines) => lines.iter().for_each(|l| outln!("          {l}")),
            Err(e) => errln!("routing statistics: {e:#}"),
        }
    }
}

fn save_tracker(tracker: Option<&RoutingTracker>, dir: Option<&Path>) -> Result<()> {
    if let (Some(t), Some(dir)) = (tracker, dir) {
        t.save(dir)?;
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let settings = args.settings()?;
    let resume = args.resume.as_deref();
    let stop = crate::progress::stop_on_signals()?;
    let run = |stop| run_with(&settings, resume, args.track_routing, args.force, stop);
    let result = match settings.threads {
        Some(n) => {
            ensure!(
                (1..=THREADS).contains(&n),
                "--threads must lie in 1..={THREADS}, got {n}"
            );
            let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build()?;
            pool.install(|| run(stop))
        }
        None => run(stop),
    };
    match result {
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            let i = e.downcast_ref::<Interrupted>().expect("checked");
            match settings.out.as_deref().or(resume) {
                Some(dir) if i.checkpointed => errln!(
                    "stopped: {i}; checkpoint in {}; continue with `fff train --resume {}`",
                    dir.display(),
                    dir.display()
                ),
                _ => errln!("stopped: {i}; nothing saved (train with --out DIR to checkpoint)"),
            }
            std::process::exit(130);
        }
        other => other,
    }
}

/// Checks that `out` can take this run's checkpoints before training starts.
fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.join("state.json").is_file() {
        ensure!(
            force,
            "{} already holds a checkpoint; continue it with --resume {}, or pass --force to \
             replace it with this run",
            out.display(),
            out.display()
        );
    }
    fff_train::checkpoint::check_target(out)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "--out {}: cannot create {}",
                out.display(),
                parent.display()
            )
        })?;
    }
    // Checkpoints are written to a fresh folder beside `out`: make sure one can be made.
    let probe = fff_util::fs::temporary_path(out);
    std::fs::create_dir(&probe)
        .with_context(|| format!("--out {}: cannot write beside it", out.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(())
}

/// `fff train` with merged settings, on the current thread pool.
fn run_with(
    s: &TrainSettings,
    resume: Option<&Path>,
    track_routing: bool,
    force: bool,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let data_args = DataArgs {
        dataset: s.dataset(),
        data_dir: s.data_dir.clone(),
    };
    let history = if let Some(dir) = resume {
        let state = load_state(dir)?;
        s.check_resume(dir, &state.config, &state.model)?;
        // The spirals' points come from the seed; image sets ignore it.
        let (data, _) = load_data(&data_args, state.config.seed)?;
        check_dataset(dir, &state, &data.train.name)?;
        check_memory(&state.model, &state.config, &data, true, Some(dir))?;
        let model = load_model(dir, &state)?;
        let mut opt = optimizer_for(&model, &state.config);
        load_optimizer(dir, &state, &mut opt, model.vars().len())?;
        let mut cfg = state.config.clone();
        if let Some(e) = s.epochs {
            cfg.epochs = e;
        }
        describe(&model, &data, cfg.validation);
        outln!("resuming after epoch {} of {}", state.epoch, cfg.epochs);
        for m in &state.history {
            print_epoch(m);
        }
        let mut tracker = tracker_for(track_routing, &data)?;
        let history = train_from(
            &model,
            &mut opt,
            &data,
            &cfg,
            state.progress(),
            Some((dir, state.model_seed)),
            EpochProgress::new(|m| on_epoch(m, &model, tracker.as_mut())).with_stop(stop),
        )?;
        save_tracker(tracker.as_ref(), Some(dir))?;
        history
    } else {
        // On the image sets without --model: the best configuration of the frontier, its
        // recipe supplying every setting not given.
        let recipe = (s.model.is_none() && s.dataset() != Dataset::Spirals)
            .then(|| grid_entry(DEFAULT_FAMILY).expect("the default family is in the grid"));
        let mut s = match &recipe {
            Some(e) => s.clone().or(TrainSettings::from_recipe(&e.recipe)),
            None => s.clone(),
        };
        // Checked before loading, which may download.
        let mut cfg = s.train_config()?;
        if let Some(out) = s.out.as_deref() {
            check_out(out, force)?;
        }
        let (data, default_model) = load_data(&data_args, cfg.seed)?;
        if let Some(e) = &recipe {
            outln!(
                "the default configuration for {} ({DEFAULT_FAMILY}; settings given override its recipe): `{}`",
                s.dataset(),
                e.spec()
            );
            if e.recipe.distill.is_some() && s.teacher.is_none() {
                let dir = default_teacher(&s, &data, cfg.seed)?;
                s.teacher = Some(dir);
                cfg = s.train_config()?;
            }
        }
        let spec = match &recipe {
            Some(e) => e.model.as_str(),
            None => s.model.as_deref().unwrap_or(default_model),
        };
        check_memory(spec, &cfg, &data, s.out.is_some(), None)?;
        let model = Model::new(spec, cfg.seed)?;
        describe(&model, &data, cfg.validation);
        let mut opt = optimizer_for(&model, &cfg);
        let out = s.out.as_deref().map(|d| (d, cfg.seed));
        let mut tracker = tracker_for(track_routing, &data)?;
        let history = train_from(
            &model,
            &mut opt,
            &data,
            &cfg,
            Vec::new().into(),
            out,
            EpochProgress::new(|m| on_epoch(m, &model, tracker.as_mut())).with_stop(stop),
        )?;
        save_tracker(tracker.as_ref(), s.out.as_deref())?;
        history
    };
    if let Some(last) = history.last() {
        let per_epoch = history.iter().map(|m| m.train_seconds).sum::<f64>() / history.len() as f64;
        let pct = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        match last.val_accuracy {
            Some(v) => outln!(
                "done: validation accuracy {:.2}%, test accuracy {}, {per_epoch:.2} s per epoch",
                100.0 * v,
                pct(last.test_accuracy)
            ),
            None => outln!(
                "done: final test accuracy {}, {per_epoch:.2} s per epoch",
                pct(last.test_accuracy)
            ),
        }
    }
    if let Some(dir) = s.out.as_deref().or(resume) {
        outln!("checkpoint and metrics.json in {}", dir.display());
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let dir = &args.checkpoint;
    let state = load_state(dir)?;
    let model = load_model(dir, &state)?;
    let (data, _) = load_data(&args.data, state.config.seed)?;
    check_dataset(dir, &state, &data.train.name)?;
    if let Some(path) = &args.json {
        fff_util::fs::check_output_file(path, "--json")?;
    }
    let mut quantized = load_model(dir, &state)?;
    let layers = quantized.quantize(args.weights)?;
    let (loss, accuracy) = evaluate(&quantized, &data.test)?;
    ensure!(
        loss.is_finite(),
        "{}: the model's loss on {} is {loss}: its outputs are not finite",
        dir.display(),
        data.test.name
    );
    outln!(
        "{} (epoch {}) on {}, {} weights{}: loss {loss:.4}, accuracy {:.2}% ({} inputs)",
        dir.display(),
        state.epoch,
        data.test.name,
        args.weights,
        if layers > 0 {
            format!(
                " in {layers} FFF layer{}",
                if layers == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        },
        100.0 * accuracy,
        data.test.len()
    );
    let agreement = if layers > 0 {
        let a = fff_train::trainer::compare(&model, &quantized, &data.test)?;
        outln!(
            "against f32 ({:.2}%): {:.2}% of predictions agree, largest logit difference {:.3e}",
            100.0 * a.accuracy_a,
            100.0 * a.same_prediction,
            a.max_logit_diff
        );
        Some(a)
    } else {
        None
    };
    if let Some(path) = &args.json {
        let row = serde_json::json!({
            "checkpoint": dir.display().to_string(),
            "model": model.spec.to_string(),
            "dataset": data.test.name,
            "weights": args.weights.name(),
            "fff_layers_quantized": layers,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "f32_test_accuracy": agreement.map(|a| a.accuracy_a),
            "same_prediction_as_f32": agreement.map(|a| a.same_prediction),
            "max_logit_diff": agreement.map(|a| a.max_logit_diff),
            "inputs": data.test.len(),
        });
        let mut rows: Vec<serde_json::Value> = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!("{}: not a JSON list of rows to append to", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        rows.push(row);
        fff_util::fs::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
        outln!("appended to {}", path.display());
    }
    Ok(())
}

/// Trains (or reads back, when a finished run is there) the dense teacher of the default
/// configuration: beside `--out` as `OUT-teacher`, or in the temporary folder without one.
fn default_teacher(s: &TrainSettings, data: &Split, seed: u64) -> Result<PathBuf> {
    let teacher = grid_entry(TEACHER_FAMILY).expect("the teacher family is in the grid");
    let dir = match s.out.as_deref() {
        Some(out) => {
            let name = out
                .file_name()
                .map_or("run".into(), |n| n.to_string_lossy());
            out.with_file_name(format!("{name}-teacher"))
        }
        None => std::env::temp_dir().join(format!("fff-teacher-{}-seed{seed}", s.dataset())),
    };
    outln!(
        "distilling from the dense teacher `{}` (seed {seed}) in {}",
        teacher.spec(),
        dir.display()
    );
    let dataset = s.dataset().to_string();
    let bars = EpochProgress::new(|m: &EpochMetrics| print_epoch(m));
    let r = run_one(&dataset, data, &teacher, seed, &dir, None, bars)?;
    outln!(
        "teacher: validation accuracy {:.2}%, test accuracy {:.2}%",
        100.0 * r.val_accuracy,
        100.0 * r.test_accuracy
    );
    Ok(dir)
}

/// Refuses a run whose largest buffers at once (parameters, optimizer state, and the largest of
/// a training step, an evaluation pass, a checkpoint save or read; see
/// [`fff_train::memory::training_memory`]) would not fit in what this process may allocate,
/// before the model is built. `resume` names the checkpoint being continued.
fn check_memory(
    spec: &str,
    cfg: &TrainConfig,
    data: &Split,
    checkpoint: bool,
    resume: Option<&Path>,
) -> Result<()> {
    let spec: fff_train::ModelSpec = spec.parse()?;
    // An unreadable teacher is reported, with its path, when training loads it.
    let teacher = cfg
        .distill
        .as_ref()
        .and_then(|d| load_state(&d.teacher).ok())
        .and_then(|state| state.model.parse::<fff_train::ModelSpec>().ok());
    let run = RunSize {
        train_rows: data.train.len().saturating_sub(cfg.validation),
        eval_rows: cfg.validation.max(data.test.len()),
        checkpoint,
        resume: resume.is_some(),
        teacher: teacher.as_ref(),
    };
    // The evaluation passes run the FFF inference walk on the pool's threads.
    let estimate = crate::limits::MemoryEstimate::default()
        .parts(training_memory(&spec, cfg, run))
        .gemm_scratch(rayon::current_num_threads());
    match resume {
        None => estimate.check(
            None,
            "the model's widths, trees or depth (--model), or --batch-size",
        ),
        Some(dir) => estimate.refuse(
            None,
            &format!(
                "{}'s model and batch size are fixed; resume it where more memory is available",
                dir.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train_config::OptimizerChoice;

    fn go(s: &TrainSettings, resume: Option<&Path>) -> Result<()> {
        run_with(s, resume, false, false, Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn a_resume_with_flags_that_change_the_run_is_refused_and_trains_nothing() {
        let root = std::env::temp_dir().join(format!("fff-cli-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("run");
        let fresh = TrainSettings {
            epochs: Some(1),
            out: Some(dir.clone()),
            ..TrainSettings::default()
        };
        go(&fresh, None).unwrap();
        let saved = std::fs::read(dir.join("model.safetensors")).unwrap();
        let changed = TrainSettings {
            epochs: Some(2),
            lr: Some(1e30),
            optimizer: Some(OptimizerChoice::Sgd),
            ..TrainSettings::default()
        };
        let err = go(&changed, Some(&dir)).unwrap_err().to_string();
        assert!(
            err.contains("--lr 1e30 (the checkpoint's: 0.001)")
                && err.contains("--optimizer sgd (the checkpoint's: adamw)"),
            "{err}"
        );
        assert_eq!(load_state(&dir).unwrap().epoch, 1);
        assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), saved);
        // With the checkpoint's own values it continues to the total asked for.
        let same = TrainSettings {
            epochs: Some(2),
            lr: Some(TrainConfig::default().lr),
            ..TrainSettings::default()
        };
        go(&same, Some(&dir)).unwrap();
        assert_eq!(load_state(&dir).unwrap().epoch, 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_run_too_large_for_the_memory_is_refused_naming_its_parts() {
        let data = fff_data::synthetic::spirals(3, 800, 0.03, 0);
        let cfg = TrainConfig::default();
        // Far past any machine: 2 G nodes of 65536-wide output weights.
        let err = check_memory("fff:2-65536:d20:k1000", &cfg, &data, false, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parameters ")
                && err.contains("AdamW's two moments ")
                && err.contains("a batch of 64 rows' activations and their gradients ")
                && err.contains(" available under ")
                && err.contains(
                    "lower the model's widths, trees or depth (--model), or --batch-size"
                ),
            "{err}"
        );
        let err = check_memory(
            "fff:2-65536:d20:k1000",
            &cfg,
            &data,
            true,
            Some(Path::new("r")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("r's model and batch size are fixed"), "{err}");
        // A batch larger than the training set counts the rows it has.
        let big = TrainConfig {
            batch_size: 1 << 40,
            ..TrainConfig::default()
        };
        check_memory(
            "fff:2-32:d4:k4, relu, linear:32-3",
            &big,
            &data,
            false,
            None,
        )
        .unwrap();
    }
}
