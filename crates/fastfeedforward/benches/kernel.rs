//! Criterion benchmark of the inference kernel against a dense feedforward layer of equal
//! neuron count, at UltraFastBERT's 1x11 shape (width 768, 4095 neurons, 12 used per input).
//!
//! Run: `cargo bench -p fastfeedforward --bench kernel` (add a filter such as `batch_128`, or
//! `dot_alignment` for what a 64-byte boundary is worth to one dot product).

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastfeedforward::{
    Activation, DenseFf, Fff, FffConfig, InferOptions, Init, Strategy, Workspace,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Duration;

// Large blocks on 64-byte boundaries, as in the `fff` binary (see `AlignedAlloc`).
#[global_allocator]
static ALLOC: fastfeedforward::AlignedAlloc = fastfeedforward::AlignedAlloc(std::alloc::System);

const WIDTH: usize = 768;

fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn bench_layer(c: &mut Criterion) {
    let config = FffConfig::new(WIDTH, WIDTH, 11, 1);
    let layer = Fff::new(config, Init::Uniform, 0).unwrap();
    let dense = DenseFf::new(WIDTH, config.total_nodes(), WIDTH, Activation::Gelu, 0).unwrap();
    for batch in [1usize, 128, 16384] {
        let mut group = c.benchmark_group(format!("1x11_w768/batch_{batch}"));
        group.throughput(Throughput::Elements(batch as u64));
        if batch >= 16384 {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(20));
        }
        // A pool of distinct inputs, cycled, so a batch-1 run does not see one path only.
        let pool_rows = batch.max(1024);
        let pool = inputs(pool_rows * WIDTH, batch as u64);
        let mut y = vec![0f32; batch * WIDTH];
        let mut ws = Workspace::new();
        for strategy in Strategy::ALL {
            let name = format!("fff_{}", strategy.name());
            let opts = InferOptions {
                strategy,
                ..Default::default()
            };
            let mut next = 0;
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter(|| {
                    let x = &pool[next * WIDTH..(next + batch) * WIDTH];
                    next = (next + batch) % (pool_rows - batch + 1);
                    layer
                        .forward_infer_with(x, batch, &mut y, &mut ws, opts)
                        .unwrap();
                })
            });
        }
        let xt =
            Tensor::from_vec(pool[..batch * WIDTH].to_vec(), (batch, WIDTH), &Device::Cpu).unwrap();
        group.bench_function(BenchmarkId::new("dense_4095_candle_gemm", batch), |b| {
            b.iter(|| dense.forward(&xt).unwrap())
        });
        group.finish();
    }
}

/// A 768-wide dot product against 63 rows held in L2 (the top levels' input rows), with the
/// rows and the input on a 64-byte boundary and 16 bytes off it, where the system allocator
/// starts large blocks: what [`fastfeedforward::AlignedAlloc`] is for.
fn bench_dot_alignment(c: &mut Criterion) {
    const ROWS: usize = 63;
    let data = inputs((ROWS + 1) * WIDTH + 64, 7);
    let first_aligned = (64 - data.as_ptr() as usize % 64) % 64 / 4;
    let mut group = c.benchmark_group("dot_alignment");
    group.throughput(Throughput::Elements(ROWS as u64));
    for offset_floats in [0usize, 4] {
        let start = first_aligned + offset_floats;
        let rows = &data[start..start + ROWS * WIDTH];
        let x = &data[start + ROWS * WIDTH..start + (ROWS + 1) * WIDTH];
        let name = format!("{}_bytes_past_64", offset_floats * 4);
        group.bench_function(name, |b| {
            b.iter(|| {
                rows.chunks_exact(WIDTH)
                    .map(|row| fastfeedforward::internal::simd::dot_f32(row, x))
                    .sum::<f32>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layer, bench_dot_alignment);
criterion_main!(benches);
