//! [`AlignedAlloc`]: a global allocator wrapper that aligns large blocks to 64 bytes.
//!
//! The kernels sum in an order fixed by the row length, never by address, so their results do
//! not depend on where weights and inputs live; their speed does. A vector load that straddles
//! two cache lines costs two loads, and the system allocator starts large blocks 16 bytes past
//! a page, so every AVX-512 load of a weight row straddles a line and a dot product against rows
//! in L2 runs near half speed (measure it with
//! `cargo bench -p fastfeedforward --bench kernel -- dot_alignment`).
//! Binaries opt in, wrapping the allocator they already use:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: fastfeedforward::AlignedAlloc = fastfeedforward::AlignedAlloc(std::alloc::System);
//! # fn main() {}
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Wraps a global allocator so that blocks of 1 KiB or more start on a
/// 64-byte boundary (a cache line, and a whole AVX-512 vector).
#[derive(Debug, Default, Clone, Copy)]
pub struct AlignedAlloc<A = System>(pub A);

/// Smallest block that gets 64-byte alignment: rows of weights and batches of inputs are far
/// larger, and small blocks keep the inner allocator's packing.
pub const ALIGNED_MIN_SIZE: usize = 1024;
const ALIGN: usize = 64;

/// The layout the inner allocator sees: a pure function of the caller's layout, so that
/// `dealloc` and `realloc` always pass the inner allocator the layout it allocated with.
fn inner_layout(layout: Layout) -> Layout {
    if layout.size() >= ALIGNED_MIN_SIZE && layout.align() < ALIGN {
        Layout::from_size_align(layout.size(), ALIGN).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every block is allocated and freed by the inner allocator with `inner_layout` of the
// caller's layout, which has the caller's size and at least its alignment.
unsafe impl<A: GlobalAlloc> GlobalAlloc for AlignedAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `inner_layout` keeps the (non-zero) size of the caller's layout.
        unsafe { self.0.alloc(inner_layout(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { self.0.alloc_zeroed(inner_layout(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by the inner allocator with this same inner layout.
        unsafe { self.0.dealloc(ptr, inner_layout(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > isize::MAX as usize - ALIGN {
            // Rounded up to 64 bytes it might not fit `isize`: report failure, as the inner
            // allocator would for a block that large.
            return std::ptr::null_mut();
        }
        let old = inner_layout(layout);
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, fits isize.
        let new =
            inner_layout(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        if old.align() == new.align() {
            // SAFETY: `ptr` is the inner allocator's block of layout `old`.
            return unsafe { self.0.realloc(ptr, old, new_size) };
        }
        // The block crosses the size threshold: move it to a block of the new alignment.
        // SAFETY: `new` has a non-zero size; the copy stays inside both blocks; `ptr` is freed
        // with the layout it was allocated with.
        unsafe {
            let moved = self.0.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.0.dealloc(ptr, old);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_aligned_and_survive_realloc_across_the_threshold() {
        let a = AlignedAlloc(System);
        let aligned =
            |p: *mut u8, size: usize| size < ALIGNED_MIN_SIZE || (p as usize).is_multiple_of(ALIGN);
        for size in [
            1usize,
            100,
            ALIGNED_MIN_SIZE - 1,
            ALIGNED_MIN_SIZE,
            5000,
            3 << 20,
        ] {
            let layout = Layout::from_size_align(size, 4).unwrap();
            for new_size in [size / 2 + 1, size * 3] {
                // SAFETY: non-zero sizes; writes and reads stay inside the blocks; each block
                // is freed once, with the layout it has at that point.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && aligned(p, size), "alloc {size}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let q = a.realloc(p, layout, new_size);
                    assert!(!q.is_null() && aligned(q, new_size), "{size} -> {new_size}");
                    for i in 0..size.min(new_size) {
                        assert_eq!(*q.add(i), i as u8, "{size} -> {new_size} at {i}");
                    }
                    a.dealloc(q, Layout::from_size_align(new_size, 4).unwrap());
                }
            }
            // SAFETY: as above.
            unsafe {
                let z = a.alloc_zeroed(layout);
                assert!(!z.is_null() && aligned(z, size));
                assert!((0..size).all(|i| *z.add(i) == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
