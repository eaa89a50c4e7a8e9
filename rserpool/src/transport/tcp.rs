//! Framed TCP: the [`Transport`] implementation and the task that drives one connection.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use super::association::{
    Association, AssociationError, DriverEnds, Outbound, ProtocolError, Shared, Verdict,
    new_association,
};
use super::frame::{Frame, FrameDecoder, encode_frame};
use super::heartbeat::{HeartbeatEvent, HeartbeatMessage, HeartbeatTimer};
use super::tls::{TlsFailure, TlsSession};
use super::{AssociationConfig, Listener, PPID_HEARTBEAT, Transport};
use crate::timer::sleep_until;

/// Room the read buffer offers the socket at first; received frames are split off it without
/// copying, so it is allocated afresh (or reused in place once they are all dropped).
const MIN_READ_CHUNK: usize = 16 * 1024;
/// Most room offered to one read: a read that fills its room doubles the next one up to this,
/// so that a stream of Data is taken in few reads (and wake-ups) while a control association
/// keeps a small buffer.
const MAX_READ_CHUNK: usize = 256 * 1024;
/// Queued frames are batched into one write up to this size (a larger frame goes alone).
const WRITE_BATCH: usize = 256 * 1024;

/// Associations as framed TCP connections (see the module docs of [`super`]).
#[derive(Clone, Debug, Default)]
pub struct TcpFramed {
    config: AssociationConfig,
}

impl TcpFramed {
    /// A transport whose associations use `config`.
    pub fn new(config: AssociationConfig) -> Self {
        TcpFramed { config }
    }

    /// The association settings.
    pub fn config(&self) -> &AssociationConfig {
        &self.config
    }
}

impl TcpFramed {
    /// Opens an association to `addr` from the local address `local` (port chosen by the
    /// system): on a host with several addresses, which one the peer sees.
    pub async fn connect_from(&self, local: IpAddr, addr: SocketAddr) -> io::Result<Association> {
        let socket = match local {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let config = &self.config;
        let stream = tokio::time::timeout(config.connect_timeout, async {
            let tcp = socket.connect(addr).await?;
            Stream::connect(tcp, config, addr).await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        spawn_association(stream, config)
    }
}

impl Transport for TcpFramed {
    type Listener = TcpFramedListener;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Association>> + Send {
        let config = self.config.clone();
        async move {
            let stream = tokio::time::timeout(config.connect_timeout, async {
                let tcp = TcpStream::connect(addr).await?;
                Stream::connect(tcp, &config, addr).await
            })
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {addr} timed out after {:?}",
                        config.connect_timeout
                    ),
                )
            })??;
            spawn_association(stream, &config)
        }
    }

    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpFramedListener>> + Send {
        let config = self.config.clone();
        async move {
            let listener = TcpListener::bind(addr).await?;
            Ok(TcpFramedListener { listener, config })
        }
    }
}

/// A TCP listener producing framed associations.
#[derive(Debug)]
pub struct TcpFramedListener {
    listener: TcpListener,
    config: AssociationConfig,
}

impl Listener for TcpFramedListener {
    async fn accept(&self) -> io::Result<Association> {
        let (tcp, _) = self.listener.accept().await?;
        match self.config.tls.clone() {
            None => spawn_association(Stream::plain(tcp)?, &self.config),
            Some(tls) => spawn_tls_acceptance(tcp, tls, &self.config),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Wraps an established connection into an association driven by a background task.
fn spawn_association(stream: Stream, config: &AssociationConfig) -> io::Result<Association> {
    let (association, ends) = association_for(&stream.tcp, config)?;
    let connection = Connection::new(stream, config, ends);
    tokio::spawn(connection.run());
    Ok(association)
}

fn association_for(
    tcp: &TcpStream,
    config: &AssociationConfig,
) -> io::Result<(Association, DriverEnds)> {
    tcp.set_nodelay(true)?;
    Ok(new_association(
        tcp.local_addr()?,
        tcp.peer_addr()?,
        config.effective_max_frame_len(),
        config.send_queue,
        config.receive_queue,
        config.receive_delay,
    ))
}

/// An accepted connection whose TLS handshake runs in the association's own task (bounded by
/// the connect timeout), so that a peer stalling its handshake delays no other acceptance. A
/// failed handshake ends the association before any frame: its receiver reports why.
fn spawn_tls_acceptance(
    tcp: TcpStream,
    tls: super::TlsConfig,
    config: &AssociationConfig,
) -> io::Result<Association> {
    let (association, ends) = association_for(&tcp, config)?;
    let config = config.clone();
    tokio::spawn(async move {
        let peer = ends.shared.peer_addr;
        let handshake = tokio::time::timeout(
            config.connect_timeout,
            TlsSession::handshake(&tcp, &tls, peer),
        )
        .await;
        let error = match handshake {
            Ok(Ok(session)) => {
                let stream = Stream {
                    tcp,
                    tls: Some(Box::new(session)),
                };
                return Connection::new(stream, &config, ends).run().await;
            }
            Ok(Err(error)) => AssociationError::from_io(error),
            Err(_) => ProtocolError::Tls("handshake timed out".into()).into(),
        };
        tracing::info!(%peer, %error, "TLS handshake refused");
        // A FIN, not a reset: the alert just sent must reach the peer.
        ends.shared.set_outcome(error.clone());
        drop(ends.inbound);
        drop(tcp);
        ends.verdict.send_replace(Some(Err(error)));
    });
    Ok(association)
}

/// The connection's byte stream: the socket itself, or a TLS session over it.
struct Stream {
    tcp: TcpStream,
    tls: Option<Box<TlsSession>>,
}

impl Stream {
    fn plain(tcp: TcpStream) -> io::Result<Stream> {
        Ok(Stream { tcp, tls: None })
    }

    /// The connecting side: with TLS configured, the handshake completes before the
    /// association exists, so a server certificate we refuse fails the connect. (The server's
    /// refusal of ours arrives, in TLS 1.3, only after: the association then ends with
    /// `ProtocolError::Tls` at its first read.)
    async fn connect(
        tcp: TcpStream,
        config: &AssociationConfig,
        peer: SocketAddr,
    ) -> io::Result<Stream> {
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let session = TlsSession::handshake(&tcp, tls, peer)
                    .await
                    .map_err(|error| {
                        io::Error::new(error.kind(), format!("TLS with {peer}: {error}"))
                    })?;
                Some(Box::new(session))
            }
        };
        Ok(Stream { tcp, tls })
    }

    async fn readable(&self) -> io::Result<()> {
        match &self.tls {
            Some(tls) if tls.input_ready() => Ok(()),
            _ => self.tcp.readable().await,
        }
    }

    async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Bytes below the application's (TLS records) wait for the socket.
    fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.flush(&self.tcp),
            None => Ok(()),
        }
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.try_read_buf(&self.tcp, buf),
            None => self.tcp.try_read_buf(buf),
        }
    }

    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.try_write(&self.tcp, data),
            None => self.tcp.try_write(data),
        }
    }

    /// Queues TLS's close_notify (once); true if it was still to be sent, so that the caller
    /// waits until it is written before the FIN.
    fn queue_close_notify(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            Some(tls) if tls.close_notify_pending() => {
                tls.close_notify(&self.tcp)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Our FIN (after TLS's close_notify is written: see `queue_close_notify`).
    fn shutdown_write(&mut self) -> io::Result<()> {
        SockRef::from(&self.tcp).shutdown(Shutdown::Write)
    }

    /// Makes closing the socket send RST (SO_LINGER 0), as SCTP ABORT.
    fn arm_reset(&self) -> io::Result<()> {
        SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO))
    }
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// Local close: flushing what was queued before the close, then FIN.
    Flushing {
        deadline: Instant,
    },
    /// Our FIN is sent; reading until the peer's FIN.
    FinSent {
        deadline: Instant,
    },
    /// The peer's FIN arrived: flushing everything queued, then FIN.
    PeerClosed {
        deadline: Instant,
    },
}

impl Phase {
    fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Open => None,
            Phase::Flushing { deadline }
            | Phase::FinSent { deadline }
            | Phase::PeerClosed { deadline } => Some(deadline),
        }
    }

    /// Whether heartbeats still run (both directions usable).
    fn heartbeats_active(self) -> bool {
        matches!(self, Phase::Open | Phase::Flushing { .. })
    }
}

/// What woke the connection task.
enum Event {
    Abort,
    Writable(io::Result<()>),
    Readable(io::Result<()>),
    Outbound(Option<Outbound>),
    /// Handled in place, or a timer: re-evaluate.
    Progress,
}

/// How the task ends.
enum Ending {
    /// Graceful close completed.
    Clean,
    /// Reset the connection (SO_LINGER 0) and report this.
    Reset(AssociationError),
    /// The connection is already unusable: just drop it and report this.
    Drop(AssociationError),
}

struct Connection {
    stream: Stream,
    shared: Arc<Shared>,
    outbound: mpsc::Receiver<Outbound>,
    /// `None` once the peer's FIN was delivered as the receiver's final error.
    inbound: Option<mpsc::Sender<Frame>>,
    verdict: watch::Sender<Verdict>,
    close_timeout: Duration,
    decoder: FrameDecoder,
    heartbeat: Option<HeartbeatTimer>,
    /// Bytes read and not yet split off as frames: at most one incomplete frame once
    /// `read_buf_has_frames` is false.
    read_buf: BytesMut,
    read_buf_has_frames: bool,
    /// When the incomplete frame at the front of `read_buf` began to arrive.
    partial_since: Option<Instant>,
    frame_assembly_timeout: Duration,
    /// Room offered to the next read.
    read_chunk: usize,
    /// A decoded frame the receiver has no room for yet; reading pauses meanwhile.
    pending: Option<Frame>,
    write_buf: Vec<u8>,
    write_pos: usize,
    /// A message taken from the queue by the waiting loop, handled on the next turn.
    taken: Option<Outbound>,
    phase: Phase,
    /// Whether the outbound queue may still yield frames to send.
    taking_outbound: bool,
    senders_gone: bool,
    receiver_gone: bool,
    peer_eof: bool,
    peer_eof_handled: bool,
}

impl Connection {
    fn new(stream: Stream, config: &AssociationConfig, ends: DriverEnds) -> Self {
        let DriverEnds {
            shared,
            outbound,
            inbound,
            verdict,
        } = ends;
        Connection {
            stream,
            decoder: FrameDecoder::new(shared.max_frame_len),
            shared,
            outbound,
            inbound: Some(inbound),
            verdict,
            close_timeout: config.close_timeout,
            heartbeat: config
                .heartbeat
                .map(|c| HeartbeatTimer::new(c, Instant::now())),
            read_buf: BytesMut::new(),
            read_buf_has_frames: false,
            partial_since: None,
            frame_assembly_timeout: config.frame_assembly_timeout,
            read_chunk: MIN_READ_CHUNK,
            pending: None,
            write_buf: Vec::new(),
            write_pos: 0,
            taken: None,
            phase: Phase::Open,
            taking_outbound: true,
            senders_gone: false,
            receiver_gone: false,
            peer_eof: false,
            peer_eof_handled: false,
        }
    }

    async fn run(mut self) {
        let ending = self.drive().await;
        let result = match ending {
            Ending::Clean => {
                self.shared.set_outcome(AssociationError::Closed);
                Ok(())
            }
            Ending::Reset(error) => {
                // SO_LINGER 0: close() sends RST instead of FIN, as SCTP ABORT.
                if let Err(linger_error) = self.stream.arm_reset() {
                    tracing::debug!(%linger_error, "could not arm RST on close");
                }
                self.shared.set_outcome(error.clone());
                Err(error)
            }
            Ending::Drop(error) => {
                self.shared.set_outcome(error.clone());
                Err(error)
            }
        };
        tracing::debug!(peer = %self.shared.peer_addr, ?result, "association ended");
        // The outcome is set before the receiver's channel closes.
        let Connection {
            stream,
            inbound,
            verdict,
            ..
        } = self;
        drop(inbound);
        drop(stream);
        verdict.send_replace(Some(result));
    }

    async fn drive(&mut self) -> Ending {
        loop {
            let now = Instant::now();
            if self.shared.abort_requested.load(Ordering::Acquire) {
                return Ending::Reset(AssociationError::Closed);
            }
            let step = self
                .process_input(now)
                .and_then(|()| self.process_outbound(now))
                .and_then(|()| self.process_timers(now))
                .and_then(|()| self.advance_close());
            if let Err(ending) = step {
                return ending;
            }
            if let Err(ending) = self.wait().await {
                return ending;
            }
        }
    }

    /// Delivers decoded frames while the receiver has room, decodes buffered bytes, answers
    /// heartbeats, and handles the peer's FIN once everything before it is delivered.
    fn process_input(&mut self, now: Instant) -> Result<(), Ending> {
        loop {
            if let Some(frame) = self.pending.take() {
                self.deliver(frame);
                if self.pending.is_some() {
                    break;
                }
            }
            if !self.read_buf_has_frames {
                break;
            }
            match self.decoder.decode_buf(&mut self.read_buf) {
                Ok(None) => {
                    self.read_buf_has_frames = false;
                    self.partial_since = match self.read_buf.is_empty() {
                        true => None,
                        false => Some(self.partial_since.unwrap_or(now)),
                    };
                }
                Ok(Some(frame)) if frame.ppid == PPID_HEARTBEAT => {
                    self.handle_heartbeat(&frame.payload, now)?
                }
                Ok(Some(frame)) => self.pending = Some(frame),
                Err(error) => return Err(Ending::Reset(ProtocolError::from(error).into())),
            }
        }
        if let Some(timer) = self.heartbeat.as_mut() {
            timer.set_receive_blocked(self.pending.is_some(), now);
        }
        if self.peer_eof
            && !self.peer_eof_handled
            && self.pending.is_none()
            && !self.read_buf_has_frames
        {
            self.peer_eof_handled = true;
            if let Err(error) = self.decoder.finish_buf(&self.read_buf) {
                return Err(Ending::Reset(ProtocolError::from(error).into()));
            }
            if self.phase == Phase::Open {
                // Peer-initiated close: the receiver learns it now, after the frames before the
                // FIN; what the application queued so far is still sent.
                self.shared.set_outcome(AssociationError::ClosedByPeer);
                self.inbound = None;
                self.phase = Phase::PeerClosed {
                    deadline: now + self.close_timeout,
                };
                self.outbound.close();
                self.taking_outbound = true;
            }
        }
        Ok(())
    }

    /// Hands a frame to the receiver, keeping it pending if the receiver is full; frames nobody
    /// will read are dropped.
    fn deliver(&mut self, frame: Frame) {
        let Some(inbound) = self.inbound.as_ref().filter(|_| !self.receiver_gone) else {
            return;
        };
        match inbound.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => self.pending = Some(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => self.receiver_gone = true,
        }
    }

    fn handle_heartbeat(&mut self, payload: &[u8], now: Instant) -> Result<(), Ending> {
        let message = HeartbeatMessage::decode(payload)
            .map_err(|error| Ending::Reset(ProtocolError::from(error).into()))?;
        let reply = match self.heartbeat.as_mut() {
            Some(timer) => {
                let reply = timer.handle_heartbeat(message, now);
                if let Some(srtt) = timer.srtt() {
                    self.shared.set_srtt(srtt);
                }
                reply
            }
            // Without own heartbeats, still answer the peer's.
            None => match message {
                HeartbeatMessage::Request { nonce } => Some(HeartbeatMessage::Ack { nonce }),
                HeartbeatMessage::Ack { .. } => None,
            },
        };
        if let Some(reply) = reply
            && self.can_write()
        {
            self.push_frame(PPID_HEARTBEAT, &reply.encode())?;
        }
        Ok(())
    }

    fn can_write(&self) -> bool {
        !matches!(self.phase, Phase::FinSent { .. })
    }

    /// Starts the write buffer over once everything in it is written.
    fn reclaim_written(&mut self) {
        if self.write_pos == self.write_buf.len() {
            self.write_buf.clear();
            self.write_pos = 0;
        }
    }

    fn push_frame(&mut self, ppid: u32, payload: &[u8]) -> Result<(), Ending> {
        self.reclaim_written();
        // Lengths were checked against the maximum when queued.
        encode_frame(ppid, payload, &mut self.write_buf)
            .map_err(|error| Ending::Reset(AssociationError::Io(Arc::new(io::Error::other(error)))))
    }

    /// Queues frames encoded by `FrameBatch` (checked when queued): written from where they
    /// are when nothing else waits (the copy of each 256 KiB batch was a PE protocol thread's
    /// largest user-space cost in profiles), else appended.
    fn push_encoded(&mut self, bytes: Vec<u8>) {
        self.reclaim_written();
        if self.write_buf.is_empty() {
            self.write_buf = bytes;
        } else {
            self.write_buf.extend_from_slice(&bytes);
        }
    }

    fn write_backlog(&self) -> usize {
        self.write_buf.len() - self.write_pos
    }

    /// Moves queued messages into the write buffer, up to one batch.
    fn process_outbound(&mut self, now: Instant) -> Result<(), Ending> {
        while self.taking_outbound && self.write_backlog() < WRITE_BATCH {
            let message = match self.taken.take() {
                Some(message) => message,
                None => match self.outbound.try_recv() {
                    Ok(message) => message,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.taking_outbound = false;
                        self.senders_gone = true;
                        break;
                    }
                },
            };
            match message {
                Outbound::Frame(frame) => self.push_frame(frame.ppid, &frame.payload)?,
                Outbound::Encoded(bytes) => self.push_encoded(bytes),
                Outbound::Close => self.begin_local_close(now),
            }
        }
        if self.phase == Phase::Open
            && self.senders_gone
            && (self.receiver_gone || self.inbound_closed())
        {
            self.begin_local_close(now);
        }
        Ok(())
    }

    fn inbound_closed(&self) -> bool {
        self.inbound
            .as_ref()
            .is_none_or(|inbound| inbound.is_closed())
    }

    fn begin_local_close(&mut self, now: Instant) {
        if self.phase == Phase::Open {
            self.phase = Phase::Flushing {
                deadline: now + self.close_timeout,
            };
            // Frames queued after the close request are dropped.
            self.outbound.close();
            self.taking_outbound = false;
        }
    }

    fn process_timers(&mut self, now: Instant) -> Result<(), Ending> {
        if let Some(deadline) = self.phase.deadline()
            && now >= deadline
        {
            return Err(Ending::Reset(AssociationError::CloseTimeout));
        }
        if let Some(since) = self.partial_since
            && now >= since + self.frame_assembly_timeout
        {
            let waited = now.saturating_duration_since(since);
            return Err(Ending::Reset(ProtocolError::SlowFrame(waited).into()));
        }
        if !self.phase.heartbeats_active() {
            return Ok(());
        }
        let Some(timer) = self.heartbeat.as_mut() else {
            return Ok(());
        };
        match timer.handle_timeout(now) {
            HeartbeatEvent::Idle => Ok(()),
            HeartbeatEvent::SendRequest(request) => {
                self.push_frame(PPID_HEARTBEAT, &request.encode())
            }
            HeartbeatEvent::PeerDead { silent_for } => {
                Err(Ending::Reset(AssociationError::HeartbeatTimeout {
                    silent_for,
                }))
            }
        }
    }

    /// Sends FIN once a close has flushed, and finishes when both FINs are through.
    fn advance_close(&mut self) -> Result<(), Ending> {
        let flushed = self.write_backlog() == 0 && !self.stream.wants_write();
        match self.phase {
            Phase::Flushing { deadline } if flushed => {
                // TLS: close_notify first; the FIN once it is written (the next turn, when the
                // socket took it).
                let queued = self
                    .stream
                    .queue_close_notify()
                    .map_err(|error| Ending::Drop(AssociationError::from_io(error)))?;
                if queued && self.stream.wants_write() {
                    return Ok(());
                }
                self.shutdown_write()?;
                self.phase = Phase::FinSent { deadline };
                if self.peer_eof_handled {
                    return Err(Ending::Clean);
                }
            }
            Phase::FinSent { .. } if self.peer_eof_handled => return Err(Ending::Clean),
            Phase::PeerClosed { .. }
                if flushed && !self.taking_outbound && self.taken.is_none() =>
            {
                // Everything was read up to the peer's FIN: closing the socket sends ours, as a
                // shutdown would, without the extra system call.
                return Err(Ending::Clean);
            }
            _ => {}
        }
        Ok(())
    }

    fn shutdown_write(&mut self) -> Result<(), Ending> {
        self.stream
            .shutdown_write()
            .map_err(|error| Ending::Drop(AssociationError::from_io(error)))
    }

    /// Waits for the next thing to do: socket readiness, receiver room, queued messages, a timer,
    /// or an abort.
    async fn wait(&mut self) -> Result<(), Ending> {
        let can_read = !self.peer_eof && self.pending.is_none() && !self.read_buf_has_frames;
        let can_write = (self.write_backlog() > 0 || self.stream.wants_write()) && self.can_write();
        let can_take =
            self.taking_outbound && self.taken.is_none() && self.write_backlog() < WRITE_BATCH;
        let can_deliver = self.pending.is_some() && self.inbound.is_some();
        let watch_receiver = self.inbound.is_some() && !self.receiver_gone && !can_deliver;
        let heartbeat_deadline = self
            .heartbeat
            .as_ref()
            .filter(|_| self.phase.heartbeats_active())
            .map(HeartbeatTimer::poll_timeout);
        let frame_deadline = self
            .partial_since
            .map(|since| since + self.frame_assembly_timeout);
        let deadline = [heartbeat_deadline, self.phase.deadline(), frame_deadline]
            .into_iter()
            .flatten()
            .min();

        let event = tokio::select! {
            () = self.shared.abort.notified() => Event::Abort,
            ready = self.stream.writable(), if can_write => Event::Writable(ready),
            ready = self.stream.readable(), if can_read => Event::Readable(ready),
            permit = reserve(self.inbound.as_ref()), if can_deliver => {
                // Field-level access only: the permit borrows `self.inbound`.
                match (permit, self.pending.take()) {
                    (Some(permit), Some(frame)) => permit.send(frame),
                    (None, _) => self.receiver_gone = true,
                    (Some(_), None) => {}
                }
                Event::Progress
            }
            message = self.outbound.recv(), if can_take => Event::Outbound(message),
            () = receiver_dropped(self.inbound.as_ref()), if watch_receiver => {
                self.receiver_gone = true;
                Event::Progress
            }
            () = sleep_until(deadline), if deadline.is_some() => Event::Progress,
        };
        match event {
            Event::Abort => Err(Ending::Reset(AssociationError::Closed)),
            Event::Writable(ready) => {
                ready.map_err(|error| Ending::Drop(AssociationError::from_io(error)))?;
                self.try_write()
            }
            Event::Readable(ready) => {
                ready.map_err(|error| Ending::Drop(AssociationError::from_io(error)))?;
                self.try_read()
            }
            Event::Outbound(Some(message)) => {
                self.taken = Some(message);
                Ok(())
            }
            Event::Outbound(None) => {
                self.taking_outbound = false;
                self.senders_gone = true;
                Ok(())
            }
            Event::Progress => Ok(()),
        }
    }

    fn try_write(&mut self) -> Result<(), Ending> {
        if let Err(error) = self.stream.flush()
            && error.kind() != io::ErrorKind::WouldBlock
        {
            return Err(Ending::Drop(AssociationError::from_io(error)));
        }
        if self.write_backlog() == 0 {
            return Ok(());
        }
        match self.stream.try_write(&self.write_buf[self.write_pos..]) {
            Ok(0) => Err(Ending::Drop(AssociationError::from_io(
                io::ErrorKind::WriteZero.into(),
            ))),
            Ok(written) => {
                self.write_pos += written;
                self.reclaim_written();
                if let Some(timer) = self.heartbeat.as_mut() {
                    timer.handle_sent(Instant::now());
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(Ending::Drop(AssociationError::from_io(error))),
        }
    }

    fn try_read(&mut self) -> Result<(), Ending> {
        // Room for the rest of an incomplete frame, and at least a chunk: reading into spare
        // capacity needs no zeroing, and reuses the buffer in place once every frame split off
        // it is dropped.
        let wanted = self.decoder.wanted_len(&self.read_buf);
        let room = (wanted.saturating_sub(self.read_buf.len())).max(self.read_chunk);
        self.read_buf.reserve(room);
        let offered = self.read_buf.capacity() - self.read_buf.len();
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => {
                self.peer_eof = true;
                Ok(())
            }
            Ok(read) => {
                if read == offered {
                    self.read_chunk = (self.read_chunk * 2).min(MAX_READ_CHUNK);
                }
                self.read_buf_has_frames = true;
                if let Some(timer) = self.heartbeat.as_mut() {
                    timer.handle_received(Instant::now());
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(read_failure(error)),
        }
    }
}

/// A TLS failure while reading is the peer's protocol violation (the connection is reset);
/// anything else is the socket's.
fn read_failure(error: io::Error) -> Ending {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsFailure>())
    {
        Some(TlsFailure(tls)) => Ending::Reset(ProtocolError::Tls(tls.to_string()).into()),
        None => Ending::Drop(AssociationError::from_io(error)),
    }
}

async fn reserve(inbound: Option<&mpsc::Sender<Frame>>) -> Option<mpsc::Permit<'_, Frame>> {
    match inbound {
        Some(inbound) => inbound.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn receiver_dropped(inbound: Option<&mpsc::Sender<Frame>>) {
    match inbound {
        Some(inbound) => inbound.closed().await,
        None => std::future::pending().await,
    }
}
