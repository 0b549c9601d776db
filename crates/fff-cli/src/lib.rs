//! The `fff` command-line tool of fastfeedforward, as a library: [`run`] is the whole program
//! (the binary adds only its allocator), and [`train_config`] is public so the fuzz targets can
//! reach the TOML schema. Each command is a thin layer over the library crates.

#[macro_use]
mod output;

mod bench;
mod bench_bert;
mod bench_encoder;
mod bench_train;
mod bert;
mod compress;
mod data;
mod demo;
mod eval_embed;
mod experiment;
mod experiment_compress;
mod inspect;
mod limits;
mod progress;
mod serve;
mod train;
pub mod train_config;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Fast Feedforward Networks: exact, fast conditional feedforward layers.
#[derive(Parser)]
#[command(name = "fff", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an FFF layer on built-in random data, check the fast kernel and the training op
    /// against the dense masked reference, and time the kernel against a dense layer.
    Demo(demo::DemoArgs),
    /// Train a model of FFF and dense layers on a dataset (cross-entropy; AdamW or SGD).
    Train(Box<train::TrainArgs>),
    /// Evaluate a checkpoint written by `fff train --out` on a dataset's test set, or, with
    /// `fff eval embed`, a sentence-embedding model (STS Spearman, linear probe).
    Eval(EvalCommand),
    /// How a checkpoint's FFF layers route a dataset: region usage and entropy, |z| per level,
    /// and path changes against a second checkpoint.
    Inspect(inspect::InspectArgs),
    /// Turn a pretrained BERT-family encoder's feedforward blocks into FFF layers by
    /// distillation on text (resumable; writes a normal model folder).
    Compress(Box<compress::CompressArgs>),
    /// Studies that answer a question with real figures.
    #[command(subcommand)]
    Experiment(experiment::ExperimentCommand),
    /// Speed benchmarks with correctness checks, as tables, JSON and plots.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve a BERT, sentence-transformers or UltraFastBERT model over HTTP (OpenAI-compatible
    /// embeddings, fill-mask, classification, health, metrics) with dynamic batching.
    Serve(serve::ServeArgs),
    /// Run a BERT, sentence-transformers or UltraFastBERT checkpoint: fill-mask, embeddings,
    /// classification.
    #[command(subcommand)]
    Bert(bert::BertCommand),
}

/// `fff eval CHECKPOINT ...` or `fff eval embed ...`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct EvalCommand {
    #[command(subcommand)]
    kind: Option<EvalKind>,
    #[command(flatten)]
    checkpoint: Option<train::EvalArgs>,
}

#[derive(Subcommand)]
enum EvalKind {
    /// A sentence-embedding model's standard figures: STS Spearman (x100) and a linear probe's
    /// accuracy on frozen embeddings, as text and JSON.
    Embed(eval_embed::EmbedEvalArgs),
}

/// The command line, with the training defaults in `fff train --help`.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("train", train_config::TrainSettings::with_defaults)
}

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Train(args) => train::run(*args),
        Command::Eval(EvalCommand {
            kind: Some(EvalKind::Embed(args)),
            ..
        }) => eval_embed::run(args),
        Command::Eval(EvalCommand {
            checkpoint: Some(args),
            ..
        }) => train::eval(args),
        Command::Eval(_) => unreachable!("clap requires a checkpoint or a subcommand"),
        Command::Inspect(args) => inspect::run(args),
        Command::Experiment(cmd) => experiment::run(cmd),
        Command::Bert(cmd) => bert::run(cmd),
        Command::Compress(args) => compress::run(*args),
        Command::Serve(args) => serve::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
        let mut train = command().find_subcommand("train").cloned().expect("train");
        let help = train.render_help().to_string();
        let d = fff_train::TrainConfig::default();
        assert!(help.contains(&format!("[default: {}]", d.epochs)), "{help}");
        assert!(help.contains("[default: 0.9,0.999]"), "{help}");
        assert!(help.contains("[default: constant]"), "{help}");
        let bench = [
            "fff",
            "bench",
            "serve",
            "--servers",
            "ufb-1x11,ufb-1x11-unbatched,crammed-dense",
        ];
        assert!(command().try_get_matches_from(bench).is_ok());
        let serve = ["fff", "serve", "--random-model", "ufb-1x11", "--port", "0"];
        assert!(command().try_get_matches_from(serve).is_ok());
        let neither = ["fff", "serve"];
        assert!(
            command().try_get_matches_from(neither).is_err(),
            "a model is required"
        );
    }
}
