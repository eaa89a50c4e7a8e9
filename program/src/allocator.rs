//! The allocator setting the programs apply at start.

/// Freed memory below this stays with the process instead of going back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RETAINED_FREE_MEMORY: libc::c_int = 32 << 20;
/// Allocations below this come from the heap (whose freed memory is retained), not from
/// their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_MAPPING_FROM: libc::c_int = 4 << 20;

/// Keeps freed memory for reuse. The data path allocates and frees buffers of tens of KiB
/// all the time (frames, batches of Data messages); glibc's default returns such memory to the
/// system as soon as 128 KiB are free at the top of a heap, so the next buffer is written to
/// fresh pages and every picture pays page faults for it. `pool-bench --kills 0` prints the
/// programs' CPU time per picture, where that cost shows. Other platforms keep their
/// allocator's defaults.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only reads its two integers (glibc serialises it with allocations).
        let (trim, mmap) = unsafe {
            (
                libc::mallopt(libc::M_TRIM_THRESHOLD, RETAINED_FREE_MEMORY),
                libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM),
            )
        };
        if trim != 1 || mmap != 1 {
            tracing::debug!("the allocator kept its defaults");
        }
    }
}
