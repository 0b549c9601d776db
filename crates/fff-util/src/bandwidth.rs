//! Memory rates of this machine for a working set of a given size, so that a benchmark can say
//! how long a call that must move N bytes takes at the least: a portable, built-in version of
//! `tools/bandwidth.c`.
//!
//! A set that fits a cache is measured in that cache and a larger one in DRAM, because every
//! pass rereads (or rewrites) the same buffer; the caller picks the size its call touches.

use std::hint::black_box;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use crate::timing::median;

/// Measured read and write rates, and the working set and thread count they hold for.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Bytes per second all threads together read, rereading their parts again and again.
    pub read_bytes_per_s: f64,
    /// Bytes per second all threads together write: the faster of plain and streaming stores.
    pub write_bytes_per_s: f64,
    /// Bytes actually measured: the request rounded up to whole cache lines per thread.
    pub working_set: usize,
    /// Threads the working set was split over.
    pub threads: usize,
}

impl Rates {
    /// One line for a benchmark's header, so that its floors can be checked by eye.
    pub fn describe(&self) -> String {
        let ws = self.working_set as f64;
        let size = if ws < (1 << 20) as f64 {
            format!("{:.1} KiB", ws / (1 << 10) as f64)
        } else if ws < (1 << 30) as f64 {
            format!("{:.1} MiB", ws / (1 << 20) as f64)
        } else {
            format!("{:.1} GiB", ws / (1 << 30) as f64)
        };
        format!(
            "read {:.1} GB/s, write {:.1} GB/s (working set {size}, {} thread{})",
            self.read_bytes_per_s / 1e9,
            self.write_bytes_per_s / 1e9,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

/// The two times add, as reads and writes share DRAM's bus; in a cache they may overlap.
pub fn floor_seconds(read_bytes: f64, write_bytes: f64, rates: &Rates) -> f64 {
    read_bytes / rates.read_bytes_per_s + write_bytes / rates.write_bytes_per_s
}

/// The size measured for a working set of 0: big enough that loop overheads do not dominate.
const MIN_WORKING_SET: usize = 64 << 10;
/// Seconds a pass (every thread over its part, `reps` times) aims at: long against starting
/// and joining the threads.
const PASS_S: f64 = 1e-3;
/// Seconds of passes in one timed round: five rounds of each of the three kinds of pass stay
/// near 100 ms.
const ROUND_S: f64 = 5e-3;

/// A cache line, so that each thread's part is whole lines (no two threads share one) and
/// aligned for 64-byte loads and 16-byte streaming stores.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u64; 8]);
const LINE: usize = std::mem::size_of::<Line>();

const READ: usize = 0;
const WRITE: usize = 1;
const STREAM: usize = 2;
const STOP: usize = 3;

/// How the calling thread starts passes on the other threads and learns they are done.
struct Shared {
    /// Every part allocated and filled: a long wait, so one that sleeps.
    filled: Barrier,
    /// Passes started so far; a worker runs the next once this moves past the last it ran.
    started: AtomicUsize,
    /// Passes the workers have finished, all of them together.
    finished: AtomicUsize,
    /// The pass to run and its repetitions, stored before `started` moves.
    op: AtomicUsize,
    reps: AtomicUsize,
    /// Threads besides the calling one.
    workers: usize,
}

impl Shared {
    /// Seconds for every thread to run `op` `reps` times over its part. The clock starts
    /// before the others are released and stops after the last is done, so a late start can
    /// only lengthen the time, never hide work from it; and the calling thread works part 0
    /// itself, so that `threads` threads on as many cores are not crowded by a waiting one.
    fn pass(&self, part: &mut [Line], op: usize, reps: usize) -> f64 {
        self.op.store(op, Relaxed);
        self.reps.store(reps, Relaxed);
        let start = Instant::now();
        let n = self.started.fetch_add(1, Release) + 1;
        run(part, op, reps);
        wait_until(|| self.finished.load(Acquire) >= n * self.workers);
        start.elapsed().as_secs_f64().max(1e-9)
    }

    /// Median rate of `op` in bytes per second over rounds of whole passes; the calibration
    /// passes before them also bring the working set into whatever level of memory it fits.
    fn rate(&self, part: &mut [Line], op: usize, pass_bytes: f64) -> f64 {
        let mut reps = 1usize;
        let mut t = self.pass(part, op, reps);
        while t < PASS_S {
            let grow = (2.0 * PASS_S / t).ceil().clamp(2.0, 1000.0) as usize;
            reps = reps.saturating_mul(grow);
            t = self.pass(part, op, reps);
        }
        // A single pass over a large DRAM set is already long and steady; fewer rounds keep
        // the whole measurement from taking seconds.
        let rounds = if reps > 1 || t <= 10e-3 {
            5
        } else if t <= 25e-3 {
            3
        } else {
            1
        };
        let rates = (0..rounds).map(|_| {
            let start = Instant::now();
            let mut bytes = 0.0;
            loop {
                let t = self.pass(part, op, reps);
                bytes += pass_bytes * reps as f64;
                // One noisy calibration pass (a neighbour, a preemption) must not leave the
                // passes so short that starting them counts, nor so long that a round drags.
                if t < PASS_S / 2.0 {
                    reps = reps.saturating_mul(2);
                } else if t > 8.0 * PASS_S && reps > 1 {
                    reps /= 2;
                }
                let s = start.elapsed().as_secs_f64();
                if s >= ROUND_S {
                    break bytes / s;
                }
            }
        });
        median(rates.collect())
    }
}

/// Takes ~100 ms; the set is reread, so one that fits a cache is timed there. 0 means 64 KiB.
pub fn measure(working_set: usize, threads: usize) -> Rates {
    let threads = threads.max(1);
    let bytes = if working_set == 0 {
        MIN_WORKING_SET
    } else {
        working_set
    };
    let lines = bytes.div_ceil(LINE * threads).max(1);
    let pass_bytes = (lines * threads * LINE) as f64;
    let shared = Shared {
        filled: Barrier::new(threads),
        started: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        op: AtomicUsize::new(STOP),
        reps: AtomicUsize::new(0),
        workers: threads - 1,
    };
    thread::scope(|s| {
        for id in 1..threads {
            let shared = &shared;
            s.spawn(move || worker(shared, lines, id as u64 + 1));
        }
        let mut part = fill(lines, 1);
        shared.filled.wait();
        let read = shared.rate(&mut part, READ, pass_bytes);
        let plain = shared.rate(&mut part, WRITE, pass_bytes);
        // Streaming stores skip the read-for-ownership a plain store to DRAM costs, but are
        // slower than plain ones into a cache; a floor wants the faster.
        let write = if STREAMING_STORES {
            plain.max(shared.rate(&mut part, STREAM, pass_bytes))
        } else {
            plain
        };
        shared.op.store(STOP, Relaxed);
        shared.started.fetch_add(1, Release);
        Rates {
            read_bytes_per_s: read,
            write_bytes_per_s: write,
            working_set: lines * threads * LINE,
            threads,
        }
    })
}

/// A thread's part of the working set, allocated and filled by that thread so that the first
/// touch puts its pages near it on a NUMA host; non-zero, so that no page stays the kernel's
/// shared zero page.
fn fill(lines: usize, seed: u64) -> Vec<Line> {
    vec![Line([seed; 8]); lines]
}

/// The passes the calling thread asks for, over one other thread's part.
fn worker(shared: &Shared, lines: usize, seed: u64) {
    let mut part = fill(lines, seed);
    shared.filled.wait();
    let mut seen = 0;
    loop {
        wait_until(|| shared.started.load(Acquire) > seen);
        seen += 1;
        let op = shared.op.load(Relaxed);
        if op == STOP {
            return;
        }
        run(&mut part, op, shared.reps.load(Relaxed));
        shared.finished.fetch_add(1, Release);
    }
}

/// Spins, yielding the core on each try: waking a sleeping thread costs tens to hundreds of
/// microseconds under a hypervisor, a large share of a 1 ms pass, while the yield still lets
/// more threads than cores take turns.
fn wait_until(ready: impl Fn() -> bool) {
    while !ready() {
        std::hint::spin_loop();
        thread::yield_now();
    }
}

/// One thread's share of a pass.
fn run(part: &mut [Line], op: usize, reps: usize) {
    match op {
        READ => {
            black_box(read_pass(part, reps));
        }
        WRITE => write_pass(part, reps),
        _ => stream_pass(part, reps),
    }
}

/// Sums `lines` `reps` times. The compiler sees a fresh slice each time (`black_box`), so the
/// passes are not merged, and two lines' worth of accumulators keep the loop on the loads
/// rather than on the adds' latency.
#[inline(always)]
fn read_lines(lines: &[Line], reps: usize) -> u64 {
    let mut total = 0u64;
    for _ in 0..reps {
        let lines = black_box(lines);
        let mut acc = [[0u64; 8]; 2];
        let mut pairs = lines.chunks_exact(2);
        for pair in &mut pairs {
            for (a, line) in acc.iter_mut().zip(pair) {
                for (x, y) in a.iter_mut().zip(&line.0) {
                    *x = x.wrapping_add(*y);
                }
            }
        }
        for line in pairs.remainder() {
            for (x, y) in acc[0].iter_mut().zip(&line.0) {
                *x = x.wrapping_add(*y);
            }
        }
        let sum = acc.iter().flatten().fold(0u64, |s, x| s.wrapping_add(*x));
        total = total.wrapping_add(black_box(sum));
    }
    total
}

/// Plain stores of a constant over `lines`, `reps` times; `black_box` after each pass makes
/// every pass's stores observable, so none is dropped as overwritten.
#[inline(always)]
fn write_lines(lines: &mut [Line], reps: usize) {
    // Not one repeated byte, which the compiler would turn into a memset call, and memset
    // may switch to streaming stores for large sets on its own.
    let value = Line([0x3ff0_0000_0000_0000; 8]);
    for _ in 0..reps {
        for line in lines.iter_mut() {
            *line = value;
        }
        black_box(&mut *lines);
    }
}

/// The read pass in AVX-512 by hand: with the generic CPU model LLVM turns [`read_lines`] into
/// gathers there, and 32-byte loads fetch only about half of what this machine's L2 delivers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn read_avx512(lines: &[Line], reps: usize) -> u64 {
    use std::arch::x86_64::{__m512i, _mm512_add_epi64, _mm512_reduce_add_epi64};
    use std::arch::x86_64::{_mm512_load_si512, _mm512_setzero_si512};
    let load = |line: &Line| {
        // SAFETY: a `Line` is 64 bytes, 64-byte aligned and borrowed, so the load is in
        // bounds and aligned as `_mm512_load_si512` requires.
        unsafe { _mm512_load_si512((line as *const Line).cast::<__m512i>()) }
    };
    let mut total = 0u64;
    for _ in 0..reps {
        let lines = black_box(lines);
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut quads = lines.chunks_exact(4);
        for quad in &mut quads {
            for (a, line) in acc.iter_mut().zip(quad) {
                *a = _mm512_add_epi64(*a, load(line));
            }
        }
        for line in quads.remainder() {
            acc[0] = _mm512_add_epi64(acc[0], load(line));
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, a| _mm512_add_epi64(s, *a));
        total = total.wrapping_add(black_box(_mm512_reduce_add_epi64(sum)) as u64);
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn read_avx2(lines: &[Line], reps: usize) -> u64 {
    read_lines(lines, reps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn write_avx512(lines: &mut [Line], reps: usize) {
    write_lines(lines, reps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn write_avx2(lines: &mut [Line], reps: usize) {
    write_lines(lines, reps)
}

/// The read pass in the widest vectors the CPU has, as the kernels being bounded use them:
/// narrower loads fall short of what a cache delivers, and the floor would be too high.
fn read_pass(lines: &[Line], reps: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has just been found to support AVX-512F.
            return unsafe { read_avx512(lines, reps) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just been found to support AVX2.
            return unsafe { read_avx2(lines, reps) };
        }
    }
    read_lines(lines, reps)
}

/// The plain-store pass in the widest vectors the CPU has, for the same reason.
fn write_pass(lines: &mut [Line], reps: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has just been found to support AVX-512F.
            return unsafe { write_avx512(lines, reps) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just been found to support AVX2.
            return unsafe { write_avx2(lines, reps) };
        }
    }
    write_lines(lines, reps)
}

/// Whether [`stream_pass`] has streaming stores to measure on this target.
const STREAMING_STORES: bool = cfg!(target_arch = "x86_64");

/// Streaming (non-temporal) stores over `lines`, `reps` times.
#[cfg(target_arch = "x86_64")]
fn stream_pass(lines: &mut [Line], reps: usize) {
    // SAFETY: SSE2 is part of every x86-64 CPU, so no detection is needed.
    unsafe { stream_sse2(lines, reps) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn stream_sse2(lines: &mut [Line], reps: usize) {
    use std::arch::x86_64::{__m128i, _mm_set1_epi64x, _mm_sfence, _mm_stream_si128};
    let value = _mm_set1_epi64x(0x3ff0_0000_0000_0000);
    for _ in 0..reps {
        for line in lines.iter_mut() {
            let p = (line as *mut Line).cast::<__m128i>();
            // SAFETY: the four 16-byte stores cover exactly this line, which is borrowed
            // mutably and 64-byte aligned, so each is in bounds and aligned as required.
            unsafe {
                for k in 0..LINE / 16 {
                    _mm_stream_si128(p.add(k), value);
                }
            }
        }
        // Streaming stores are weakly ordered: the fence makes them land before the pass
        // counts as done.
        _mm_sfence();
        black_box(&mut *lines);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn stream_pass(lines: &mut [Line], reps: usize) {
    write_pass(lines, reps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_finite_and_positive() {
        for ws in [0, 1 << 10, 1 << 20, 64 << 20] {
            for threads in [1, 2] {
                let r = measure(ws, threads);
                assert!(
                    r.read_bytes_per_s.is_finite() && r.read_bytes_per_s > 0.0,
                    "{r:?}"
                );
                assert!(
                    r.write_bytes_per_s.is_finite() && r.write_bytes_per_s > 0.0,
                    "{r:?}"
                );
                assert!(r.working_set >= ws.max(1), "{r:?}");
                assert_eq!(r.threads, threads);
            }
        }
        assert_eq!(measure(1 << 10, 0).threads, 1);
    }

    #[test]
    fn floors_add_up() {
        let r = Rates {
            read_bytes_per_s: 2e9,
            write_bytes_per_s: 1e9,
            working_set: 24 << 20,
            threads: 2,
        };
        assert_eq!(floor_seconds(0.0, 0.0, &r), 0.0);
        assert_eq!(floor_seconds(4e9, 0.0, &r), 2.0);
        assert_eq!(floor_seconds(0.0, 3e9, &r), 3.0);
        assert_eq!(floor_seconds(4e9, 3e9, &r), 5.0);
        assert_eq!(
            r.describe(),
            "read 2.0 GB/s, write 1.0 GB/s (working set 24.0 MiB, 2 threads)"
        );
    }

    /// A read loop optimised away would take no longer for a thousand times the bytes.
    #[test]
    fn larger_sets_take_longer_per_pass() {
        let per_pass = |ws: usize| {
            let r = measure(ws, 1);
            r.working_set as f64 / r.read_bytes_per_s
        };
        let small = per_pass(64 << 10);
        let large = per_pass(64 << 20);
        assert!(
            large > small,
            "64 MiB: {large} s, 64 KiB: {small} s per pass"
        );
    }
}
