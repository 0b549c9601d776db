//! Runs the inference kernel on a layer in a loop, for profilers:
//! `cargo run --release -p fastfeedforward --example kernel_profile [batch] [iterations]
//! [strategy] [KxD] [simd] [width]` (strategy: auto, per-token, bucketed, grouped or gemm; layer: K
//! trees of depth D, default 1x11; simd: portable, avx2+fma or avx512f, default the best this CPU
//! has; width: input and output width, default 768, 384 for MiniLM's blocks).
//! With `--features phase-timing`, also prints where a bucketed call's time goes.

use fastfeedforward::{Fff, FffConfig, InferOptions, Init, SimdLevel, Strategy, Workspace};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;

// Large blocks on 64-byte boundaries, as in the `fff` binary (see `AlignedAlloc`).
#[global_allocator]
static ALLOC: fastfeedforward::AlignedAlloc = fastfeedforward::AlignedAlloc(std::alloc::System);

fn main() -> fastfeedforward::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let batch = number(0, 16384);
    let iterations = number(1, 50);
    let strategy = args
        .get(2)
        .map_or(Ok(Strategy::Auto), |a| a.parse::<Strategy>())
        .expect("a strategy");
    let (trees, depth) = args.get(3).map_or((1, 11), |a| {
        let (k, d) = a.split_once('x').expect("a layer as KxD, e.g. 2x10");
        (
            k.parse().expect("a number of trees"),
            d.parse().expect("a depth"),
        )
    });
    let simd = args.get(4).map_or(SimdLevel::detect(), |a| {
        SimdLevel::available()
            .into_iter()
            .find(|l| l.name() == a)
            .expect("a SIMD level this CPU has: portable, avx2+fma or avx512f")
    });
    let width = number(5, 768);
    let opts = InferOptions { strategy, simd };
    let layer = Fff::new(FffConfig::new(width, width, depth, trees), Init::Uniform, 0)?;
    // Standard normal inputs, and a new batch of them each call from a pool of at least 1024
    // rows, as in `fff bench layer`: the same inputs every call would find their rows in cache.
    let mut rng = StdRng::seed_from_u64(1);
    let pool_rows = (2 * batch).max(1024);
    let pool: Vec<f32> = (0..pool_rows * width)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let mut y = vec![0f32; batch * width];
    let mut ws = Workspace::new();
    let mut offset = 0;
    let mut times = Vec::new();
    #[cfg(feature = "phase-timing")]
    let mut phase_sums = [std::time::Duration::ZERO; 5];
    for _ in 0..iterations {
        let x = &pool[offset * width..(offset + batch) * width];
        offset = (offset + batch) % (pool_rows - batch + 1);
        let s = Instant::now();
        layer.forward_infer_with(x, batch, &mut y, &mut ws, opts)?;
        times.push(s.elapsed().as_secs_f64());
        #[cfg(feature = "phase-timing")]
        for (sum, d) in phase_sums
            .iter_mut()
            .zip(fastfeedforward::internal::phases::take())
        {
            *sum += d;
        }
    }
    times.sort_by(f64::total_cmp);
    // The best run is the steadiest figure for A/B comparisons on a shared host.
    println!(
        "batch {batch}: median {:.2} µs, best {:.2} µs",
        times[times.len() / 2] * 1e6,
        times[0] * 1e6
    );
    #[cfg(feature = "phase-timing")]
    {
        use fastfeedforward::internal::phases::Phase;
        println!("mean per call (walk and output summed over threads):");
        for (phase, sum) in Phase::ALL.iter().zip(phase_sums) {
            let ms = sum.as_secs_f64() * 1e3 / iterations as f64;
            println!("  {phase:?}: {ms:.2} ms");
        }
    }
    Ok(())
}
