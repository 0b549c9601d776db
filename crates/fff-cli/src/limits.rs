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
/// `u128`, so no combination of flags overflows the estimate. Parts that only reserve address
/// space (scratch that is mapped but mostly never touched) count against the limits on address
/// space alone.
#[derive(Debug, Default)]
pub struct MemoryEstimate {
    parts: Vec<Part>,
}

/// One named part of an estimate.
#[derive(Debug)]
struct Part {
    what: String,
    bytes: u128,
    /// Address space reserved, not memory used.
    reserved: bool,
}

impl MemoryEstimate {
    /// Adds a buffer of `count` f32 values (the product of `dims`), named `what`.
    pub fn floats(self, what: &str, dims: &[usize]) -> Self {
        let bytes = dims.iter().fold(4u128, |n, &d| n.saturating_mul(d as u128));
        self.bytes(what, bytes)
    }

    /// Adds a part of `bytes` bytes, named `what`.
    pub fn bytes(self, what: &str, bytes: u128) -> Self {
        self.part(what, bytes, false)
    }

    /// Adds address space of `bytes` bytes, named `what`, that is reserved but mostly never
    /// touched: it counts against `RLIMIT_AS` and `RLIMIT_DATA` only.
    pub fn reserved(self, what: &str, bytes: u128) -> Self {
        self.part(what, bytes, true)
    }

    fn part(mut self, what: &str, bytes: u128, reserved: bool) -> Self {
        self.parts.push(Part {
            what: what.to_string(),
            bytes,
            reserved,
        });
        self
    }

    /// Adds each of `parts` (name, bytes).
    pub fn parts(self, parts: impl IntoIterator<Item = (String, u128)>) -> Self {
        parts
            .into_iter()
            .fold(self, |estimate, (what, bytes)| estimate.bytes(&what, bytes))
    }

    /// Adds the scratch that the matrix kernels of the FFF inference walk (faer's) reserve on
    /// each of the `threads` worker threads that run them, for as long as the thread lives:
    /// twice the last-level cache (on virtual machines that report a large L3, hundreds of MiB
    /// per thread). It outlives the evaluation pass that makes it, so the next training step's
    /// buffers come on top of it.
    pub fn gemm_scratch(self, threads: usize) -> Self {
        match fff_util::memory::cache_bytes(3) {
            Some(l3) => self.reserved(
                &format!(
                    "the matrix kernels' scratch (twice the {} L3 cache on each of {threads} \
                     threads, reserved)",
                    fff_util::memory::bytes(l3)
                ),
                2 * l3 as u128 * threads as u128,
            ),
            None => self,
        }
    }

    /// The estimate in bytes, the reserved parts included (for the tests' arithmetic).
    #[cfg(test)]
    pub(crate) fn total(&self) -> u128 {
        self.sum(true)
    }

    fn sum(&self, reserved: bool) -> u128 {
        self.parts
            .iter()
            .filter(|p| reserved || !p.reserved)
            .fold(0u128, |s, p| s.saturating_add(p.bytes))
    }

    /// Refuses the run when the estimate exceeds `limit` (or, with `None`, any of the bounds
    /// [`fff_util::memory::limits`] finds: the machine's available memory, its cgroup's limit,
    /// its address-space limits), naming every part of the estimate that the bound counts, the
    /// bound and what sets it, and the flags that set the sizes.
    pub fn check(&self, limit: Option<Limit>, flags: &str) -> anyhow::Result<()> {
        self.refuse(limit, &format!("lower {flags}"))
    }

    /// [`MemoryEstimate::check`] with `advice` in place of the flags to lower.
    pub fn refuse(&self, limit: Option<Limit>, advice: &str) -> anyhow::Result<()> {
        let limits = match limit {
            Some(l) => vec![l],
            None => fff_util::memory::limits(),
        };
        // The bound left with the least room, counting what it counts, plus a tenth: the
        // allocator's rounding and its freed memory not yet returned, measured at a few percent
        // of a training run's peak.
        let need = |l: &Limit| {
            let sum = self.sum(l.counts_reserved);
            sum.saturating_add(sum / 10)
        };
        let Some(limit) = limits
            .into_iter()
            .min_by_key(|l| l.bytes as i128 - need(l).min(i128::MAX as u128) as i128)
        else {
            return Ok(());
        };
        if need(&limit) <= limit.bytes as u128 {
            return Ok(());
        }
        let mut parts: Vec<(&str, u128)> = self
            .parts
            .iter()
            .filter(|p| p.bytes > 0 && (limit.counts_reserved || !p.reserved))
            .map(|p| (p.what.as_str(), p.bytes))
            .collect();
        let slack = need(&limit) - self.sum(limit.counts_reserved);
        parts.push(("the allocator's slack (a tenth)", slack));
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        // Parts under a MiB are counted, not named: they never decide the outcome.
        let small = parts.iter().filter(|p| p.1 < 1 << 20).count();
        let mut parts: Vec<String> = parts
            .iter()
            .filter(|p| p.1 >= 1 << 20)
            .map(|(what, bytes)| format!("{what} {}", size(*bytes)))
            .collect();
        match small {
            0 => {}
            1 => parts.push("1 part under 1 MiB".into()),
            n => parts.push(format!("{n} parts under 1 MiB")),
        }
        anyhow::bail!(
            "these settings need about {} of memory ({}), more than the {limit}; {advice}",
            size(need(&limit)),
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
            counts_reserved: false,
        })
    }

    #[test]
    fn estimates_past_the_available_memory_are_refused_naming_parts_limit_and_flags() {
        let small = MemoryEstimate::default().floats("weights", &[1000, 768]);
        assert_eq!(small.total(), 4 * 1000 * 768);
        small.check(limit(1 << 30), "--width").unwrap();
        // A tenth more than the estimate is asked for.
        let gib = MemoryEstimate::default().bytes("x", 1000 << 20);
        gib.check(limit(1100 << 20), "--x").unwrap();
        let err = gib.check(limit(1099 << 20), "--x").unwrap_err().to_string();
        assert!(
            err.contains("need about 1.1 GiB of memory (x 1000 MiB, the allocator's slack (a tenth) 100 MiB)"),
            "{err}"
        );
        let huge = MemoryEstimate::default()
            .floats("weights", &[65536, 2_097_151, 2])
            .floats("inputs", &[1 << 24, 65536])
            .bytes("indices", 3 << 20)
            .bytes("flags", 100)
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
        // Every part of a MiB or more with its size, biggest first, the smaller ones counted;
        // empty parts left out.
        assert!(
            err.contains(
                "(inputs 4.0 TiB, weights 1024.0 GiB, the allocator's slack (a tenth) 512.0 GiB, \
                 indices 3 MiB, 1 part under 1 MiB)"
            ),
            "{err}"
        );
        // Products that overflow u64 saturate instead of wrapping to something small.
        let absurd = MemoryEstimate::default().floats("x", &[usize::MAX, usize::MAX, usize::MAX]);
        let err = absurd.check(limit(u64::MAX), "--x").unwrap_err();
        assert!(err.to_string().contains("more than 16 EiB"), "{err}");
    }

    #[test]
    fn reserved_address_space_counts_against_address_space_limits_only() {
        let estimate = MemoryEstimate::default()
            .floats("activations", &[1 << 28])
            .reserved("scratch", 2 << 30);
        assert_eq!(estimate.total(), 3 << 30);
        // A cgroup counts pages in use: 1 GiB and its slack fit in 1.5 GiB.
        estimate.check(limit(3 << 29), "--x").unwrap();
        let address_space = Limit {
            bytes: 3 << 29,
            source: "the address-space limit RLIMIT_AS (ulimit -v) of 2.0 GiB, 512 MiB already \
                     mapped"
                .into(),
            counts_reserved: true,
        };
        let err = estimate
            .check(Some(address_space), "--x")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "these settings need about 3.3 GiB of memory (scratch 2.0 GiB, activations \
                 1.0 GiB, the allocator's slack (a tenth) 307 MiB), more than the 1.5 GiB \
                 available under the address-space limit"
            ),
            "{err}"
        );
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
