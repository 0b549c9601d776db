//! Ceilings on the sizes a command line may ask for, checked by clap before anything is
//! allocated, with the flag and the allowed range in the error; and, for sizes that are each
//! within their ceiling but multiply (width × nodes × batch), an estimate of the memory the run
//! will hold, compared with the memory available before anything is allocated.

/// Most threads a flag may ask for.
pub const THREADS: usize = 1024;
/// Most repetitions of a timed run.
pub const REPS: usize = 100_000;
/// Most rows of a batch, or inputs per batch.
pub const ROWS: usize = 1 << 24;
/// Widest layer a benchmark may build.
pub const WIDTH: usize = 1 << 16;

/// A whole number in `1..=MAX`.
pub fn count<const MAX: usize>(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("`{s}` is not a whole number in 1..={MAX}: {e}"))?;
    if (1..=MAX).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is outside 1..={MAX}"))
    }
}

/// The memory a run will hold at once, summed from its largest buffers; products are taken in
/// `u128`, so no combination of flags overflows the estimate.
#[derive(Debug, Default)]
pub struct MemoryEstimate {
    bytes: u128,
    parts: Vec<(String, u128)>,
}

impl MemoryEstimate {
    /// Adds a buffer of `count` f32 values (the product of `dims`), named `what`.
    pub fn floats(mut self, what: &str, dims: &[usize]) -> Self {
        let bytes = dims.iter().fold(4u128, |n, &d| n.saturating_mul(d as u128));
        self.bytes = self.bytes.saturating_add(bytes);
        self.parts.push((what.to_string(), bytes));
        self
    }

    /// Refuses the run when the estimate exceeds `available` bytes (or, with `None`, the memory
    /// this machine has available now, where it can tell), naming the biggest parts and the
    /// flags that set them.
    pub fn check(&self, available: Option<u64>, flags: &str) -> anyhow::Result<()> {
        let Some(available) = available.or_else(available_memory) else {
            return Ok(());
        };
        if self.bytes <= available as u128 {
            return Ok(());
        }
        let mut parts: Vec<&(String, u128)> = self.parts.iter().collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let biggest: Vec<String> = parts
            .iter()
            .take(3)
            .filter(|(_, bytes)| *bytes >= 1 << 26)
            .map(|(what, bytes)| format!("{what} {}", gib(*bytes)))
            .collect();
        anyhow::bail!(
            "these settings need about {} of memory ({}), more than the {} available; lower {flags}",
            gib(self.bytes),
            biggest.join(", "),
            gib(available as u128)
        )
    }
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Memory available to new allocations now (Linux `MemAvailable`); `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_past_the_available_memory_are_refused_naming_the_flags() {
        let small = MemoryEstimate::default().floats("weights", &[1000, 768]);
        assert_eq!(small.bytes, 4 * 1000 * 768);
        small.check(Some(1 << 30), "--width").unwrap();
        let huge = MemoryEstimate::default()
            .floats("weights", &[65536, 2_097_151, 2])
            .floats("inputs", &[1 << 24, 65536]);
        let err = huge
            .check(Some(1 << 30), "--width or --batches")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("more than the 1.0 GiB available")
                && err.contains("lower --width or --batches")
                && err.contains("weights"),
            "{err}"
        );
        // Products that overflow u64 saturate instead of wrapping to something small.
        let absurd = MemoryEstimate::default().floats("x", &[usize::MAX, usize::MAX, usize::MAX]);
        assert!(absurd.check(Some(u64::MAX), "--x").is_err());
    }

    #[test]
    fn counts_outside_their_range_are_refused() {
        assert_eq!(count::<10>("3"), Ok(3));
        assert!(count::<10>("0").unwrap_err().contains("1..=10"));
        assert!(count::<10>("11").is_err());
        assert!(count::<10>("99999999999999999999999").is_err());
        assert!(count::<10>("-1").is_err());
    }
}
