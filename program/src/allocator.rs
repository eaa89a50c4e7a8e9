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

/// Gives the heap's free pages back to the system, wherever they lie: a flood of connections
/// leaves its freed buffers scattered through the heap, where trimming its top cannot reach
/// them. Returns whether the allocator could do it.
pub fn return_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the allocator's locks like any allocation.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Decides when a flood is over: once the connections open fell to half of their peak, and
/// by at least [`FloodRecovery::MIN_DROP`], the memory they held is worth returning (once per
/// flood: the peak starts over from there).
#[derive(Clone, Debug, Default)]
pub struct FloodRecovery {
    peak: usize,
}

impl FloodRecovery {
    /// Fewer closed connections than this do not free enough to bother.
    pub const MIN_DROP: usize = 256;

    /// Records how many connections are open now and the most that were since the last call;
    /// true when memory should be returned.
    pub fn observe(&mut self, open: usize, peak: usize) -> bool {
        self.peak = self.peak.max(peak).max(open);
        let over = self.peak - open >= Self::MIN_DROP && open <= self.peak / 2;
        if over {
            self.peak = open;
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::FloodRecovery;

    #[test]
    fn a_flood_is_over_once_half_of_its_connections_and_at_least_256_are_gone() {
        let mut recovery = FloodRecovery::default();
        assert!(!recovery.observe(100, 100));
        assert!(
            !recovery.observe(40, 40),
            "a small drop is not a flood's end"
        );
        assert!(!recovery.observe(4000, 4000));
        assert!(!recovery.observe(2500, 2500), "more than half still open");
        assert!(recovery.observe(1900, 1900));
        assert!(!recovery.observe(1800, 1800), "once per flood");
        assert!(
            !recovery.observe(1000, 1000),
            "800 fewer, but not half of 1900"
        );
        assert!(recovery.observe(900, 900));
        // A flood that came and went between two looks.
        assert!(recovery.observe(3, 600));
    }
}
