//! Which SGEMM call is fastest for the encoder's projection shapes, `y[m, n] = x[m, k]·Wᵀ` with
//! `W` stored `[n, k]` (PyTorch's layout): faer on the plain problem with its own threading,
//! faer on the transposed problem `yᵀ = W·xᵀ`, and either split by output columns into one
//! sequential call per thread. Comparison only, for choosing the call in `ops::Dense`:
//! `cargo run --release -p fff-bert --example gemm_shapes` (medians of 50 calls, µs).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use fastfeedforward::kernels::packed::{PackedMatrix, PANEL};
use rayon::prelude::*;

#[global_allocator]
static ALLOC: fastfeedforward::AlignedAlloc = fastfeedforward::AlignedAlloc(std::alloc::System);

fn median_us(mut f: impl FnMut()) -> f64 {
    fff_util::timing::median_time(5, 50, &mut f).as_secs_f64() * 1e6
}

/// `y[:, cols] = x·W[cols]ᵀ`, plain (`transposed` false) or as `yᵀ = W·xᵀ`.
#[allow(clippy::too_many_arguments)]
fn call(
    x: &[f32],
    w: &[f32],
    y: MatMut<f32>,
    m: usize,
    k: usize,
    cols: std::ops::Range<usize>,
    transposed: bool,
    par: Par,
) {
    let xm = MatRef::from_row_major_slice(x, m, k);
    let wm = MatRef::from_row_major_slice(&w[cols.start * k..cols.end * k], cols.len(), k);
    if transposed {
        matmul(
            y.transpose_mut(),
            Accum::Replace,
            wm,
            xm.transpose(),
            1.0f32,
            par,
        );
    } else {
        matmul(y, Accum::Replace, xm, wm.transpose(), 1.0f32, par);
    }
}

fn main() {
    let threads = rayon::current_num_threads();
    let shapes = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];
    println!("{threads} threads");
    println!("| m | k | n | plain, faer threads | plain, split | yᵀ, faer threads | yᵀ, split | yᵀ seq | packed, split | packed AVX2 | GFLOP/s best |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in [16usize, 128, 512, 2048] {
        for &(k, n) in &shapes {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let mut y = vec![0f32; m * n];
            let mut run = |transposed: bool, split: bool| {
                median_us(|| {
                    let ym = MatMut::from_row_major_slice_mut(&mut y, m, n);
                    if split {
                        let chunk = n.div_ceil(threads).next_multiple_of(16);
                        ym.par_col_chunks_mut(chunk)
                            .enumerate()
                            .for_each(|(i, part)| {
                                let cols = i * chunk..(i * chunk + part.ncols());
                                call(&x, &w, part, m, k, cols, transposed, Par::Seq);
                            });
                    } else {
                        call(&x, &w, ym, m, k, 0..n, transposed, Par::rayon(0));
                    }
                })
            };
            let t = [
                run(false, false),
                run(false, true),
                run(true, false),
                run(true, true),
            ];
            let seq = median_us(|| {
                let ym = MatMut::from_row_major_slice_mut(&mut y, m, n);
                call(&x, &w, ym, m, k, 0..n, true, Par::Seq)
            });
            let packed = PackedMatrix::pack(&w, n, k);
            let blocks = column_blocks(packed.panels(), n, threads);
            let packed_t = median_us(|| {
                let out = SharedOut(y.as_mut_ptr());
                blocks.par_iter().for_each(|cols| {
                    let out = &out;
                    // SAFETY: each task writes only its own columns of every row.
                    let ys = unsafe {
                        std::slice::from_raw_parts_mut(out.0.add(cols.start), m * n - cols.start)
                    };
                    packed.matmul_cols(&x, m, cols.clone(), ys, n, Default::default());
                });
            });
            let avx2 = fastfeedforward::SimdLevel::Avx2;
            let packed_avx2 = median_us(|| {
                let out = SharedOut(y.as_mut_ptr());
                blocks.par_iter().for_each(|cols| {
                    let out = &out;
                    // SAFETY: as above.
                    let ys = unsafe {
                        std::slice::from_raw_parts_mut(out.0.add(cols.start), m * n - cols.start)
                    };
                    packed.matmul_cols_at(avx2, &x, m, cols.clone(), ys, n, Default::default());
                });
            });
            let best = t.iter().copied().fold(seq.min(packed_t), f64::min);
            println!(
                "| {m} | {k} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {seq:.1} | {packed_t:.1} | {packed_avx2:.1} | {:.0} |",
                t[0],
                t[1],
                t[2],
                t[3],
                2.0 * (m * k * n) as f64 / best / 1e3
            );
        }
    }
}

/// The output pointer, shared by tasks that write disjoint columns.
struct SharedOut(*mut f32);
// SAFETY: the tasks sharing it write disjoint elements.
unsafe impl Sync for SharedOut {}

/// Whole panels split into one column range per thread.
fn column_blocks(panels: usize, out: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let per = panels.div_ceil(threads);
    (0..threads)
        .map(|t| (t * per * PANEL).min(out)..((t + 1) * per * PANEL).min(out))
        .filter(|r| !r.is_empty())
        .collect()
}
