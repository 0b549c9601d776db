//! Wall-clock timing: warm-up, then the median of repeated runs.

use std::time::{Duration, Instant};

/// Runs `f` `warmup` times, then `reps` times, and returns the median duration.
pub fn median_time(warmup: usize, reps: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// A duration in the most readable unit.
pub fn human(d: Duration) -> String {
    fff_bench::report::human_seconds(d.as_secs_f64())
}
