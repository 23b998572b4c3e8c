//! mimalloc as a job's global allocator, set up for a process whose state has a budget (the
//! `mimalloc` feature). A job binary opts in with one declaration:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: weir::allocator::MiMalloc = weir::allocator::MiMalloc;
//! ```
//!
//! The feature also makes mimalloc the C `malloc` (`override`), so RocksDB's memtables and blocks
//! share one allocator with the job (glibc's underneath RocksDB fragmented 10-20 MB of peak RSS
//! beyond the cache), keeps it from asking for transparent huge pages (`no_thp`: whole 2 MB pages
//! stayed resident, 18 MB more in a process with next to no state), and every [`StreamEnv`]
//! has freed pages returned at once ([`purge_freed_pages_promptly`]). Measured on 10^7 keys on
//! rocksdb beyond the write-back cache: 153-168 MB peak RSS against 204 with glibc's malloc
//! (docs/benchmarks.md, "Peak RSS beyond the cache"; 144-151 MB since RocksDB's own overruns were
//! bounded too).
//!
//! [`StreamEnv`]: crate::StreamEnv
//!
//! Requests go to mimalloc the way its author recommends. The `mimalloc` crate sends every
//! request through `mi_malloc_aligned`, even a string's alignment of 1, and mimalloc's aligned
//! entry point costs about twice its plain one (measured with callgrind on the reference shape:
//! 39 instructions per allocation of the record's string, against 25 through `mi_malloc`);
//! version 3 also rounds some aligned requests up to a larger block. mimalloc's plain allocations
//! are aligned to 8 bytes, and to 16 from a 16-byte block on (`MI_MAX_ALIGN_SIZE`), so a request
//! whose alignment is at most 16 and at most its size is served by the plain functions, the rule
//! `std`'s own `System` allocator follows for `malloc`; any other request keeps the aligned ones.
//! (An open pull request to the crate, purpleprotocol/mimalloc_rust#170, makes the same change.)

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

/// Freed pages go back to the OS at once instead of a second later, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. Beyond the write-back cache, memtables and blocks churn through megabytes a
/// second, and a second's worth of freed pages kept resident was most of what the process held
/// beyond its state budget (peak RSS of 10^7 keys on rocksdb: 173 -> 153-168 MB, throughput
/// unchanged here, the reference shape's too). The price is page faults where memory is freed
/// and soon needed again: with 10^7 keys on the heap a first savepoint took about a fifth longer
/// and a restore 0.24 s instead of 0.19-0.22 s with a 25 ms delay (docs/benchmarks.md, "What
/// returning freed pages at once costs"); a job with memory to spare can set
/// `MIMALLOC_PURGE_DELAY`. Every [`StreamEnv`](crate::StreamEnv) calls it; a program that
/// allocates much before it creates one can call it first.
pub fn purge_freed_pages_promptly() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: sets an option mimalloc reads on every purge; any value is valid.
            unsafe { mi::mi_option_set(PURGE_DELAY, 0) };
        }
    });
}

/// How long mimalloc keeps freed pages before it returns them to the OS, as now set.
pub fn purge_delay() -> std::time::Duration {
    // SAFETY: reads an option.
    let ms = unsafe { mi::mi_option_get(PURGE_DELAY) };
    std::time::Duration::from_millis(ms.max(0) as u64)
}
