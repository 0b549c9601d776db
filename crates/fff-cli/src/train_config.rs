//! The settings of `fff train`, given as flags, in a TOML file (`--config FILE.toml`), or both.
//!
//! One struct serves as the flags and as the file's schema, so the two cannot drift apart: a
//! file's keys are the flags' names without `--` (`batch-size = 64`, `data-dir = "data"`). Every
//! setting is optional; a flag given on the command line overrides the file, and what neither
//! gives takes the default shown in `fff train --help`.

use crate::data::Dataset;
use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use fff_train::optim::{OptimizerKind, DEFAULT_SGD_MOMENTUM};
use fff_train::state::{
    Distillation, SoftSchedule, DEFAULT_DISTILL_ALPHA, DEFAULT_DISTILL_TEMPERATURE,
};
use fff_train::{Schedule, TrainConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The update rule, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    /// AdamW.
    Adamw,
    /// SGD with momentum.
    Sgd,
}

/// Settings of a training run; as flags, or as the keys of a `--config` file.
#[derive(Args, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainSettings {
    /// Dataset: spirals (built in), mnist or fashion-mnist (downloaded once into a cache folder,
    /// or read from --data-dir) [default: spirals].
    #[arg(long, value_enum)]
    pub dataset: Option<Dataset>,
    /// Folder holding the dataset's IDX files (gzip or raw), directly or in a subfolder named
    /// after the dataset [default: the download cache].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model description, e.g. "fff:784-500:d8:identity, relu, fff:500-10:d8:identity"
    /// [default: a small FFF net for spirals; for the image sets the best configuration of
    /// `fff experiment frontier`, whose recipe then supplies every setting not given, and whose
    /// dense distillation teacher is trained first unless --teacher names one].
    #[arg(long)]
    pub model: Option<String>,
    /// Passes over the training set (with --resume: the total to reach).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Inputs per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimizer.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerChoice>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (decoupled for AdamW, L2 for SGD).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW betas, "beta1,beta2" (in a file: [beta1, beta2]).
    #[arg(long, value_delimiter = ',')]
    pub betas: Option<Vec<f64>>,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Steps of linear warm-up.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Clip the global gradient norm to this value [default: no clipping].
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Hold out the last N training inputs as a validation set, evaluated after every epoch;
    /// the test set is then evaluated once, after the last epoch.
    #[arg(long)]
    pub validation: Option<usize>,
    /// Label smoothing ε of the cross-entropy.
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Shift each training image by up to this many pixels (random, per step).
    #[arg(long)]
    pub shift: Option<usize>,
    /// Distil from this teacher: a checkpoint folder written by `fff train --out`.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Weight α of the label cross-entropy in the distillation loss
    /// α·CE + (1−α)·T²·KL(teacher ‖ student).
    #[arg(long, requires = "teacher")]
    pub distill_alpha: Option<f64>,
    /// Softening temperature T of the distillation loss.
    #[arg(long, requires = "teacher")]
    pub distill_temperature: Option<f64>,
    /// Soft-to-hard routing of the FFF layers, LEVELS:T0:T1:HARD_FRACTION (e.g. 1:1:0.01:0.2):
    /// the top LEVELS levels route softly, the temperature falling from T0 to T1, and the last
    /// HARD_FRACTION of the steps train hard [default: hard routing throughout].
    #[arg(long)]
    pub soft_routing: Option<String>,
    /// Weight of the FFF layers' load-balancing loss, which pushes every node to split its
    /// inputs evenly between its children.
    #[arg(long)]
    pub load_balance: Option<f64>,
    /// Seed of the initialisation and the shuffling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads of the training run; results are deterministic for a given count
    /// [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write a checkpoint and metrics.json into this folder after every epoch.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// AdamW's betas in the default optimizer.
fn default_betas() -> (f64, f64) {
    match OptimizerKind::default() {
        OptimizerKind::AdamW { beta1, beta2, .. } => (beta1, beta2),
        OptimizerKind::Sgd { .. } => (0.9, 0.999),
    }
}

impl TrainSettings {
    /// `cmd` (a command holding these flags) with the defaults, read from
    /// `TrainConfig::default()`, shown in each flag's help: one source for both.
    pub fn with_defaults(cmd: clap::Command) -> clap::Command {
        let d = TrainConfig::default();
        let (beta1, beta2) = default_betas();
        let optimizer = match d.optimizer {
            OptimizerKind::AdamW { .. } => OptimizerChoice::Adamw,
            OptimizerKind::Sgd { .. } => OptimizerChoice::Sgd,
        };
        let name = |v: Option<clap::builder::PossibleValue>| {
            v.map_or(String::new(), |v| v.get_name().to_string())
        };
        let defaults = [
            ("epochs", d.epochs.to_string()),
            ("batch_size", d.batch_size.to_string()),
            ("optimizer", name(optimizer.to_possible_value())),
            ("lr", d.lr.to_string()),
            ("weight_decay", d.weight_decay.to_string()),
            ("betas", format!("{beta1},{beta2}")),
            ("momentum", DEFAULT_SGD_MOMENTUM.to_string()),
            ("schedule", name(d.schedule.to_possible_value())),
            ("warmup_steps", d.warmup_steps.to_string()),
            ("validation", d.validation.to_string()),
            ("label_smoothing", d.label_smoothing.to_string()),
            ("shift", d.shift.to_string()),
            ("distill_alpha", DEFAULT_DISTILL_ALPHA.to_string()),
            (
                "distill_temperature",
                DEFAULT_DISTILL_TEMPERATURE.to_string(),
            ),
            ("load_balance", d.load_balance.to_string()),
            ("seed", d.seed.to_string()),
        ];
        defaults.into_iter().fold(cmd, |cmd, (id, value)| {
            cmd.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            })
        })
    }

    /// Reads a TOML file of settings; errors name the file (and, from toml, the line and key).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the config file", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses TOML `text`; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let mut message = format!("{}: {}", path.display(), e.message());
            if let Some(span) = e.span() {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let key = text
                    .lines()
                    .nth(line - 1)
                    .and_then(|l| l.split_once('='))
                    .map(|(k, _)| k.trim().trim_matches('"'))
                    .filter(|k| !k.is_empty() && !k.starts_with('['));
                message = match key {
                    Some(k) if !e.message().contains(&format!("`{k}`")) => {
                        format!("{}:{line}: key `{k}`: {}", path.display(), e.message())
                    }
                    _ => format!("{}:{line}: {}", path.display(), e.message()),
                };
            }
            anyhow!("{}", message.trim_end())
        })
    }

    /// Each setting from `self` where given, else from `base` (flags over a file).
    pub fn or(self, base: TrainSettings) -> TrainSettings {
        TrainSettings {
            dataset: self.dataset.or(base.dataset),
            data_dir: self.data_dir.or(base.data_dir),
            model: self.model.or(base.model),
            epochs: self.epochs.or(base.epochs),
            batch_size: self.batch_size.or(base.batch_size),
            optimizer: self.optimizer.or(base.optimizer),
            lr: self.lr.or(base.lr),
            weight_decay: self.weight_decay.or(base.weight_decay),
            betas: self.betas.or(base.betas),
            momentum: self.momentum.or(base.momentum),
            schedule: self.schedule.or(base.schedule),
            warmup_steps: self.warmup_steps.or(base.warmup_steps),
            clip_norm: self.clip_norm.or(base.clip_norm),
            validation: self.validation.or(base.validation),
            label_smoothing: self.label_smoothing.or(base.label_smoothing),
            shift: self.shift.or(base.shift),
            teacher: self.teacher.or(base.teacher),
            distill_alpha: self.distill_alpha.or(base.distill_alpha),
            distill_temperature: self.distill_temperature.or(base.distill_temperature),
            soft_routing: self.soft_routing.or(base.soft_routing),
            load_balance: self.load_balance.or(base.load_balance),
            seed: self.seed.or(base.seed),
            threads: self.threads.or(base.threads),
            out: self.out.or(base.out),
        }
    }

    /// The settings of a frontier recipe, as if given in a file (no model, data or output).
    pub fn from_recipe(r: &fff_train::frontier::Recipe) -> TrainSettings {
        TrainSettings {
            epochs: Some(r.epochs),
            batch_size: Some(r.batch_size),
            lr: Some(r.lr),
            weight_decay: Some(r.weight_decay),
            schedule: Some(r.schedule),
            warmup_steps: Some(r.warmup_steps),
            validation: Some(r.validation),
            label_smoothing: Some(r.label_smoothing),
            shift: Some(r.shift),
            distill_alpha: r.distill.as_ref().map(|d| d.1),
            distill_temperature: r.distill.as_ref().map(|d| d.2),
            soft_routing: r.soft_routing.map(|s| s.to_string()),
            load_balance: Some(r.load_balance),
            ..TrainSettings::default()
        }
    }

    /// Checks the settings given with `--resume DIR` against those of the checkpoint there
    /// (`cfg`, its model description `model`): a resumed run continues exactly as it started,
    /// so every setting that would change it (the model, the optimizer and its settings, the
    /// learning rate and its schedule, the batch size, the data's handling, distillation,
    /// routing, the seed) is refused where it differs from the checkpoint's, naming the flag,
    /// the checkpoint's value and the one given. Giving a setting with the checkpoint's own
    /// value is accepted. `--epochs` (the total to reach), `--dataset` and `--data-dir` (where
    /// to read the data, whose name must match the checkpoint's) and `--threads` apply.
    pub fn check_resume(&self, dir: &Path, cfg: &TrainConfig, model: &str) -> Result<()> {
        let mut differ: Vec<String> = Vec::new();
        let mut compare = |flag: &str, given: Option<String>, theirs: String| {
            if let Some(given) = given.filter(|g| *g != theirs) {
                differ.push(format!("--{flag} {given} (the checkpoint's: {theirs})"));
            }
        };
        let num = |v: f64| format!("{v:?}");
        let name = |v: Option<clap::builder::PossibleValue>| {
            v.map_or(String::new(), |v| v.get_name().to_string())
        };
        if let Some(given) = &self.model {
            let given: fff_train::ModelSpec = given
                .parse()
                .with_context(|| format!("--model `{given}`"))?;
            compare("model", Some(given.to_string()), model.to_string());
        }
        compare(
            "batch-size",
            self.batch_size.map(|b| b.to_string()),
            cfg.batch_size.to_string(),
        );
        let (theirs, betas, momentum) = match cfg.optimizer {
            OptimizerKind::AdamW { beta1, beta2, .. } => (
                OptimizerChoice::Adamw,
                Some(format!("{beta1:?},{beta2:?}")),
                None,
            ),
            OptimizerKind::Sgd { momentum } => (OptimizerChoice::Sgd, None, Some(num(momentum))),
        };
        compare(
            "optimizer",
            self.optimizer.map(|o| name(o.to_possible_value())),
            name(theirs.to_possible_value()),
        );
        let none = |what: &str| format!("none: {what}");
        compare(
            "betas",
            self.betas
                .as_ref()
                .map(|b| b.iter().map(|v| num(*v)).collect::<Vec<_>>().join(",")),
            betas.unwrap_or_else(|| none("it trains with SGD")),
        );
        compare(
            "momentum",
            self.momentum.map(num),
            momentum.unwrap_or_else(|| none("it trains with AdamW")),
        );
        compare("lr", self.lr.map(num), num(cfg.lr));
        compare(
            "weight-decay",
            self.weight_decay.map(num),
            num(cfg.weight_decay),
        );
        compare(
            "schedule",
            self.schedule.map(|v| name(v.to_possible_value())),
            name(cfg.schedule.to_possible_value()),
        );
        compare(
            "warmup-steps",
            self.warmup_steps.map(|v| v.to_string()),
            cfg.warmup_steps.to_string(),
        );
        compare(
            "clip-norm",
            self.clip_norm.map(num),
            cfg.clip_norm.map_or_else(|| none("no clipping"), num),
        );
        compare(
            "validation",
            self.validation.map(|v| v.to_string()),
            cfg.validation.to_string(),
        );
        compare(
            "label-smoothing",
            self.label_smoothing.map(num),
            num(cfg.label_smoothing),
        );
        compare(
            "shift",
            self.shift.map(|v| v.to_string()),
            cfg.shift.to_string(),
        );
        let distill = cfg.distill.as_ref();
        let undistilled = || none("no distillation");
        compare(
            "teacher",
            self.teacher.as_ref().map(|t| t.display().to_string()),
            distill.map_or_else(undistilled, |d| d.teacher.display().to_string()),
        );
        compare(
            "distill-alpha",
            self.distill_alpha.map(num),
            distill.map_or_else(undistilled, |d| num(d.alpha)),
        );
        compare(
            "distill-temperature",
            self.distill_temperature.map(num),
            distill.map_or_else(undistilled, |d| num(d.temperature)),
        );
        let soft = self
            .soft_routing
            .as_deref()
            .map(str::parse::<SoftSchedule>)
            .transpose()?;
        compare(
            "soft-routing",
            soft.map(|s| s.to_string()),
            cfg.soft_routing
                .map_or_else(|| none("hard routing"), |s| s.to_string()),
        );
        compare(
            "load-balance",
            self.load_balance.map(num),
            num(cfg.load_balance),
        );
        compare(
            "seed",
            self.seed.map(|v| v.to_string()),
            cfg.seed.to_string(),
        );
        ensure!(
            differ.is_empty(),
            "--resume {}: a resumed run keeps the settings it was started with (its state.json), \
             and these flags would change them: {}; leave them out, or start a new run with --out",
            dir.display(),
            differ.join(", ")
        );
        Ok(())
    }

    /// The dataset, or the default.
    pub fn dataset(&self) -> Dataset {
        self.dataset.unwrap_or_default()
    }

    /// The training configuration, with defaults for what is not given, its values checked by
    /// [`TrainConfig::validate`].
    pub fn train_config(&self) -> Result<TrainConfig> {
        let d = TrainConfig::default();
        let optimizer = match self.optimizer.unwrap_or(OptimizerChoice::Adamw) {
            OptimizerChoice::Adamw => {
                let (beta1, beta2) = match self.betas.as_deref() {
                    None => default_betas(),
                    Some(&[b1, b2]) => (b1, b2),
                    Some(_) => bail!("betas takes two numbers, e.g. --betas 0.9,0.999"),
                };
                OptimizerKind::AdamW {
                    beta1,
                    beta2,
                    eps: 1e-8,
                }
            }
            OptimizerChoice::Sgd => OptimizerKind::Sgd {
                momentum: self.momentum.unwrap_or(DEFAULT_SGD_MOMENTUM),
            },
        };
        if let Some(t) = self.threads {
            ensure!(t > 0, "threads must be at least 1");
        }
        let config = TrainConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            lr: self.lr.unwrap_or(d.lr),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            optimizer,
            schedule: self.schedule.unwrap_or(d.schedule),
            warmup_steps: self.warmup_steps.unwrap_or(d.warmup_steps),
            clip_norm: self.clip_norm,
            seed: self.seed.unwrap_or(d.seed),
            validation: self.validation.unwrap_or(d.validation),
            label_smoothing: self.label_smoothing.unwrap_or(d.label_smoothing),
            shift: self.shift.unwrap_or(d.shift),
            distill: self.teacher.as_ref().map(|teacher| Distillation {
                teacher: teacher.clone(),
                alpha: self.distill_alpha.unwrap_or(DEFAULT_DISTILL_ALPHA),
                temperature: self
                    .distill_temperature
                    .unwrap_or(DEFAULT_DISTILL_TEMPERATURE),
            }),
            soft_routing: self.soft_routing.as_deref().map(str::parse).transpose()?,
            load_balance: self.load_balance.unwrap_or(d.load_balance),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::TrainArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn parse(text: &str) -> Result<TrainSettings> {
        TrainSettings::parse(text, Path::new("conf/run.toml"))
    }

    fn args(argv: &[&str]) -> TrainArgs {
        Cli::try_parse_from(std::iter::once("fff").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    const FULL: &str = r#"
# every key
dataset = "fashion-mnist"
data-dir = "data"
model = "fff:784-500:d8:identity, relu, fff:500-10:d8:identity"
epochs = 3
batch-size = 128
optimizer = "adamw"
lr = 2e-3
weight-decay = 0.01
betas = [0.8, 0.99]
momentum = 0.5
schedule = "cosine"
warmup-steps = 100
clip-norm = 1.0
validation = 5000
label-smoothing = 0.1
shift = 2
teacher = "runs/dense"
distill-alpha = 0.3
distill-temperature = 2.0
soft-routing = "1:1:0.01:0.2"
load-balance = 0.1
seed = 7
threads = 2
out = "runs/a"
"#;

    #[test]
    fn a_full_file_sets_every_setting() {
        let s = parse(FULL).unwrap();
        assert_eq!(
            s,
            TrainSettings {
                dataset: Some(Dataset::FashionMnist),
                data_dir: Some("data".into()),
                model: Some("fff:784-500:d8:identity, relu, fff:500-10:d8:identity".into()),
                epochs: Some(3),
                batch_size: Some(128),
                optimizer: Some(OptimizerChoice::Adamw),
                lr: Some(2e-3),
                weight_decay: Some(0.01),
                betas: Some(vec![0.8, 0.99]),
                momentum: Some(0.5),
                schedule: Some(Schedule::Cosine),
                warmup_steps: Some(100),
                clip_norm: Some(1.0),
                validation: Some(5000),
                label_smoothing: Some(0.1),
                shift: Some(2),
                teacher: Some("runs/dense".into()),
                distill_alpha: Some(0.3),
                distill_temperature: Some(2.0),
                soft_routing: Some("1:1:0.01:0.2".into()),
                load_balance: Some(0.1),
                seed: Some(7),
                threads: Some(2),
                out: Some("runs/a".into()),
            }
        );
        let c = s.train_config().unwrap();
        assert_eq!(
            (
                c.epochs,
                c.batch_size,
                c.lr,
                c.weight_decay,
                c.warmup_steps,
                c.seed
            ),
            (3, 128, 2e-3, 0.01, 100, 7)
        );
        assert_eq!((c.schedule, c.clip_norm), (Schedule::Cosine, Some(1.0)));
        assert_eq!((c.validation, c.label_smoothing, c.shift), (5000, 0.1, 2));
        assert_eq!(
            c.soft_routing.map(|s| s.to_string()).as_deref(),
            Some("1:1:0.01:0.2")
        );
        assert_eq!(
            c.distill,
            Some(Distillation {
                teacher: "runs/dense".into(),
                alpha: 0.3,
                temperature: 2.0
            })
        );
        assert_eq!(
            c.optimizer,
            OptimizerKind::AdamW {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-8
            }
        );
        // An empty file sets nothing: the defaults of the flags.
        let empty = parse("").unwrap();
        assert_eq!(empty, TrainSettings::default());
        assert_eq!(empty.dataset(), Dataset::Spirals);
        let c = empty.train_config().unwrap();
        let d = TrainConfig::default();
        assert_eq!(
            (c.epochs, c.batch_size, c.lr),
            (d.epochs, d.batch_size, d.lr)
        );
        // Integers are accepted where numbers are expected.
        assert_eq!(parse("lr = 1").unwrap().lr, Some(1.0));
        let sgd = parse("optimizer = \"sgd\"\nmomentum = 0.5").unwrap();
        assert_eq!(
            sgd.train_config().unwrap().optimizer,
            OptimizerKind::Sgd { momentum: 0.5 }
        );
    }

    #[test]
    fn the_example_config_is_the_study_net() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/train_mnist.toml");
        let s = TrainSettings::read(&path).unwrap();
        assert_eq!(s.dataset(), Dataset::Mnist);
        assert_eq!(
            s.model.as_deref(),
            Some("fff:784-500:d8:identity, relu, fff:500-10:d8:identity")
        );
        let c = s.train_config().unwrap();
        assert_eq!((c.lr, c.batch_size, c.epochs), (1e-3, 64, 10));
        assert!(matches!(c.optimizer, OptimizerKind::AdamW { .. }));
    }

    #[test]
    fn an_unknown_key_names_the_file_the_key_and_the_valid_keys() {
        let err = parse("lr = 0.1\nlearning-rate = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conf/run.toml:2: "), "{err}");
        assert!(err.contains("unknown field `learning-rate`"), "{err}");
        assert!(
            err.contains("`batch-size`") && err.contains("`out`"),
            "{err}"
        );
        // A flag's name with underscores is not a key either.
        let err = parse("batch_size = 3").unwrap_err().to_string();
        assert!(
            err.contains("`batch_size`") && err.contains("`batch-size`"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_file_the_key_and_the_expected_type() {
        for (text, key, want) in [
            ("lr = \"fast\"", "lr", "expected f64"),
            ("epochs = 2.5", "epochs", "expected usize"),
            ("betas = 0.9", "betas", "expected a sequence"),
            ("seed = -1", "seed", "u64"),
            ("schedule = \"steep\"", "schedule", "`cosine`"),
        ] {
            let err = parse(&format!("dataset = \"mnist\"\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("conf/run.toml:2: key `{key}`: ")),
                "{text}: {err}"
            );
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = parse("lr = ").unwrap_err().to_string();
        assert!(err.starts_with("conf/run.toml:1: "), "{err}");
        let err = TrainSettings::read(Path::new("/nonexistent/run.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/run.toml: cannot read"), "{err}");
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("fff-train-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, FULL).unwrap();
        let p = path.to_str().unwrap();
        let a = args(&[
            "--config", p, "--lr", "0.5", "--betas", "0.7,0.9", "--seed", "0",
        ]);
        let s = a.settings().unwrap();
        assert_eq!(s.lr, Some(0.5));
        assert_eq!(s.betas, Some(vec![0.7, 0.9]));
        // Given as the default value on the command line, it still overrides the file.
        assert_eq!(s.seed, Some(0));
        // Not given as flags: from the file.
        assert_eq!((s.epochs, s.batch_size), (Some(3), Some(128)));
        assert_eq!(s.dataset(), Dataset::FashionMnist);
        // No file: flags alone, the rest default.
        let s = args(&["--epochs", "2"]).settings().unwrap();
        assert_eq!((s.epochs, s.lr), (Some(2), None));
        // A broken file is reported even when flags are given.
        std::fs::write(&path, "lr = \"fast\"").unwrap();
        let err = args(&["--config", p, "--lr", "0.5"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(err.contains(p) && err.contains("key `lr`"), "{err}");
        // --config and --resume do not go together.
        assert!(Cli::try_parse_from(["fff", "--config", p, "--resume", "r"]).is_err());
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        for (text, want) in [
            ("betas = [0.9]", "two numbers"),
            ("betas = [0.9, 1.5]", "[0, 1)"),
            ("clip-norm = -1.0", "clip norm"),
            ("threads = 0", "threads"),
        ] {
            let err = parse(text).unwrap().train_config().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        // A name the file cannot hold is refused when the file is read, naming the key.
        let err = parse("optimizer = \"lion\"").unwrap_err().to_string();
        assert!(
            err.contains("key `optimizer`") && err.contains("`lion`") && err.contains("adamw"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use crate::train::TrainArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    /// The settings given on a `fff train --resume run` command line.
    fn given(flags: &[&str]) -> TrainSettings {
        let argv = ["fff", "--resume", "run"]
            .into_iter()
            .chain(flags.iter().copied());
        Cli::try_parse_from(argv).unwrap().args.settings().unwrap()
    }

    const MODEL: &str = "fff:2-32:d4:k4:identity, relu, linear:32-3";

    fn check(flags: &[&str], cfg: &TrainConfig) -> Result<()> {
        given(flags).check_resume(Path::new("run"), cfg, MODEL)
    }

    #[test]
    fn flags_that_would_change_the_run_are_refused_naming_both_values() {
        let cfg = TrainConfig::default();
        let err = check(&["--lr", "1e30", "--optimizer", "sgd"], &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--resume run: a resumed run keeps the settings")
                && err.contains("--optimizer sgd (the checkpoint's: adamw)")
                && err.contains("--lr 1e30 (the checkpoint's: 0.001)")
                && err.contains("leave them out, or start a new run with --out"),
            "{err}"
        );
        for (flags, want) in [
            (
                &["--batch-size", "7"][..],
                "--batch-size 7 (the checkpoint's: 64)",
            ),
            (
                &["--model", "linear:2-3"],
                "--model linear:2-3 (the checkpoint's: fff:2-32",
            ),
            (
                &["--betas", "0.8,0.99"],
                "--betas 0.8,0.99 (the checkpoint's: 0.9,0.999)",
            ),
            (
                &["--momentum", "0.5"],
                "(the checkpoint's: none: it trains with AdamW)",
            ),
            (&["--weight-decay", "0.1"], "--weight-decay 0.1"),
            (
                &["--schedule", "cosine"],
                "--schedule cosine (the checkpoint's: constant)",
            ),
            (&["--warmup-steps", "5"], "--warmup-steps 5"),
            (
                &["--clip-norm", "1"],
                "--clip-norm 1.0 (the checkpoint's: none: no clipping)",
            ),
            (&["--validation", "100"], "--validation 100"),
            (&["--label-smoothing", "0.1"], "--label-smoothing 0.1"),
            (&["--shift", "1"], "--shift 1"),
            (
                &["--teacher", "t"],
                "--teacher t (the checkpoint's: none: no distillation)",
            ),
            (
                &["--soft-routing", "1:1:0.1:0.2"],
                "--soft-routing 1:1:0.1:0.2",
            ),
            (&["--load-balance", "0.5"], "--load-balance 0.5"),
            (&["--seed", "3"], "--seed 3 (the checkpoint's: 0)"),
        ] {
            let err = check(flags, &cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
        // A bad value is an error of its own, not a panic.
        let err = check(&["--soft-routing", "1:x"], &cfg).unwrap_err();
        assert!(err.to_string().contains("soft routing `1:x`"), "{err}");
        // SGD checkpoints: momentum compared, betas do not apply.
        let sgd = TrainConfig {
            optimizer: OptimizerKind::Sgd { momentum: 0.9 },
            ..TrainConfig::default()
        };
        check(&["--optimizer", "sgd", "--momentum", "0.9"], &sgd).unwrap();
        let err = check(&["--momentum", "0.5"], &sgd).unwrap_err().to_string();
        assert!(
            err.contains("--momentum 0.5 (the checkpoint's: 0.9)"),
            "{err}"
        );
        let err = check(&["--betas", "0.9,0.999"], &sgd)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none: it trains with SGD"), "{err}");
    }

    #[test]
    fn the_checkpoints_own_values_and_the_run_level_flags_are_accepted() {
        let cfg = TrainConfig::default();
        check(&[], &cfg).unwrap();
        check(
            &[
                "--epochs",
                "20",
                "--threads",
                "1",
                "--dataset",
                "spirals",
                "--data-dir",
                "d",
                "--lr",
                "0.001",
                "--batch-size",
                "64",
                "--optimizer",
                "adamw",
                "--seed",
                "0",
                "--betas",
                "0.9,0.999",
                "--schedule",
                "constant",
            ],
            &cfg,
        )
        .unwrap();
        // The model is compared by its meaning, not its spelling.
        check(
            &["--model", "fff:2-32:d4:k4:identity,relu,linear:32-3"],
            &cfg,
        )
        .unwrap();
    }
}

#[cfg(test)]
mod recipe_tests {
    use super::*;
    use fff_train::frontier::{grid_entry, DEFAULT_FAMILY, TEACHER_FAMILY};

    /// The image sets' default run is the frontier's default configuration: its settings as
    /// flags give the recipe's training configuration, and flags still override it.
    #[test]
    fn the_default_recipe_becomes_the_settings() {
        let e = grid_entry(DEFAULT_FAMILY).unwrap();
        let mut s = TrainSettings::from_recipe(&e.recipe);
        s.teacher = Some("t".into());
        let got = serde_json::to_value(s.train_config().unwrap()).unwrap();
        let want =
            serde_json::to_value(e.recipe.train_config(0, Some(Path::new("t"))).unwrap()).unwrap();
        assert_eq!(got, want);
        let flags = TrainSettings {
            epochs: Some(2),
            ..TrainSettings::default()
        };
        let merged = flags.or(s).train_config().unwrap();
        assert_eq!(merged.epochs, 2);
        assert_eq!(merged.schedule, e.recipe.schedule);
        // Within a tenth of the dense net's multiply-adds, computed from the model.
        let dense = fff_train::Model::new(&grid_entry(TEACHER_FAMILY).unwrap().model, 0).unwrap();
        let fff = fff_train::Model::new(&e.model, 0).unwrap();
        assert!(
            10 * fff.multiply_adds_per_input() <= dense.multiply_adds_per_input(),
            "{} vs {}",
            fff.multiply_adds_per_input(),
            dense.multiply_adds_per_input()
        );
    }
}
