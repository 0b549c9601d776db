//! Token states to one vector per text, as sentence-transformers' `Pooling` and `Normalize`
//! modules compute them: each mode over the text's own tokens (specials included, padding
//! never), several modes concatenated in sentence-transformers' order, then optionally scaled
//! to unit length.

use std::ops::Range;

/// One way of pooling a text's token states into one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Pooling {
    /// The first token's state (`[CLS]` in BERT; sentence-transformers' `cls`).
    #[cfg_attr(feature = "clap", value(alias = "cls"))]
    First,
    /// Elementwise max over the tokens.
    Max,
    /// Mean over the tokens.
    #[default]
    Mean,
    /// Sum over the tokens divided by the square root of their count.
    #[cfg_attr(feature = "clap", value(name = "mean-sqrt-len"))]
    MeanSqrtLen,
    /// Mean weighted by position: token `t` (from 0) has weight `t + 1`.
    #[cfg_attr(feature = "clap", value(name = "weighted-mean"))]
    WeightedMean,
    /// The last token's state.
    #[cfg_attr(feature = "clap", value(name = "last-token"))]
    LastToken,
}

impl Pooling {
    /// Every mode, in the order sentence-transformers concatenates them.
    pub const ALL: [Pooling; 6] = [
        Pooling::First,
        Pooling::Max,
        Pooling::Mean,
        Pooling::MeanSqrtLen,
        Pooling::WeightedMean,
        Pooling::LastToken,
    ];

    /// The name sentence-transformers gives the mode (`pooling_mode` values).
    pub fn name(self) -> &'static str {
        match self {
            Pooling::First => "cls",
            Pooling::Max => "max",
            Pooling::Mean => "mean",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::WeightedMean => "weightedmean",
            Pooling::LastToken => "lasttoken",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;

    /// Parses `mean`, `first` (or `cls`), `max`, `mean-sqrt-len`, `weighted-mean`,
    /// `last-token`, and sentence-transformers' spellings of them.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        Ok(match name {
            "mean" => Pooling::Mean,
            "first" | "cls" => Pooling::First,
            "max" => Pooling::Max,
            "mean-sqrt-len" | "mean_sqrt_len_tokens" | "mean_sqrt_len" => Pooling::MeanSqrtLen,
            "weighted-mean" | "weightedmean" => Pooling::WeightedMean,
            "last-token" | "lasttoken" => Pooling::LastToken,
            other => {
                return Err(format!(
                    "unknown pooling `{other}`; expected mean, first (cls), max, mean-sqrt-len, \
                     weighted-mean or last-token"
                ))
            }
        })
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::First => "first",
            Pooling::Max => "max",
            Pooling::Mean => "mean",
            Pooling::MeanSqrtLen => "mean-sqrt-len",
            Pooling::WeightedMean => "weighted-mean",
            Pooling::LastToken => "last-token",
        })
    }
}

/// How a model turns token states into its sentence embedding: the pooling modes,
/// concatenated in order, and whether the result is scaled to unit length.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolingConfig {
    /// The modes, in the order their vectors are concatenated (never empty).
    pub modes: Vec<Pooling>,
    /// Whether the concatenated vector is divided by its L2 norm (sentence-transformers'
    /// `Normalize`: `v / max(‖v‖, 1e-12)`).
    pub normalize: bool,
}

impl Default for PoolingConfig {
    /// Mean pooling without normalisation: what sentence-transformers builds for a folder
    /// without `modules.json`.
    fn default() -> Self {
        PoolingConfig {
            modes: vec![Pooling::Mean],
            normalize: false,
        }
    }
}

impl PoolingConfig {
    /// One mode, normalised or not.
    pub fn single(mode: Pooling, normalize: bool) -> Self {
        PoolingConfig {
            modes: vec![mode],
            normalize,
        }
    }

    /// Width of the pooled vector for token states of width `hidden`.
    pub fn width(&self, hidden: usize) -> usize {
        self.modes.len() * hidden
    }

    /// The embedding of the text at `rows` (non-empty) of `[_, hidden]` states.
    pub fn pool(&self, states: &[f32], hidden: usize, rows: Range<usize>) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.width(hidden));
        for &mode in &self.modes {
            out.extend(pool_rows(states, hidden, rows.clone(), mode));
        }
        if self.normalize {
            l2_normalize(&mut out);
        }
        out
    }
}

/// One vector from rows `rows` (non-empty) of `[_, hidden]` states, as sentence-transformers
/// computes `mode` (in f32).
pub fn pool_rows(states: &[f32], hidden: usize, rows: Range<usize>, mode: Pooling) -> Vec<f32> {
    let row = |t: usize| &states[t * hidden..(t + 1) * hidden];
    let sum = |weight: &dyn Fn(usize) -> f32| {
        let mut acc = vec![0f32; hidden];
        for (i, t) in rows.clone().enumerate() {
            let w = weight(i);
            acc.iter_mut().zip(row(t)).for_each(|(a, v)| *a += v * w);
        }
        acc
    };
    let scaled = |mut v: Vec<f32>, by: f32| {
        v.iter_mut().for_each(|a| *a /= by);
        v
    };
    let n = rows.len();
    match mode {
        Pooling::First => row(rows.start).to_vec(),
        Pooling::LastToken => row(rows.end - 1).to_vec(),
        Pooling::Mean => scaled(sum(&|_| 1.0), n as f32),
        Pooling::MeanSqrtLen => scaled(sum(&|_| 1.0), (n as f32).sqrt()),
        Pooling::WeightedMean => {
            // Weights 1..=n; their sum n(n+1)/2 is exact in f32 for any sequence length.
            let total = (n * (n + 1) / 2) as f32;
            scaled(sum(&|i| (i + 1) as f32), total)
        }
        Pooling::Max => {
            let mut acc = row(rows.start).to_vec();
            for t in rows.start + 1..rows.end {
                acc.iter_mut().zip(row(t)).for_each(|(a, v)| *a = a.max(*v));
            }
            acc
        }
    }
}

/// Divides `v` by its L2 norm (at least 1e-12), as `torch.nn.functional.normalize` does.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tokens of width 2, and one more row before them that pooling must not see.
    const STATES: [f32; 8] = [9.0, 9.0, 1.0, -2.0, 3.0, 4.0, -5.0, 0.5];

    #[test]
    fn each_mode_pools_only_its_rows() {
        let pool = |mode| pool_rows(&STATES, 2, 1..4, mode);
        assert_eq!(pool(Pooling::First), [1.0, -2.0]);
        assert_eq!(pool(Pooling::LastToken), [-5.0, 0.5]);
        assert_eq!(pool(Pooling::Max), [3.0, 4.0]);
        assert_eq!(pool(Pooling::Mean), [-1.0 / 3.0, 2.5 / 3.0]);
        let sqrt3 = 3f32.sqrt();
        assert_eq!(pool(Pooling::MeanSqrtLen), [-1.0 / sqrt3, 2.5 / sqrt3]);
        // Weights 1, 2, 3 over a total of 6.
        let w = [(1.0 + 6.0 - 15.0) / 6.0, (-2.0 + 8.0 + 1.5) / 6.0];
        let got = pool(Pooling::WeightedMean);
        assert!((got[0] - w[0]).abs() < 1e-6 && (got[1] - w[1]).abs() < 1e-6);
    }

    #[test]
    fn modes_concatenate_in_order_and_normalize_the_whole() {
        let config = PoolingConfig {
            modes: vec![Pooling::First, Pooling::Max],
            normalize: true,
        };
        let v = config.pool(&STATES, 2, 1..4);
        let norm = (1.0f32 + 4.0 + 9.0 + 16.0).sqrt();
        assert_eq!(v, [1.0 / norm, -2.0 / norm, 3.0 / norm, 4.0 / norm]);
        let mut zero = vec![0f32; 3];
        l2_normalize(&mut zero);
        assert_eq!(zero, [0.0; 3]);
    }

    #[test]
    fn names_parse_back() {
        for mode in Pooling::ALL {
            assert_eq!(mode.to_string().parse::<Pooling>(), Ok(mode));
            assert_eq!(mode.name().parse::<Pooling>(), Ok(mode));
        }
        assert!("median".parse::<Pooling>().unwrap_err().contains("median"));
    }
}
