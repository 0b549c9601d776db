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

/// `e^x` in f32 by Cephes' range reduction and polynomial (within 3e-7 relative of libm),
/// written without branches or calls so that loops over it vectorize; libm's scalar `expf`
/// was the encoder attention's largest cost. Inputs below −87.3 give about 1e-38 instead of 0
/// (harmless in a softmax, whose sum is at least 1); inputs above 88 give e^88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer and leaves it in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    for c in [
        1.398_199_9e-3f32,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + c;
    }
    let p = p * r * r + r + 1.0;
    // 2^n built in the exponent field: n + 127 is in 1..=254 after the clamp.
    let biased = t
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
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

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-10_000.0) < 1e-37 && exp(-10_000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }
}
