//! The accuracy-against-compute frontier: a grid of model and recipe configurations, each
//! trained with several seeds, chosen on a validation split and tested once.
//!
//! A configuration's spec is `MODEL | RECIPE`, e.g.
//! `fff:784-64:d8:k5:identity, relu, linear:64-10 | epochs=15 schedule=cosine val=5000
//! kd=dense:0.5:4`: the model description of [`crate::spec`] and a [`Recipe`]. A distilled
//! configuration names its teacher by family; the teacher is that family's run of the same
//! dataset and seed, so the grid lists teachers before their students.
//!
//! Every run trains into its own checkpoint folder under the work folder
//! (`DATASET/FAMILY/seedN`) and writes `result.json` there when it is done: an interrupted
//! sweep resumes the unfinished run from its last checkpoint and skips the finished ones.

use crate::checkpoint::{load_model, load_optimizer, load_state};
use crate::optim::OptimizerKind;
use crate::state::{Distillation, Schedule, SoftSchedule, TrainConfig};
use crate::trainer::{optimizer_for, train_from, TrainObserver};
use crate::Model;
use anyhow::{bail, ensure, Context, Result};
use fff_data::Split;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The training half of a configuration: every setting a run of the frontier varies.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Passes over the training set.
    pub epochs: usize,
    /// Inputs per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule after warm-up.
    pub schedule: Schedule,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Training inputs held out for validation.
    pub validation: usize,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// Random image shifts of up to this many pixels.
    pub shift: usize,
    /// Distillation: the teacher's family, α and temperature.
    pub distill: Option<(String, f64, f64)>,
    /// Soft-to-hard routing of the FFF layers.
    pub soft_routing: Option<SoftSchedule>,
    /// Weight of the load-balancing loss.
    pub load_balance: f64,
}

impl Default for Recipe {
    /// The study's recipe: 10 epochs of AdamW at 1e-3, batch 64, constant rate, 5,000
    /// validation inputs.
    fn default() -> Self {
        Recipe {
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            validation: 5000,
            label_smoothing: 0.0,
            shift: 0,
            distill: None,
            soft_routing: None,
            load_balance: 0.0,
        }
    }
}

impl Recipe {
    /// The training settings of this recipe for `seed`, the teacher (if any) read from
    /// `teacher_dir`.
    pub fn train_config(&self, seed: u64, teacher_dir: Option<&Path>) -> Result<TrainConfig> {
        let distill = match (&self.distill, teacher_dir) {
            (Some((_, alpha, temperature)), Some(dir)) => Some(Distillation {
                teacher: dir.to_path_buf(),
                alpha: *alpha,
                temperature: *temperature,
            }),
            (Some((family, ..)), None) => {
                bail!("the recipe distils from `{family}`: no teacher folder given")
            }
            (None, _) => None,
        };
        let cfg = TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            optimizer: OptimizerKind::default(),
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            clip_norm: None,
            seed,
            validation: self.validation,
            label_smoothing: self.label_smoothing,
            shift: self.shift,
            distill,
            soft_routing: self.soft_routing,
            load_balance: self.load_balance,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn schedule_name(s: Schedule) -> &'static str {
    match s {
        Schedule::Constant => "constant",
        Schedule::Cosine => "cosine",
        Schedule::Linear => "linear",
    }
}

impl fmt::Display for Recipe {
    /// `epochs=E lr=LR batch=B schedule=S val=V`, then the settings that differ from the
    /// defaults (`wd=`, `warmup=`, `smoothing=`, `shift=`, `kd=FAMILY:ALPHA:T`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "epochs={} lr={} batch={} schedule={} val={}",
            self.epochs,
            self.lr,
            self.batch_size,
            schedule_name(self.schedule),
            self.validation
        )?;
        if self.weight_decay != 0.0 {
            write!(f, " wd={}", self.weight_decay)?;
        }
        if self.warmup_steps != 0 {
            write!(f, " warmup={}", self.warmup_steps)?;
        }
        if self.label_smoothing != 0.0 {
            write!(f, " smoothing={}", self.label_smoothing)?;
        }
        if self.shift != 0 {
            write!(f, " shift={}", self.shift)?;
        }
        if let Some((family, alpha, t)) = &self.distill {
            write!(f, " kd={family}:{alpha}:{t}")?;
        }
        if let Some(s) = &self.soft_routing {
            write!(f, " soft={s}")?;
        }
        if self.load_balance != 0.0 {
            write!(f, " balance={}", self.load_balance)?;
        }
        Ok(())
    }
}

impl FromStr for Recipe {
    type Err = anyhow::Error;

    /// Space-separated `key=value` settings over [`Recipe::default`].
    fn from_str(s: &str) -> Result<Self> {
        let mut r = Recipe::default();
        for item in s.split_whitespace() {
            let (key, value) = item
                .split_once('=')
                .with_context(|| format!("recipe item `{item}`: expected key=value"))?;
            let bad = |what: &str| format!("recipe item `{item}`: expected {what}");
            match key {
                "epochs" => r.epochs = value.parse().with_context(|| bad("a count"))?,
                "batch" => r.batch_size = value.parse().with_context(|| bad("a count"))?,
                "lr" => r.lr = value.parse().with_context(|| bad("a number"))?,
                "wd" => r.weight_decay = value.parse().with_context(|| bad("a number"))?,
                "warmup" => r.warmup_steps = value.parse().with_context(|| bad("a count"))?,
                "val" => r.validation = value.parse().with_context(|| bad("a count"))?,
                "smoothing" => {
                    r.label_smoothing = value.parse().with_context(|| bad("a number"))?
                }
                "shift" => r.shift = value.parse().with_context(|| bad("a count"))?,
                "schedule" => {
                    r.schedule = match value {
                        "constant" => Schedule::Constant,
                        "cosine" => Schedule::Cosine,
                        "linear" => Schedule::Linear,
                        _ => bail!(bad("constant, cosine or linear")),
                    }
                }
                "kd" => {
                    let parts: Vec<&str> = value.split(':').collect();
                    let [family, alpha, t] = parts[..] else {
                        bail!(bad("FAMILY:ALPHA:TEMPERATURE"))
                    };
                    ensure!(
                        !family.is_empty(),
                        bad("a teacher family before the first `:`")
                    );
                    r.distill = Some((
                        family.to_string(),
                        alpha.parse().with_context(|| bad("a number α"))?,
                        t.parse().with_context(|| bad("a number T"))?,
                    ));
                }
                "soft" => r.soft_routing = Some(value.parse()?),
                "balance" => r.load_balance = value.parse().with_context(|| bad("a number"))?,
                _ => bail!(
                    "recipe item `{item}`: unknown key `{key}` (expected epochs, batch, lr, wd, \
                     warmup, val, smoothing, shift, schedule, kd, soft or balance)"
                ),
            }
        }
        Ok(r)
    }
}

/// One configuration of the grid: a family name, a model description and a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Short name, unique in the grid (the series of the plot groups families by prefix).
    pub family: String,
    /// Model description.
    pub model: String,
    /// Training recipe.
    pub recipe: Recipe,
}

impl Entry {
    /// `family` from a `MODEL | RECIPE` spec string.
    pub fn parse(family: &str, spec: &str) -> Result<Self> {
        let (model, recipe) = spec
            .split_once('|')
            .with_context(|| format!("{family}: spec `{spec}` has no `| RECIPE` part"))?;
        let model = model.trim().parse::<crate::ModelSpec>()?.to_string();
        let recipe = recipe
            .parse()
            .with_context(|| format!("{family}: spec `{spec}`"))?;
        Ok(Entry {
            family: family.into(),
            model,
            recipe,
        })
    }

    /// The exact `MODEL | RECIPE` string: parsing it gives this entry back.
    pub fn spec(&self) -> String {
        format!("{} | {}", self.model, self.recipe)
    }
}

/// The family `fff train` trains by default on the image sets: the configuration with the best
/// mean validation accuracy within 10% of the dense net's compute in `docs/frontier.json`.
pub const DEFAULT_FAMILY: &str = "forest-k16-256-d1-kd-30ep";

/// The family a distilled configuration of the grid learns from: the dense 784-500-10 net
/// trained with the recipe extras.
pub const TEACHER_FAMILY: &str = "dense";

/// The grid entry named `family`.
pub fn grid_entry(family: &str) -> Option<Entry> {
    image_grid().into_iter().find(|e| e.family == family)
}

/// The recipe extras shared by dense and FFF nets alike in the grid: 15 epochs, cosine.
const RECIPE: &str = "epochs=15 schedule=cosine";

/// The longer training of the best configuration: 30 epochs, cosine.
const LONG: &str = "epochs=30 schedule=cosine";

/// The configurations whose ablations the grid holds, each `STEM-kd` or `STEM-kd-30ep`
/// (see [`ablations_of`]).
pub const ABLATED: &[&str] = &[
    "forest-k16-256-d1-kd-30ep",
    "forest-k5-64-kd-30ep",
    "forest-k5-64-kd",
];

/// The full grid for 784-input, 10-class image sets, teachers first, then the ablations of
/// the best configuration (`ablate-*`: one ingredient removed each).
pub fn image_grid() -> Vec<Entry> {
    let kd = "kd=dense:0.5:4";
    let rows: Vec<(&str, String)> = vec![
        (
            "dense",
            format!("linear:784-500, relu, linear:500-10 | {RECIPE}"),
        ),
        (
            "dense-plain",
            "linear:784-500, relu, linear:500-10 | epochs=10".into(),
        ),
        (
            "fff-plain",
            "fff:784-500:d8:identity, relu, fff:500-10:d8:identity | epochs=10".into(),
        ),
        (
            "forest-k5-64-kd",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | {RECIPE} {kd}"),
        ),
        (
            "forest-k5-64",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | {RECIPE}"),
        ),
        (
            "dense-50",
            format!("linear:784-50, relu, linear:50-10 | {RECIPE}"),
        ),
        (
            "forest-k3-500-kd",
            format!("fff:784-500:d8:k3:identity, relu, linear:500-10 | {RECIPE} {kd}"),
        ),
        // The ingredients on top of the distilled forest, each alone.
        (
            "forest-k5-64-kd-30ep",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | {LONG} {kd}"),
        ),
        (
            "forest-k5-64-kd-soft",
            format!(
                "fff:784-64:d8:k5:identity, relu, linear:64-10 | {RECIPE} {kd} soft=1:1:0.03:0.2"
            ),
        ),
        (
            "forest-k5-64-kd-balance",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | {RECIPE} {kd} balance=0.1"),
        ),
        // Four trees and a master leaf of width 10 in the same budget as five trees.
        (
            "forest-k4-64-master-kd",
            format!("fff:784-64:d8:k4:identity:master=10, relu, linear:64-10 | {RECIPE} {kd}"),
        ),
        // The original FFF (Belcak & Wattenhofer) in the budget: 8 leaves of width 40, trained
        // as a soft mixture with its hardening loss, deployed hard.
        (
            "orig-hardened-kd",
            format!("orig:784-64:d3:l40:harden=1, relu, linear:64-10 | {RECIPE} {kd}"),
        ),
        (
            "ablate-constant-lr-k5-64",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | epochs=15 {kd}"),
        ),
        (
            "ablate-one-tree-k5-64",
            format!("fff:784-64:d8:identity, relu, linear:64-10 | {RECIPE} {kd}"),
        ),
        (
            "ablate-gelu-nodes-k5-64",
            format!("fff:784-64:d8:k5, relu, linear:64-10 | {RECIPE} {kd}"),
        ),
        (
            "ablate-fff-head-k5-64",
            format!("fff:784-64:d8:k5:identity, relu, fff:64-10:d3:k5:identity | {RECIPE} {kd}"),
        ),
        // The dense reference with the longer training of the best configuration, so that
        // the comparison gives both the same extras.
        (
            "dense-30ep",
            format!("linear:784-500, relu, linear:500-10 | {LONG}"),
        ),
        // The ablations of the best configuration (30 epochs), one ingredient removed each.
        (
            "ablate-constant-lr-k5-64-30ep",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | epochs=30 {kd}"),
        ),
        (
            "ablate-one-tree-k5-64-30ep",
            format!("fff:784-64:d8:identity, relu, linear:64-10 | {LONG} {kd}"),
        ),
        (
            "ablate-gelu-nodes-k5-64-30ep",
            format!("fff:784-64:d8:k5, relu, linear:64-10 | {LONG} {kd}"),
        ),
        (
            "ablate-fff-head-k5-64-30ep",
            format!("fff:784-64:d8:k5:identity, relu, fff:64-10:d3:k5:identity | {LONG} {kd}"),
        ),
        (
            "forest-k5-64-30ep",
            format!("fff:784-64:d8:k5:identity, relu, linear:64-10 | {LONG}"),
        ),
        // Shallow, wide forests in the same budget: each node costs 784 + W multiply-adds,
        // so the budget buys about 45 visited nodes, spent on few deep trees or many shallow
        // ones (the two best of a one-seed scan of splits, tools/frontier_split_scan.sh).
        (
            "forest-k13-128-d2-kd",
            format!("fff:784-128:d2:k13:identity, relu, linear:128-10 | {RECIPE} {kd}"),
        ),
        (
            "forest-k13-128-d2-kd-30ep",
            format!("fff:784-128:d2:k13:identity, relu, linear:128-10 | {LONG} {kd}"),
        ),
        (
            "forest-k16-256-d1-kd-30ep",
            format!("fff:784-256:d1:k16:identity, relu, linear:256-10 | {LONG} {kd}"),
        ),
        (
            "forest-k16-256-d1-kd",
            format!("fff:784-256:d1:k16:identity, relu, linear:256-10 | {RECIPE} {kd}"),
        ),
        // The ablations of the best configuration, 16 trees of depth 1 (30 epochs).
        (
            "forest-k16-256-d1-30ep",
            format!("fff:784-256:d1:k16:identity, relu, linear:256-10 | {LONG}"),
        ),
        (
            "ablate-constant-lr-k16-256-d1-30ep",
            format!("fff:784-256:d1:k16:identity, relu, linear:256-10 | epochs=30 {kd}"),
        ),
        (
            "ablate-one-tree-k16-256-d1-30ep",
            format!("fff:784-256:d1:identity, relu, linear:256-10 | {LONG} {kd}"),
        ),
        (
            "ablate-gelu-nodes-k16-256-d1-30ep",
            format!("fff:784-256:d1:k16, relu, linear:256-10 | {LONG} {kd}"),
        ),
        (
            "ablate-fff-head-k16-256-d1-30ep",
            format!("fff:784-256:d1:k16:identity, relu, fff:256-10:d3:k5:identity | {LONG} {kd}"),
        ),
    ];
    // The one-seed scan of how the budget splits between trees, depth and width (`scan-*`,
    // seed 0 on the first dataset only), which chose the shallow forests above; the splits
    // the grid trains with 3 seeds (5x8x64, 13x2x128, 16x1x256) are left out of it.
    let scan = [
        (9, 4, 64),
        (15, 2, 64),
        (4, 8, 128),
        (22, 1, 64),
        (11, 3, 64),
        (7, 4, 128),
        (16, 2, 32),
        (11, 2, 256),
        (8, 2, 512),
        (6, 4, 256),
        (10, 3, 128),
    ]
    .map(|(k, d, w)| {
        (
            format!("scan-k{k}-{w}-d{d}-kd"),
            format!("fff:784-{w}:d{d}:k{k}:identity, relu, linear:{w}-10 | {RECIPE} {kd}"),
        )
    });
    rows.into_iter()
        .map(|(family, spec)| (family.to_string(), spec))
        .chain(scan)
        .map(|(family, spec)| Entry::parse(&family, &spec).expect("the built-in grid parses"))
        .collect()
}

/// Whether `family` runs on the first dataset only (ablations and the scan of splits).
pub fn first_dataset_only(family: &str) -> bool {
    family.starts_with("ablate-") || family.starts_with("scan-")
}

/// The seeds `family` trains out of `seeds`: the scan of splits trains seed 0 only.
pub fn seeds_of(family: &str, seeds: u64) -> u64 {
    if family.starts_with("scan-") {
        seeds.min(1)
    } else {
        seeds
    }
}

/// The figures of one finished run, as its `result.json` holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Dataset name.
    pub dataset: String,
    /// Family of the configuration.
    pub family: String,
    /// The exact `MODEL | RECIPE` string.
    pub spec: String,
    /// Seed of the initialisation and the data order.
    pub seed: u64,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: f64,
    /// Test accuracy after the last epoch (the one test reading of the run).
    pub test_accuracy: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Multiply-adds per input at inference, from the model.
    pub multiply_adds_per_input: usize,
    /// Neurons evaluated per input at inference.
    pub neurons_per_input: usize,
    /// Mean training seconds per epoch.
    pub seconds_per_epoch: f64,
    /// Rayon threads the run trained on.
    pub threads: usize,
    /// The CPU the run trained on ([`fff_util::machine`]); empty in results written before
    /// it was recorded.
    #[serde(default)]
    pub machine: String,
}

/// Where run `seed` of `family` on `dataset` lives under `work`.
pub fn run_dir(work: &Path, dataset: &str, family: &str, seed: u64) -> PathBuf {
    work.join(dataset).join(family).join(format!("seed{seed}"))
}

/// Trains (or resumes, or reads back) run `seed` of `entry` on `data` in `dir`; a distilled
/// entry reads its teacher from `teacher_dir`, which must hold a finished run.
pub fn run_one(
    dataset: &str,
    data: &Split,
    entry: &Entry,
    seed: u64,
    dir: &Path,
    teacher_dir: Option<&Path>,
    observer: impl TrainObserver,
) -> Result<RunResult> {
    let result_path = dir.join("result.json");
    if result_path.is_file() {
        let text = std::fs::read_to_string(&result_path)
            .with_context(|| format!("reading {}", result_path.display()))?;
        let r: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run result", result_path.display()))?;
        ensure!(
            r.spec == entry.spec() && r.seed == seed && r.dataset == dataset,
            "{}: holds a run of `{}` (seed {}, {}), not of `{}` (seed {seed}, {dataset}); \
             use another work folder or remove it",
            result_path.display(),
            r.spec,
            r.seed,
            r.dataset,
            entry.spec()
        );
        return Ok(r);
    }
    if let Some(t) = teacher_dir {
        ensure!(
            t.join("result.json").is_file(),
            "{}: the teacher of {} has not finished (no result.json)",
            t.display(),
            entry.family
        );
    }
    let cfg = entry.recipe.train_config(seed, teacher_dir)?;
    let (model, history) = if dir.join("state.json").is_file() {
        let state = load_state(dir)?;
        ensure!(
            state.model == entry.model && state.model_seed == seed,
            "{}: holds a run of `{}` (seed {}), not of `{}` (seed {seed})",
            dir.display(),
            state.model,
            state.model_seed,
            entry.model
        );
        ensure!(
            serde_json::to_value(&state.config)? == serde_json::to_value(&cfg)?,
            "{}: holds a run with other training settings than `{}`; remove it to retrain",
            dir.display(),
            entry.spec()
        );
        let model = load_model(dir, &state)?;
        let mut opt = optimizer_for(&model, &state.config);
        load_optimizer(dir, &state, &mut opt, model.vars().len())?;
        let history = train_from(
            &model,
            &mut opt,
            data,
            &state.config,
            state.progress(),
            Some((dir, seed)),
            observer,
        )?;
        (model, history)
    } else {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let model = Model::new(&entry.model, seed)?;
        let mut opt = optimizer_for(&model, &cfg);
        let history = train_from(
            &model,
            &mut opt,
            data,
            &cfg,
            Vec::new().into(),
            Some((dir, seed)),
            observer,
        )?;
        (model, history)
    };
    let last = history.last().context("a run of no epochs")?;
    let (Some(val_accuracy), Some(test_accuracy)) = (last.val_accuracy, last.test_accuracy) else {
        bail!(
            "{}: the last epoch has no validation and test figures (recipe val=0?)",
            dir.display()
        );
    };
    let r = RunResult {
        dataset: dataset.into(),
        family: entry.family.clone(),
        spec: entry.spec(),
        seed,
        val_accuracy,
        test_accuracy,
        parameters: model.parameter_count(),
        multiply_adds_per_input: model.multiply_adds_per_input(),
        neurons_per_input: model.neurons_per_input(),
        seconds_per_epoch: history.iter().map(|m| m.train_seconds).sum::<f64>()
            / history.len() as f64,
        threads: rayon::current_num_threads(),
        machine: fff_util::machine(),
    };
    fff_util::fs::write_atomic(&result_path, serde_json::to_string_pretty(&r)?.as_bytes())?;
    Ok(r)
}

/// Checks that every distilled entry's teacher family comes earlier in `grid` and that the
/// families and their specs are unique.
pub fn check_grid(grid: &[Entry]) -> Result<()> {
    for (i, e) in grid.iter().enumerate() {
        ensure!(
            !grid[..i].iter().any(|o| o.family == e.family),
            "family `{}` appears twice in the grid",
            e.family
        );
        // Rows are grouped by spec, so two families of one spec would merge into one row.
        if let Some(o) = grid[..i].iter().find(|o| o.spec() == e.spec()) {
            bail!(
                "families `{}` and `{}` have the same spec `{}`",
                o.family,
                e.family,
                e.spec()
            );
        }
        if let Some((teacher, ..)) = &e.recipe.distill {
            ensure!(
                grid[..i].iter().any(|o| &o.family == teacher),
                "`{}` distils from `{teacher}`, which does not come before it in the grid",
                e.family
            );
        }
    }
    Ok(())
}

/// One row of the frontier: a configuration on a dataset, over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontierRow {
    /// Dataset name.
    pub dataset: String,
    /// Family of the configuration.
    pub family: String,
    /// The exact `MODEL | RECIPE` string.
    pub spec: String,
    /// Seeds trained.
    pub seeds: Vec<u64>,
    /// Validation accuracy, mean over seeds.
    pub val_accuracy_mean: f64,
    /// Validation accuracy, sample standard deviation over seeds.
    pub val_accuracy_std: f64,
    /// Test accuracy, mean over seeds.
    pub test_accuracy_mean: f64,
    /// Test accuracy, sample standard deviation over seeds (0 for one seed).
    pub test_accuracy_std: f64,
    /// Multiply-adds per input at inference.
    pub multiply_adds_per_input: usize,
    /// Neurons evaluated per input at inference.
    pub neurons_per_input: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Mean training seconds per epoch over the seeds.
    pub seconds_per_epoch: f64,
    /// Rayon threads of the runs.
    pub threads: usize,
    /// The CPUs the runs trained on, each once, joined by ` + `.
    pub machine: String,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = if v.len() > 1 {
        (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

/// Groups run results into rows per (dataset, spec), in first-seen order.
pub fn summarize(runs: &[RunResult]) -> Vec<FrontierRow> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in runs {
        if !keys.contains(&(&r.dataset, &r.spec)) {
            keys.push((&r.dataset, &r.spec));
        }
    }
    keys.into_iter()
        .map(|(dataset, spec)| {
            let g: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.dataset == dataset && r.spec == spec)
                .collect();
            let (val_accuracy_mean, val_accuracy_std) =
                mean_std(&g.iter().map(|r| r.val_accuracy).collect::<Vec<_>>());
            let (test_accuracy_mean, test_accuracy_std) =
                mean_std(&g.iter().map(|r| r.test_accuracy).collect::<Vec<_>>());
            FrontierRow {
                dataset: dataset.into(),
                family: g[0].family.clone(),
                spec: spec.into(),
                seeds: g.iter().map(|r| r.seed).collect(),
                val_accuracy_mean,
                val_accuracy_std,
                test_accuracy_mean,
                test_accuracy_std,
                multiply_adds_per_input: g[0].multiply_adds_per_input,
                neurons_per_input: g[0].neurons_per_input,
                parameters: g[0].parameters,
                seconds_per_epoch: g.iter().map(|r| r.seconds_per_epoch).sum::<f64>()
                    / g.len() as f64,
                threads: g[0].threads,
                machine: {
                    let mut seen: Vec<&str> = Vec::new();
                    for r in &g {
                        if !r.machine.is_empty() && !seen.contains(&r.machine.as_str()) {
                            seen.push(&r.machine);
                        }
                    }
                    seen.join(" + ")
                },
            }
        })
        .collect()
}

/// The rows as a markdown table.
pub fn markdown(rows: &[FrontierRow]) -> String {
    let mut out = String::from(
        "| dataset | family | validation (mean ± std) | test (mean ± std) | seeds | multiply-adds per input | neurons per input | parameters | train s/epoch | machine | spec |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2}% ± {:.2} | {:.2}% ± {:.2} | {} | {} | {} | {} | {:.2} | {} | `{}` |\n",
            r.dataset,
            r.family,
            100.0 * r.val_accuracy_mean,
            100.0 * r.val_accuracy_std,
            100.0 * r.test_accuracy_mean,
            100.0 * r.test_accuracy_std,
            r.seeds.len(),
            r.multiply_adds_per_input,
            r.neurons_per_input,
            r.parameters,
            r.seconds_per_epoch,
            r.machine,
            r.spec.replace('|', "\\|")
        ));
    }
    out
}

/// The families that each remove one ingredient from `base` (`STEM-kd` or `STEM-kd-30ep`,
/// one of [`ABLATED`]), with the ingredient removed: `STEM` without `-kd` for distillation,
/// `STEM-kd` for the 30 epochs, and `ablate-WHAT-TAG[-30ep]` for the others, where `TAG` is
/// the stem after `forest-`.
pub fn ablations_of(base: &str) -> Vec<(&'static str, String)> {
    let (stem, suffix) = match base.strip_suffix("-kd-30ep") {
        Some(stem) => (stem, "-30ep"),
        None => (base.strip_suffix("-kd").unwrap_or(base), ""),
    };
    let tag = format!("-{}", stem.strip_prefix("forest-").unwrap_or(stem));
    let mut out = Vec::new();
    if suffix == "-30ep" {
        out.push(("30 epochs (15 instead)", format!("{stem}-kd")));
    }
    out.extend([
        ("distillation", format!("{stem}{suffix}")),
        (
            "cosine schedule",
            format!("ablate-constant-lr{tag}{suffix}"),
        ),
        ("forest (one tree)", format!("ablate-one-tree{tag}{suffix}")),
        (
            "identity nodes (GELU)",
            format!("ablate-gelu-nodes{tag}{suffix}"),
        ),
        (
            "linear head (FFF head)",
            format!("ablate-fff-head{tag}{suffix}"),
        ),
    ]);
    out
}

/// The ablation table of `base` on `dataset`: each row of [`ablations_of`] against it, with
/// the change in test accuracy (points); `None` when `base` has no row.
pub fn ablation_markdown(rows: &[FrontierRow], dataset: &str, base: &str) -> Option<String> {
    let base_row = rows
        .iter()
        .find(|r| r.dataset == dataset && r.family == base)?;
    let mut out = format!(
        "| {dataset}: {base} without | validation | test | test change (points) | multiply-adds per input |\n|---|---:|---:|---:|---:|\n| (nothing) | {:.2}% | {:.2}% | 0 | {} |\n",
        100.0 * base_row.val_accuracy_mean,
        100.0 * base_row.test_accuracy_mean,
        base_row.multiply_adds_per_input
    );
    for (what, family) in ablations_of(base) {
        if let Some(r) = rows
            .iter()
            .find(|r| r.dataset == dataset && r.family == family)
        {
            out.push_str(&format!(
                "| {what} | {:.2}% | {:.2}% | {:+.2} | {} |\n",
                100.0 * r.val_accuracy_mean,
                100.0 * r.test_accuracy_mean,
                100.0 * (r.test_accuracy_mean - base_row.test_accuracy_mean),
                r.multiply_adds_per_input
            ));
        }
    }
    Some(out)
}
