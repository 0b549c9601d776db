//! `fff compress`: a pretrained BERT-family encoder's FFNs distilled into FFF layers, as a
//! resumable job with progress, written as a normal model folder.

use crate::limits::MemoryEstimate;
use anyhow::{ensure, Context, Result};
use clap::Args;
use fastfeedforward::Activation;
use fff_compress::job::{run as run_job, Job, Observer, Outcome, Progress};
use fff_compress::{Agreement, Recipe, Stage, Start, Student, Tune};
use fff_train::state::SoftSchedule;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// The distillation stages' lengths and learning rates (the defaults: the recipe of the
/// frontier's rows), shared by `fff compress` and `fff experiment compress`.
#[derive(Args, Debug, Clone)]
pub(crate) struct StageArgs {
    /// Tokens the layer-wise stage reads (inputs and targets from the original).
    #[arg(long, default_value_t = Recipe::LAYERWISE_TOKENS)]
    layerwise_tokens: u64,
    /// Tokens the chained stage reads (inputs from the student, targets from the original).
    #[arg(long, default_value_t = Recipe::CHAINED_TOKENS)]
    chained_tokens: u64,
    /// Tokens the joint stage reads (the whole student against the original's final hidden
    /// states and embeddings).
    #[arg(long, default_value_t = Recipe::JOINT_TOKENS)]
    joint_tokens: u64,
    /// Peak learning rate of the layer-wise and chained stages (AdamW; warm-up, then cosine to
    /// a tenth).
    #[arg(long, default_value_t = Recipe::LEARNING_RATE)]
    lr: f64,
    /// Peak learning rate of the joint stage.
    #[arg(long, default_value_t = Recipe::JOINT_LEARNING_RATE)]
    joint_lr: f64,
    /// What the joint stage trains besides the FFN blocks: nothing else, the LayerNorms too,
    /// or the LayerNorms and the attention's projections.
    #[arg(long, value_enum, default_value_t = Tune::Ffn)]
    joint_tune: Tune,
    /// Peak learning rate of what --joint-tune tunes besides the FFN blocks.
    #[arg(long, default_value_t = Recipe::TRUNK_LEARNING_RATE)]
    trunk_lr: f64,
    /// Soft-to-hard routing in the layer-wise and chained stages, LEVELS:T0:T1:HARD_FRACTION
    /// (e.g. 1:1:0.05:0.3): the top LEVELS of each tree route softly at a temperature going
    /// from T0 to T1 over each stage, the last HARD_FRACTION of it hard. [default: hard]
    #[arg(long)]
    soft_routing: Option<SoftSchedule>,
    /// Weight of the load-balancing loss (each node pushed to split its tokens evenly) in the
    /// layer-wise and chained stages.
    #[arg(long, default_value_t = 0.0)]
    load_balance: f64,
}

impl StageArgs {
    /// `recipe` with these stages; with `distil` false, no stage reads any text, and the
    /// settings of the stages stay `recipe`'s (they could change nothing).
    pub(crate) fn apply(&self, recipe: Recipe, distil: bool) -> Recipe {
        if !distil {
            return Recipe {
                layerwise_tokens: 0,
                chained_tokens: 0,
                joint_tokens: 0,
                ..recipe
            };
        }
        Recipe {
            layerwise_tokens: self.layerwise_tokens,
            chained_tokens: self.chained_tokens,
            joint_tokens: self.joint_tokens,
            learning_rate: self.lr,
            joint_learning_rate: self.joint_lr,
            joint_tune: self.joint_tune,
            trunk_learning_rate: self.trunk_lr,
            soft_routing: self.soft_routing,
            load_balance: self.load_balance,
            ..recipe
        }
    }
}

/// `fff compress` flags.
#[derive(Args, Debug)]
pub struct CompressArgs {
    /// The model to compress: a folder or a Hugging Face model id (BERT family, e.g. a
    /// sentence-transformers model).
    #[arg(long)]
    model: String,
    /// Text to distil on: files of one passage a line, plain or gzip (where a line has tabs,
    /// its last field).
    #[arg(long, num_args = 1.., required = true)]
    text: Vec<PathBuf>,
    /// The model folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Checkpoint folder; an existing one is resumed. [default: OUT.work]
    #[arg(long)]
    work: Option<PathBuf>,
    /// FFN multiply-adds per token kept, as a fraction of the original's (0.1 = 10%).
    #[arg(long, conflicts_with_all = ["trees", "width"])]
    ffn_budget: Option<f64>,
    /// Trees per layer (instead of --ffn-budget).
    #[arg(long)]
    trees: Option<usize>,
    /// Depth of each tree.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// The FFF nodes' activation (gelu lets nodes start as the original's neurons).
    #[arg(long, value_enum, default_value_t = Activation::Gelu)]
    node_activation: Activation,
    /// Instead of an FFF, a narrower dense FFN of the budget's neurons (the equal-compute
    /// baseline: a pruned FFN distilled the same way).
    #[arg(long, conflicts_with = "trees")]
    dense: bool,
    /// Neurons of the dense FFN (with --dense, instead of --ffn-budget).
    #[arg(long, requires = "dense")]
    width: Option<usize>,
    /// With --ffn-budget: the fraction of the budget's neurons that go to a dense branch every
    /// token runs beside the trees (the most important neurons overall at the start), the
    /// trees taking the rest.
    // Checked in `recipe`: clap waives a `requires` whose target conflicts with an argument
    // given (--ffn-budget with --trees), so it cannot say these two need the other form.
    #[arg(long)]
    branch_share: Option<f64>,
    /// With --trees: neurons of a dense branch every token runs beside the trees.
    #[arg(long, default_value_t = 0)]
    dense_branch: usize,
    /// Where the student starts: the original's neurons, or random.
    #[arg(long, value_enum, default_value_t = Start::Teacher)]
    start: Start,
    #[command(flatten)]
    stages: StageArgs,
    /// Token rows per optimizer step.
    #[arg(long, default_value_t = 512)]
    step_rows: usize,
    /// Tokens per pass of the original model.
    #[arg(long, default_value_t = 8192)]
    chunk_tokens: usize,
    /// Longest passage in tokens (longer ones are truncated).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Tokens sampled to choose the starting neurons.
    #[arg(long, default_value_t = 16384)]
    init_tokens: usize,
    /// Passages held out to measure agreement with the original.
    #[arg(long, default_value_t = 1000)]
    holdout: usize,
    /// Tokens between agreement measurements.
    #[arg(long, default_value_t = 1_000_000)]
    eval_every: u64,
    /// Seed of the text order and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Minutes between checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

impl CompressArgs {
    fn recipe(&self, intermediate: usize) -> Result<Recipe> {
        if self.branch_share.is_some() && (self.ffn_budget.is_none() || self.dense) {
            anyhow::bail!(
                "--branch-share splits an FFF's --ffn-budget; with --trees give --dense-branch N \
                 (a dense student has no branch)"
            );
        }
        if self.dense_branch > 0 && self.trees.is_none() {
            anyhow::bail!(
                "--dense-branch goes with --trees; with --ffn-budget give --branch-share F (a \
                 dense student has no branch)"
            );
        }
        let student = match (self.ffn_budget, self.trees, self.width) {
            (Some(b), None, None) => match self.branch_share {
                Some(share) => Student::hybrid_from_budget(
                    b,
                    intermediate,
                    self.depth,
                    self.node_activation,
                    share,
                )?,
                None => Student::from_budget(
                    b,
                    intermediate,
                    self.depth,
                    self.node_activation,
                    self.dense,
                )?,
            },
            (None, Some(trees), None) => Student::Fff {
                trees,
                depth: self.depth,
                activation: self.node_activation,
                branch: self.dense_branch,
            },
            (None, None, Some(width)) => Student::Dense { width },
            _ => anyhow::bail!(
                "give the FFN's size: --ffn-budget FRACTION, or --trees K (FFF), or --dense \
                 --width N"
            ),
        };
        let recipe = Recipe {
            start: self.start,
            step_rows: self.step_rows,
            chunk_tokens: self.chunk_tokens,
            max_tokens: self.max_tokens,
            init_tokens: self.init_tokens,
            holdout: self.holdout,
            eval_every: self.eval_every,
            seed: self.seed,
            ..Recipe::new(student)
        };
        Ok(self.stages.apply(recipe, true))
    }
}

/// Bars per stage with tokens/s, loss and ETA; agreement and news as lines. Where stderr is
/// not a terminal (a log file) the bar is hidden, and a progress line is printed each minute.
#[derive(Default)]
pub(crate) struct Bars {
    bar: Option<ProgressBar>,
    last_line: Option<std::time::Instant>,
}

impl Bars {
    fn println(&self, line: &str) {
        match &self.bar {
            // A hidden bar (stderr not a terminal) drops what it is asked to print.
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl Observer for Bars {
    fn message(&mut self, text: &str) {
        self.println(text);
    }

    fn stage_started(&mut self, stage: Stage, tokens: u64, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:25}] {human_pos}/{human_len} tokens, {msg}, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(stage.name());
        bar.set_position(tokens);
        self.bar = Some(bar);
    }

    fn progress(&mut self, p: &Progress) {
        let Some(b) = &self.bar else { return };
        b.set_position(p.tokens);
        b.set_message(format!(
            "loss {:.4}, {:.0} tokens/s",
            p.loss, p.tokens_per_second
        ));
        let due = self.last_line.is_none_or(|t| t.elapsed().as_secs() >= 60);
        if b.is_hidden() && due {
            self.last_line = Some(std::time::Instant::now());
            let eta = b.eta().as_secs();
            eprintln!(
                "{:>9} {}/{} tokens, loss {:.4}, {:.0} tokens/s, ETA {}m{:02}s",
                p.stage.name(),
                p.tokens,
                p.total,
                p.loss,
                p.tokens_per_second,
                eta / 60,
                eta % 60
            );
        }
    }

    fn agreement(&mut self, a: &Agreement) {
        self.println(&format!(
            "{:>9} at {:>10} tokens: cosine to the original mean {:.4}, p5 {:.4}, min {:.4}",
            a.stage, a.tokens, a.cosine_mean, a.cosine_p5, a.cosine_min
        ));
    }

    fn stage_finished(&mut self, _stage: Stage) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// Keeps candle's element-wise ops on the calling thread (unless `CANDLE_NUM_THREADS` says
/// otherwise). candle splits ops over 64k elements across its own spinning worker pool, which
/// on a machine of few cores fights rayon's workers for them (measured: 1.75x slower
/// distillation on 2 cores); a compression's parallel work is rayon's. Call it first, before
/// candle starts its pool and while this is the only thread.
pub(crate) fn keep_candle_ops_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs `fff compress`.
pub fn run(args: CompressArgs) -> Result<()> {
    keep_candle_ops_on_caller();
    let model = fff_bert::resolve_model(&args.model)?;
    let config = match fff_bert::ModelConfig::from_file(&model.join("config.json"))? {
        fff_bert::ModelConfig::Bert(c) => c,
        fff_bert::ModelConfig::Crammed(_) => anyhow::bail!(
            "{}: a crammedBERT / UltraFastBERT checkpoint; fff compress takes Hugging Face BERT \
             models",
            model.display()
        ),
    };
    let recipe = args.recipe(config.intermediate)?;
    ensure!(
        args.checkpoint_minutes.is_finite() && args.checkpoint_minutes > 0.0,
        "--checkpoint-minutes {}: expected a positive number",
        args.checkpoint_minutes
    );
    let work = args.work.clone().unwrap_or_else(|| {
        let mut name = args.out.as_os_str().to_owned();
        name.push(".work");
        PathBuf::from(name)
    });
    MemoryEstimate::default()
        .parts(fff_compress::job::memory_estimate(
            &model, &args.text, &recipe,
        )?)
        .check(None, "--chunk-tokens or --init-tokens, or give less text")?;
    let job = Job {
        model,
        texts: args.text.clone(),
        out: args.out.clone(),
        work,
        recipe,
        checkpoint_seconds: args.checkpoint_minutes * 60.0,
    };
    let stop = crate::progress::stop_on_signals()?;
    outln!(
        "compressing {} into {}: {} per layer, on {}",
        job.model.display(),
        job.out.display(),
        job.recipe.student.describe(),
        fff_util::machine()
    );
    let go = || run_job(&job, &mut Bars::default(), &stop);
    let outcome = match args.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .context("cannot start the thread pool")?
            .install(go)?,
        None => go()?,
    };
    match outcome {
        Outcome::Stopped { stage, tokens } => {
            outln!(
                "stopped in the {} stage after {tokens} tokens; checkpoint in {}: run the same \
                 command to resume",
                stage.name(),
                job.work.display()
            );
        }
        Outcome::Finished(report) => {
            let last = report.agreement.last();
            outln!(
                "wrote {}: {} ({:.1}% of the FFN's multiply-adds per token, {} → {} FFN \
                 parameters)",
                job.out.display(),
                report.student,
                100.0 * report.ffn_budget,
                report.ffn_parameters.0,
                report.ffn_parameters.1
            );
            if let Some(a) = last {
                outln!(
                    "cosine to the original on held-out text: mean {:.4}, p5 {:.4}",
                    a.cosine_mean,
                    a.cosine_p5
                );
            }
            let secs: f64 = report.seconds.values().sum();
            outln!(
                "{:.2} hours of compression; figures in {}",
                secs / 3600.0,
                job.out.join("compression.json").display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CompressArgs,
    }

    fn recipe(extra: &[&str]) -> Result<Recipe> {
        let mut argv = vec!["x", "--model", "m", "--text", "t", "--out", "o"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .expect("valid flags")
            .args
            .recipe(1536)
    }

    #[test]
    fn a_dense_branch_is_given_in_the_form_of_the_shape() {
        let r = recipe(&["--ffn-budget", "0.1", "--branch-share", "0.5"]).unwrap();
        assert_eq!(r.student.describe(), "fff 15x4 gelu + dense 77");
        let r = recipe(&["--trees", "3", "--dense-branch", "20"]).unwrap();
        assert_eq!(r.student.describe(), "fff 3x4 gelu + dense 20");
        for (flags, want) in [
            (
                &["--trees", "3", "--branch-share", "0.5"][..],
                "--branch-share",
            ),
            (
                &["--ffn-budget", "0.1", "--dense-branch", "5"][..],
                "--dense-branch",
            ),
            (
                &["--ffn-budget", "0.1", "--dense", "--branch-share", "0.5"][..],
                "--branch-share",
            ),
            (
                &["--dense", "--width", "9", "--dense-branch", "5"][..],
                "--dense-branch",
            ),
        ] {
            let e = recipe(flags).unwrap_err().to_string();
            assert!(e.starts_with(want), "{flags:?}: {e}");
        }
    }
}
