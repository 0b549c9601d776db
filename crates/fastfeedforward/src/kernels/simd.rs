//! Runtime SIMD dispatch in the style of `pulp`/faer: kernels are written once, generic over a
//! [`Simd`] backend, and [`dispatch`] runs them inside a function compiled for the detected CPU
//! features. The intrinsics' `unsafe` lives in this file; the walks' shared output rows
//! (`tile::SharedMut`, used by the bucketed and grouped walks) and the aligned allocator have
//! their own, each block with a `SAFETY` comment.

use super::format::{RowElems, WeightElem};
use std::sync::OnceLock;

/// An instruction-set level a kernel can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Plain Rust (auto-vectorised for the build target); runs everywhere.
    Portable,
    /// x86-64 AVX2 + FMA, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes.
    Avx512,
}

impl SimdLevel {
    /// The best level this CPU supports (detected once).
    pub fn detect() -> SimdLevel {
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            SimdLevel::available()
                .into_iter()
                .last()
                .unwrap_or(SimdLevel::Portable)
        })
    }

    /// Whether this CPU can run this level.
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every level this CPU supports, slowest first.
    pub fn available() -> Vec<SimdLevel> {
        [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|l| l.is_available())
            .collect()
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2+fma",
            SimdLevel::Avx512 => "avx512f",
        }
    }
}

/// A SIMD backend: a vector of `LANES` f32 and the few operations the kernels need.
pub(crate) trait Simd: Copy {
    /// Lanes per vector.
    const LANES: usize;
    /// The vector type.
    type V: Copy;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` floats from `s[0..LANES]`.
    fn load(self, s: &[f32]) -> Self::V;
    /// Stores the vector into `s[0..LANES]`.
    fn store(self, s: &mut [f32], v: Self::V);
    /// Stores the vector into `s[0..LANES]`, bypassing the caches where `s` is aligned to the
    /// vector size (a plain store otherwise). Call [`Simd::fence`] before other threads read.
    fn store_stream(self, s: &mut [f32], v: Self::V) {
        self.store(s, v)
    }
    /// [`Simd::store_stream`] if `stream`, else [`Simd::store`].
    #[inline(always)]
    fn store_maybe_stream(self, s: &mut [f32], v: Self::V, stream: bool) {
        if stream {
            self.store_stream(s, v)
        } else {
            self.store(s, v)
        }
    }
    /// Orders earlier streaming stores before later stores.
    fn fence(self) {}
    /// Loads the `s.len() < LANES` floats of `s` into the low lanes; the other lanes are zero.
    fn load_partial(self, s: &[f32]) -> Self::V;
    /// Stores the low `s.len() < LANES` lanes of `v` into `s`.
    fn store_partial(self, s: &mut [f32], v: Self::V);
    /// a·b + c, fused where the hardware has FMA.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// a + b.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes.
    fn reduce_sum(self, v: Self::V) -> f32;
    /// Widens `LANES` bf16 values (bit patterns) from `s[0..LANES]` to f32.
    fn load_bf16(self, s: &[u16]) -> Self::V;
    /// Widens `LANES` int8 values from `s[0..LANES]` to f32.
    fn load_i8(self, s: &[i8]) -> Self::V;

    /// Loads `LANES` weights of any stored format from `r[0..LANES]`, widened to f32.
    #[inline(always)]
    fn load_w<E: WeightElem>(self, r: &[E]) -> Self::V {
        // `E::elems` is a constant variant per type, so the match folds away.
        match E::elems(r) {
            RowElems::F32(r) => self.load(r),
            RowElems::Bf16(r) => self.load_bf16(r),
            RowElems::Int8(r) => self.load_i8(r),
        }
    }

    /// Loads the `r.len() < LANES` weights of `r` into the low lanes, widened; the others are 0.
    #[inline(always)]
    fn load_w_partial<E: WeightElem>(self, r: &[E]) -> Self::V {
        match E::elems(r) {
            RowElems::F32(r) => self.load_partial(r),
            // Tails are rare (widths not a multiple of the vector): a zero-padded copy on the
            // stack keeps the loads in bounds without masked integer loads.
            RowElems::Bf16(r) => {
                let mut pad = [0u16; 16];
                pad[..r.len()].copy_from_slice(r);
                self.load_bf16(&pad)
            }
            RowElems::Int8(r) => {
                let mut pad = [0i8; 16];
                pad[..r.len()].copy_from_slice(r);
                self.load_i8(&pad)
            }
        }
    }
}

/// `_MM_HINT_T0`: into L1 (and the levels below).
pub(crate) const HINT_L1: i32 = 3;
/// `_MM_HINT_T1`: into L2.
pub(crate) const HINT_L2: i32 = 2;

#[inline(always)]
pub(crate) fn prefetch_line<const HINT: i32>(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch never faults, whatever the address; SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<HINT>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Plain Rust backend: 8 lanes in an array, which LLVM vectorises for the build target.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    type V = [f32; 8];
    #[inline(always)]
    fn zero(self) -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        [x; 8]
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> Self::V {
        s[..8].try_into().unwrap()
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: Self::V) {
        s[..8].copy_from_slice(&v)
    }
    #[inline(always)]
    fn load_partial(self, s: &[f32]) -> Self::V {
        let mut v = [0.0; 8];
        v[..s.len()].copy_from_slice(s);
        v
    }
    #[inline(always)]
    fn store_partial(self, s: &mut [f32], v: Self::V) {
        let n = s.len();
        s.copy_from_slice(&v[..n])
    }
    #[inline(always)]
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn reduce_sum(self, v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    fn load_bf16(self, s: &[u16]) -> Self::V {
        let s = &s[..8];
        std::array::from_fn(|i| f32::from_bits((s[i] as u32) << 16))
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> Self::V {
        let s = &s[..8];
        std::array::from_fn(|i| s[i] as f32)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX2 + FMA backend. Only constructed by `dispatch` after feature detection.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        pub(crate) unsafe fn new_unchecked() -> Self {
            Avx2(())
        }
    }

    // SAFETY (all methods): an `Avx2` value exists only after AVX2+FMA were detected, and
    // loads/stores check the slice length first (partial ones touch only the slice's lanes).
    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        fn zero(self) -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn load(self, s: &[f32]) -> __m256 {
            assert!(s.len() >= 8);
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32], v: __m256) {
            assert!(s.len() >= 8);
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn store_stream(self, s: &mut [f32], v: __m256) {
            assert!(s.len() >= 8);
            if (s.as_ptr() as usize).is_multiple_of(32) {
                unsafe { _mm256_stream_ps(s.as_mut_ptr(), v) }
            } else {
                unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
            }
        }
        #[inline(always)]
        fn fence(self) {
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn load_partial(self, s: &[f32]) -> __m256 {
            // Masked-off lanes are neither read nor able to fault.
            unsafe { _mm256_maskload_ps(s.as_ptr(), avx2_mask(s.len())) }
        }
        #[inline(always)]
        fn store_partial(self, s: &mut [f32], v: __m256) {
            unsafe { _mm256_maskstore_ps(s.as_mut_ptr(), avx2_mask(s.len()), v) }
        }
        #[inline(always)]
        fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn reduce_sum(self, v: __m256) -> f32 {
            unsafe {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps::<1>(v);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn load_bf16(self, s: &[u16]) -> __m256 {
            assert!(s.len() >= 8);
            // A bf16 is the high half of an f32: zero-extend to 32 bits and shift up.
            unsafe {
                let h = _mm_loadu_si128(s.as_ptr() as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
        }
        #[inline(always)]
        fn load_i8(self, s: &[i8]) -> __m256 {
            assert!(s.len() >= 8);
            unsafe {
                let b = _mm_loadl_epi64(s.as_ptr() as *const __m128i);
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
            }
        }
    }

    /// Lane mask with the low `n < 8` lanes set.
    #[inline(always)]
    fn avx2_mask(n: usize) -> __m256i {
        static ONES_THEN_ZEROS: [i32; 16] =
            [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(n < 8);
        // SAFETY: `8 - n + 8 <= 16` elements are in bounds.
        unsafe { _mm256_loadu_si256(ONES_THEN_ZEROS[8 - n..].as_ptr() as *const __m256i) }
    }

    /// AVX-512F backend. Only constructed by `dispatch` after feature detection.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(());

    impl Avx512 {
        /// # Safety
        /// The CPU must support AVX-512F.
        pub(crate) unsafe fn new_unchecked() -> Self {
            Avx512(())
        }
    }

    // SAFETY (all methods): an `Avx512` value exists only after AVX-512F was detected, and
    // loads/stores check the slice length first (partial ones touch only the slice's lanes).
    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        fn zero(self) -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        fn load(self, s: &[f32]) -> __m512 {
            assert!(s.len() >= 16);
            unsafe { _mm512_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32], v: __m512) {
            assert!(s.len() >= 16);
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn store_stream(self, s: &mut [f32], v: __m512) {
            assert!(s.len() >= 16);
            if (s.as_ptr() as usize).is_multiple_of(64) {
                unsafe { _mm512_stream_ps(s.as_mut_ptr(), v) }
            } else {
                unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
            }
        }
        #[inline(always)]
        fn fence(self) {
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn load_partial(self, s: &[f32]) -> __m512 {
            assert!(s.len() < 16);
            // Masked-off lanes are neither read nor able to fault.
            unsafe { _mm512_maskz_loadu_ps((1u16 << s.len()) - 1, s.as_ptr()) }
        }
        #[inline(always)]
        fn store_partial(self, s: &mut [f32], v: __m512) {
            assert!(s.len() < 16);
            unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), (1u16 << s.len()) - 1, v) }
        }
        #[inline(always)]
        fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn reduce_sum(self, v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        fn load_bf16(self, s: &[u16]) -> __m512 {
            assert!(s.len() >= 16);
            unsafe {
                let h = _mm256_loadu_si256(s.as_ptr() as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
        #[inline(always)]
        fn load_i8(self, s: &[i8]) -> __m512 {
            assert!(s.len() >= 16);
            unsafe {
                let b = _mm_loadu_si128(s.as_ptr() as *const __m128i);
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<T: super::SimdTask>(task: T) -> T::Output {
        task.run(Avx2::new_unchecked())
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_avx512<T: super::SimdTask>(task: T) -> T::Output {
        task.run(Avx512::new_unchecked())
    }
}

/// A piece of work written once for every backend.
pub(crate) trait SimdTask {
    /// What the task returns.
    type Output;
    /// Runs the task with backend `s`; implementations should be `#[inline(always)]`.
    fn run<S: Simd>(self, s: S) -> Self::Output;
}

/// Runs `task` at `level`, or at the portable level if this CPU lacks `level`.
#[inline]
pub(crate) fn dispatch<T: SimdTask>(level: SimdLevel, task: T) -> T::Output {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if level.is_available() => {
            // SAFETY: AVX-512F was detected just above.
            unsafe { x86::run_avx512(task) }
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 if level.is_available() => {
            // SAFETY: AVX2 and FMA were detected just above.
            unsafe { x86::run_avx2(task) }
        }
        _ => task.run(Portable),
    }
}

/// Runs `f` inside a function compiled for the best instruction set this CPU has (AVX-512F or
/// AVX2+FMA on x86-64), so that plain loops written in `f` (and `#[inline(always)]` helpers it
/// calls) are auto-vectorized at that width instead of the build target's baseline SSE2.
///
/// The body must be inlined into that function to benefit: mark the closure
/// `#[inline(always)]` (an out-of-line closure keeps the baseline SSE2 code).
#[inline]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    struct Closure<F>(F);
    impl<R, F: FnOnce() -> R> SimdTask for Closure<F> {
        type Output = R;
        #[inline(always)]
        fn run<S: Simd>(self, _s: S) -> R {
            (self.0)()
        }
    }
    dispatch(SimdLevel::detect(), Closure(f))
}

// ---------------------------------------------------------------------------------------------
// Generic building blocks. Each is `inline(always)` so it is compiled inside the caller's
// target-feature context.

/// Dot product of two equal-length rows, 8 independent accumulators to hide FMA latency.
///
/// The order of the sums depends only on the length, never on where the rows are in memory,
/// so the same weights give the same bits wherever they were allocated. Loads are fastest when
/// the rows are aligned to 64 bytes: see [`crate::AlignedAlloc`].
#[inline(always)]
pub(crate) fn dot<S: Simd, E: WeightElem>(s: S, a: &[E], b: &[f32]) -> f32 {
    const ACC: usize = 8;
    let n = a.len().min(b.len());
    let mut acc = [s.zero(); ACC];
    let (a, b) = (&a[..n], &b[..n]);
    let l = S::LANES;
    // Exact chunks let the compiler drop the bounds checks inside the loop.
    let mut ca = a.chunks_exact(ACC * l);
    let mut cb = b.chunks_exact(ACC * l);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            *acc_k = s.mul_add(s.load_w(&xa[k * l..]), s.load(&xb[k * l..]), *acc_k);
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut ta = ra.chunks_exact(l);
    let mut tb = rb.chunks_exact(l);
    for (xa, xb) in (&mut ta).zip(&mut tb) {
        acc[1] = s.mul_add(s.load_w(xa), s.load(xb), acc[1]);
    }
    let (ra, rb) = (ta.remainder(), tb.remainder());
    if !ra.is_empty() {
        acc[2] = s.mul_add(s.load_w_partial(ra), s.load_partial(rb), acc[2]);
    }
    let v = s.add(
        s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])),
        s.add(s.add(acc[4], acc[5]), s.add(acc[6], acc[7])),
    );
    s.reduce_sum(v)
}

/// Four dot products sharing the row `w` (loaded once per 4 inputs).
#[inline(always)]
pub(crate) fn dot4<S: Simd, E: WeightElem>(s: S, w: &[E], x: [&[f32]; 4]) -> [f32; 4] {
    let n = w.len();
    let x = x.map(|x| &x[..n]);
    let l = S::LANES;
    let mut acc = [[s.zero(); 2]; 4];
    let mut i = 0;
    while i + 2 * l <= n {
        let w0 = s.load_w(&w[i..]);
        let w1 = s.load_w(&w[i + l..]);
        for j in 0..4 {
            acc[j][0] = s.mul_add(w0, s.load(&x[j][i..]), acc[j][0]);
            acc[j][1] = s.mul_add(w1, s.load(&x[j][i + l..]), acc[j][1]);
        }
        i += 2 * l;
    }
    if i + l <= n {
        let w0 = s.load_w(&w[i..]);
        for j in 0..4 {
            acc[j][0] = s.mul_add(w0, s.load(&x[j][i..]), acc[j][0]);
        }
        i += l;
    }
    if i < n {
        let w1 = s.load_w_partial(&w[i..]);
        for j in 0..4 {
            acc[j][1] = s.mul_add(w1, s.load_partial(&x[j][i..]), acc[j][1]);
        }
    }
    let mut out = [0.0f32; 4];
    for j in 0..4 {
        out[j] = s.reduce_sum(s.add(acc[j][0], acc[j][1]));
    }
    out
}

/// Dot products of `R` rows `w` with one input `x`: each vector of `x` is loaded once for all
/// `R` rows, so a walk that routes one input through several trees at once reads the input
/// once per level instead of once per tree (the per-row [`dot`] loads two vectors per FMA).
/// Two accumulators per row keep `2·R` independent chains in flight. The order of the sums
/// depends only on the length, as in [`dot`].
#[inline(always)]
pub(crate) fn dot_rows<S: Simd, E: WeightElem, const R: usize>(
    s: S,
    w: [&[E]; R],
    x: &[f32],
) -> [f32; R] {
    let n = x.len();
    let w = w.map(|r| &r[..n]);
    let l = S::LANES;
    let mut acc = [[s.zero(); 2]; R];
    let mut i = 0;
    while i + 2 * l <= n {
        let x0 = s.load(&x[i..]);
        let x1 = s.load(&x[i + l..]);
        for r in 0..R {
            acc[r][0] = s.mul_add(s.load_w(&w[r][i..]), x0, acc[r][0]);
            acc[r][1] = s.mul_add(s.load_w(&w[r][i + l..]), x1, acc[r][1]);
        }
        i += 2 * l;
    }
    if i + l <= n {
        let x0 = s.load(&x[i..]);
        for r in 0..R {
            acc[r][0] = s.mul_add(s.load_w(&w[r][i..]), x0, acc[r][0]);
        }
        i += l;
    }
    if i < n {
        let x1 = s.load_partial(&x[i..]);
        for r in 0..R {
            acc[r][1] = s.mul_add(s.load_w_partial(&w[r][i..]), x1, acc[r][1]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = s.reduce_sum(s.add(acc[r][0], acc[r][1]));
    }
    out
}

/// Dot products of three rows `w` with each of `I` inputs `x` (`[input][row]`): each vector of
/// an input is loaded once for all three rows, so a walk that takes a node and both its
/// children in one pass reads its inputs from L2 once per two levels.
#[inline(always)]
pub(crate) fn dot3<S: Simd, E: WeightElem, const I: usize>(
    s: S,
    w: [&[E]; 3],
    x: [&[f32]; I],
) -> [[f32; 3]; I] {
    // Plain loops, no closures: a closure does not inherit the caller's target features, so a
    // vector load inside one becomes a call.
    let n = w[0].len();
    let (w0, w1, w2) = (&w[0][..n], &w[1][..n], &w[2][..n]);
    let x = x.map(|x| &x[..n]);
    let l = S::LANES;
    let mut acc = [[s.zero(); 3]; I];
    let mut i = 0;
    while i + l <= n {
        let wv = [s.load_w(&w0[i..]), s.load_w(&w1[i..]), s.load_w(&w2[i..])];
        for j in 0..I {
            let xv = s.load(&x[j][i..]);
            for r in 0..3 {
                acc[j][r] = s.mul_add(wv[r], xv, acc[j][r]);
            }
        }
        i += l;
    }
    if i < n {
        let wv = [
            s.load_w_partial(&w0[i..]),
            s.load_w_partial(&w1[i..]),
            s.load_w_partial(&w2[i..]),
        ];
        for j in 0..I {
            let xv = s.load_partial(&x[j][i..]);
            for r in 0..3 {
                acc[j][r] = s.mul_add(wv[r], xv, acc[j][r]);
            }
        }
    }
    let mut out = [[0.0f32; 3]; I];
    for j in 0..I {
        for r in 0..3 {
            out[j][r] = s.reduce_sum(acc[j][r]);
        }
    }
    out
}

/// y += alpha · x.
#[inline(always)]
pub(crate) fn axpy<S: Simd, E: WeightElem>(s: S, alpha: f32, x: &[E], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let l = S::LANES;
    let av = s.splat(alpha);
    let mut cx = x.chunks_exact(l);
    let mut cy = y.chunks_exact_mut(l);
    for (xc, yc) in (&mut cx).zip(&mut cy) {
        let v = s.mul_add(av, s.load_w(xc), s.load(yc));
        s.store(yc, v);
    }
    let (rx, ry) = (cx.remainder(), cy.into_remainder());
    if !rx.is_empty() {
        let v = s.mul_add(av, s.load_w_partial(rx), s.load_partial(ry));
        s.store_partial(ry, v);
    }
}

/// Prefetches every cache line of `row` into the level `HINT` names ([`HINT_L1`], [`HINT_L2`]).
#[inline(always)]
pub(crate) fn prefetch_row<const HINT: i32, E>(row: &[E]) {
    let per_line = (64 / std::mem::size_of::<E>().max(1)).max(1);
    let mut i = 0;
    while i < row.len() {
        prefetch_line::<HINT>(row[i..].as_ptr() as *const f32);
        i += per_line;
    }
}

/// Dot product of two rows at the best SIMD level of this CPU.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    struct Task<'a>(&'a [f32], &'a [f32]);
    impl SimdTask for Task<'_> {
        type Output = f32;
        #[inline(always)]
        fn run<S: Simd>(self, s: S) -> f32 {
            dot(s, self.0, self.1)
        }
    }
    dispatch(SimdLevel::detect(), Task(a, b))
}

/// `y += alpha·x` at the best SIMD level of this CPU.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    struct Task<'a>(f32, &'a [f32], &'a mut [f32]);
    impl SimdTask for Task<'_> {
        type Output = ();
        #[inline(always)]
        fn run<S: Simd>(self, s: S) {
            axpy(s, self.0, self.1, self.2)
        }
    }
    dispatch(SimdLevel::detect(), Task(alpha, x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_matches_plain_loops() {
        for level in SimdLevel::available() {
            for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 769] {
                let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
                let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3).collect();
                let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
                struct D<'a>(&'a [f32], &'a [f32]);
                impl SimdTask for D<'_> {
                    type Output = (f32, [f32; 4]);
                    fn run<S: Simd>(self, s: S) -> (f32, [f32; 4]) {
                        (dot(s, self.0, self.1), dot4(s, self.0, [self.1; 4]))
                    }
                }
                let (got, got4) = dispatch(level, D(&a, &b));
                assert!((got as f64 - want).abs() < 1e-3, "{level:?} n={n}");
                for g in got4 {
                    assert!((g as f64 - want).abs() < 1e-3, "{level:?} n={n} dot4");
                }
                struct A<'a>(&'a [f32], &'a mut [f32]);
                impl SimdTask for A<'_> {
                    type Output = ();
                    fn run<S: Simd>(self, s: S) {
                        axpy(s, 2.0, self.0, self.1)
                    }
                }
                let mut y = b.clone();
                dispatch(level, A(&a, &mut y));
                for i in 0..n {
                    assert!((y[i] - (b[i] + 2.0 * a[i])).abs() < 1e-6);
                }
            }
        }
    }

    /// `dot_rows` at every offset and length around the vector widths: each row's sum is
    /// within rounding of the exact one, and has the same bits whether the row is routed with
    /// three others, one other or alone (a tree's logits must not depend on how many trees are
    /// routed beside it).
    #[test]
    fn dot_rows_matches_plain_loops_and_not_its_group() {
        #[repr(align(64))]
        struct Aligned([f32; 1024]);
        let w_buf = Box::new(Aligned(std::array::from_fn(|i| {
            ((i * 7 % 13) as f32 - 6.0) * 0.1
        })));
        let x_buf = Box::new(Aligned(std::array::from_fn(|i| {
            ((i * 5 % 11) as f32 - 5.0) * 0.3
        })));
        struct R<'a>([&'a [f32]; 4], &'a [f32]);
        type RowsOut = ([f32; 4], [f32; 2], [f32; 1]);
        impl SimdTask for R<'_> {
            type Output = RowsOut;
            #[inline(always)]
            fn run<S: Simd>(self, s: S) -> RowsOut {
                let w = self.0;
                (
                    dot_rows(s, w, self.1),
                    dot_rows(s, [w[2], w[0]], self.1),
                    dot_rows(s, [w[0]], self.1),
                )
            }
        }
        for level in SimdLevel::available() {
            for off in 0..16 {
                for n in [0usize, 1, 5, 15, 16, 17, 31, 32, 33, 47, 100, 384, 769] {
                    let w = [
                        &w_buf.0[off..off + n],
                        &w_buf.0[3..3 + n],
                        &w_buf.0[16..16 + n],
                        &w_buf.0[(off + 9) % 16..(off + 9) % 16 + n],
                    ];
                    let x = &x_buf.0[(off * 5) % 16..(off * 5) % 16 + n];
                    let (four, two, one) = dispatch(level, R(w, x));
                    let tag = format!("{level:?} offset {off} n={n}");
                    for (r, row) in w.iter().enumerate() {
                        let exact: f64 =
                            row.iter().zip(x).map(|(p, q)| *p as f64 * *q as f64).sum();
                        assert!((four[r] as f64 - exact).abs() < 1e-3, "row {r} {tag}");
                    }
                    assert_eq!(one[0].to_bits(), four[0].to_bits(), "alone {tag}");
                    assert_eq!(two[1].to_bits(), four[0].to_bits(), "in two {tag}");
                    assert_eq!(two[0].to_bits(), four[2].to_bits(), "in two {tag}");
                }
            }
        }
    }

    /// Partial tails and unaligned rows: every offset of both operands from a 64-byte boundary
    /// (equal and unequal), lengths around the vector widths, for dot, dot4, dot3 (four inputs
    /// and one), axpy and streaming stores (aligned or not); nothing outside the output slice
    /// may change.
    #[test]
    fn every_alignment_and_length_matches_plain_loops() {
        #[repr(align(64))]
        struct Aligned([f32; 1024]);
        let a_buf = Box::new(Aligned(std::array::from_fn(|i| {
            ((i * 7 % 13) as f32 - 6.0) * 0.1
        })));
        let b_buf = Box::new(Aligned(std::array::from_fn(|i| {
            ((i * 5 % 11) as f32 - 5.0) * 0.3
        })));
        struct D<'a>(&'a [f32], &'a [f32], [&'a [f32]; 4], [&'a [f32]; 3]);
        type DotsOut = (f32, [f32; 4], [[f32; 3]; 4], [[f32; 3]; 2], [[f32; 3]; 1]);
        impl SimdTask for D<'_> {
            type Output = DotsOut;
            #[inline(always)]
            fn run<S: Simd>(self, s: S) -> DotsOut {
                (
                    dot(s, self.0, self.1),
                    dot4(s, self.0, self.2),
                    dot3(s, self.3, self.2),
                    dot3(s, self.3, [self.1, self.2[1]]),
                    dot3(s, self.3, [self.1]),
                )
            }
        }
        struct A<'a>(&'a [f32], &'a mut [f32]);
        impl SimdTask for A<'_> {
            type Output = ();
            fn run<S: Simd>(self, s: S) {
                axpy(s, -1.5, self.0, self.1)
            }
        }
        /// Copies `a` into `y` in whole vectors with `store_stream`, the tail with
        /// `store_partial`, then fences.
        struct St<'a>(&'a [f32], &'a mut [f32]);
        impl SimdTask for St<'_> {
            type Output = ();
            fn run<S: Simd>(self, s: S) {
                let l = S::LANES;
                let mut i = 0;
                while i + l <= self.1.len() {
                    s.store_stream(&mut self.1[i..], s.load(&self.0[i..]));
                    i += l;
                }
                if i < self.1.len() {
                    s.store_partial(&mut self.1[i..], s.load_partial(&self.0[i..]));
                }
                s.fence();
            }
        }
        for level in SimdLevel::available() {
            for a_off in 0..16 {
                for b_off in [0, 3, a_off, 15] {
                    for n in [0usize, 1, 5, 12, 15, 16, 17, 31, 47, 100, 769] {
                        let a = &a_buf.0[a_off..a_off + n];
                        let b = &b_buf.0[b_off..b_off + n];
                        let want: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                        // dot4's other inputs at other offsets.
                        let others = [b, &b_buf.0[1..1 + n], &b_buf.0[8..8 + n], b];
                        // dot3's other rows at other offsets.
                        let rows = [a, &a_buf.0[2..2 + n], &a_buf.0[9..9 + n]];
                        let (got, got4, got3, got3_two, got3_one) =
                            dispatch(level, D(a, b, others, rows));
                        let tag = format!("{level:?} a+{a_off} b+{b_off} n={n}");
                        assert!((got as f64 - want).abs() < 1e-3, "dot {tag}");
                        let exact = |w: &[f32], x: &[f32]| -> f64 {
                            w.iter().zip(x).map(|(p, q)| *p as f64 * *q as f64).sum()
                        };
                        for (j, x) in others.iter().enumerate() {
                            let w4 = exact(a, x);
                            assert!((got4[j] as f64 - w4).abs() < 1e-3, "dot4[{j}] {tag}");
                            for (r, w) in rows.iter().enumerate() {
                                let w3 = exact(w, x);
                                assert!(
                                    (got3[j][r] as f64 - w3).abs() < 1e-3,
                                    "dot3[{j}][{r}] {tag}"
                                );
                            }
                        }
                        // Input `b` in a group of four, two and one: the same bits, so an
                        // input's logits do not depend on the size of its group.
                        for g in [got3[0], got3[3], got3_two[0]] {
                            let bits = |v: [f32; 3]| v.map(f32::to_bits);
                            assert_eq!(bits(g), bits(got3_one[0]), "dot3 group sizes {tag}");
                        }
                        for (r, w) in rows.iter().enumerate() {
                            let w1 = exact(w, others[1]);
                            assert!(
                                (got3_two[1][r] as f64 - w1).abs() < 1e-3,
                                "dot3 two [{r}] {tag}"
                            );
                            let w3 = exact(w, b);
                            assert!(
                                (got3_one[0][r] as f64 - w3).abs() < 1e-3,
                                "dot3 one input [{r}] {tag}"
                            );
                        }
                        let mut y = b_buf.0;
                        dispatch(level, A(a, &mut y[b_off..b_off + n]));
                        let mut streamed = b_buf.0;
                        dispatch(level, St(a, &mut streamed[b_off..b_off + n]));
                        for (i, (&got, &old)) in streamed.iter().zip(&b_buf.0).enumerate() {
                            let want = if (b_off..b_off + n).contains(&i) {
                                a_buf.0[a_off + i - b_off]
                            } else {
                                old
                            };
                            assert_eq!(got, want, "store_stream {tag} at {i}");
                        }
                        for (i, (&got, &old)) in y.iter().zip(&b_buf.0).enumerate() {
                            let want = if (b_off..b_off + n).contains(&i) {
                                old - 1.5 * a_buf.0[a_off + i - b_off]
                            } else {
                                old
                            };
                            assert!((got - want).abs() < 1e-5, "axpy {tag} at {i}");
                        }
                    }
                }
            }
        }
    }
}
