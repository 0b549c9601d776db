//! `fff`: the command-line tool of fastfeedforward; the program is [`fff_cli::run`].

// candle allocates a fresh buffer for every tensor op; glibc's malloc hands large ones back to
// the kernel each time, and the page faults and TLB shootdowns dominate a training step.
// `AlignedAlloc` starts large blocks on 64-byte boundaries, where the kernels' vector loads
// never straddle cache lines.
#[global_allocator]
static GLOBAL: fastfeedforward::AlignedAlloc<mimalloc::MiMalloc> =
    fastfeedforward::AlignedAlloc(mimalloc::MiMalloc);

/// mimalloc's `mi_option_purge_decommits` (its value in the C enum of mimalloc 2 and 3; the
/// bindings name no constant for it).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

fn main() -> anyhow::Result<()> {
    // mimalloc still gives freed memory back after a delay, and by default with MADV_DONTNEED:
    // a training step's tensors, freed and allocated again each step, then cost a page fault
    // and a page zeroing per 4 KiB (a sixth of a joint distillation step). With MADV_FREE the
    // kernel takes the pages back only under memory pressure.
    // SAFETY: sets a plain option before any thread starts; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0) };
    fff_cli::run()
}
