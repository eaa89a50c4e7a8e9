//! Thin tokio driver of the [`Registrar`] core over framed TCP.
//!
//! One task accepts associations, one task per association forwards received frames, and a
//! single task owns the core (no locks on the handlespace): it feeds frames, openings and
//! closings to the core, arms one timer at the core's next deadline, hands the core's answers
//! to the associations with `try_send` (an association whose send queue is full is too slow
//! to keep and is aborted, so one stalled peer never holds up everyone else) and logs the
//! core's events. A further task sends Server Announces.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::keepalive::spread;
use super::peer_links::{self, PeerLinks};
use super::{EnrpConfig, Registrar, RegistrarConfig, RegistrarEvent, RegistrarStats, Transmit};
use crate::handlespace::{AssociationKey, HandlespaceSnapshot};
use crate::timer::sleep_until;
use crate::transport::announce::{AnnounceSender, AnnounceSenderConfig};
use crate::transport::{
    Association, AssociationConfig, AssociationReceiver, AssociationSender, Listener, PPID_ASAP,
    TcpFramed, Transport, TrySendError,
};
use crate::wire::{AsapMessage, TransportAddress};

/// Server Announce settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Multicast group, unicast or broadcast address.
    pub destination: SocketAddr,
    /// Time between announces (rsplib 1 s), spread ±12.5 %.
    pub interval: Duration,
}

/// Settings of a running registrar.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Where to accept ASAP associations (port 0 = ephemeral).
    pub asap: SocketAddr,
    /// Server Announces; `None` = off.
    pub announce: Option<AnnounceConfig>,
    /// The core's settings.
    pub registrar: RegistrarConfig,
    /// Settings of accepted associations.
    pub association: AssociationConfig,
    /// Most associations open at once; more are reset at accept, so a flood of connections
    /// cannot take every descriptor and the memory of their buffers.
    pub max_associations: usize,
    /// ENRP with peer registrars; `None` = a registrar alone.
    pub enrp: Option<EnrpDriverConfig>,
}

/// ENRP sockets and settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrpDriverConfig {
    /// Where to accept ENRP associations; a specific address (it is what peers are told), port
    /// 0 = ephemeral.
    pub listen: SocketAddr,
    /// The PRESENCE group (rsplib 239.0.0.51:9901); `None` = static peers only.
    pub group: Option<SocketAddr>,
    /// The protocol settings; their `address` is replaced by the bound ENRP address.
    pub protocol: EnrpConfig,
    /// TLS towards peers (the connecting side; the listener uses `DriverConfig::association`'s).
    pub peer_tls: Option<crate::transport::TlsConfig>,
}

/// Default of [`DriverConfig::max_associations`]: far above what a pool of PEs and pool users
/// needs, and each association's buffers stay bounded by the frame limit.
pub const DEFAULT_MAX_ASSOCIATIONS: usize = 4096;

/// A look at a running registrar's state (tests, benchmarks).
#[derive(Clone, Debug)]
pub struct Inspection {
    pub snapshot: HandlespaceSnapshot,
    pub checksum: u16,
    pub pool_element_count: usize,
    pub associations: usize,
    pub stats: RegistrarStats,
}

enum Input {
    Opened {
        key: AssociationKey,
        sender: AssociationSender,
    },
    Frame {
        key: AssociationKey,
        ppid: u32,
        payload: bytes::Bytes,
    },
    Closed {
        key: AssociationKey,
        why: String,
    },
    /// An ENRP message from a peer (association or group).
    Enrp(Vec<u8>),
    /// An association we opened to a PE we took over, and the Keep-Alive (H) to send on it.
    Takeover(Association, Vec<u8>),
    Inspect(oneshot::Sender<Inspection>),
    Shutdown(oneshot::Sender<()>),
}

/// Frames buffered between the association tasks and the core.
const INPUT_QUEUE: usize = 4096;
/// Least send queue (frames) of an accepted association.
const MIN_SEND_QUEUE: usize = 4096;
/// Bound on closing every association at shutdown.
const SHUTDOWN_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A registrar running on the current tokio runtime.
#[derive(Debug)]
pub struct RunningRegistrar {
    local_addr: SocketAddr,
    enrp_address: Option<SocketAddr>,
    open_associations: Arc<OpenAssociations>,
    id: u32,
    announce: Option<SocketAddr>,
    inputs: mpsc::Sender<Input>,
    core: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

/// Binds the ASAP listener and starts the registrar's tasks.
pub async fn start(config: DriverConfig) -> io::Result<RunningRegistrar> {
    let mut association = config.association.clone();
    // Answers are queued with `try_send`; a pipelining client must not be taken for a stalled
    // one merely because one burst of requests was answered faster than the socket drained.
    association.send_queue = association.send_queue.max(MIN_SEND_QUEUE);
    let listener = TcpFramed::new(association).bind(config.asap).await?;
    let local_addr = listener.local_addr()?;
    let id = config.registrar.id;
    let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE);

    let mut background = Vec::new();
    let mut announce = None;
    if let Some(announce_config) = &config.announce {
        let sender = announce_sender(announce_config, local_addr)?;
        announce = Some(sender.destination());
        background.push(tokio::spawn(announce_loop(
            sender,
            announce_config.interval,
            id,
            local_addr,
        )));
    }
    let open_associations = Arc::new(OpenAssociations::default());
    background.push(tokio::spawn(accept_loop(
        listener,
        inputs.clone(),
        config.max_associations,
        open_associations.clone(),
    )));
    let mut registrar = Registrar::new(config.registrar);
    let mut enrp_address = None;
    let mut group_sender = None;
    if let Some(enrp) = &config.enrp {
        if enrp.listen.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the ENRP address is what peers are told: give a specific one, not 0.0.0.0",
            ));
        }
        let listener = TcpFramed::new(config.association.clone())
            .bind(enrp.listen)
            .await?;
        let bound = listener.local_addr()?;
        enrp_address = Some(bound);
        let (enrp_tx, mut enrp_rx) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
        background.push(tokio::spawn(peer_links::accept_loop(
            listener,
            enrp_tx.clone(),
        )));
        if let Some(group) = enrp.group {
            let (sender, receiver) = peer_links::group_sockets(group, bound.ip())?;
            group_sender = Some(sender);
            background.push(tokio::spawn(peer_links::group_loop(receiver, enrp_tx)));
        }
        let forward = inputs.clone();
        background.push(tokio::spawn(async move {
            while let Some(payload) = enrp_rx.recv().await {
                if forward.send(Input::Enrp(payload)).await.is_err() {
                    return;
                }
            }
        }));
        let mut protocol = enrp.protocol.clone();
        protocol.address = bound;
        protocol.group = enrp.group.is_some();
        registrar.start_enrp(protocol, std::time::Instant::now());
    }
    let peer_association = AssociationConfig {
        tls: config.enrp.as_ref().and_then(|e| e.peer_tls.clone()),
        ..config.association.clone()
    };
    let (takeover_tx, mut takeover_rx) = mpsc::channel::<(Association, Vec<u8>)>(INPUT_QUEUE);
    let forward = inputs.clone();
    background.push(tokio::spawn(async move {
        while let Some((association, payload)) = takeover_rx.recv().await {
            if forward
                .send(Input::Takeover(association, payload))
                .await
                .is_err()
            {
                return;
            }
        }
    }));
    let links = PeerLinks::new(group_sender, peer_association, takeover_tx);
    let core = tokio::spawn(core_loop(
        registrar,
        input_rx,
        links,
        inputs.clone(),
        open_associations.clone(),
    ));
    Ok(RunningRegistrar {
        enrp_address,
        local_addr,
        open_associations,
        id,
        announce,
        inputs,
        core,
        background,
    })
}

impl RunningRegistrar {
    /// The bound ASAP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Associations open now, and the most open at once since the last call (cheap: no
    /// round trip to the core). A program returns memory to the system after a flood by it.
    pub fn open_associations(&self) -> (usize, usize) {
        let open = self.open_associations.now.load(Ordering::Relaxed);
        let peak = self.open_associations.peak.swap(open, Ordering::Relaxed);
        (open, peak.max(open))
    }

    /// The bound ENRP address, if ENRP runs.
    pub fn enrp_address(&self) -> Option<SocketAddr> {
        self.enrp_address
    }

    /// Our registrar identifier.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Where announces go, if on.
    pub fn announce_destination(&self) -> Option<SocketAddr> {
        self.announce
    }

    /// A copy of the handlespace and counters; `None` once the registrar stopped.
    pub async fn inspect(&self) -> Option<Inspection> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Inspect(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops accepting, closes every association (gracefully, bounded) and waits for the core.
    pub async fn shutdown(self) {
        for task in &self.background {
            task.abort();
        }
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.core.await;
    }

    /// Stops at once, as a SIGKILL would: no Deregistration, no goodbye to peers; the
    /// associations it held end when their tasks notice (benchmarks of ENRP takeover).
    pub async fn abort(self) {
        for task in &self.background {
            task.abort();
        }
        self.core.abort();
        let _ = self.core.await;
    }
}

fn announce_sender(config: &AnnounceConfig, asap: SocketAddr) -> io::Result<AnnounceSender> {
    let mut sender_config = AnnounceSenderConfig::new(config.destination);
    if let (IpAddr::V4(ip), SocketAddr::V4(_)) = (asap.ip(), config.destination) {
        // rsplib receivers take the port from the UDP source: send from our ASAP port.
        sender_config.bind = SocketAddr::new(IpAddr::V4(ip), asap.port());
        if ip.is_loopback() {
            sender_config.multicast_interface_v4 = Some(Ipv4Addr::LOCALHOST);
        }
    }
    AnnounceSender::new(&sender_config).or_else(|error| {
        debug!(%error, "announce socket cannot use the ASAP port; using a free one");
        sender_config.bind.set_port(0);
        AnnounceSender::new(&sender_config)
    })
}

async fn announce_loop(sender: AnnounceSender, interval: Duration, id: u32, asap: SocketAddr) {
    let announce = AsapMessage::ServerAnnounce {
        server_id: id,
        transports: vec![TransportAddress::Tcp {
            port: asap.port(),
            address: asap.ip(),
        }],
    };
    let payload = match announce.to_bytes() {
        Ok(payload) => payload,
        Err(error) => {
            warn!(%error, "cannot encode the server announce; announces off");
            return;
        }
    };
    let mut rng = StdRng::seed_from_u64(rand::random());
    loop {
        if let Err(error) = sender.send(&payload).await {
            debug!(%error, destination = %sender.destination(), "announce not sent");
        }
        tokio::time::sleep(spread(interval, &mut rng)).await;
    }
}

/// Counts of open associations, kept by the accept loop, and their keys.
#[derive(Debug, Default)]
struct OpenAssociations {
    /// The next association's key (accepted ones and those opened for takeovers).
    next_key: std::sync::atomic::AtomicU64,
    now: AtomicUsize,
    /// Most open at once since [`RunningRegistrar::open_associations`] last looked.
    peak: AtomicUsize,
}

async fn accept_loop<L: Listener>(
    listener: L,
    inputs: mpsc::Sender<Input>,
    max: usize,
    counts: Arc<OpenAssociations>,
) {
    let mut refused = 0u64;
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let association = match listener.accept().await {
            Ok(association) => association,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if counts.now.load(Ordering::Relaxed) >= max {
            association.abort();
            refused += 1;
            // One line a second at most, however fast the flood.
            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                warn!(max, refused, "association refused: too many open");
                last_warning = Some(std::time::Instant::now());
            }
            continue;
        }
        let open = counts.now.fetch_add(1, Ordering::Relaxed) + 1;
        counts.peak.fetch_max(open, Ordering::Relaxed);
        let key = counts.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, receiver) = association.split();
        if inputs.send(Input::Opened { key, sender }).await.is_err() {
            return;
        }
        let counts = counts.clone();
        let inputs = inputs.clone();
        tokio::spawn(async move {
            read_loop(key, receiver, inputs).await;
            counts.now.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn read_loop(
    key: AssociationKey,
    mut receiver: AssociationReceiver,
    inputs: mpsc::Sender<Input>,
) {
    let why = loop {
        match receiver.recv().await {
            Ok(frame) => {
                let input = Input::Frame {
                    key,
                    ppid: frame.ppid,
                    payload: frame.payload,
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
            Err(error) => break error.to_string(),
        }
    };
    let _ = inputs.send(Input::Closed { key, why }).await;
}

async fn core_loop(
    mut registrar: Registrar,
    mut inputs: mpsc::Receiver<Input>,
    mut links: PeerLinks,
    input_sender: mpsc::Sender<Input>,
    counts: Arc<OpenAssociations>,
) {
    let mut senders: HashMap<AssociationKey, AssociationSender> = HashMap::new();
    let mut log = EventLog::default();
    loop {
        let deadline = registrar.poll_timeout();
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = sleep_until(deadline) => {
                registrar.handle_timeout(std::time::Instant::now());
                flush(&mut registrar, &mut senders, &mut links, &mut log);
                continue;
            }
        };
        let Some(input) = input else { break };
        match input {
            Input::Opened { key, sender } => {
                debug!(association = key, peer = %sender.peer_addr(), "association opened");
                registrar.handle_association_opened(key, sender.peer_addr());
                senders.insert(key, sender);
            }
            Input::Frame { key, ppid, payload } => {
                if ppid == PPID_ASAP {
                    registrar.handle_message(key, &payload, std::time::Instant::now());
                } else {
                    debug!(association = key, ppid, "non-ASAP frame discarded");
                }
            }
            Input::Enrp(payload) => registrar.handle_enrp(&payload, std::time::Instant::now()),
            Input::Takeover(association, keep_alive) => {
                let key = counts.next_key.fetch_add(1, Ordering::Relaxed) + 1;
                counts.now.fetch_add(1, Ordering::Relaxed);
                registrar.handle_association_opened(key, association.peer_addr());
                let (sender, receiver) = association.split();
                if sender.try_send(PPID_ASAP, keep_alive).is_err() {
                    debug!(association = key, "takeover keep-alive not sent");
                }
                senders.insert(key, sender);
                let (inputs, counts) = (input_sender.clone(), counts.clone());
                tokio::spawn(async move {
                    read_loop(key, receiver, inputs).await;
                    counts.now.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Input::Closed { key, why } => {
                debug!(association = key, %why, "association closed");
                senders.remove(&key);
                registrar.handle_association_closed(key);
            }
            Input::Inspect(reply) => {
                let hs = registrar.handlespace();
                let _ = reply.send(Inspection {
                    snapshot: hs.snapshot(),
                    checksum: hs.checksum(),
                    pool_element_count: hs.pool_element_count(),
                    associations: registrar.association_count(),
                    stats: registrar.stats(),
                });
            }
            Input::Shutdown(done) => {
                let closing: Vec<_> = senders.drain().map(|(_, s)| s).collect();
                let close_all = async {
                    for sender in &closing {
                        let _ = sender.close().await;
                    }
                };
                if tokio::time::timeout(SHUTDOWN_CLOSE_TIMEOUT, close_all)
                    .await
                    .is_err()
                {
                    for sender in &closing {
                        sender.abort();
                    }
                }
                let _ = done.send(());
                return;
            }
        }
        flush(&mut registrar, &mut senders, &mut links, &mut log);
    }
}

/// Hands the core's answers to the associations and logs its events.
fn flush(
    registrar: &mut Registrar,
    senders: &mut HashMap<AssociationKey, AssociationSender>,
    links: &mut PeerLinks,
    log: &mut EventLog,
) {
    while let Some(transmit) = registrar.poll_transmit() {
        match transmit {
            Transmit::Send {
                association,
                payload,
            } => {
                let Some(sender) = senders.get(&association) else {
                    continue;
                };
                match sender.try_send(PPID_ASAP, payload) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        warn!(association, peer = %sender.peer_addr(), "peer does not read its answers; aborting the association");
                        sender.abort();
                        senders.remove(&association);
                        registrar.handle_association_closed(association);
                    }
                    // Closing already; its reader reports the end.
                    Err(TrySendError::Rejected(_)) => {}
                }
            }
            Transmit::Close { association } => {
                if let Some(sender) = senders.remove(&association) {
                    sender.abort();
                }
                registrar.handle_association_closed(association);
            }
            Transmit::Enrp { to, payload } => links.send(to, payload),
            Transmit::TakeoverKeepAlive { pe, payload } => links.takeover_keep_alive(pe, payload),
        }
    }
    while let Some(event) = registrar.poll_event() {
        log.log(&event);
    }
}

/// `IP:PORT` of a user transport, for logs.
pub fn transport_addr(transport: &TransportAddress) -> String {
    match (transport.socket_addr(), transport) {
        (Some(address), _) => address.to_string(),
        (None, TransportAddress::Opaque(_)) => "opaque".into(),
        (None, _) => "-".into(),
    }
}

/// Logs the core's events; refused registrations at most once a second with a count, since a
/// flood of them would otherwise flood the log too.
#[derive(Default)]
struct EventLog {
    last_rejection_line: Option<std::time::Instant>,
    rejections_unlogged: u64,
}

impl EventLog {
    fn log(&mut self, event: &RegistrarEvent) {
        if let RegistrarEvent::RegistrationRejected {
            pool,
            pe,
            cause,
            reason,
        } = event
        {
            let now = std::time::Instant::now();
            if self
                .last_rejection_line
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
            {
                self.rejections_unlogged += 1;
                return;
            }
            let before_this = std::mem::take(&mut self.rejections_unlogged);
            self.last_rejection_line = Some(now);
            info!(%pool, %pe, cause = %format!("{:#x}", cause.0), %reason, unlogged_before = before_this, "registration rejected");
            return;
        }
        log_event(event);
    }
}

fn log_event(event: &RegistrarEvent) {
    match event {
        RegistrarEvent::Registered {
            pool,
            pe,
            user_transport,
            reregistration,
        } => {
            let addr = transport_addr(user_transport);
            if *reregistration {
                info!(pool = %pool, pe = %pe, addr = %addr, "pe reregistered");
            } else {
                info!(pool = %pool, pe = %pe, addr = %addr, "pe registered");
            }
        }
        RegistrarEvent::RegistrationRejected { .. } => {}
        RegistrarEvent::Removed { pool, pe, reason } => info!(
            %pool,
            %pe,
            reason = %reason.as_str(),
            "pe removed"
        ),
        RegistrarEvent::UnreachableReport {
            pool,
            pe,
            reporter,
            count,
        } => info!(
            %pool,
            %pe,
            reporter,
            count,
            "unreachable report"
        ),
        RegistrarEvent::ReportIgnored {
            pool,
            pe,
            reporter,
            why,
        } => debug!(%pool, %pe, reporter, ?why, "unreachable report ignored"),
        RegistrarEvent::ProbeStarted { pool, pe } => {
            info!(%pool, %pe, "unreachable reports: probing pe")
        }
        RegistrarEvent::ProbeAnswered { pool, pe } => {
            info!(%pool, %pe, "probed pe answered; reports cleared")
        }
        RegistrarEvent::BadMessage { association, error } => {
            debug!(association, %error, "bad message")
        }
        enrp_event => info!(event = ?enrp_event, "enrp"),
    }
}
