//! `fff bench bert`: end-to-end encoder throughput of UltraFastBERT (FFF kernel and dense
//! masked) against a dense crammedBERT of the same shape.

use anyhow::{ensure, Result};
use clap::Args;
use fff_bench::bert::{bert_table, run_bert, BertBenchOptions, BertVariant};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `fff bench bert`.
#[derive(Args, Debug)]
pub struct BertBenchArgs {
    /// Transformer blocks (16 in UltraFastBERT-1x11 and crammedBERT).
    #[arg(long, default_value_t = 16)]
    layers: usize,
    /// FFF trees.
    #[arg(long, default_value_t = 1)]
    trees: usize,
    /// FFF depth.
    #[arg(long, default_value_t = 11)]
    depth: usize,
    /// Neurons of the dense model's FF.
    #[arg(long, default_value_t = 3072)]
    dense_width: usize,
    /// Tokens per sequence.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 128)]
    seq: usize,
    /// Sequences per batch; one measurement each.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, value_delimiter = ',', default_value = "8,1")]
    batches: Vec<usize>,
    /// Leave out the dense masked FFF model (it is the slowest).
    #[arg(long)]
    skip_masked: bool,
    /// Most timed rounds per batch size, after one warm-up; a round runs every model once,
    /// interleaved, and medians are reported.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::REPS}>, default_value_t = 7)]
    reps: usize,
    /// Stop adding rounds after this many seconds per model (once 3 rounds are in).
    #[arg(long, default_value_t = 20.0)]
    budget_s: f64,
    /// Vocabulary size of the random models (UltraFastBERT's is 32768).
    #[arg(long, default_value_t = 32768)]
    vocab: usize,
    /// Seed of weights and token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the records as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs `fff bench bert`.
pub fn run(args: BertBenchArgs) -> Result<()> {
    ensure!(
        args.budget_s.is_finite() && args.budget_s >= 0.0,
        "--budget-s must be a non-negative number of seconds"
    );
    let mut variants = vec![BertVariant::FffKernel];
    if !args.skip_masked {
        variants.push(BertVariant::FffMasked);
    }
    variants.push(BertVariant::Dense);
    let opts = BertBenchOptions {
        layers: args.layers,
        trees: args.trees,
        depth: args.depth,
        dense_width: args.dense_width,
        seq: args.seq,
        batches: args.batches,
        variants,
        reps: args.reps,
        budget: Duration::from_secs_f64(args.budget_s),
        vocab: args.vocab,
        seed: args.seed,
    };
    outln!(
        "fff bench bert: {} layers, hidden 768, 12 heads; FFF {}x{} vs dense FF {}; seq {}; {} threads; random weights",
        opts.layers,
        opts.trees,
        opts.depth,
        opts.dense_width,
        opts.seq,
        rayon::current_num_threads()
    );
    let records = run_bert(&opts, |line| errln!("  {line}"))?;
    out!("{}", bert_table(&records));
    outln!(
        "\nencoder only (embedding, blocks, final norm; no MLM head); time per batch is the median \
         of up to {} rounds, each running every model once, interleaved; speedup = median dense \
         crammedBERT time / median time of the row; the range is over the rounds' own ratios.",
        opts.reps
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records)?;
        fff_util::fs::write_atomic(path, text.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}
