//! Timing figures: the median of repeated runs, and durations in a readable unit.

use std::time::{Duration, Instant};

/// The median of `values` (the upper middle one for an even count); NaN for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `q` quantile (0 the least, 1 the greatest) of `sorted`, an ascending slice, interpolated
/// linearly between neighbours; NaN for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return f64::NAN;
    };
    let at = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let i = at.floor() as usize;
    let next = sorted.get(i + 1).copied().unwrap_or(last);
    sorted[i] + at.fract() * (next - sorted[i])
}

/// Runs `f` `warmup` times, then `reps` times (at least once), and returns the median duration.
pub fn median_time(warmup: usize, reps: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        f();
    }
    let times = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    Duration::from_secs_f64(median(times))
}

/// Seconds in the most readable unit: `1.234 s`, `12.345 ms`, `3.21 µs`.
pub fn human_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

/// A duration in the most readable unit.
pub fn human(d: Duration) -> String {
    human_seconds(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_neighbours() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!((quantile(&v, 0.25) - 2.0).abs() < 1e-12);
        assert!((quantile(&v, 0.125) - 1.5).abs() < 1e-12);
        assert!((quantile(&[1.0, 2.0, 3.0], 0.75) - 2.5).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.25), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn medians_and_units() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(human_seconds(1.5), "1.500 s");
        assert_eq!(human_seconds(0.0125), "12.500 ms");
        assert_eq!(human_seconds(3.21e-6), "3.21 µs");
        let mut calls = 0;
        median_time(2, 3, || calls += 1);
        assert_eq!(calls, 5);
    }
}
