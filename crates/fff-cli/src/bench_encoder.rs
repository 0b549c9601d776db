//! `fff bench encoder`: a real encoder in this engine against PyTorch and ONNX Runtime (fp32
//! and int8) on the same inputs and threads, on fixed shapes and on a file of sentences.

use crate::eval_embed::{embed_from, engine_embed, QualitySets, Scores};
use anyhow::{Context, Result};
use clap::Args;
use fff_bench::encoder::ENGINE;
use fff_bench::encoder::{
    encoder_table, profile_table, read_workload, run_encoder, EncoderBenchOptions, PeersOptions,
    Shape,
};
use fff_bert::Pipeline;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Options of `fff bench encoder`.
#[derive(Args, Debug)]
pub struct EncoderBenchArgs {
    /// Model folder (a Hugging Face BERT or sentence-transformers folder), or a Hugging Face
    /// model id.
    #[arg(long)]
    model: String,
    /// Encoder-only shapes, BATCHxTOKENS (specials included).
    #[arg(long, value_delimiter = ',', default_value = "1x16,1x128,32x64")]
    shapes: Vec<Shape>,
    /// Sentences embedded end to end (tokenization and pooling included): both sentences of
    /// every row of a `sentence1,sentence2,score` CSV (the STS Benchmark), or one text per line
    /// of any other file.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Weight format of the model's FFF layers in the engine: f32, bf16 or int8 (per-row
    /// scales); attention, embeddings and dense FFNs stay f32.
    #[arg(long, default_value = "f32")]
    weights: fastfeedforward::WeightFormat,
    /// Texts per batch in the workload.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 32)]
    batch_size: usize,
    /// Timed calls per shape and runtime; the engine runs them twice, before and after the
    /// peers.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::REPS}>, default_value_t = 20)]
    reps: usize,
    /// Untimed calls per shape and runtime before the timed ones: the first calls of every
    /// runtime are slower (caches, thread pools), and the table is about steady state.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Timed passes over the workload per runtime (the engine: twice as many, in two halves).
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::REPS}>, default_value_t = 3)]
    workload_reps: usize,
    /// Worker threads of every runtime [default: all cores].
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::THREADS}>)]
    threads: Option<usize>,
    /// Peer runtimes to time: torch, ort-fp32, ort-int8.
    #[arg(long, value_delimiter = ',', default_value = "torch,ort-fp32,ort-int8")]
    peers: Vec<String>,
    /// Time the engine alone (no Python peers).
    #[arg(long)]
    no_peers: bool,
    /// The command that runs the peers (it makes its virtual environment on first use).
    #[arg(long, default_value = "bash tools/encoder_peers.sh")]
    peers_command: String,
    /// Where the peers keep the ONNX graphs they export [default: ~/.cache/fff-peers].
    #[arg(long)]
    peers_cache: Option<PathBuf>,
    /// Quality beside speed: scored sentence pairs (`sentence1,sentence2,score` CSV, the STS
    /// Benchmark); every runtime's STS Spearman from its own embeddings, by the code of
    /// `fff eval embed` (int8's cost in quality, say).
    #[arg(long)]
    sts: Option<PathBuf>,
    /// Quality beside speed: labelled sentences (as `fff eval embed --probe`); every runtime's
    /// probe accuracy from its own embeddings.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Workload texts whose embeddings each peer must reproduce before it is timed.
    #[arg(long, default_value_t = 64)]
    check_texts: usize,
    /// Seed of the shapes' token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the tables (results and the engine's profile) as markdown here.
    #[arg(long)]
    table: Option<PathBuf>,
}

/// Runs `fff bench encoder`.
pub fn run(args: EncoderBenchArgs) -> Result<()> {
    for path in [&args.json, &args.table].into_iter().flatten() {
        fff_util::fs::check_output_file(path, "--json/--table")?;
    }
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting the thread count")?;
    }
    // The quality files first, so that a bad one fails before anything is timed.
    let sets = QualitySets::read(args.sts.as_deref(), args.probe.as_deref())?;
    let dir = fff_bert::resolve_model(&args.model)?;
    let mut pipeline = Pipeline::load(&dir)?;
    pipeline
        .model
        .set_weight_format(args.weights)
        .with_context(|| format!("storing the FFF layers as {}", args.weights))?;
    let workload = match &args.workload {
        Some(path) => Some((read_workload(path)?, args.batch_size)),
        None => None,
    };
    let peers_on = !args.no_peers;
    let peers = peers_on.then(|| PeersOptions {
        command: args
            .peers_command
            .split_whitespace()
            .map(String::from)
            .collect(),
        runtimes: args.peers.clone(),
        cache_dir: args.peers_cache.clone(),
    });
    let opts = EncoderBenchOptions {
        model_dir: dir.clone(),
        shapes: args.shapes.clone(),
        workload,
        reps: args.reps,
        warmup: args.warmup,
        workload_reps: args.workload_reps,
        check_texts: args.check_texts,
        peers,
        embed_texts: if peers_on { sets.texts() } else { Vec::new() },
        seed: args.seed,
    };
    outln!(
        "fff bench encoder: {} ({} layers, hidden {}, FFF weights {}); {} threads; {}",
        dir.display(),
        pipeline.model.config().layers,
        pipeline.model.config().hidden,
        args.weights,
        rayon::current_num_threads(),
        fff_util::machine()
    );
    let mut report = run_encoder(&pipeline, &opts, |line| errln!("  {line}"))?;
    let mut tables = format!(
        "{}\nThe engine's time by phase (share of the encoder's time; FFF blocks whole):\n\n{}",
        encoder_table(&report),
        profile_table(&report)
    );
    if args.sts.is_some() || args.probe.is_some() {
        // The engine with its weight format, and each peer from its own embeddings.
        let mut quality = BTreeMap::new();
        quality.insert(
            ENGINE.to_string(),
            sets.scores(&engine_embed(&pipeline, args.batch_size))?,
        );
        for (name, r) in &report.runtimes {
            if let Some(e) = &r.embeddings {
                quality.insert(
                    name.clone(),
                    sets.scores(&embed_from(&opts.embed_texts, e))?,
                );
            }
        }
        tables.push_str(&quality_table(&quality));
        report.quality = Some(serde_json::to_value(&quality)?);
    }
    out!("{tables}");
    if let Some(path) = &args.json {
        fff_util::fs::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    if let Some(path) = &args.table {
        let text = format!(
            "Machine: {}; {} threads; model {}; FFF weights {}.\n\n{tables}",
            report.machine, report.threads, report.model, report.ffn_weights
        );
        fff_util::fs::write_atomic(path, text.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

/// Quality by runtime, as markdown.
fn quality_table(quality: &BTreeMap<String, Scores>) -> String {
    let f = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let mut t = String::from(
        "\nQuality of each runtime's own embeddings (the engine's FFF weights as given):\n\n| runtime | STS | probe % |\n|---|---:|---:|\n",
    );
    for (name, q) in quality {
        t.push_str(&format!("| {name} | {} | {} |\n", f(q.sts), f(q.probe)));
    }
    t
}
