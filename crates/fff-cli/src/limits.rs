//! Ceilings on the sizes a command line may ask for, checked by clap before anything is
//! allocated, with the flag and the allowed range in the error.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_their_range_are_refused() {
        assert_eq!(count::<10>("3"), Ok(3));
        assert!(count::<10>("0").unwrap_err().contains("1..=10"));
        assert!(count::<10>("11").is_err());
        assert!(count::<10>("99999999999999999999999").is_err());
        assert!(count::<10>("-1").is_err());
    }
}
