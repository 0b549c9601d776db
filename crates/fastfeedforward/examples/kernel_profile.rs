//! Runs the inference kernel on a 1x11 layer (width 768) in a loop, for profilers:
//! `cargo run --release -p fastfeedforward --example kernel_profile [batch] [iterations]
//! [strategy]` (strategy: auto, per-token, bucketed or grouped).

use fastfeedforward::{Fff, FffConfig, InferOptions, Init, Strategy, Workspace};
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
    let opts = InferOptions {
        strategy,
        ..Default::default()
    };
    let layer = Fff::new(FffConfig::new(768, 768, 11, 1), Init::Uniform, 0)?;
    let x: Vec<f32> = (0..batch * 768)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut y = vec![0f32; batch * 768];
    let mut ws = Workspace::new();
    let mut times = Vec::new();
    for _ in 0..iterations {
        let s = Instant::now();
        layer.forward_infer_into(&x, batch, &mut y, &mut ws, opts)?;
        times.push(s.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    // The best run is the steadiest figure for A/B comparisons on a shared host.
    println!(
        "batch {batch}: median {:.2} µs, best {:.2} µs",
        times[times.len() / 2] * 1e6,
        times[0] * 1e6
    );
    Ok(())
}
