use fastfeedforward::*;
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let depth: usize = args[1].parse().unwrap();
    let batch: usize = args[2].parse().unwrap();
    let strategy = if args[3] == "g" {
        Strategy::Grouped
    } else {
        Strategy::PerToken
    };
    let config = FffConfig::new(768, 768, depth, 1);
    let layer = Fff::new(config, Init::Uniform, 0).unwrap();
    let x: Vec<f32> = (0..768 * batch)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0f32; 768 * batch];
    let mut ws = Workspace::new();
    let opts = InferOptions {
        strategy,
        simd: SimdLevel::Avx512,
    };
    let n = 2_000_000 / batch / (depth + 1);
    let t = Instant::now();
    for _ in 0..n {
        layer
            .forward_infer_into(&x, batch, &mut y, &mut ws, opts)
            .unwrap();
    }
    println!(
        "{:.1} ns per token-node",
        t.elapsed().as_secs_f64() / (n * batch * (depth + 1)) as f64 * 1e9
    );
}
