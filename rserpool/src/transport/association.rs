//! Transport-neutral association handles; a connection task (see `tcp.rs`) sits behind them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{Notify, mpsc, watch};

use super::PPID_HEARTBEAT;
use super::frame::{Frame, FrameBatch, FrameError};
use super::heartbeat::HeartbeatError;

/// Why an association ended, as seen by its receiver.
#[derive(Clone, Debug, Error)]
pub enum AssociationError {
    /// The peer closed gracefully (FIN after a complete frame): SCTP SHUTDOWN.
    #[error("association closed by peer")]
    ClosedByPeer,
    /// The peer reset the connection (its abort, or its socket closed with unread data): SCTP ABORT.
    #[error("association reset by peer")]
    Reset,
    /// Nothing was received for the heartbeat timeout; the connection was reset.
    #[error("peer silent for {silent_for:?}: heartbeat timeout")]
    HeartbeatTimeout { silent_for: Duration },
    /// The peer violated the framing; the connection was reset.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// Another I/O error.
    #[error("association I/O error: {0}")]
    Io(Arc<io::Error>),
    /// The graceful close did not complete in time; the connection was reset.
    #[error("graceful close timed out")]
    CloseTimeout,
    /// Closed or aborted locally (or every handle was dropped).
    #[error("association closed locally")]
    Closed,
}

impl AssociationError {
    pub(crate) fn from_io(error: io::Error) -> Self {
        use io::ErrorKind::*;
        if let Some(super::tls::TlsFailure(tls)) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<super::tls::TlsFailure>())
        {
            return ProtocolError::Tls(tls.to_string()).into();
        }
        match error.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => AssociationError::Reset,
            _ => AssociationError::Io(Arc::new(error)),
        }
    }
}

/// Framing violations by the peer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("bad heartbeat: {0}")]
    Heartbeat(#[from] HeartbeatError),
    /// A frame was still incomplete this long after its first byte arrived.
    #[error("frame incomplete after {0:?}")]
    SlowFrame(std::time::Duration),
    /// The TLS handshake or a record failed (for example, no certificate from the pool CA).
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why `send` failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    /// PPID 0 belongs to the transport's heartbeats.
    #[error("PPID 0 is reserved for transport heartbeats")]
    ReservedPpid,
    /// The payload exceeds the association's maximum frame length.
    #[error("payload of {len} bytes exceeds the maximum frame length {max}")]
    TooLarge { len: usize, max: usize },
    /// The association is closing or closed.
    #[error("association closed")]
    Closed,
}

/// Why `try_send` failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TrySendError {
    /// The send queue is full; the frame is handed back.
    #[error("send queue full")]
    Full(Frame),
    /// As for `send`.
    #[error(transparent)]
    Rejected(#[from] SendError),
}

/// What the application hands the connection task.
#[derive(Debug)]
pub(crate) enum Outbound {
    Frame(Frame),
    /// Several frames queued at once (one queue slot), already encoded, sent in order.
    Encoded(Vec<u8>),
    /// Graceful close: everything queued before it is sent first.
    Close,
}

/// State shared between the handles and the connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) local_addr: SocketAddr,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) max_frame_len: usize,
    /// Smoothed RTT in nanoseconds; 0 = not measured yet.
    srtt_nanos: AtomicU64,
    pub(crate) abort_requested: AtomicBool,
    pub(crate) abort: Notify,
    /// What the receiver reports once the delivered frames are exhausted.
    outcome: OnceLock<AssociationError>,
}

impl Shared {
    pub(crate) fn set_srtt(&self, srtt: Duration) {
        let nanos = u64::try_from(srtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.srtt_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Records the receiver's final error; the first call wins.
    pub(crate) fn set_outcome(&self, error: AssociationError) {
        let _ = self.outcome.set(error);
    }

    fn outcome(&self) -> AssociationError {
        self.outcome
            .get()
            .cloned()
            .unwrap_or(AssociationError::Closed)
    }
}

/// Final verdict of the connection task: `Ok` for a completed graceful close (either side's).
pub(crate) type Verdict = Option<Result<(), AssociationError>>;

/// The connection task's ends of the channels.
pub(crate) struct DriverEnds {
    pub(crate) shared: Arc<Shared>,
    pub(crate) outbound: mpsc::Receiver<Outbound>,
    pub(crate) inbound: mpsc::Sender<Frame>,
    pub(crate) verdict: watch::Sender<Verdict>,
}

/// Builds the handles of a new association and the ends its connection task drives.
pub(crate) fn new_association(
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    max_frame_len: usize,
    send_queue: usize,
    receive_queue: usize,
    receive_delay: Duration,
) -> (Association, DriverEnds) {
    let (out_tx, out_rx) = mpsc::channel(send_queue.max(1));
    let (in_tx, mut in_rx) = mpsc::channel(receive_queue.max(1));
    if !receive_delay.is_zero() {
        let (delayed_tx, delayed_rx) = mpsc::channel(receive_queue.max(1));
        tokio::spawn(delay_line(
            in_rx,
            delayed_tx,
            receive_delay,
            receive_queue.max(1),
        ));
        in_rx = delayed_rx;
    }
    let (verdict_tx, verdict_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        local_addr,
        peer_addr,
        max_frame_len,
        srtt_nanos: AtomicU64::new(0),
        abort_requested: AtomicBool::new(false),
        abort: Notify::new(),
        outcome: OnceLock::new(),
    });
    let sender = AssociationSender {
        shared: shared.clone(),
        outbound: out_tx,
        verdict: verdict_rx,
    };
    let receiver = AssociationReceiver {
        shared: shared.clone(),
        inbound: in_rx,
    };
    let ends = DriverEnds {
        shared,
        outbound: out_rx,
        inbound: in_tx,
        verdict: verdict_tx,
    };
    (Association { sender, receiver }, ends)
}

/// Hands each frame on `delay` after it came in, in order; holds at most `capacity` (then the
/// connection stops reading, as when the application is slow). Ends after the last frame once
/// the connection has ended, or at once when the application dropped its receiver.
async fn delay_line(
    mut input: mpsc::Receiver<Frame>,
    output: mpsc::Sender<Frame>,
    delay: Duration,
    capacity: usize,
) {
    let mut line: std::collections::VecDeque<(tokio::time::Instant, Frame)> =
        std::collections::VecDeque::new();
    let mut input_open = true;
    loop {
        let due = line.front().map(|(due, _)| *due);
        if !input_open && due.is_none() {
            return;
        }
        tokio::select! {
            frame = input.recv(), if input_open && line.len() < capacity => match frame {
                Some(frame) => line.push_back((tokio::time::Instant::now() + delay, frame)),
                None => input_open = false,
            },
            permit = async {
                tokio::time::sleep_until(due.expect("guarded")).await;
                output.reserve().await
            }, if due.is_some() => match permit {
                Ok(permit) => {
                    let (_, frame) = line.pop_front().expect("a frame was due");
                    permit.send(frame);
                }
                Err(_) => return,
            },
            () = output.closed() => return,
        }
    }
}

/// One association: a sending and a receiving half. Dropping both halves (and all sender clones)
/// closes the connection gracefully.
#[derive(Debug)]
pub struct Association {
    sender: AssociationSender,
    receiver: AssociationReceiver,
}

impl Association {
    /// Joins halves [`Association::split`] made (they must come from one association).
    pub fn unsplit(sender: AssociationSender, receiver: AssociationReceiver) -> Association {
        Association { sender, receiver }
    }

    /// Separates the halves, e.g. to send from several tasks while one task receives.
    pub fn split(self) -> (AssociationSender, AssociationReceiver) {
        (self.sender, self.receiver)
    }

    /// A sender for this association.
    pub fn sender(&self) -> &AssociationSender {
        &self.sender
    }

    /// See [`AssociationSender::send`].
    pub async fn send(&self, ppid: u32, payload: impl Into<bytes::Bytes>) -> Result<(), SendError> {
        self.sender.send(ppid, payload).await
    }

    /// See [`AssociationSender::try_send`].
    pub fn try_send(
        &self,
        ppid: u32,
        payload: impl Into<bytes::Bytes>,
    ) -> Result<(), TrySendError> {
        self.sender.try_send(ppid, payload)
    }

    /// See [`AssociationReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Frame, AssociationError> {
        self.receiver.recv().await
    }

    /// See [`AssociationReceiver::try_recv`].
    pub fn try_recv(&mut self) -> Result<Option<Frame>, AssociationError> {
        self.receiver.try_recv()
    }

    /// See [`AssociationSender::close`].
    pub async fn close(&self) -> Result<(), AssociationError> {
        self.sender.close().await
    }

    /// See [`AssociationSender::abort`].
    pub fn abort(&self) {
        self.sender.abort()
    }

    /// Local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.sender.local_addr()
    }

    /// Peer address of the connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.sender.peer_addr()
    }

    /// See [`AssociationSender::srtt`].
    pub fn srtt(&self) -> Option<Duration> {
        self.sender.srtt()
    }
}

/// Cloneable sending half.
#[derive(Clone, Debug)]
pub struct AssociationSender {
    shared: Arc<Shared>,
    outbound: mpsc::Sender<Outbound>,
    verdict: watch::Receiver<Verdict>,
}

impl AssociationSender {
    fn check(&self, ppid: u32, len: usize) -> Result<(), SendError> {
        if ppid == PPID_HEARTBEAT {
            return Err(SendError::ReservedPpid);
        }
        self.check_len(len)
    }

    fn check_len(&self, len: usize) -> Result<(), SendError> {
        if len > self.shared.max_frame_len {
            return Err(SendError::TooLarge {
                len,
                max: self.shared.max_frame_len,
            });
        }
        Ok(())
    }

    /// Queues one message, waiting while the send queue is full.
    pub async fn send(&self, ppid: u32, payload: impl Into<bytes::Bytes>) -> Result<(), SendError> {
        let frame = Frame::new(ppid, payload);
        self.check(frame.ppid, frame.payload.len())?;
        self.outbound
            .send(Outbound::Frame(frame))
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Queues several messages in one go (one slot of the send queue), to be sent in order.
    /// Cheaper than one [`AssociationSender::send`] each for a stream of small messages. Fails,
    /// queueing none, if any is refused.
    pub async fn send_batch(&self, batch: FrameBatch) -> Result<(), SendError> {
        if batch.has_heartbeat_ppid() {
            return Err(SendError::ReservedPpid);
        }
        self.check_len(batch.largest_payload())?;
        if batch.is_empty() {
            return Ok(());
        }
        self.outbound
            .send(Outbound::Encoded(batch.into_bytes()))
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Queues one message without waiting (for sans-I/O drivers).
    pub fn try_send(
        &self,
        ppid: u32,
        payload: impl Into<bytes::Bytes>,
    ) -> Result<(), TrySendError> {
        let frame = Frame::new(ppid, payload);
        self.check(frame.ppid, frame.payload.len())?;
        self.outbound
            .try_send(Outbound::Frame(frame))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(Outbound::Frame(frame)) => {
                    TrySendError::Full(frame)
                }
                _ => TrySendError::Rejected(SendError::Closed),
            })
    }

    /// Graceful close: frames queued before are sent, then FIN; waits for the peer's FIN (bounded
    /// by the close timeout). `Ok` when the close completed cleanly; frames queued by other
    /// clones after this call are dropped.
    pub async fn close(&self) -> Result<(), AssociationError> {
        // An error means the task already ended; its verdict follows.
        let _ = self.outbound.send(Outbound::Close).await;
        self.finished().await
    }

    /// Resets the connection now (RST, as SCTP ABORT); queued frames are dropped.
    pub fn abort(&self) {
        self.shared.abort_requested.store(true, Ordering::Release);
        self.shared.abort.notify_one();
    }

    /// Waits until the connection task has ended; `Ok` if it ended by a clean graceful close.
    pub async fn finished(&self) -> Result<(), AssociationError> {
        let mut verdict = self.verdict.clone();
        match verdict.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or(Err(AssociationError::Closed)),
            // The task is gone without a verdict (runtime shut down).
            Err(_) => Err(AssociationError::Closed),
        }
    }

    /// Whether the connection task has ended.
    pub fn is_finished(&self) -> bool {
        self.verdict.borrow().is_some()
    }

    /// Local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Peer address of the connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }

    /// Largest payload `send` accepts.
    pub fn max_frame_len(&self) -> usize {
        self.shared.max_frame_len
    }

    /// Smoothed round-trip time measured by heartbeats, once one was acked.
    pub fn srtt(&self) -> Option<Duration> {
        match self.shared.srtt_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// Receiving half.
#[derive(Debug)]
pub struct AssociationReceiver {
    shared: Arc<Shared>,
    inbound: mpsc::Receiver<Frame>,
}

impl AssociationReceiver {
    /// The next message; after the last one, why the association ended (repeated on every call).
    pub async fn recv(&mut self) -> Result<Frame, AssociationError> {
        match self.inbound.recv().await {
            Some(frame) => Ok(frame),
            None => Err(self.shared.outcome()),
        }
    }

    /// The next message if one is waiting (for sans-I/O drivers).
    pub fn try_recv(&mut self) -> Result<Option<Frame>, AssociationError> {
        match self.inbound.try_recv() {
            Ok(frame) => Ok(Some(frame)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(self.shared.outcome()),
        }
    }

    /// Local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Peer address of the connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr
    }
}
