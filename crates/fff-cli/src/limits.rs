//! Ceilings on the sizes a command line may ask for, checked by clap before anything is
//! allocated, with the flag and the allowed range in the error; and, for sizes that are each
//! within their ceiling but multiply (width × nodes × batch), an estimate of the memory the run
//! will hold, compared with the memory available before anything is allocated.

use fff_util::memory::Limit;

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
    pub fn floats(self, what: &str, dims: &[usize]) -> Self {
        let bytes = dims.iter().fold(4u128, |n, &d| n.saturating_mul(d as u128));
        self.bytes(what, bytes)
    }

    /// Adds a part of `bytes` bytes, named `what`.
    pub fn bytes(mut self, what: &str, bytes: u128) -> Self {
        self.bytes = self.bytes.saturating_add(bytes);
        self.parts.push((what.to_string(), bytes));
        self
    }

    /// Adds each of `parts` (name, bytes).
    pub fn parts(self, parts: impl IntoIterator<Item = (String, u128)>) -> Self {
        parts
            .into_iter()
            .fold(self, |estimate, (what, bytes)| estimate.bytes(&what, bytes))
    }

    /// The estimate in bytes.
    pub fn total(&self) -> u128 {
        self.bytes
    }

    /// Refuses the run when the estimate exceeds `limit` (or, with `None`, what this process
    /// may still allocate by [`fff_util::memory::available`]: the machine's available memory,
    /// its cgroup's limit, its address-space limit), naming every part of the estimate, the
    /// limit and what sets it, and the flags that set the sizes.
    pub fn check(&self, limit: Option<Limit>, flags: &str) -> anyhow::Result<()> {
        self.refuse(limit, &format!("lower {flags}"))
    }

    /// [`MemoryEstimate::check`] with `advice` in place of the flags to lower.
    pub fn refuse(&self, limit: Option<Limit>, advice: &str) -> anyhow::Result<()> {
        let Some(limit) = limit.or_else(fff_util::memory::available) else {
            return Ok(());
        };
        if self.total() <= limit.bytes as u128 {
            return Ok(());
        }
        let mut parts: Vec<&(String, u128)> =
            self.parts.iter().filter(|(_, bytes)| *bytes > 0).collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let parts: Vec<String> = parts
            .iter()
            .map(|(what, bytes)| format!("{what} {}", size(*bytes)))
            .collect();
        anyhow::bail!(
            "these settings need about {} of memory ({}), more than the {limit}; {advice}",
            size(self.bytes),
            parts.join(", "),
        )
    }
}

/// Bytes in a readable unit; estimates past `u64` (only absurd flags get there) as such.
fn size(bytes: u128) -> String {
    match u64::try_from(bytes) {
        Ok(b) => fff_util::memory::bytes(b),
        Err(_) => "more than 16 EiB".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bytes: u64) -> Option<Limit> {
        Some(Limit {
            bytes,
            source: "cgroup v2 memory.max of /sys/fs/cgroup/job (2.0 GiB, 1.0 GiB of it in use)"
                .into(),
        })
    }

    #[test]
    fn estimates_past_the_available_memory_are_refused_naming_parts_limit_and_flags() {
        let small = MemoryEstimate::default().floats("weights", &[1000, 768]);
        assert_eq!(small.total(), 4 * 1000 * 768);
        small.check(limit(1 << 30), "--width").unwrap();
        let huge = MemoryEstimate::default()
            .floats("weights", &[65536, 2_097_151, 2])
            .floats("inputs", &[1 << 24, 65536])
            .bytes("indices", 3 << 20)
            .parts([("nothing".to_string(), 0)]);
        let err = huge
            .check(limit(1 << 30), "--width or --batches")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "more than the 1.0 GiB available under cgroup v2 memory.max of \
                 /sys/fs/cgroup/job (2.0 GiB, 1.0 GiB of it in use)"
            ) && err.contains("lower --width or --batches"),
            "{err}"
        );
        // Every part with its size, biggest first; empty parts left out.
        assert!(
            err.contains("(inputs 4.0 TiB, weights 1024.0 GiB, indices 3 MiB)"),
            "{err}"
        );
        // Products that overflow u64 saturate instead of wrapping to something small.
        let absurd = MemoryEstimate::default().floats("x", &[usize::MAX, usize::MAX, usize::MAX]);
        let err = absurd.check(limit(u64::MAX), "--x").unwrap_err();
        assert!(err.to_string().contains("more than 16 EiB"), "{err}");
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
