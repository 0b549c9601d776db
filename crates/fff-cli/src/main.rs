//! `fff`: the command-line tool of fastfeedforward. Each command is a thin layer over the library.

mod bench;
mod demo;
mod timing;

use clap::{Parser, Subcommand};

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
    /// Speed benchmarks with correctness checks, as tables, JSON and plots.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
