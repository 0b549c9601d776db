//! Runs the inference kernel on a 1x11 layer (width 768) in a loop, for profilers:
//! `cargo run --release -p fastfeedforward --example kernel_profile [batch] [iterations]`.

use fastfeedforward::{Fff, FffConfig, InferOptions, Init, Workspace};
use std::time::Instant;

fn main() -> fastfeedforward::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let batch = args.next().unwrap_or(16384);
    let iterations = args.next().unwrap_or(50);
    let layer = Fff::new(FffConfig::new(768, 768, 11, 1), Init::Uniform, 0)?;
    let x: Vec<f32> = (0..batch * 768)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut y = vec![0f32; batch * 768];
    let mut ws = Workspace::new();
    let mut times = Vec::new();
    for _ in 0..iterations {
        let s = Instant::now();
        layer.forward_infer_into(&x, batch, &mut y, &mut ws, InferOptions::default())?;
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
