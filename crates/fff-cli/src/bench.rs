//! `fff bench`: speed tables.

use anyhow::Result;
use clap::{Args, Subcommand};
use fastfeedforward::Activation;
use fff_bench::report::{ensure_checked, markdown_table, plot, write_json};
use fff_bench::{BenchOptions, ConfigSpec};
use std::path::PathBuf;
use std::time::Duration;

/// What to benchmark.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// FFF layers against dense feedforward layers of the same neuron count (UltraFastBERT's
    /// CPU table, done right): every implementation's timed outputs are checked against a
    /// reference, and any failure makes the command fail.
    Layer(LayerArgs),
    /// One training step of an FFF layer: the O(depth) training op against the dense masked
    /// formulation UltraFastBERT trains with (on SGEMMs), both checked against each other first.
    Train(crate::bench_train::TrainBenchArgs),
    /// End-to-end encoder throughput: UltraFastBERT-1x11 (FFF kernel, and dense masked as the
    /// original runs it) against a dense crammedBERT of the same shape.
    Bert(crate::bench_bert::BertBenchArgs),
    /// A real encoder (a Hugging Face BERT / sentence-transformers folder) against PyTorch and
    /// ONNX Runtime fp32 and int8 on the same inputs and threads: fixed shapes, and a file of
    /// sentences embedded end to end; each peer is checked against the engine's embeddings
    /// before it is timed.
    Encoder(crate::bench_encoder::EncoderBenchArgs),
    /// Load test of `fff serve`: concurrent clients on loopback, throughput and latency of
    /// UltraFastBERT batched, unbatched and dense crammedBERT side by side (or of --url).
    Serve(crate::serve::ServeBenchArgs),
}

/// Options of `fff bench layer`.
#[derive(Args, Debug)]
pub struct LayerArgs {
    /// Input and output width.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::WIDTH}>, default_value_t = 768)]
    width: usize,
    /// Configurations: KxD for FFF (K trees of depth D), denseN for a dense layer of N neurons.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3072x0,512x2,128x4,32x6,8x8,2x10,1x11,dense3072,dense4095"
    )]
    configs: Vec<ConfigSpec>,
    /// Batch sizes (16384 = 128 sequences of 128 tokens, the paper's setting).
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, value_delimiter = ',', default_value = "1,128,16384")]
    batches: Vec<usize>,
    /// Thread counts [default: 1 and all cores].
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::THREADS}>, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Most timed runs per measurement, after one warm-up run; the median is reported.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::REPS}>, default_value_t = 7)]
    reps: usize,
    /// Stop repeating a measurement after this many seconds (once it has run 3 times).
    #[arg(long, default_value_t = 4.0)]
    budget_s: f64,
    /// Node and hidden activation.
    #[arg(long, default_value = "gelu")]
    activation: Activation,
    /// Largest batch for the slow level-1/level-2 dense loops.
    #[arg(long, default_value_t = 128)]
    loops_max_batch: usize,
    /// Random seed for weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output rows compared with the reference per checked call (the warm-up's and the last
    /// timed call's), sampled evenly from larger batches.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = fff_bench::check::DEFAULT_CHECK_ROWS)]
    check_rows: usize,
    /// Weight formats of the FFF kernel rows (each timed against the f32 dense baseline and
    /// checked against the reference of its own stored weights).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    weights: Vec<fastfeedforward::WeightFormat>,
    /// Skip the memory-rate measurements behind the traffic-floor column.
    #[arg(long)]
    no_floors: bool,
    /// Write one JSON record per row to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw speedup against depth per batch size and format, with the limit, to this PNG or SVG
    /// file (by the extension), and time over traffic floor to `<name>_floor.<ext>` beside it.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Layer(args) => layer(args),
        BenchCommand::Train(args) => crate::bench_train::run(args),
        BenchCommand::Serve(args) => crate::serve::bench(args),
        BenchCommand::Bert(args) => crate::bench_bert::run(args),
        BenchCommand::Encoder(args) => crate::bench_encoder::run(args),
    }
}

fn layer(args: LayerArgs) -> Result<()> {
    anyhow::ensure!(
        args.budget_s.is_finite() && args.budget_s >= 0.0,
        "--budget-s must be a non-negative number of seconds"
    );
    // The largest configuration at the largest batch, with its dense baseline of as many
    // neurons: weights, the input pool (twice the batch), one output per implementation, and
    // the SGEMM's hidden layer.
    let nodes = args
        .configs
        .iter()
        .map(ConfigSpec::neurons)
        .max()
        .unwrap_or(0);
    let batch = args.batches.iter().copied().max().unwrap_or(0);
    crate::limits::MemoryEstimate::default()
        .floats("FFF and dense weights", &[4, nodes, args.width])
        .floats("input pool", &[2, batch, args.width])
        .floats("outputs", &[8, batch, args.width])
        .floats("dense hidden layer", &[batch, nodes])
        .check(None, "--width, --configs or --batches")?;
    if let Some(path) = &args.json {
        fff_util::fs::check_output_file(path, "--json")?;
    }
    if let Some(path) = &args.plot {
        fff_util::chart::check_file(path, "--plot")?;
    }
    let defaults = BenchOptions::default();
    let opts = BenchOptions {
        width: args.width,
        configs: args.configs,
        batches: args.batches,
        threads: if args.threads.is_empty() {
            defaults.threads
        } else {
            args.threads
        },
        reps: args.reps,
        budget: Duration::from_secs_f64(args.budget_s),
        activation: args.activation,
        loops_max_batch: args.loops_max_batch,
        seed: args.seed,
        check_rows: args.check_rows,
        formats: args.weights,
        floors: !args.no_floors,
    };
    outln!(
        "fff bench layer: width {}, {} activation, SIMD {}, threads {:?}, median of up to {} runs",
        opts.width,
        opts.activation,
        fastfeedforward::SimdLevel::detect().name(),
        opts.threads,
        opts.reps
    );
    let records = fff_bench::run(&opts, &mut crate::progress::MeasurementProgress::new())?;
    out!("{}", markdown_table(&records));
    outln!(
        "\nspeedup vs dense = median of the fastest correct dense FF (any of the dense \
         implementations run at that batch) with the same number of neurons / this row's median, \
         measured in the same run; limit = neurons total / used; GFLOP/s counts only the neurons \
         each input uses; traffic floor = the bytes the call must move (inputs, each distinct \
         visited node's rows in the weight format, outputs) at the read and write rates measured \
         on this machine for a working set of that size, on as many threads; check = output rows \
         of the warm-up and the last timed call compared with a plain f64 reference (of the \
         stored bf16/int8 weights, widened exactly, for those rows)."
    );
    if let Some(path) = &args.json {
        write_json(path, &records)?;
        outln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot(path, &records)?;
        outln!("wrote {}", path.display());
    }
    // After the table and the files, so that what failed is on record; then a non-zero exit.
    ensure_checked(&records)
}
