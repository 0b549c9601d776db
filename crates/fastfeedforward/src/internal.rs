//! Not a stable API: the pieces of the kernels that this workspace's other crates (the
//! UltraFastBERT port, the benchmarks, the profiling example) share with them. Users of the
//! layers need none of it.

/// Runtime SIMD dispatch for plain loops, and the dispatched dot product and axpy.
pub mod simd {
    pub use crate::kernels::simd::{axpy_f32, dot_f32, vectorized};
}

/// Branch-free, vectorizable `exp`, `erf` and GELU.
pub mod math {
    pub use crate::math::*;
}

/// The contiguous f32 contents of a candle custom op's CPU operand, as the training op reads them.
pub use crate::train_op::f32_slice;

/// Which walk [`crate::Strategy::Auto`] picks for a shape.
pub use crate::kernels::descent::resolve_strategy;

/// Per-phase clocks of the bucketed walk (counting only with the `phase-timing` feature).
pub mod phases {
    pub use crate::kernels::phases::*;
}
