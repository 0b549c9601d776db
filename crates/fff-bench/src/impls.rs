//! The implementations compared: dense feedforward layers on several SGEMMs and as level-1 and
//! level-2 loops, and FFF layers as level-1 and level-2 loops and with the fast kernel.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use fastfeedforward::internal::simd::vectorized;
use fastfeedforward::internal::simd::{axpy_f32, dot_f32};
use fastfeedforward::kernels::reference;
use fastfeedforward::tree::forest_visits;
use fastfeedforward::{Activation, Fff, InferOptions, QuantizedFff, Strategy, Workspace};
use rayon::prelude::*;

/// A dense feedforward layer's weights, `act(x·W1ᵀ + b1)·W2ᵀ`, shared by the dense implementations.
pub struct DenseWeights {
    /// Hidden neurons.
    pub hidden: usize,
    /// Input width.
    pub input_width: usize,
    /// Output width.
    pub output_width: usize,
    /// `W1` as `[hidden, in]` row-major (one row per neuron).
    pub w1: Vec<f32>,
    /// Biases `[hidden]`.
    pub b1: Vec<f32>,
    /// `W2ᵀ` as `[hidden, out]` row-major (one output row per neuron).
    pub w2_t: Vec<f32>,
    /// The activation.
    pub activation: Activation,
}

impl DenseWeights {
    /// Weights ~ N(0, 1/in) and N(0, 1/hidden), biases ~ N(0, 0.1²), from a seed.
    pub fn random(
        input_width: usize,
        hidden: usize,
        output_width: usize,
        activation: Activation,
        seed: u64,
    ) -> Self {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut draw = |n: usize, std: f32| -> Vec<f32> {
            let d = Normal::new(0.0, std).expect("valid std");
            (0..n).map(|_| d.sample(&mut rng)).collect()
        };
        DenseWeights {
            hidden,
            input_width,
            output_width,
            w1: draw(hidden * input_width, (1.0 / input_width as f32).sqrt()),
            b1: draw(hidden, 0.1),
            w2_t: draw(hidden * output_width, (1.0 / hidden as f32).sqrt()),
            activation,
        }
    }

    /// Plain f64 reference output for `batch` rows.
    pub fn reference(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let (cin, cout) = (self.input_width, self.output_width);
        let mut y = vec![0f32; batch * cout];
        for b in 0..batch {
            let xb = &x[b * cin..(b + 1) * cin];
            let mut acc = vec![0f64; cout];
            for n in 0..self.hidden {
                let h: f64 = self.w1[n * cin..(n + 1) * cin]
                    .iter()
                    .zip(xb)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    + self.b1[n] as f64;
                let a = self.activation.apply(h as f32) as f64;
                for (o, w) in acc.iter_mut().zip(&self.w2_t[n * cout..(n + 1) * cout]) {
                    *o += a * *w as f64;
                }
            }
            for (o, v) in y[b * cout..(b + 1) * cout].iter_mut().zip(acc) {
                *o = v as f32;
            }
        }
        y
    }
}

/// One implementation under test: computes `y = layer(x)` for a batch.
pub trait LayerImpl: Send {
    /// Short name for tables, e.g. `dense-faer`.
    fn name(&self) -> String;
    /// Computes `batch` rows of output.
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()>;
}

/// Dense FF on candle's matmul (the `gemm` crate).
pub struct DenseCandle {
    w1_t: Tensor,
    b1: Tensor,
    w2_t: Tensor,
    activation: Activation,
    input_width: usize,
}

impl DenseCandle {
    /// Builds candle tensors from shared weights.
    pub fn new(w: &DenseWeights) -> Result<Self> {
        let dev = &Device::Cpu;
        let w1 = Tensor::from_vec(w.w1.clone(), (w.hidden, w.input_width), dev)?;
        Ok(DenseCandle {
            w1_t: w1.t()?.contiguous()?,
            b1: Tensor::from_vec(w.b1.clone(), w.hidden, dev)?,
            w2_t: Tensor::from_vec(w.w2_t.clone(), (w.hidden, w.output_width), dev)?,
            activation: w.activation,
            input_width: w.input_width,
        })
    }
}

impl LayerImpl for DenseCandle {
    fn name(&self) -> String {
        "dense-gemm".into()
    }
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        let xt = Tensor::from_slice(x, (batch, self.input_width), &Device::Cpu)?;
        let h = xt.matmul(&self.w1_t)?.broadcast_add(&self.b1)?;
        let out = self.activation.apply_tensor(&h)?.matmul(&self.w2_t)?;
        let (storage, layout) = out.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            anyhow::bail!("candle output not on CPU")
        };
        let (a, b) = layout.contiguous_offsets().context("contiguous output")?;
        y.copy_from_slice(&cpu.as_slice::<f32>()?[a..b]);
        Ok(())
    }
}

/// Applies the bias and the activation to the hidden rows in parallel.
/// Inside [`vectorized`] with the branch-free GELU, so the loop runs at the widest SIMD
/// width: a scalar erf per hidden unit cost the dense baseline as much as a third of its time.
fn bias_act(h: &mut [f32], b1: &[f32], act: Activation) {
    h.par_chunks_mut(b1.len())
        .for_each(|row| bias_act_row(row, b1, act));
}

/// One hidden row of [`bias_act`].
fn bias_act_row(row: &mut [f32], b1: &[f32], act: Activation) {
    vectorized(
        #[inline(always)]
        || {
            for (v, b) in row.iter_mut().zip(b1) {
                *v = act.apply_fast(*v + b);
            }
        },
    )
}

/// Dense FF on faer's matmul.
pub struct DenseFaer<'w> {
    w: &'w DenseWeights,
    hidden_buf: Vec<f32>,
}

impl<'w> DenseFaer<'w> {
    /// Wraps shared weights.
    pub fn new(w: &'w DenseWeights) -> Self {
        DenseFaer {
            w,
            hidden_buf: Vec::new(),
        }
    }
}

impl LayerImpl for DenseFaer<'_> {
    fn name(&self) -> String {
        "dense-faer".into()
    }
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        let w = self.w;
        let (cin, hid, cout) = (w.input_width, w.hidden, w.output_width);
        self.hidden_buf.resize(batch * hid, 0.0);
        let par = Par::rayon(0);
        let xm = MatRef::from_row_major_slice(x, batch, cin);
        let w1m = MatRef::from_row_major_slice(&w.w1, hid, cin);
        let mut hm = MatMut::from_row_major_slice_mut(&mut self.hidden_buf, batch, hid);
        matmul(
            hm.as_mut(),
            Accum::Replace,
            xm,
            w1m.transpose(),
            1.0f32,
            par,
        );
        bias_act(&mut self.hidden_buf, &w.b1, w.activation);
        let hm = MatRef::from_row_major_slice(&self.hidden_buf, batch, hid);
        let w2m = MatRef::from_row_major_slice(&w.w2_t, hid, cout);
        let ym = MatMut::from_row_major_slice_mut(y, batch, cout);
        matmul(ym, Accum::Replace, hm, w2m, 1.0f32, par);
        Ok(())
    }
}

/// Dense FF with level-2 primitives: two GEMVs per input (faer, sequential), inputs in parallel.
pub struct DenseLevel2<'w> {
    w: &'w DenseWeights,
}

impl<'w> DenseLevel2<'w> {
    /// Wraps shared weights.
    pub fn new(w: &'w DenseWeights) -> Self {
        DenseLevel2 { w }
    }
}

impl LayerImpl for DenseLevel2<'_> {
    fn name(&self) -> String {
        "dense-level2".into()
    }
    fn run(&mut self, x: &[f32], _batch: usize, y: &mut [f32]) -> Result<()> {
        let w = self.w;
        let (cin, hid, cout) = (w.input_width, w.hidden, w.output_width);
        let w1m = MatRef::from_row_major_slice(&w.w1, hid, cin);
        let w2m = MatRef::from_row_major_slice(&w.w2_t, hid, cout);
        y.par_chunks_mut(cout).zip(x.par_chunks(cin)).for_each_init(
            || vec![0f32; hid],
            |h, (yb, xb)| {
                let xv = MatRef::from_column_major_slice(xb, cin, 1);
                let hv = MatMut::from_column_major_slice_mut(h, hid, 1);
                matmul(hv, Accum::Replace, w1m, xv, 1.0f32, Par::Seq);
                bias_act_row(h, &w.b1, w.activation);
                let hv = MatRef::from_column_major_slice(h, hid, 1);
                let yv = MatMut::from_column_major_slice_mut(yb, cout, 1);
                matmul(yv, Accum::Replace, w2m.transpose(), hv, 1.0f32, Par::Seq);
            },
        );
        Ok(())
    }
}

/// Dense FF with level-1 primitives: a dot and an axpy per neuron per input.
pub struct DenseLevel1<'w> {
    w: &'w DenseWeights,
}

impl<'w> DenseLevel1<'w> {
    /// Wraps shared weights.
    pub fn new(w: &'w DenseWeights) -> Self {
        DenseLevel1 { w }
    }
}

impl LayerImpl for DenseLevel1<'_> {
    fn name(&self) -> String {
        "dense-level1".into()
    }
    fn run(&mut self, x: &[f32], _batch: usize, y: &mut [f32]) -> Result<()> {
        let w = self.w;
        let (cin, cout) = (w.input_width, w.output_width);
        y.par_chunks_mut(cout)
            .zip(x.par_chunks(cin))
            .for_each(|(yb, xb)| {
                yb.fill(0.0);
                for n in 0..w.hidden {
                    let h = dot_f32(&w.w1[n * cin..(n + 1) * cin], xb) + w.b1[n];
                    axpy_f32(
                        w.activation.apply_fast(h),
                        &w.w2_t[n * cout..(n + 1) * cout],
                        yb,
                    );
                }
            });
        Ok(())
    }
}

/// FFF with level-1 primitives: per input, per tree, per level a dot and an axpy, no tiling,
/// no prefetch (the paper's "level-1" FFF, without its pointer bugs).
pub struct FffLevel1<'l> {
    layer: &'l Fff,
}

impl<'l> FffLevel1<'l> {
    /// Wraps a layer.
    pub fn new(layer: &'l Fff) -> Self {
        FffLevel1 { layer }
    }
}

impl LayerImpl for FffLevel1<'_> {
    fn name(&self) -> String {
        "fff-level1".into()
    }
    fn run(&mut self, x: &[f32], _batch: usize, y: &mut [f32]) -> Result<()> {
        let c = *self.layer.config();
        self.layer.with_view(|w| {
            y.par_chunks_mut(c.output_width)
                .zip(x.par_chunks(c.input_width))
                .for_each(|(yb, xb)| {
                    yb.fill(0.0);
                    let logit = |row: usize| dot_f32(w.w_in_row(row), xb) + w.b_in[row];
                    for v in forest_visits(c.trees, c.depth + 1, logit) {
                        axpy_f32(c.activation.apply(v.z), w.w_out_row(v.row), yb);
                    }
                });
        })?;
        Ok(())
    }
}

/// FFF on the library's kernel with a given strategy.
pub struct FffKernel<'l> {
    layer: &'l Fff,
    strategy: Strategy,
    workspace: Workspace,
    label: String,
}

impl<'l> FffKernel<'l> {
    /// The kernel with `strategy`, reported as `label`.
    pub fn new(layer: &'l Fff, strategy: Strategy, label: &'static str) -> Self {
        Self::new_named(layer, strategy, label.into())
    }

    /// [`FffKernel::new`] with a label made at run time.
    pub fn new_named(layer: &'l Fff, strategy: Strategy, label: String) -> Self {
        FffKernel {
            layer,
            strategy,
            workspace: Workspace::new(),
            label,
        }
    }
}

impl LayerImpl for FffKernel<'_> {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        let opts = InferOptions {
            strategy: self.strategy,
            ..Default::default()
        };
        self.layer
            .forward_infer_with(x, batch, y, &mut self.workspace, opts)?;
        Ok(())
    }
}

/// FFF on the library's kernel with weights in bf16 or int8 (or f32 through the same type).
pub struct FffQuantKernel<'l> {
    layer: &'l QuantizedFff,
    strategy: Strategy,
    workspace: Workspace,
    label: String,
}

impl<'l> FffQuantKernel<'l> {
    /// The kernel with `strategy` on `layer`'s stored weights, reported as `label`.
    pub fn new(layer: &'l QuantizedFff, strategy: Strategy, label: String) -> Self {
        FffQuantKernel {
            layer,
            strategy,
            workspace: Workspace::new(),
            label,
        }
    }
}

impl LayerImpl for FffQuantKernel<'_> {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
        let opts = InferOptions {
            strategy: self.strategy,
            ..Default::default()
        };
        self.layer
            .forward_infer_with(x, batch, y, &mut self.workspace, opts)?;
        Ok(())
    }
}

/// Plain f64 reference output of an FFF layer.
pub fn fff_reference(layer: &Fff, x: &[f32], batch: usize) -> Result<Vec<f32>> {
    let mut y = vec![0f32; batch * layer.config().output_width];
    layer.with_view(|w| reference::forward(&w, x, batch, &mut y))??;
    Ok(y)
}

#[cfg(feature = "openblas")]
pub use openblas::DenseOpenBlas;

#[cfg(feature = "openblas")]
mod openblas {
    use super::{bias_act, DenseWeights, LayerImpl};
    use anyhow::Result;

    // SAFETY: the declaration matches OpenBLAS's `cblas_sgemm`; the call below passes
    // dimensions and leading dimensions that fit the slices it points into.
    #[link(name = "openblas")]
    unsafe extern "C" {
        fn cblas_sgemm(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        fn openblas_set_num_threads(n: i32);
    }
    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;

    /// Dense FF on OpenBLAS's SGEMM (cargo feature `openblas`).
    pub struct DenseOpenBlas<'w> {
        w: &'w DenseWeights,
        hidden_buf: Vec<f32>,
    }

    impl<'w> DenseOpenBlas<'w> {
        /// Wraps shared weights.
        pub fn new(w: &'w DenseWeights) -> Self {
            DenseOpenBlas {
                w,
                hidden_buf: Vec::new(),
            }
        }
    }

    impl LayerImpl for DenseOpenBlas<'_> {
        fn name(&self) -> String {
            "dense-openblas".into()
        }
        fn run(&mut self, x: &[f32], batch: usize, y: &mut [f32]) -> Result<()> {
            let w = self.w;
            let (cin, hid, cout) = (w.input_width as i32, w.hidden as i32, w.output_width as i32);
            self.hidden_buf.resize(batch * w.hidden, 0.0);
            // SAFETY: every pointer covers the matrix its dimensions and leading sizes describe.
            unsafe {
                openblas_set_num_threads(rayon::current_num_threads() as i32);
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    batch as i32,
                    hid,
                    cin,
                    1.0,
                    x.as_ptr(),
                    cin,
                    w.w1.as_ptr(),
                    cin,
                    0.0,
                    self.hidden_buf.as_mut_ptr(),
                    hid,
                );
            }
            bias_act(&mut self.hidden_buf, &w.b1, w.activation);
            // SAFETY: as above.
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    batch as i32,
                    cout,
                    hid,
                    1.0,
                    self.hidden_buf.as_ptr(),
                    hid,
                    w.w2_t.as_ptr(),
                    cout,
                    0.0,
                    y.as_mut_ptr(),
                    cout,
                );
            }
            Ok(())
        }
    }
}
