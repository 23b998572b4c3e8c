//! The `mimalloc` feature's allocator. A test file of its own: its process must not have created
//! a `StreamEnv` (which sets the purge delay) before the first test reads the default.
#![cfg(feature = "mimalloc")]

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use weir::allocator::{purge_delay, purge_freed_pages_promptly, MiMalloc};

/// The option number Weir sets still names the purge delay in the mimalloc this crate builds (a
/// renumbering in a mimalloc upgrade would read another option's default here), and a
/// `StreamEnv` sets it to zero.
#[test]
fn a_stream_env_purges_freed_pages_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    assert_eq!(purge_delay(), Duration::from_millis(1000), "the option Weir sets is not mimalloc's purge delay");
    let _env = weir::StreamEnv::new();
    assert_eq!(purge_delay(), Duration::ZERO);
    purge_freed_pages_promptly();
    assert_eq!(purge_delay(), Duration::ZERO);
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
