//! Times the parts of one UltraFastBERT-1x11 encoder block (hidden 768, 12 heads) on random
//! weights, to see where a block's time goes: `cargo run --release -p fff-bert --example
//! encoder_parts [batch]` (sequences of 128 tokens; default batch 8). Medians of 20 runs.

use candle_core::{Device, Tensor};
use fastfeedforward::{Fff, FffConfig, InferOptions, Init, Workspace};
use fff_bert::ops::{self, AttentionShape, Dense, LayerNorm};

// Large blocks on 64-byte boundaries, as in the `fff` binary (see `AlignedAlloc`).
#[global_allocator]
static ALLOC: fastfeedforward::AlignedAlloc = fastfeedforward::AlignedAlloc(std::alloc::System);

fn median_ms(f: impl FnMut()) -> f64 {
    fff_util::timing::median_time(1, 20, f).as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let batch: usize = std::env::args().nth(1).map_or(Ok(8), |s| s.parse())?;
    let (seq, hidden, heads, width) = (128, 768, 12, 3072);
    let n = batch * seq;
    let dev = Device::Cpu;
    let dense = |out: usize, inp: usize| -> anyhow::Result<Dense> {
        let w = Tensor::randn(0f32, 0.03, (out, inp), &dev)?;
        Ok(Dense::from_tensors(&w, None)?)
    };
    let (qkv_proj, out_proj) = (dense(3 * hidden, hidden)?, dense(hidden, hidden)?);
    let (ff_in, ff_out) = (dense(width, hidden)?, dense(hidden, width)?);
    let ones = Tensor::ones(hidden, candle_core::DType::F32, &dev)?;
    let ln = LayerNorm::from_tensors(&ones, &ones.zeros_like()?, 1e-12)?;
    let fff = Fff::new(FffConfig::new(hidden, hidden, 11, 1), Init::Uniform, 0)?;
    let x: Vec<f32> = Tensor::randn(0f32, 1.0, (n, hidden), &dev)?
        .flatten_all()?
        .to_vec1()?;
    let mut h = x.clone();
    let mut y = vec![0f32; n * hidden];
    let mut qkv = vec![0f32; n * 3 * hidden];
    let mut ctx = vec![0f32; n * hidden];
    let mut mid = vec![0f32; n * width];
    let mask = vec![1u8; n];
    let shape = AttentionShape {
        batch,
        seq,
        heads,
        head_dim: hidden / heads,
    };
    let mut ws = Workspace::new();
    if std::env::var_os("ONLY_ATTENTION").is_some() {
        for _ in 0..300 {
            ops::attention_into(&qkv, &mask, shape, 0.125, &mut ctx);
        }
        return Ok(());
    }
    let parts = [
        (
            "qkv projection",
            median_ms(|| qkv_proj.forward(&x, n, &mut qkv)),
        ),
        (
            "attention core",
            median_ms(|| ops::attention_into(&qkv, &mask, shape, 0.125, &mut ctx)),
        ),
        (
            "output projection",
            median_ms(|| out_proj.forward(&ctx, n, &mut y)),
        ),
        (
            "2x residual + LayerNorm",
            2.0 * median_ms(|| ln.add_forward(&mut h, &x, &mut y)),
        ),
        (
            "FFF 1x11 (kernel)",
            median_ms(|| {
                fff.forward_infer_with(&x, n, &mut y, &mut ws, InferOptions::default())
                    .unwrap()
            }),
        ),
        ("dense FF: in", median_ms(|| ff_in.forward(&x, n, &mut mid))),
        (
            "dense FF: GELU",
            median_ms(|| ops::activate(&mut mid, fff_bert::config::Nonlin::Gelu)),
        ),
        (
            "dense FF: out",
            median_ms(|| ff_out.forward(&mid, n, &mut y)),
        ),
    ];
    println!(
        "batch {batch}x{seq}, {} threads",
        rayon::current_num_threads()
    );
    for (name, ms) in parts {
        println!("{name:>24}: {ms:8.3} ms");
    }
    Ok(())
}
