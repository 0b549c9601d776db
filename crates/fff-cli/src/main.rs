//! `fff`: the command-line tool of fastfeedforward; the program is [`fff_cli::run`].

// candle allocates a fresh buffer for every tensor op; glibc's malloc hands large ones back to
// the kernel each time, and the page faults and TLB shootdowns dominate a training step.
// `AlignedAlloc` starts large blocks on 64-byte boundaries, where the kernels' vector loads
// never straddle cache lines.
#[global_allocator]
static GLOBAL: fastfeedforward::AlignedAlloc<mimalloc::MiMalloc> =
    fastfeedforward::AlignedAlloc(mimalloc::MiMalloc);

fn main() -> anyhow::Result<()> {
    fff_cli::run()
}
