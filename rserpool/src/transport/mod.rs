//! Association transport: RSerPool associations over framed TCP, and UDP announce sockets.
//!
//! # Why framed TCP
//!
//! RSerPool is specified over SCTP, whose messages carry a payload protocol identifier (PPID)
//! so that one association multiplexes several protocols: a pool user's association to a pool
//! element carries application data (FGP, PPID 32) and ASAP control (cookies, PPID 11). Kernel
//! SCTP is not available everywhere, so an association here is one TCP connection carrying
//! frames
//!
//! ```text
//! PPID u32 big-endian | Length u32 big-endian | payload[Length]
//! ```
//!
//! PPIDs: [`PPID_ASAP`] 11, [`PPID_ENRP`] 12, [`PPID_FGP`] 32, and [`PPID_HEARTBEAT`] 0, which is
//! reserved for the transport's own heartbeats (see [`heartbeat`] for their format). Frames above
//! [`AssociationConfig::max_frame_len`] (default [`frame::DEFAULT_MAX_FRAME_LEN`], 256 KiB) are a
//! protocol violation and abort the connection.
//!
//! # Heartbeats
//!
//! TCP considers a SIGSTOPped peer alive (its kernel still ACKs), SCTP heartbeats do not. Each
//! side sends a heartbeat request after [`HeartbeatConfig::interval`] without sending anything
//! (and, while busy, every [`heartbeat::RTT_PROBE_INTERVALS`] intervals to keep the RTT fresh),
//! answers requests with acks, and declares the association dead
//! ([`AssociationError::HeartbeatTimeout`], followed by a TCP RST) after
//! [`HeartbeatConfig::timeout`] without receiving anything. Acks give the smoothed RTT
//! ([`AssociationSender::srtt`]); the registrar uses SRTT/2 as "distance" for the DPF policies.
//!
//! # Using an association
//!
//! [`TcpFramed::connect`] / [`TcpFramed::bind`] + [`Listener::accept`] give an [`Association`]:
//! a background task owns the connection; the application holds a cloneable
//! [`AssociationSender`] (bounded queue: `send().await` waits when it is full, `try_send` does
//! not) and an [`AssociationReceiver`]. [`AssociationSender::close`] flushes the queue, sends FIN
//! and waits for the peer's FIN (SCTP SHUTDOWN); [`AssociationSender::abort`] sends RST (SCTP
//! ABORT). The receiver tells the peer's graceful close ([`AssociationError::ClosedByPeer`]) from
//! its abort ([`AssociationError::Reset`]). A peer *process* that dies has its kernel close the
//! socket, which looks like a graceful close (or a reset if it had unread data): treat both as
//! failure of the peer where a session expected more.
//!
//! # Adding kernel SCTP later
//!
//! Callers depend only on the [`Transport`] / [`Listener`] traits and on the transport-neutral
//! [`Association`] handles, which talk to their connection task through channels. An SCTP
//! implementation (one-to-one style socket, `SOCK_STREAM` + `IPPROTO_SCTP`) would be a second
//! `Transport` whose task moves whole messages between the socket and the same channels, taking
//! the PPID from `sctp_sndrcvinfo` instead of a frame header, leaving heartbeats, RTT (SCTP's
//! own `SCTP_STATUS` SRTT) and graceful shutdown/abort to the kernel. Nothing above this module
//! changes; a role picks the transport by type parameter or at start-up.
//!
//! # Announces
//!
//! [`announce`] has the UDP sockets for ASAP Server Announces and ENRP Presences, multicast by
//! default as in rsplib.

pub mod announce;
mod association;
pub mod frame;
pub mod heartbeat;
#[cfg(feature = "pki")]
pub mod pki;
mod tcp;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use association::{
    Association, AssociationError, AssociationReceiver, AssociationSender, ProtocolError,
    SendError, TrySendError,
};
pub use frame::{Frame, FrameBatch, FrameDecoder, FrameError, FrameMark};
pub use heartbeat::HeartbeatConfig;
pub use tcp::{TcpFramed, TcpFramedListener};
pub use tls::{TlsConfig, TlsFiles};

/// PPID reserved for transport heartbeats; never delivered to, nor accepted from, applications.
pub const PPID_HEARTBEAT: u32 = 0;
pub use crate::wire::{PPID_ASAP, PPID_ENRP};
/// PPID of the Fractal Generator Protocol (rsplib).
pub const PPID_FGP: u32 = 32;

pub use crate::wire::{ASAP_PORT, ENRP_PORT};

/// Settings of one association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssociationConfig {
    /// Largest payload accepted and sent; at least [`frame::MIN_MAX_FRAME_LEN`] (smaller values
    /// are raised to it).
    pub max_frame_len: usize,
    /// Heartbeat timing; `None` disables heartbeats (the peer's may still arrive and are acked).
    pub heartbeat: Option<HeartbeatConfig>,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Bound on a graceful close (flush + FIN exchange) before the connection is reset.
    pub close_timeout: Duration,
    /// Frames the application may queue for sending before `send` waits.
    pub send_queue: usize,
    /// Received frames buffered for the application before the connection stops reading.
    pub receive_queue: usize,
    /// Longest time a frame may take to arrive once its first byte did: a peer that feeds a
    /// frame a byte at a time (keeping the connection and its buffer alive) is reset.
    pub frame_assembly_timeout: Duration,
    /// TLS under the frames (RFC 5355), both ends authenticated by the pool CA; `None`: plain
    /// TCP. A listener's configuration must be a server one, a connecting side's a client one.
    pub tls: Option<TlsConfig>,
    /// Every received message reaches the application this long after it arrived: emulated
    /// network delay for experiments (there is no netem here), one way, zero (off) by default.
    /// Transport heartbeats are not delayed.
    pub receive_delay: Duration,
}

impl Default for AssociationConfig {
    fn default() -> Self {
        AssociationConfig {
            max_frame_len: frame::DEFAULT_MAX_FRAME_LEN,
            heartbeat: Some(HeartbeatConfig::default()),
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            send_queue: 64,
            receive_queue: 64,
            frame_assembly_timeout: Duration::from_secs(10),
            tls: None,
            receive_delay: Duration::ZERO,
        }
    }
}

impl AssociationConfig {
    /// `max_frame_len` as enforced.
    pub fn effective_max_frame_len(&self) -> usize {
        self.max_frame_len.max(frame::MIN_MAX_FRAME_LEN)
    }
}

/// A way to establish associations. [`TcpFramed`] is the only implementation today; see the
/// module docs for how kernel SCTP would fit.
pub trait Transport: Clone + Send + Sync + 'static {
    /// Accepts incoming associations.
    type Listener: Listener;

    /// Opens an association to `addr` within the configured connect timeout.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Association>> + Send;

    /// Listens on `addr` (port 0 picks a free port).
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
}

/// A listening endpoint of some [`Transport`].
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next incoming association.
    fn accept(&self) -> impl Future<Output = io::Result<Association>> + Send;

    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Opens a framed-TCP association to `addr` with `config`.
pub async fn connect(addr: SocketAddr, config: AssociationConfig) -> io::Result<Association> {
    TcpFramed::new(config).connect(addr).await
}

/// Opens a framed-TCP association to `addr` from the local address `local`.
pub async fn connect_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    config: AssociationConfig,
) -> io::Result<Association> {
    TcpFramed::new(config).connect_from(local, addr).await
}

/// Listens for framed-TCP associations on `addr`; accepted associations use `config`.
pub async fn bind(addr: SocketAddr, config: AssociationConfig) -> io::Result<TcpFramedListener> {
    TcpFramed::new(config).bind(addr).await
}
