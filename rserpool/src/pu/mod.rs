//! The pool user (PU) side of RSerPool: handle resolution with a cache, choice of a pool
//! element by policy, sessions that fail over with ASAP cookies.
//!
//! * [`selector`]: the cache of Handle Resolution answers, local policy choice, and the memory
//!   of PEs that just failed (sans-I/O).
//! * [`session`]: the failover state machine of one session (sans-I/O).
//! * [`PoolUser`] / [`Session`]: the tokio driver. A `PoolUser` owns one ASAP association to a
//!   registrar (from `--registrar`, else announces) shared by its sessions; each `Session`
//!   connects to PEs over framed-TCP associations.
//!
//! Deliberate differences from rsplib: a PE that times out is reported with Endpoint
//! Unreachable and avoided locally for [`SessionConfig::avoid_failed_for`] (rsplib neither
//! reports nor avoids it, so it hands out the hung PE again); a refusing PE (closed before any
//! frame) is not reported; an empty pool is retried with capped exponential backoff instead of
//! a fixed 250 ms sleep.

mod driver;
mod registrar_client;
pub mod selector;
pub mod session;

#[cfg(test)]
mod session_tests;

pub use driver::{DEFAULT_ANNOUNCE_ADDRESS, PoolUser, PoolUserConfig, Session};
pub use registrar_client::{ALL_ITEMS, Resolution, ResolveError, list_pool_at};
pub use selector::{PeCandidate, PeSelector};
pub use session::{Action, FailureKind, SessionConfig, SessionEvent, SessionState};
