//! The checks behind `fff bench layer`: a wrong implementation is caught at the batch it is
//! timed with, a near-tie excuse cannot hide a bug, and the baseline is the fastest correct run.

use anyhow::Result;
use fastfeedforward::internal::resolve_strategy;
use fastfeedforward::{Fff, FffConfig, Init, Strategy, WeightFormat};
use fff_bench::check::{Checker, FffReference, Reference};
use fff_bench::impls::{DenseFaer, DenseLevel1, DenseWeights, FffKernel, LayerImpl};
use fff_bench::report::{ensure_checked, markdown_table};
use fff_bench::runner::{fastest_correct, measure_checked, Measured};
use fff_bench::{BenchOptions, ConfigSpec, Record};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Duration;

const WIDTH: usize = 24;

fn opts() -> BenchOptions {
    BenchOptions {
        width: WIDTH,
        reps: 3,
        budget: Duration::ZERO,
        ..BenchOptions::default()
    }
}

fn pool(rows: usize, width: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..rows * width)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

fn layer(trees: usize, depth: usize) -> Fff {
    Fff::new(FffConfig::new(WIDTH, WIDTH, depth, trees), Init::Uniform, 3).unwrap()
}

/// Wraps an implementation and corrupts its output where `wrong(call, batch)` says so: every
/// seventh row, the kind of slip a bucket or chunk boundary makes.
struct Corrupt<I: LayerImpl> {
    inner: I,
    calls: usize,
    wrong: fn(usize, usize) -> bool,
}

impl<I: LayerImpl> LayerImpl for Corrupt<I> {
    fn name(&self) -> String {
        format!("corrupt {}", self.inner.name())
    }
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        self.inner.run(x, batch, y)?;
        if (self.wrong)(self.calls, batch) {
            let out = y.len() / batch;
            for row in y.chunks_mut(out).skip(3).step_by(7) {
                row[0] += 0.5;
            }
        }
        self.calls += 1;
        Ok(())
    }
}

fn corrupt<I: LayerImpl>(inner: I, wrong: fn(usize, usize) -> bool) -> Corrupt<I> {
    Corrupt {
        inner,
        calls: 0,
        wrong,
    }
}

#[test]
fn every_walk_is_checked_at_the_batch_it_is_timed_with() {
    // 1x6 at batch 600: Auto picks the bucketed walk, and the grouped walk splits the batch
    // into parallel chunks: neither happens at the 8 rows the check used to see.
    let layer = layer(1, 6);
    let reference = FffReference(&layer);
    let x = pool(1200, WIDTH);
    let batch = 600;
    assert_eq!(
        resolve_strategy(Strategy::Auto, layer.config(), batch, WeightFormat::F32),
        Strategy::Bucketed
    );
    assert_eq!(
        resolve_strategy(Strategy::Auto, layer.config(), 8, WeightFormat::F32),
        Strategy::PerToken
    );
    let mut checker = Checker::new(&reference, WIDTH, WIDTH, 100);
    for strategy in [
        Strategy::PerToken,
        Strategy::Bucketed,
        Strategy::Grouped,
        Strategy::Gemm,
    ] {
        let mut imp = FffKernel::new(&layer, strategy, "fff");
        let m = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| measure_checked(&mut imp, &x, batch, &mut checker, &opts()))
            .unwrap();
        assert!(m.check.passed(), "{strategy:?}: {:?}", m.check);
        // Two checked calls (warm-up and last timed), each about 100 rows plus the edges.
        assert!(
            (200..=210).contains(&m.check.rows),
            "{strategy:?}: {:?}",
            m.check
        );
        assert!(m.median_s.is_finite() && m.runs == 3);
    }
}

#[test]
fn an_implementation_wrong_only_at_large_batches_is_caught() {
    let layer = layer(1, 6);
    let reference = FffReference(&layer);
    let x = pool(1200, WIDTH);
    let mut checker = Checker::new(&reference, WIDTH, WIDTH, 64);
    let wrong_above_8 = |_call: usize, batch: usize| batch > 8;
    // At the 8 rows the old check compared, it passes ...
    let mut imp = corrupt(FffKernel::new(&layer, Strategy::Auto, "fff"), wrong_above_8);
    let small = measure_checked(&mut imp, &x, 8, &mut checker, &opts()).unwrap();
    assert!(small.check.passed(), "{:?}", small.check);
    // ... at the timed batch it fails, and is not timed.
    let mut imp = corrupt(FffKernel::new(&layer, Strategy::Auto, "fff"), wrong_above_8);
    let large = measure_checked(&mut imp, &x, 600, &mut checker, &opts()).unwrap();
    let why = large.check.failure.as_deref().unwrap();
    assert!(
        why.contains("warm-up") && why.contains("not timed"),
        "{why}"
    );
    assert!(large.median_s.is_nan() && large.runs == 0);
}

#[test]
fn an_implementation_wrong_only_in_its_timed_calls_is_caught() {
    let weights = DenseWeights::random(WIDTH, 40, WIDTH, Default::default(), 1);
    let x = pool(300, WIDTH);
    let mut checker = Checker::new(&weights, WIDTH, WIDTH, 256);
    // Right on the warm-up call, wrong on every later one.
    let mut imp = corrupt(DenseFaer::new(&weights), |call, _| call > 0);
    let m = measure_checked(&mut imp, &x, 100, &mut checker, &opts()).unwrap();
    let why = m.check.failure.as_deref().unwrap();
    assert!(why.contains("last timed output"), "{why}");
    // It was timed, and is on record as failed.
    assert!(m.median_s.is_finite());
    let spec = ConfigSpec::Dense { neurons: 40 };
    let base = ("dense-faer".to_string(), 1e-3);
    let r = Record::new(&spec, "corrupt", 100, 1, &m, WIDTH, Some(&base));
    assert!(!r.passed() && r.speedup_vs_dense.is_nan());
    let err = ensure_checked(std::slice::from_ref(&r))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dense40 corrupt batch 100") && err.contains("last timed"),
        "{err}"
    );
    let table = markdown_table(std::slice::from_ref(&r));
    assert!(
        table.contains("**FAILED**") && table.contains("Failed checks"),
        "{table}"
    );
}

#[test]
fn nan_outputs_fail_the_check() {
    let weights = DenseWeights::random(WIDTH, 40, WIDTH, Default::default(), 1);
    let x = pool(64, WIDTH);
    let mut checker = Checker::new(&weights, WIDTH, WIDTH, 256);
    let mut y = vec![0f32; 10 * WIDTH];
    DenseFaer::new(&weights)
        .run(&x[..10 * WIDTH], 10, &mut y)
        .unwrap();
    assert!(checker.check(&x, 0, 10, &y).passed());
    y[5 * WIDTH + 2] = f32::NAN;
    let report = checker.check(&x, 0, 10, &y);
    assert!(report.failure.unwrap().contains("row 5"));
}

/// The identity layer, with every row (or none) declared near a routing tie.
struct Identity {
    all_near_ties: bool,
}

impl Reference for Identity {
    fn row(&self, x: &[f32]) -> Vec<f32> {
        x.to_vec()
    }
    fn near_tie(&self, _x: &[f32], _margin: f32) -> bool {
        self.all_near_ties
    }
}

#[test]
fn near_tie_excuses_are_capped_at_two_percent() {
    let x = pool(200, 4);
    // Rows 3, 10, 17, ..., 94 are wrong: 14 of 100.
    let mut y = x[..100 * 4].to_vec();
    for row in y.chunks_mut(4).skip(3).step_by(7) {
        row[0] += 0.5;
    }
    let strict = Identity {
        all_near_ties: false,
    };
    assert!(!Checker::new(&strict, 4, 4, 256)
        .check(&x, 0, 100, &y)
        .passed());
    // Near ties excuse flipped rows, but 14% of them is a bug, not rounding.
    let lenient = Identity {
        all_near_ties: true,
    };
    let report = Checker::new(&lenient, 4, 4, 256).check(&x, 0, 100, &y);
    assert_eq!(report.excused, 14);
    assert!(report.failure.unwrap().contains("near a routing tie"));
    // Two wrong rows of 100 are within the cap.
    let mut y = x[..100 * 4].to_vec();
    y[3 * 4] += 0.5;
    y[50 * 4] += 0.5;
    let report = Checker::new(&lenient, 4, 4, 256).check(&x, 0, 100, &y);
    assert!(report.passed() && report.excused == 2, "{report:?}");
}

#[test]
fn sampled_rows_cover_the_window_and_its_edges() {
    let strict = Identity {
        all_near_ties: false,
    };
    let checker = Checker::new(&strict, 4, 4, 64);
    assert_eq!(checker.sampled_rows(5, 10), (5..15).collect::<Vec<_>>());
    let rows = checker.sampled_rows(1001, 16384);
    assert!(rows.len() <= 66 && rows.len() >= 64, "{}", rows.len());
    assert_eq!(rows[0], 1001);
    assert_eq!(*rows.last().unwrap(), 1001 + 16383);
    assert!(rows.iter().all(|r| (1001..1001 + 16384).contains(r)));
}

/// A correct implementation made slower by a fixed pause per call.
struct Paused<I: LayerImpl> {
    inner: I,
    pause: Duration,
    label: &'static str,
}

impl<I: LayerImpl> LayerImpl for Paused<I> {
    fn name(&self) -> String {
        self.label.into()
    }
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        std::thread::sleep(self.pause);
        self.inner.run(x, batch, y)
    }
}

#[test]
fn the_baseline_is_the_fastest_correct_dense_run() {
    let weights = DenseWeights::random(WIDTH, 40, WIDTH, Default::default(), 2);
    let x = pool(64, WIDTH);
    let mut checker = Checker::new(&weights, WIDTH, WIDTH, 256);
    let mut impls: Vec<Box<dyn LayerImpl + '_>> = vec![
        // Fastest, but wrong once timed: never the baseline.
        Box::new(corrupt(DenseLevel1::new(&weights), |call, _| call > 0)),
        Box::new(Paused {
            inner: DenseFaer::new(&weights),
            pause: Duration::from_millis(30),
            label: "slow-sgemm",
        }),
        // A loop, not an SGEMM: it still counts when it is the fastest correct run.
        Box::new(Paused {
            inner: DenseLevel1::new(&weights),
            pause: Duration::from_millis(5),
            label: "quick-loop",
        }),
    ];
    let measured: Vec<(String, Measured)> = impls
        .iter_mut()
        .map(|imp| {
            let m = measure_checked(imp.as_mut(), &x, 4, &mut checker, &opts()).unwrap();
            (imp.name(), m)
        })
        .collect();
    assert!(!measured[0].1.check.passed() && measured[0].1.median_s < measured[2].1.median_s);
    assert!(measured[1].1.check.passed() && measured[2].1.check.passed());
    let (name, t) = fastest_correct(measured.iter().map(|(n, m)| (n.as_str(), m))).unwrap();
    assert_eq!(name, "quick-loop");
    assert_eq!(t, measured[2].1.median_s);
    // No correct run: no baseline, so no speedup is claimed against one.
    assert!(fastest_correct(measured[..1].iter().map(|(n, m)| (n.as_str(), m))).is_none());
}

/// Narrow formats get rows of their own, each held to the reference of its own stored weights
/// (against the f32 reference an int8 row would fail: its weights differ by ~1%), and every
/// kernel row carries a traffic floor that the measured time cannot beat by much.
#[test]
fn weight_formats_are_checked_against_their_own_weights_and_floored() {
    let opts = BenchOptions {
        configs: vec!["2x4".parse().unwrap(), "dense62".parse().unwrap()],
        batches: vec![64],
        threads: vec![1],
        formats: vec![WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8],
        ..opts()
    };
    let records = fff_bench::run(&opts, &mut ()).unwrap();
    ensure_checked(&records).unwrap();
    for format in ["f32", "bf16", "int8"] {
        let kernel: Vec<&Record> = records
            .iter()
            .filter(|r| r.weights == format && r.implementation.starts_with("fff ("))
            .collect();
        assert_eq!(kernel.len(), 1, "{format}");
        let floor = kernel[0].floor.as_ref().expect("a floor");
        assert!(floor.floor_s > 0.0 && floor.distinct_nodes > 0, "{format}");
        // A floor is a lower bound: a call 3x faster than it would mean the bytes are wrong.
        assert!(floor.time_over_floor > 0.3, "{format}: {floor:?}");
    }
    // The int8 layer's output is not the f32 layer's within the check's tolerance: checking it
    // against the f32 reference would fail, so the right reference is what passed above.
    let layer = layer(2, 4);
    let q = layer.quantize(WeightFormat::Int8).unwrap();
    let x = pool(64, WIDTH);
    let mut y = vec![0f32; 64 * WIDTH];
    q.forward_infer_with(
        &x,
        64,
        &mut y,
        &mut fastfeedforward::Workspace::new(),
        Default::default(),
    )
    .unwrap();
    let reference = FffReference(&layer);
    let mut checker = Checker::new(&reference, WIDTH, WIDTH, 64);
    assert!(!checker.check(&x, 0, 64, &y).passed());
}
