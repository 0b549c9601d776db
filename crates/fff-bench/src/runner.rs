//! Runs the measurements.

use crate::impls::{
    fff_reference, DenseCandle, DenseFaer, DenseLevel1, DenseLevel2, DenseWeights, FffKernel,
    FffLevel1, LayerImpl,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use fastfeedforward::internal::resolve_strategy;
use fastfeedforward::{Activation, Fff, FffConfig, Init, Strategy};
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
    /// The fastest dense FF with the same number of neurons, divided by this row's time.
    pub speedup_vs_dense: f64,
    /// Which dense implementation that was, and its median seconds.
    pub dense_baseline: String,
    /// Dense baseline's median seconds.
    pub dense_median_s: f64,
    /// Neurons total / used: the FLOP ratio limit of the speedup.
    pub limit: f64,
}

fn random_rows(rows: usize, width: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..rows * width)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// Median of up to `reps` timed runs after one warm-up; cycles through `pool` so that each run
/// sees different inputs.
fn measure(
    imp: &mut dyn LayerImpl,
    pool: &[f32],
    width: usize,
    batch: usize,
    y: &mut [f32],
    opts: &BenchOptions,
) -> Result<(f64, usize)> {
    let pool_rows = pool.len() / width;
    let mut offset = 0;
    let mut next = || {
        let x = &pool[offset * width..(offset + batch) * width];
        offset = (offset + batch) % (pool_rows - batch + 1);
        x
    };
    imp.run(next(), batch, y)?;
    let mut times = Vec::with_capacity(opts.reps);
    let start = Instant::now();
    while times.len() < opts.reps.max(1) {
        let x = next();
        let t = Instant::now();
        imp.run(x, batch, y)?;
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 3 && start.elapsed() > opts.budget {
            break;
        }
    }
    let runs = times.len();
    Ok((fff_util::timing::median(times), runs))
}

/// Largest |difference| relative to the reference's scale, over rows not near a routing tie.
pub(crate) fn check_outputs(
    name: &str,
    config: &str,
    got: &[f32],
    want: &[f32],
    skip: &[bool],
    width: usize,
) -> Result<()> {
    for (r, (g, w)) in got.chunks(width).zip(want.chunks(width)).enumerate() {
        if skip.get(r).copied().unwrap_or(false) {
            continue;
        }
        let scale = 1.0 + w.iter().fold(0f32, |m, v| m.max(v.abs()));
        // NaN-aware: a NaN difference counts as infinitely wrong.
        let err = g.iter().zip(w).fold(0f32, |m, (a, b)| {
            let d = (a - b).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                m.max(d)
            }
        });
        if err > 1e-3 * scale {
            bail!(
                "{name} on {config}: row {r} differs from the reference by {err:e} \
                 (scale {scale}); refusing to time a wrong implementation"
            );
        }
    }
    Ok(())
}

/// Rows whose path passes within `margin` of a decision boundary (may route differently).
fn near_ties(layer: &Fff, x: &[f32], rows: usize, margin: f32) -> Result<Vec<bool>> {
    use fastfeedforward::kernels::reference::{node_logit, route};
    let c = *layer.config();
    let m = c.nodes_per_tree();
    (0..rows)
        .map(|r| {
            let xb = &x[r * c.input_width..(r + 1) * c.input_width];
            Ok(layer.with_view(|w| {
                route(&w, xb).iter().enumerate().any(|(i, &n)| {
                    let row = (i / (c.depth + 1)) * m + n as usize;
                    node_logit(&w, row, xb).abs() < margin
                })
            })?)
        })
        .collect()
}

/// Runs every measurement and returns one record per (config, implementation, batch, threads).
/// Where a benchmark run stands: measurements done of the total, and what runs next.
pub trait BenchObserver {
    /// The measurement `message` begins; `done` of `total` are finished.
    fn measuring(&mut self, done: usize, total: usize, message: &str);
}

impl BenchObserver for () {
    fn measuring(&mut self, _done: usize, _total: usize, _message: &str) {}
}

/// Runs every measurement `opts` asks for, reporting each to `observer` as it starts.
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
            dense.len() * (backends + loops) + fff_layers.len() * 3
        })
        .sum();
    let measurements = opts.threads.len() * per_thread;
    let mut done = 0;
    let mut records = Vec::new();
    for &threads in &opts.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("building the thread pool")?;
        for &batch in &opts.batches {
            let pool_rows = (2 * batch).max(1024);
            let inputs = random_rows(pool_rows, w, opts.seed.wrapping_add(batch as u64));
            let mut y = vec![0f32; batch * w];
            let check_rows = batch.min(8);
            let check_x = &inputs[..check_rows * w];
            // Dense baselines per neuron count: (best name, best time), plus loop records.
            let mut best: BTreeMap<usize, (String, f64)> = BTreeMap::new();
            let mut pending: Vec<(ConfigSpec, String, f64, usize)> = Vec::new();
            for (&neurons, weights) in &dense {
                let want = weights.reference(check_x, check_rows);
                let spec = ConfigSpec::Dense { neurons };
                let mut impls = dense_impls(weights)?;
                if batch <= opts.loops_max_batch {
                    impls.push(Box::new(DenseLevel2::new(weights)));
                    impls.push(Box::new(DenseLevel1::new(weights)));
                }
                for mut imp in impls {
                    let name = imp.name();
                    observer.measuring(
                        done,
                        measurements,
                        &format!("{} {name} batch {batch} threads {threads}", spec.name()),
                    );
                    let bench = Bench {
                        pool: &pool,
                        inputs: &inputs,
                        width: w,
                        batch,
                        opts,
                    };
                    let (t, runs) =
                        bench.check_and_time(imp.as_mut(), &spec, check_x, &want, &[], &mut y)?;
                    if !name.contains("level") {
                        let e = best.entry(neurons).or_insert((name.clone(), t));
                        if t < e.1 {
                            *e = (name.clone(), t);
                        }
                    }
                    pending.push((spec, name, t, runs));
                    done += 1;
                }
            }
            for (spec, name, t, runs) in pending {
                if opts.configs.contains(&spec) {
                    records.push(record(&spec, &name, batch, threads, t, runs, w, &best));
                }
            }
            for (spec, layer) in &fff_layers {
                let want = fff_reference(layer, check_x, check_rows)?;
                let skip = near_ties(layer, check_x, check_rows, 1e-4)?;
                let auto = resolve_strategy(Strategy::Auto, layer.config().depth, batch);
                let label: &'static str = match auto {
                    Strategy::Bucketed => "fff (bucketed)",
                    _ => "fff (per-token)",
                };
                let impls: Vec<Box<dyn LayerImpl>> = vec![
                    Box::new(FffLevel1::new(layer)),
                    Box::new(FffKernel::new(layer, Strategy::Grouped, "fff-level2")),
                    Box::new(FffKernel::new(layer, Strategy::Auto, label)),
                ];
                for mut imp in impls {
                    let name = imp.name();
                    observer.measuring(
                        done,
                        measurements,
                        &format!("{} {name} batch {batch} threads {threads}", spec.name()),
                    );
                    let bench = Bench {
                        pool: &pool,
                        inputs: &inputs,
                        width: w,
                        batch,
                        opts,
                    };
                    let (t, runs) =
                        bench.check_and_time(imp.as_mut(), spec, check_x, &want, &skip, &mut y)?;
                    records.push(record(spec, &name, batch, threads, t, runs, w, &best));
                    done += 1;
                }
            }
        }
    }
    observer.measuring(done, measurements, "done");
    Ok(records)
}

/// One measurement context: thread pool, input pool and sizes.
struct Bench<'a> {
    pool: &'a rayon::ThreadPool,
    inputs: &'a [f32],
    width: usize,
    batch: usize,
    opts: &'a BenchOptions,
}

impl Bench<'_> {
    /// Checks `imp` on `check_x` against `want` (rows in `skip` excepted), then times it.
    fn check_and_time(
        &self,
        imp: &mut dyn LayerImpl,
        spec: &ConfigSpec,
        check_x: &[f32],
        want: &[f32],
        skip: &[bool],
        y: &mut [f32],
    ) -> Result<(f64, usize)> {
        let rows = check_x.len() / self.width;
        let mut got = vec![0f32; rows * self.width];
        self.pool.install(|| imp.run(check_x, rows, &mut got))?;
        check_outputs(&imp.name(), &spec.name(), &got, want, skip, self.width)?;
        self.pool
            .install(|| measure(imp, self.inputs, self.width, self.batch, y, self.opts))
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    spec: &ConfigSpec,
    name: &str,
    batch: usize,
    threads: usize,
    median_s: f64,
    runs: usize,
    width: usize,
    best: &BTreeMap<usize, (String, f64)>,
) -> Record {
    let (depth, trees) = match *spec {
        ConfigSpec::Fff { trees, depth } => (Some(depth), Some(trees)),
        ConfigSpec::Dense { .. } => (None, None),
    };
    let (dense_name, dense_t) = best
        .get(&spec.neurons())
        .cloned()
        .unwrap_or_else(|| ("none".into(), f64::NAN));
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
        runs,
        gflops: 2.0 * batch as f64 * spec.used() as f64 * (2 * width) as f64 / median_s / 1e9,
        speedup_vs_dense: dense_t / median_s,
        dense_baseline: dense_name,
        dense_median_s: dense_t,
        limit: spec.neurons() as f64 / spec.used() as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::check_outputs;

    #[test]
    fn a_wrong_output_aborts_and_near_ties_are_skipped() {
        let want = [1.0f32, 2.0, 3.0, 4.0];
        assert!(check_outputs("x", "c", &want, &want, &[], 2).is_ok());
        let wrong = [1.0f32, 2.0, 3.0, 4.5];
        let err = check_outputs("impl-a", "1x11", &wrong, &want, &[], 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("impl-a") && err.contains("1x11") && err.contains("row 1"),
            "{err}"
        );
        // Row 1 is near a tie: skipped.
        assert!(check_outputs("x", "c", &wrong, &want, &[false, true], 2).is_ok());
        let nan = [1.0f32, f32::NAN, 3.0, 4.0];
        assert!(check_outputs("x", "c", &nan, &want, &[], 2).is_err());
    }
}
