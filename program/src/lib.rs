//! The start of every program of the workspace (`registrar`, `pool-element`, `pool-user`, the
//! benches): one logging set-up and one allocator setting, and the TLS options the pool's
//! programs share. Process-wide choices like these belong to programs, not to the `rserpool`
//! library, whose users make their own.

pub mod allocator;
pub mod logging;
pub mod tls;

/// Logging to stderr and the allocator setting, as every program starts.
pub fn init() {
    logging::init();
    allocator::retain_freed_memory();
}
