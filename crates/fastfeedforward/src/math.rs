//! Vectorizable elementwise math: branch-free, call-free forms that auto-vectorize inside
//! [`crate::kernels::simd::vectorized`] loops.

/// erf by Eigen's rational approximation (the one TensorFlow and XNNPACK use): a few ulp in
/// f32, no branches and no calls, so the loop over a row vectorizes. A scalar libm `erff` per
/// element made GELU cost as much as the dense FF's two GEMMs.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for a in [
        2.770_681_4e-08f32,
        -2.101_024e-06,
        -5.692_506_4e-05,
        -7.349_906_3e-04,
        -2.9546e-3,
        -1.609_603_3e-02,
    ] {
        p = p * x2 + a;
    }
    let p = p * x;
    let mut q = -1.456_607_2e-05f32;
    for b in [
        -2.133_740_6e-04f32,
        -1.682_827e-03,
        -7.373_329e-03,
        -1.426_474e-02,
    ] {
        q = q * x2 + b;
    }
    p / q
}

/// Exact (erf) GELU through [`erf`].
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_libm_erf_gelu() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let exact =
                0.5 * x as f64 * (1.0 + candle_core::cpu::erf::erf_f64(x as f64 / 2f64.sqrt()));
            worst = worst.max((gelu(x) as f64 - exact).abs() / (1.0 + exact.abs()));
        }
        assert!(worst < 5e-6, "max relative error {worst}");
        assert_eq!(gelu(0.0), 0.0);
        assert!(gelu(-20.0).abs() < 1e-5 && (gelu(20.0) - 20.0).abs() < 1e-4);
        assert!((erf(1.0) - 0.842_700_8).abs() < 1e-6 && erf(-30.0) == -erf(30.0));
    }
}
