//! CalcApp, rsplib's performance-test application (`rspserver -calcapp`, `calcappclient`):
//! the application model of Dreibholz's papers on real processes. A pool user submits jobs of
//! N abstract calculations; a pool element serves them with a fixed capacity shared by its
//! running jobs, and sends cookies so that another PE can resume a job after a failover.
//!
//! * [`message`]: the 24-byte messages (PPID 34) and the 20-byte cookie, as rsplib.
//! * [`service`]: the PE side (processor sharing, accept/reject, cookies, keep-alives).
//! * [`client`]: one job on the PU side (keep-alives, reject, complete, timings).
//! * [`workload`]: job sizes and inter-arrival times, and the paper's request interval.

pub mod client;
pub mod message;
pub mod service;
pub mod workload;

pub use client::{ClientAction, ClientConfig, ClientFailure, JobClient, JobTimes};
pub use message::{
    COOKIE_LEN, CalcAppError, DEFAULT_POOL_HANDLE, JobCookie, MESSAGE_LEN, Message, MessageType,
    PPID_CALCAPP,
};
pub use service::{AbortReason, CalcAppService, JobLeft, ServiceConfig, ServiceOutput, SessionId};
