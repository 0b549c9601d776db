//! Weight formats of the inference kernel: how the rows of `w_in` and `w_out_t` are stored.
//!
//! The kernels are memory-bound at batch sizes where weight rows are not shared (each visited
//! neuron moves an input row and an output row), so fewer bytes per weight is the way below
//! the f32 floor. Inputs, biases, activations and every accumulation stay f32; only the stored
//! weights shrink, and they are widened to f32 in registers as they are loaded.
//!
//! - [`WeightFormat::F32`]: 4 bytes per weight, as trained.
//! - [`WeightFormat::Bf16`]: 2 bytes, f32 with the low 16 mantissa bits rounded off (to
//!   nearest, ties to even); widening is exact (a shift).
//! - [`WeightFormat::Int8`]: 1 byte, symmetric per row: `w ≈ q · scale[row]` with
//!   `scale = max |w| / 127` and `q = round(w / scale)` in `-127..=127`. The scale is applied
//!   once per row (to the dot product for `w_in`, to the activation for `w_out_t`), not per
//!   weight.

use half::bf16;

/// How the kernel's weight rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum WeightFormat {
    /// 32-bit floats, as trained.
    #[default]
    F32,
    /// bfloat16 weights, widened to f32 in registers.
    Bf16,
    /// 8-bit integers with one f32 scale per row (symmetric).
    Int8,
}

impl WeightFormat {
    /// Every format, widest first.
    pub const ALL: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8];

    /// Name as used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
        }
    }

    /// Bytes per stored weight (scales not counted).
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 => 2,
            WeightFormat::Int8 => 1,
        }
    }

    /// Bytes one stored row of `width` weights takes, its scale included.
    pub fn row_bytes(self, width: usize) -> usize {
        width * self.bytes_per_weight() + if self == WeightFormat::Int8 { 4 } else { 0 }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("`{s}`: expected f32, bf16 or int8"))
    }
}

/// A row's elements, seen as the type the SIMD loads widen from.
#[doc(hidden)]
pub enum RowElems<'a> {
    /// f32 rows.
    F32(&'a [f32]),
    /// bf16 rows as their bit patterns.
    Bf16(&'a [u16]),
    /// int8 rows.
    Int8(&'a [i8]),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i8 {}
}

/// An element type the kernels read weights in: `f32`, [`half::bf16`] or `i8`.
pub trait WeightElem:
    Copy + Default + Send + Sync + std::fmt::Debug + 'static + sealed::Sealed
{
    /// The format this element type stores.
    const FORMAT: WeightFormat;
    /// The element's value (before any row scale).
    fn to_f32(self) -> f32;
    /// The row as the kernels' loads see it.
    #[doc(hidden)]
    fn elems(row: &[Self]) -> RowElems<'_>;
    /// The row as f32, if that is what it stores (for the SGEMM path, which reads f32 only).
    #[doc(hidden)]
    fn as_f32(row: &[Self]) -> Option<&[f32]> {
        match Self::elems(row) {
            RowElems::F32(r) => Some(r),
            _ => None,
        }
    }
}

impl WeightElem for f32 {
    const FORMAT: WeightFormat = WeightFormat::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn elems(row: &[f32]) -> RowElems<'_> {
        RowElems::F32(row)
    }
}

impl WeightElem for bf16 {
    const FORMAT: WeightFormat = WeightFormat::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn elems(row: &[bf16]) -> RowElems<'_> {
        use half::slice::HalfFloatSliceExt;
        RowElems::Bf16(row.reinterpret_cast())
    }
}

impl WeightElem for i8 {
    const FORMAT: WeightFormat = WeightFormat::Int8;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn elems(row: &[i8]) -> RowElems<'_> {
        RowElems::Int8(row)
    }
}

/// Rounds f32 weights to bf16 (to nearest, ties to even; NaN stays NaN).
pub fn to_bf16(w: &[f32]) -> Vec<bf16> {
    w.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Quantizes each row of `width` weights to int8 with its own symmetric scale: returns the
/// values and one scale per row. A row of zeros gets scale 0. Weights must be finite.
pub fn to_int8_rows(w: &[f32], width: usize) -> (Vec<i8>, Vec<f32>) {
    if width == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut q = vec![0i8; w.len()];
    let mut scales = Vec::with_capacity(w.len() / width);
    for (row, out) in w.chunks_exact(width).zip(q.chunks_exact_mut(width)) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        scales.push(scale);
        if scale > 0.0 {
            // Divide rather than multiply by 1/scale: it keeps the row's largest weight at
            // exactly ±127.
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (v / scale).round().clamp(-127.0, 127.0) as i8;
            }
        }
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in WeightFormat::ALL {
            assert_eq!(f.name().parse::<WeightFormat>().unwrap(), f);
        }
        assert!("fp16".parse::<WeightFormat>().unwrap_err().contains("bf16"));
    }

    #[test]
    fn int8_rows_keep_their_extremes_and_error_bound() {
        let w = [
            0.5f32, -1.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0, -2.9, 0.001,
        ];
        let (q, s) = to_int8_rows(&w, 4);
        assert_eq!(s.len(), 3);
        assert_eq!(q[1], -127);
        assert_eq!(&q[4..8], &[0, 0, 0, 0]);
        assert_eq!(s[1], 0.0);
        assert_eq!(q[8], 127);
        for (r, row) in w.chunks(4).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                let back = q[r * 4 + i] as f32 * s[r];
                assert!((back - v).abs() <= s[r] / 2.0 + 1e-7, "row {r} col {i}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest() {
        let w = [1.0f32, 1.0 + 1.0 / 256.0, -3.3, 1e-30];
        for (b, &v) in to_bf16(&w).iter().zip(&w) {
            assert!((b.to_f32() - v).abs() <= v.abs() / 256.0, "{v}");
        }
        assert!(to_bf16(&[f32::NAN])[0].to_f32().is_nan());
    }
}
