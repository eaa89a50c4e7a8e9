//! The one timer the tokio drivers share: sleep until a state machine's next timeout.
//!
//! Every sans-I/O machine says when it next wants `handle_timeout` with `poll_timeout()`
//! (`None`: no timer armed); the drivers wait on this in their `select!` beside their I/O.

use std::time::Instant;

/// Sleeps until `deadline`, or for ever when there is none (so a `select!` arm never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
