//! Runs the measurements.

use crate::check::{CheckReport, Checker, FffReference, DEFAULT_CHECK_ROWS};
use crate::impls::{
    DenseCandle, DenseFaer, DenseLevel1, DenseLevel2, DenseWeights, FffKernel, FffLevel1,
    FffQuantKernel, LayerImpl,
};
use anyhow::{anyhow, ensure, Context, Result};
use fastfeedforward::internal::resolve_strategy;
use fastfeedforward::{
    Activation, Fff, FffConfig, InferOptions, Init, QuantizedFff, Strategy, WeightFormat, Workspace,
};
use fff_util::bandwidth;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One configuration of the table: an FFF `KxD` or a dense layer of `N` neurons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSpec {
    /// `trees` trees of depth `depth`.
    Fff {
        /// K.
        trees: usize,
        /// D.
        depth: usize,
    },
    /// A dense layer of `neurons` hidden neurons.
    Dense {
        /// Hidden neurons.
        neurons: usize,
    },
}

impl ConfigSpec {
    /// Total neurons.
    pub fn neurons(&self) -> usize {
        match *self {
            ConfigSpec::Fff { trees, depth } => trees * ((1 << (depth + 1)) - 1),
            ConfigSpec::Dense { neurons } => neurons,
        }
    }

    /// Neurons evaluated per input.
    pub fn used(&self) -> usize {
        match *self {
            ConfigSpec::Fff { trees, depth } => trees * (depth + 1),
            ConfigSpec::Dense { neurons } => neurons,
        }
    }

    /// Name as in UltraFastBERT's table: `1x11`, or `dense4095`.
    pub fn name(&self) -> String {
        match *self {
            ConfigSpec::Fff { trees, depth } => format!("{trees}x{depth}"),
            ConfigSpec::Dense { neurons } => format!("dense{neurons}"),
        }
    }
}

impl FromStr for ConfigSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(n) = s.strip_prefix("dense") {
            let neurons: usize = n
                .parse()
                .map_err(|_| anyhow!("config `{s}`: expected denseN, e.g. dense4095"))?;
            ensure!(neurons > 0, "config `{s}`: a dense layer needs neurons");
            return Ok(ConfigSpec::Dense { neurons });
        }
        let (k, d) = s
            .split_once('x')
            .ok_or_else(|| anyhow!("config `{s}`: expected KxD (e.g. 1x11) or denseN"))?;
        let trees: usize = k
            .parse()
            .map_err(|_| anyhow!("config `{s}`: K `{k}` is not a number"))?;
        let depth: usize = d
            .parse()
            .map_err(|_| anyhow!("config `{s}`: D `{d}` is not a number"))?;
        FffConfig::new(1, 1, depth, trees)
            .validate()
            .map_err(|e| anyhow!("config `{s}`: {e}"))?;
        Ok(ConfigSpec::Fff { trees, depth })
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Input and output width.
    pub width: usize,
    /// Configurations (rows of the table).
    pub configs: Vec<ConfigSpec>,
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Most timed runs per measurement (after warm-up); the median is reported.
    pub reps: usize,
    /// Stop repeating once a measurement has used this much time (and ran at least 3 times).
    pub budget: Duration,
    /// Node and hidden activation.
    pub activation: Activation,
    /// Largest batch at which the slow level-1/level-2 dense loops are run.
    pub loops_max_batch: usize,
    /// Weights and inputs seed.
    pub seed: u64,
    /// Output rows compared with the reference per checked call, at most.
    pub check_rows: usize,
    /// Weight formats the FFF kernel runs with (each against the f32 dense baseline).
    pub formats: Vec<WeightFormat>,
    /// Measure memory rates and report each FFF kernel row's traffic floor.
    pub floors: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            width: 768,
            configs: "3072x0,512x2,128x4,32x6,8x8,2x10,1x11,dense3072,dense4095"
                .split(',')
                .map(|c| c.parse().expect("default configs parse"))
                .collect(),
            batches: vec![1, 128, 16384],
            threads: {
                let all = std::thread::available_parallelism().map_or(1, |n| n.get());
                if all > 1 {
                    vec![1, all]
                } else {
                    vec![1]
                }
            },
            reps: 7,
            budget: Duration::from_secs(4),
            activation: Activation::Gelu,
            loops_max_batch: 128,
            seed: 0,
            check_rows: DEFAULT_CHECK_ROWS,
            formats: vec![WeightFormat::F32],
            floors: true,
        }
    }
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Configuration name (`1x11`, `dense4095`).
    pub config: String,
    /// Implementation name.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Tree depth (FFF only).
    pub depth: Option<usize>,
    /// Trees (FFF only).
    pub trees: Option<usize>,
    /// Neurons in the layer.
    pub neurons_total: usize,
    /// Neurons evaluated per input.
    pub neurons_used: usize,
    /// Batch size.
    pub batch: usize,
    /// Threads used.
    pub threads: usize,
    /// Median seconds per call.
    pub median_s: f64,
    /// Timed runs behind the median.
    pub runs: usize,
    /// Useful work per second: 2·batch·used·(in+out) flops / median.
    pub gflops: f64,
    /// The fastest correct dense FF with the same number of neurons, divided by this row's
    /// time (NaN when this row failed its check).
    pub speedup_vs_dense: f64,
    /// Which dense implementation that was.
    pub dense_baseline: String,
    /// Dense baseline's median seconds.
    pub dense_median_s: f64,
    /// Neurons total / used: the FLOP ratio limit of the speedup.
    pub limit: f64,
    /// What the checks of this row's warm-up and last timed outputs found.
    pub check: CheckReport,
    /// How the weights were stored (`f32` for every dense row).
    pub weights: String,
    /// The traffic floor of this call, if computed (FFF kernel rows).
    pub floor: Option<Floor>,
}

/// The least time a call can take for the bytes it must move, at the rates measured on this
/// machine for a working set of its size.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Bytes read: the batch's inputs, and each distinct visited node's input row, output row
    /// (in the weight format, scales included) and bias, once.
    pub bytes_read: f64,
    /// Bytes written: the batch's outputs.
    pub bytes_written: f64,
    /// Distinct nodes the batch visits.
    pub distinct_nodes: usize,
    /// Read rate measured for this working set and thread count, bytes per second.
    pub read_bytes_per_s: f64,
    /// Write rate measured likewise.
    pub write_bytes_per_s: f64,
    /// `bytes_read / read rate + bytes_written / write rate`.
    pub floor_s: f64,
    /// This row's median over the floor (1.0 = at the floor).
    pub time_over_floor: f64,
}

/// The floor of a call of `layer` on the rows `x` (`batch` of them) with weights in `format`,
/// on `threads` threads; `median_s` is the call's measured time. The distinct nodes come from
/// the kernel's own routes (f32; another format may route a few near ties elsewhere, which
/// does not change the count materially).
pub fn traffic_floor(
    layer: &Fff,
    x: &[f32],
    batch: usize,
    format: WeightFormat,
    threads: usize,
    median_s: f64,
) -> Result<Floor> {
    let c = *layer.config();
    let mut y = vec![0f32; batch * c.output_width];
    let routes = layer.forward_infer_routed(
        x,
        batch,
        &mut y,
        &mut Workspace::new(),
        InferOptions::default(),
    )?;
    let (m, levels) = (c.nodes_per_tree(), c.depth + 1);
    let mut seen = vec![false; c.total_nodes()];
    for (i, &n) in routes.iter().enumerate() {
        let tree = (i / levels) % c.trees;
        seen[tree * m + n as usize] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    let per_node = format.row_bytes(c.input_width) + format.row_bytes(c.output_width) + 4;
    let bytes_read = (batch * c.input_width * 4 + distinct * per_node) as f64;
    let bytes_written = (batch * c.output_width * 4) as f64;
    let rates = bandwidth::measure((bytes_read + bytes_written) as usize, threads);
    let floor_s = bandwidth::floor_seconds(bytes_read, bytes_written, &rates);
    Ok(Floor {
        bytes_read,
        bytes_written,
        distinct_nodes: distinct,
        read_bytes_per_s: rates.read_bytes_per_s,
        write_bytes_per_s: rates.write_bytes_per_s,
        floor_s,
        time_over_floor: median_s / floor_s,
    })
}

fn random_rows(rows: usize, width: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..rows * width)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// A kernel row whose traffic floor is computed once every row has been timed.
struct PendingFloor {
    record: usize,
    layer: usize,
    batch: usize,
    threads: usize,
    format: WeightFormat,
    median_s: f64,
}

/// One implementation's timed runs and what their checks found.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Median seconds per call; NaN when the warm-up output failed its check and nothing was
    /// timed.
    pub median_s: f64,
    /// Timed runs behind the median.
    pub runs: usize,
    /// The checks of the warm-up output and of the last timed output.
    pub check: CheckReport,
}

/// Times `imp` at `batch` and checks what it computed: the warm-up call's output is checked
/// first (a wrong implementation is not timed), then the output the last timed call left in
/// the buffer. Both calls run at the timed batch on the calling thread pool, so the check covers
/// the strategy and the split across threads that the timing measures. Inputs are cycled
/// through `pool` so that each run sees different rows.
pub fn measure_checked(
    imp: &mut dyn LayerImpl,
    pool: &[f32],
    batch: usize,
    checker: &mut Checker<'_>,
    opts: &BenchOptions,
) -> Result<Measured> {
    let (cin, cout) = (checker.input_width(), checker.output_width());
    let pool_rows = pool.len() / cin;
    ensure!(
        batch > 0 && pool_rows >= batch,
        "an input pool of {pool_rows} rows cannot feed batch {batch}"
    );
    // A fresh buffer per implementation: one that writes nothing cannot pass on what another
    // implementation left there.
    let mut y = vec![0f32; batch * cout];
    let window = |offset: usize| &pool[offset * cin..(offset + batch) * cin];
    let mut offset = 0;
    imp.run(window(offset), batch, &mut y)?;
    let warm = checker.check(pool, offset, batch, &y);
    if let Some(why) = &warm.failure {
        return Ok(Measured {
            median_s: f64::NAN,
            runs: 0,
            check: CheckReport {
                failure: Some(format!("warm-up output: {why}; not timed")),
                ..warm
            },
        });
    }
    // A pass over the windows about to be timed, untimed: each implementation then meets its
    // inputs with the caches as that stream leaves them, not as whatever ran before left them.
    // Without it, an FFF kernel timed right after other implementations of the same weights
    // on the same windows found its deep rows already in cache, and one with weights of its
    // own (bf16, int8) found them cold: at batch 1 that alone made the f32 kernel look 3x
    // faster than the narrower ones.
    let next = |offset: usize| (offset + batch) % (pool_rows - batch + 1);
    let warm_start = Instant::now();
    let mut ahead = offset;
    for _ in 0..opts.reps.max(1) {
        ahead = next(ahead);
        imp.run(window(ahead), batch, &mut y)?;
        if warm_start.elapsed() > opts.budget / 2 {
            break;
        }
    }
    let mut times = Vec::with_capacity(opts.reps.max(1));
    let start = Instant::now();
    while times.len() < opts.reps.max(1) {
        offset = next(offset);
        let x = window(offset);
        let t = Instant::now();
        imp.run(x, batch, &mut y)?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 3 && start.elapsed() > opts.budget {
            break;
        }
    }
    let mut last = checker.check(pool, offset, batch, &y);
    if let Some(why) = last.failure.take() {
        last.failure = Some(format!("last timed output: {why}"));
    }
    let runs = times.len();
    Ok(Measured {
        median_s: fff_util::timing::median(times),
        runs,
        check: warm.merge(last),
    })
}

/// The fastest run whose checks passed, as (name, median seconds): the baseline a speedup is
/// computed against. A wrong run is never the baseline, however fast.
pub fn fastest_correct<'a>(
    runs: impl IntoIterator<Item = (&'a str, &'a Measured)>,
) -> Option<(String, f64)> {
    runs.into_iter()
        .filter(|(_, m)| m.check.passed() && m.median_s.is_finite())
        .min_by(|a, b| a.1.median_s.total_cmp(&b.1.median_s))
        .map(|(name, m)| (name.to_string(), m.median_s))
}

/// Where a benchmark run stands: measurements done of the total, and what runs next.
pub trait BenchObserver {
    /// The measurement `message` begins; `done` of `total` are finished.
    fn measuring(&mut self, done: usize, total: usize, message: &str);
}

impl BenchObserver for () {
    fn measuring(&mut self, _done: usize, _total: usize, _message: &str) {}
}

/// Runs every measurement `opts` asks for, reporting each to `observer` as it starts, and
/// returns one record per (config, implementation, batch, threads). An implementation that fails
/// its check is recorded as failed (see [`crate::report::ensure_checked`]), not left out.
pub fn run(opts: &BenchOptions, observer: &mut dyn BenchObserver) -> Result<Vec<Record>> {
    ensure!(opts.width > 0, "--width must be at least 1");
    ensure!(
        !opts.batches.is_empty() && !opts.threads.is_empty(),
        "nothing to measure"
    );
    ensure!(
        opts.batches.iter().all(|&b| b > 0),
        "batch sizes must be at least 1"
    );
    ensure!(
        opts.threads.iter().all(|&t| t > 0),
        "thread counts must be at least 1"
    );
    let w = opts.width;
    // Dense weights for every neuron count the table needs.
    let mut dense: BTreeMap<usize, DenseWeights> = BTreeMap::new();
    for c in &opts.configs {
        dense.entry(c.neurons()).or_insert_with(|| {
            DenseWeights::random(
                w,
                c.neurons(),
                w,
                opts.activation,
                opts.seed ^ c.neurons() as u64,
            )
        });
    }
    let fff_layers: Vec<(ConfigSpec, Fff)> = opts
        .configs
        .iter()
        .filter_map(|c| match *c {
            ConfigSpec::Fff { trees, depth } => Some((*c, trees, depth)),
            _ => None,
        })
        .map(|(c, trees, depth)| {
            let cfg = FffConfig::new(w, w, depth, trees).with_activation(opts.activation);
            Ok((c, Fff::new(cfg, Init::Uniform, opts.seed)?))
        })
        .collect::<Result<_>>()?;
    let fff_refs: Vec<FffReference> = fff_layers.iter().map(|(_, l)| FffReference(l)).collect();
    // Each narrower format of each layer, with the f32 layer of its stored weights widened
    // exactly: the reference that format's kernel is held to.
    let quantized: Vec<Vec<(WeightFormat, QuantizedFff, Fff)>> = fff_layers
        .iter()
        .map(|(_, l)| {
            opts.formats
                .iter()
                .filter(|&&f| f != WeightFormat::F32)
                .map(|&f| {
                    let q = l.quantize(f)?;
                    let (w_in, b_in, w_out_t) = q.dequantized();
                    let widened = Fff::from_node_major(*l.config(), w_in, b_in, w_out_t)?;
                    Ok((f, q, widened))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let quantized_refs: Vec<Vec<FffReference>> = quantized
        .iter()
        .map(|v| v.iter().map(|(_, _, w)| FffReference(w)).collect())
        .collect();
    let mut quantized_checkers: BTreeMap<(usize, usize, usize), Checker> = BTreeMap::new();
    let with_f32 = opts.formats.is_empty() || opts.formats.contains(&WeightFormat::F32);
    // Checkers outlive the thread loop: the inputs of a batch are the same at every thread
    // count, so reference rows computed once serve every check of that batch.
    let mut dense_checkers: BTreeMap<(usize, usize), Checker> = BTreeMap::new();
    let mut fff_checkers: BTreeMap<(usize, usize), Checker> = BTreeMap::new();

    let dense_impls = |weights| -> Result<Vec<Box<dyn LayerImpl + '_>>> {
        let v: Vec<Box<dyn LayerImpl>> = vec![
            Box::new(DenseCandle::new(weights)?),
            Box::new(DenseFaer::new(weights)),
        ];
        #[cfg(feature = "openblas")]
        let v = {
            let mut v = v;
            v.push(Box::new(crate::impls::DenseOpenBlas::new(weights)));
            v
        };
        Ok(v)
    };
    let backends = if cfg!(feature = "openblas") { 3 } else { 2 };
    let per_thread: usize = opts
        .batches
        .iter()
        .map(|&b| {
            let loops = if b <= opts.loops_max_batch { 2 } else { 0 };
            let f32_rows = if with_f32 { 3 } else { 0 };
            dense.len() * (backends + loops)
                + fff_layers.len() * (f32_rows + quantized.first().map_or(0, Vec::len))
        })
        .sum();
    let measurements = opts.threads.len() * per_thread;
    let mut done = 0;
    let mut records = Vec::new();
    let mut floors: Vec<PendingFloor> = Vec::new();
    for &threads in &opts.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("building the thread pool")?;
        for &batch in &opts.batches {
            let pool_rows = (2 * batch).max(1024);
            let inputs = random_rows(pool_rows, w, opts.seed.wrapping_add(batch as u64));
            // The fastest correct dense run per neuron count, over every dense implementation
            // run at this batch (SGEMMs and loops alike).
            let mut best: BTreeMap<usize, (String, f64)> = BTreeMap::new();
            let mut pending: Vec<(ConfigSpec, String, Measured)> = Vec::new();
            for (&neurons, weights) in &dense {
                let spec = ConfigSpec::Dense { neurons };
                let checker = dense_checkers
                    .entry((batch, neurons))
                    .or_insert_with(|| Checker::new(weights, w, w, opts.check_rows));
                let mut impls = dense_impls(weights)?;
                if batch <= opts.loops_max_batch {
                    impls.push(Box::new(DenseLevel2::new(weights)));
                    impls.push(Box::new(DenseLevel1::new(weights)));
                }
                let first = pending.len();
                for mut imp in impls {
                    let name = imp.name();
                    observer.measuring(
                        done,
                        measurements,
                        &format!("{} {name} batch {batch} threads {threads}", spec.name()),
                    );
                    let m = pool
                        .install(|| measure_checked(imp.as_mut(), &inputs, batch, checker, opts))?;
                    pending.push((spec, name, m));
                    done += 1;
                }
                let runs = pending[first..].iter().map(|(_, n, m)| (n.as_str(), m));
                if let Some(b) = fastest_correct(runs) {
                    best.insert(neurons, b);
                }
            }
            for (spec, name, m) in &pending {
                if opts.configs.contains(spec) {
                    let base = best.get(&spec.neurons());
                    records.push(Record::new(spec, name, batch, threads, m, w, base));
                }
            }
            for (i, (spec, layer)) in fff_layers.iter().enumerate() {
                let checker = fff_checkers
                    .entry((batch, i))
                    .or_insert_with(|| Checker::new(&fff_refs[i], w, w, opts.check_rows));
                // The library's own choice, forced, so that the label names what was run.
                let label = |format: WeightFormat| {
                    let chosen = resolve_strategy(Strategy::Auto, layer.config(), batch, format);
                    (chosen, format!("fff ({})", chosen.name()))
                };
                let (chosen, name) = label(WeightFormat::F32);
                let mut impls: Vec<(Box<dyn LayerImpl>, WeightFormat, bool)> = Vec::new();
                if with_f32 {
                    impls.push((Box::new(FffLevel1::new(layer)), WeightFormat::F32, false));
                    impls.push((
                        Box::new(FffKernel::new(layer, Strategy::Grouped, "fff-level2")),
                        WeightFormat::F32,
                        false,
                    ));
                    impls.push((
                        Box::new(FffKernel::new_named(layer, chosen, name)),
                        WeightFormat::F32,
                        true,
                    ));
                }
                for (q, (format, layer_q, _)) in quantized[i].iter().enumerate() {
                    let (chosen, name) = label(*format);
                    let imp = FffQuantKernel::new(layer_q, chosen, format!("{name} {format}"));
                    impls.push((Box::new(imp), *format, true));
                    quantized_checkers.entry((batch, i, q)).or_insert_with(|| {
                        Checker::new(&quantized_refs[i][q], w, w, opts.check_rows)
                    });
                }
                for (mut imp, format, kernel) in impls {
                    let name = imp.name();
                    observer.measuring(
                        done,
                        measurements,
                        &format!("{} {name} batch {batch} threads {threads}", spec.name()),
                    );
                    let checker = match quantized[i].iter().position(|(f, _, _)| *f == format) {
                        Some(q) => quantized_checkers
                            .get_mut(&(batch, i, q))
                            .expect("made above"),
                        None => &mut *checker,
                    };
                    let m = pool
                        .install(|| measure_checked(imp.as_mut(), &inputs, batch, checker, opts))?;
                    let base = best.get(&spec.neurons());
                    let mut record = Record::new(spec, &name, batch, threads, &m, w, base);
                    record.weights = format.name().into();
                    if kernel && opts.floors && m.median_s.is_finite() {
                        floors.push(PendingFloor {
                            record: records.len(),
                            layer: i,
                            batch,
                            threads,
                            format,
                            median_s: m.median_s,
                        });
                    }
                    records.push(record);
                    done += 1;
                }
            }
        }
    }
    // The floors' memory-rate measurements run after every timing: each hammers the memory
    // system for ~100 ms, and run between rows they slowed the row timed next (at batch 1 the
    // bf16 and int8 rows, timed right after one, came out 2-3x slower than in a run of their
    // own).
    for f in floors {
        observer.measuring(done, measurements, "traffic floors");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(f.threads)
            .build()
            .context("building the thread pool")?;
        let inputs = random_rows(
            (2 * f.batch).max(1024),
            w,
            opts.seed.wrapping_add(f.batch as u64),
        );
        let layer = &fff_layers[f.layer].1;
        let window = &inputs[..f.batch * w];
        let floor = pool
            .install(|| traffic_floor(layer, window, f.batch, f.format, f.threads, f.median_s))?;
        records[f.record].floor = Some(floor);
    }
    observer.measuring(done, measurements, "done");
    Ok(records)
}

impl Record {
    /// The record of measurement `m` of implementation `name` of `spec`, against `baseline`
    /// (the fastest correct dense run with as many neurons, if any). A failed check leaves
    /// the speedup NaN: a wrong output has no speed worth comparing.
    pub fn new(
        spec: &ConfigSpec,
        name: &str,
        batch: usize,
        threads: usize,
        m: &Measured,
        width: usize,
        baseline: Option<&(String, f64)>,
    ) -> Record {
        let (depth, trees) = match *spec {
            ConfigSpec::Fff { trees, depth } => (Some(depth), Some(trees)),
            ConfigSpec::Dense { .. } => (None, None),
        };
        let (dense_name, dense_t) = baseline
            .cloned()
            .unwrap_or_else(|| ("none".into(), f64::NAN));
        let median_s = m.median_s;
        Record {
            config: spec.name(),
            implementation: name.into(),
            depth,
            trees,
            neurons_total: spec.neurons(),
            neurons_used: spec.used(),
            batch,
            threads,
            median_s,
            runs: m.runs,
            gflops: 2.0 * batch as f64 * spec.used() as f64 * (2 * width) as f64 / median_s / 1e9,
            speedup_vs_dense: if m.check.passed() {
                dense_t / median_s
            } else {
                f64::NAN
            },
            dense_baseline: dense_name,
            dense_median_s: dense_t,
            limit: spec.neurons() as f64 / spec.used() as f64,
            check: m.check.clone(),
            weights: "f32".into(),
            floor: None,
        }
    }

    /// Whether the implementation's checks passed.
    pub fn passed(&self) -> bool {
        self.check.passed()
    }
}
