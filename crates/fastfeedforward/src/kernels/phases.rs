//! Where a bucketed call's time goes, for profiling: with the `phase-timing` feature the walk
//! adds each phase's time to counters that [`take`] reads and resets; without it, [`Clock`] is
//! empty and every call below compiles to nothing.
//!
//! `cargo run --release -p fastfeedforward --features phase-timing --example kernel_profile`

/// The parts of a bucketed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Top levels of every input (wall time).
    Top,
    /// Counting sort into buckets (wall time).
    Sort,
    /// All buckets, walk and outputs (wall time).
    Bottom,
    /// The buckets' subtree walks, summed over threads.
    Walk,
    /// The buckets' output writes, summed over threads.
    Output,
}

impl Phase {
    /// Every phase, in call order.
    pub const ALL: [Phase; 5] = [
        Phase::Top,
        Phase::Sort,
        Phase::Bottom,
        Phase::Walk,
        Phase::Output,
    ];
}

#[cfg(feature = "phase-timing")]
mod counters {
    use super::Phase;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    static NANOS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

    pub(super) fn add(phase: Phase, d: Duration) {
        NANOS[phase as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Time spent in each phase since the last call, in [`Phase::ALL`] order; resets the
    /// counters.
    pub fn take() -> [Duration; 5] {
        std::array::from_fn(|i| Duration::from_nanos(NANOS[i].swap(0, Ordering::Relaxed)))
    }
}

#[cfg(feature = "phase-timing")]
pub use counters::take;

/// A started clock for one phase (empty without the `phase-timing` feature).
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    #[cfg(feature = "phase-timing")]
    start: std::time::Instant,
}

impl Clock {
    /// Starts timing.
    #[inline(always)]
    pub(crate) fn start() -> Clock {
        Clock {
            #[cfg(feature = "phase-timing")]
            start: std::time::Instant::now(),
        }
    }

    /// Adds the time since [`Clock::start`] to `phase`.
    #[inline(always)]
    pub(crate) fn add_to(self, phase: Phase) {
        #[cfg(feature = "phase-timing")]
        counters::add(phase, self.start.elapsed());
        #[cfg(not(feature = "phase-timing"))]
        let _ = phase;
    }
}
