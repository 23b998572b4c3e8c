//! The benchmarks' global allocator: mimalloc, asked the way its author recommends.
//!
//! The `mimalloc` crate sends every request through `mi_malloc_aligned`, even a string's
//! alignment of 1, and mimalloc's aligned entry point costs about twice its plain one (measured
//! with callgrind on the reference shape: 39 instructions per allocation of the record's string,
//! against 25 through `mi_malloc`); version 3 also rounds some aligned requests up to a larger
//! block. mimalloc's plain allocations are aligned to 8 bytes, and to 16 from a 16-byte block on
//! (`MI_MAX_ALIGN_SIZE`), so a request whose alignment is at most 16 and at most its size is
//! served by the plain functions, the rule `std`'s own `System` allocator follows for `malloc`;
//! any other request keeps the aligned ones. (An open pull request to the crate,
//! purpleprotocol/mimalloc_rust#170, makes the same change.)

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Alignment every plain mimalloc allocation of at least this many bytes has.
const MAX_PLAIN_ALIGN: usize = 16;

pub struct MiMalloc;

#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MAX_PLAIN_ALIGN && align <= size
}

type Plain = unsafe extern "C" fn(usize) -> *mut c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// A new allocation for `layout`, from mimalloc's plain function when the layout allows.
#[inline]
unsafe fn allocate(layout: Layout, plain_fn: Plain, aligned_fn: Aligned) -> *mut u8 {
    if plain(layout.align(), layout.size()) {
        plain_fn(layout.size()) as *mut u8
    } else {
        aligned_fn(layout.size(), layout.align()) as *mut u8
    }
}

// SAFETY: every function forwards to mimalloc, whose plain and aligned functions return memory
// aligned as `plain` requires (see the module's comment) or null, and free either kind.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h; the crate's
/// `extended` bindings name the options around it but not this one).
const PURGE_DELAY: mi::mi_option_t = 15;

/// mimalloc's default before it returns freed pages to the OS, in milliseconds.
#[cfg(test)]
const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Freed pages go back to the OS at once instead of a second later, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. Beyond the write-back cache, memtables and blocks churn through megabytes a
/// second, and a second's worth of freed pages kept resident was most of what the process held
/// beyond its state budget (peak RSS of 10^7 keys on rocksdb: 173 -> 153-168 MB, throughput
/// unchanged here, the reference shape's too). Call before the job starts.
pub fn purge_freed_pages_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option mimalloc reads on every purge; any value is valid.
        unsafe { mi::mi_option_set(PURGE_DELAY, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number still names the purge delay in the mimalloc this crate builds.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an option.
        let before = unsafe { mi::mi_option_get(PURGE_DELAY) };
        assert_eq!(before, DEFAULT_PURGE_DELAY_MS, "option {PURGE_DELAY} is not the purge delay");
        purge_freed_pages_promptly();
        // SAFETY: reads an option.
        assert_eq!(unsafe { mi::mi_option_get(PURGE_DELAY) }, 0);
    }

    /// Every size and alignment a job's values use comes back aligned, through growth too.
    #[test]
    fn allocations_are_aligned_as_asked() {
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 4, 7, 8, 12, 16, 24, 40, 48, 100, 1000, 5000, 100_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; the memory is written within its size and freed once.
                unsafe {
                    let p = MiMalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(7, size);
                    let grown = MiMalloc.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc size {size} align {align}");
                    assert_eq!(*grown.add(size - 1), 7);
                    MiMalloc.dealloc(grown, Layout::from_size_align(size * 3, align).expect("layout"));
                    let z = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    MiMalloc.dealloc(z, layout);
                }
            }
        }
    }
}
