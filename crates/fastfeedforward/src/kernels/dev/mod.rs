//! Kernel versions kept only for comparison in the benchmarks (`fff bench layer`'s
//! `fff-level2` row), never chosen by [`super::Strategy::Auto`]. Each is held to the reference
//! by the same tests as the fast kernels.

pub(super) mod grouped;
