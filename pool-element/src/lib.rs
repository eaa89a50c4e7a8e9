//! The Fractal Generator pool element: registers with a registrar (ASAP) and computes
//! Mandelbrot views for pool users (FGP); all sessions share one computing thread per core.
//!
//! [`run`] is the whole program; `main.rs` and the GUI bundle's `pool-user pool-element`
//! subcommand call it with a parsed [`Cli`].

pub mod admission;
pub mod calcapp;
pub mod capacity;
pub mod handover;
pub mod limiter;
pub mod session;
pub mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fractal_protocol::kernel::KernelChoice;
use rserpool::discovery::{RegistrarTable, announce_receiver_config};
use rserpool::pe::driver::{self as registration, Registrars, RegistrationHandle};
use rserpool::pe::{Event, RegistrationConfig};
use rserpool::transport::{
    self, Association, AssociationConfig, AssociationSender, Listener, PPID_ASAP,
};
use rserpool::wire::policy::fraction_to_wire;
use rserpool::wire::{AsapMessage, PeId, PoolHandle, TransportAddress};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::admission::{Admission, Limits, Refusal, Stage, WarnLimiter};
use crate::capacity::PolicySpec;
use crate::handover::Handover;
use crate::limiter::RateLimiter;
use crate::session::{Session, SessionConfig, decode_first};
use crate::worker::{ComputePool, WorkerControl};

/// Data at least this often while computing, so that a slow PE is not taken for a hung one.
pub const DATA_MAX_TIME: Duration = Duration::from_millis(250);
/// Bound on the graceful close of a session refused for want of a place: the peer's FIN is
/// not waited for longer.
const REFUSAL_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on sessions' final cookies and closes at shutdown.
const SESSION_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the deregistration at shutdown.
const DEREGISTRATION_TIMEOUT: Duration = Duration::from_secs(4);

/// Command line of the pool element.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "pool-element",
    about = "Fractal Generator pool element (RSerPool ASAP + FGP)"
)]
pub struct Cli {
    /// Registrar ASAP address (repeatable); none: listen for Server Announces.
    #[arg(long = "registrar", value_name = "ADDR:PORT")]
    pub registrars: Vec<SocketAddr>,
    /// Where to listen for Server Announces when no --registrar is given.
    #[arg(long, value_name = "ADDR:PORT", default_value = "239.0.0.50:3863")]
    pub announce_listen: SocketAddr,
    /// Which service this pool element offers.
    #[arg(long, value_enum, default_value = "fractal")]
    pub service: Service,
    /// Pool handle to register under [default: FractalGeneratorPool, or CalcAppPool].
    #[arg(long)]
    pub pool: Option<String>,
    /// Pool member selection policy, rsplib's grammar (e.g. LeastUsed, WeightedRoundRobin:3,
    /// Priority:5). Leave out a weight or load degradation (WeightedRoundRobin,
    /// PriorityLeastUsed) to have it derived from the capacity.
    #[arg(long, default_value = "RoundRobin")]
    pub policy: PolicySpec,
    /// Pool element identifier, hexadecimal (0x...) or decimal [default: random].
    #[arg(long, value_name = "HEX|DEC", value_parser = parse_id)]
    pub id: Option<u32>,
    /// Address for pool users' sessions (port 0: ephemeral); this address is registered.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Most concurrent sessions; more are refused. A connection takes a place only with a
    /// valid first message (Parameter or Cookie Echo).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// Most iterations one session may ask for, width x height x MaxIterations (the pixels
    /// left, for a Cookie Echo), e.g. 67108864000000 or 6.7e13; bigger requests are refused
    /// and closed. The default is 8192x8192 pixels at rsplib's limit of 10^6 iterations.
    #[arg(long, value_name = "ITERATIONS", default_value = "67108864000000", value_parser = parse_work)]
    pub max_work: u64,
    /// A new connection must send its first message within this many milliseconds, or it is
    /// closed (transport heartbeats do not count).
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_message_timeout: u64,
    /// TLS with the registrars (RFC 5355); pool users' sessions stay plain.
    #[command(flatten)]
    pub tls: program_setup::tls::TlsClientArgs,
    /// Most connections from one IP address waiting for their first message; more are closed
    /// at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_source: u32,
    /// Most connections waiting for their first message, from all addresses together; more
    /// are closed at once.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending: u32,
    /// Most open connections (pending, sessions and registrars' keep-alive associations
    /// together), so that file descriptors cannot run out; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Iterations per second for all sessions together, e.g. 50000000 or 5e7 [default:
    /// unlimited; the capacity the pool learns is then measured at start]. For CalcApp:
    /// calculations per second shared by the jobs [default: 1e6].
    #[arg(long, value_name = "ITERATIONS_PER_S", value_parser = parse_capacity)]
    pub capacity: Option<u64>,
    /// A cookie after this many Data messages.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub cookie_max_packets: u32,
    /// A cookie at least this often while computing, in milliseconds [default: 1000, or
    /// 5000 for CalcApp as rsplib].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub cookie_max_time: Option<u64>,
    /// Re-registration interval in milliseconds (registration life = 3x).
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub rereg_interval: u64,
    /// After the N-th Data message of a session: send a cookie, then close (failover demo) [default: off].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fail_after: Option<u32>,
    /// Abort the whole process after N Data messages in total, without a final cookie [default: off].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub crash_after: Option<u64>,
    /// Compute the test pattern (x*y mod 256) instead of the fractal.
    #[arg(long)]
    pub test_mode: bool,
    /// Computing threads, shared by all sessions [default: one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Delay every received message by this many milliseconds (emulated network delay for
    /// experiments; registrar and pool-user associations alike) [default: 0, off].
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub network_delay: u64,
    #[command(flatten)]
    pub calcapp: calcapp::CalcAppArgs,
}

/// The services a pool element can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// rsplib's Fractal Generator (FGP, PPID 32).
    Fractal,
    /// rsplib's CalcApp (PPID 34): jobs of abstract calculations, emulated by time.
    Calcapp,
}

/// Parses `0x1a2b` (hexadecimal) or `1234` (decimal).
/// A positive rate; scientific notation welcome (`5e7`), since rates are big numbers.
fn parse_capacity(text: &str) -> Result<u64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of iterations per second"))?;
    if !(rate >= 1.0 && rate <= u64::MAX as f64) {
        return Err(format!("`{text}` must be at least 1 iteration per second"));
    }
    // In range by the check above.
    Ok(rate.round() as u64)
}

/// `--max-work`: like a capacity, a big number (at least 1).
pub(crate) fn parse_work(text: &str) -> Result<u64, String> {
    parse_capacity(text).map_err(|_| format!("`{text}` must be a number of iterations, at least 1"))
}

fn parse_id(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("\"{text}\" is not a 32-bit identifier: {e}"))
}

/// What the session tasks share.
struct Shared {
    config: SessionConfig,
    compute: ComputePool,
    max_sessions: usize,
    /// `--max-work`.
    max_work: u64,
    first_message_timeout: Duration,
    admission: Mutex<Admission>,
    /// Floods are logged once a second: refused connections, and those without a first message.
    refusal_warnings: Mutex<WarnLimiter>,
    timeout_warnings: Mutex<WarnLimiter>,
    /// Iterations per second (given or measured): what the load counts sessions by.
    capacity: u64,
    active: AtomicUsize,
    next_session: AtomicU64,
    data_total: AtomicU64,
    crash_after: Option<u64>,
    load: watch::Sender<f64>,
    /// Keep-alives from other registrars go to the registration client.
    foreign_keep_alives: mpsc::UnboundedSender<registration::ForeignKeepAlive>,
    keep_alive_ack: AsapMessage,
    /// Whether a takeover's association may become the registrar association: not when
    /// registrar associations use TLS (the takeover association to our data port is plain).
    adopt_takeover_associations: bool,
}

impl Shared {
    fn publish_load(&self) {
        let active = self.active.load(Ordering::Acquire);
        let _ = self.load.send(capacity::load(active, self.capacity));
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        lock(&self.admission)
    }

    /// Logs a refused connection, rate-limited.
    fn warn_refused(&self, id: u64, peer: SocketAddr, refusal: Refusal) {
        let logged = lock(&self.refusal_warnings).event(Instant::now());
        if let Some(suppressed) = logged {
            let (pending, connections) = {
                let admission = self.admission();
                (admission.pending(), admission.connections())
            };
            tracing::warn!(
                session = id, peer = %peer, reason = refusal.as_str(), pending, connections,
                suppressed, "connection refused"
            );
        }
    }
}

/// The counts behind these locks stay consistent whatever panicked while one was held.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the pool element until SIGINT/SIGTERM, then gives each session a final cookie, closes
/// them, deregisters and returns.
pub async fn run(cli: Cli) -> Result<()> {
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signalled = async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    run_until(cli, signalled, None).await
}

/// [`run`] with another shutdown trigger; `ready` receives the bound data address (for tests
/// and embedding).
pub async fn run_until(
    cli: Cli,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    if cli.service == Service::Calcapp {
        return calcapp::run_until(cli, shutdown, ready).await;
    }
    let pool_name = cli.pool.as_deref().unwrap_or("FractalGeneratorPool");
    let pool = PoolHandle::new(pool_name.as_bytes())
        .map_err(|e| anyhow::anyhow!("--pool {pool_name:?}: {e}"))?;
    if cli.listen.ip().is_unspecified() && cli.listen.is_ipv6() {
        bail!("--listen: use an IPv4 address or 0.0.0.0");
    }
    let registrar_association = AssociationConfig {
        tls: cli.tls.client()?,
        receive_delay: Duration::from_millis(cli.network_delay),
        ..AssociationConfig::default()
    };
    let session_association = AssociationConfig {
        receive_delay: Duration::from_millis(cli.network_delay),
        ..AssociationConfig::default()
    };
    let listener = transport::bind(cli.listen, session_association)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let data_addr = listener.local_addr()?;
    tracing::info!(data = %data_addr, "pool element listening");
    warn_if_descriptors_short(cli.max_connections);
    if let Some(ready) = ready {
        let _ = ready.send(data_addr);
    }

    let pe_id = PeId(cli.id.unwrap_or_else(rand::random));
    let threads = cli.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let kernel = if cli.test_mode {
        KernelChoice::TestMode
    } else {
        KernelChoice::Fast
    };
    let capacity = cli
        .capacity
        .unwrap_or_else(|| capacity::measure(threads, KernelChoice::Fast));
    let policy = capacity::registered_policy(cli.policy, capacity);
    tracing::info!(
        capacity,
        measured = cli.capacity.is_none(),
        policy = %policy,
        "pool element capacity"
    );
    let mut config = RegistrationConfig::new(
        pool.clone(),
        pe_id,
        policy,
        TransportAddress::Tcp {
            port: data_addr.port(),
            // 0.0.0.0 tells the registrar to use the address we connect from.
            address: data_addr.ip(),
        },
        Duration::from_millis(cli.rereg_interval),
    );
    // Every change of the session count reaches the registrar, however little load a session
    // adds on a fast PE.
    let session_load = fraction_to_wire(capacity::session_load(capacity)).unwrap_or(u32::MAX);
    config.load_update_threshold = config.load_update_threshold.min(session_load / 2).max(1);
    let registrars = Registrars {
        table: RegistrarTable::new(cli.registrars.iter().copied()),
        announces: cli
            .registrars
            .is_empty()
            .then(|| announce_receiver_config(cli.announce_listen, Some(data_addr.ip()))),
    };
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let registration: RegistrationHandle =
        registration::spawn(config, registrars, registrar_association, events_tx);
    let uses_tls = cli.tls.files.tls_cert.is_some();
    let logged_pool = pool.clone();
    let events_task = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            log_event(&event, pe_id, &logged_pool);
        }
    });

    let (load_tx, mut load_rx) = watch::channel(0.0);
    let shared = Arc::new(Shared {
        config: SessionConfig {
            cookie_max_packets: cli.cookie_max_packets,
            cookie_max_time: Duration::from_millis(cli.cookie_max_time.unwrap_or(1000)),
            data_max_time: DATA_MAX_TIME,
            fail_after: cli.fail_after,
            kernel,
        },
        compute: ComputePool::new(
            threads,
            cli.capacity
                .map(|rate| Arc::new(RateLimiter::new(rate, Instant::now()))),
        )
        .context("starting the computing threads")?,
        max_sessions: cli.max_sessions as usize,
        max_work: cli.max_work,
        first_message_timeout: Duration::from_millis(cli.first_message_timeout),
        admission: Mutex::new(Admission::new(Limits {
            max_pending_per_source: cli.max_pending_per_source as usize,
            max_pending: cli.max_pending as usize,
            max_connections: cli.max_connections as usize,
        })),
        refusal_warnings: Mutex::default(),
        timeout_warnings: Mutex::default(),
        capacity,
        active: AtomicUsize::new(0),
        next_session: AtomicU64::new(1),
        data_total: AtomicU64::new(0),
        crash_after: cli.crash_after,
        load: load_tx,
        foreign_keep_alives: registration.foreign_keep_alives(),
        keep_alive_ack: AsapMessage::EndpointKeepAliveAck {
            pool_handle: pool.clone(),
            pe_id,
        },
        adopt_takeover_associations: !uses_tls,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(association) => accept(association, &shared, &shutdown_rx, &mut sessions),
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
            changed = load_rx.changed() => {
                if changed.is_ok() {
                    registration.set_load(*load_rx.borrow_and_update());
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!(sessions = sessions.len(), "pool element shutting down");
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(SESSION_SHUTDOWN_TIMEOUT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("sessions did not close in time; aborting them");
        sessions.abort_all();
    }
    registration.shutdown(DEREGISTRATION_TIMEOUT).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events_task).await;
    tracing::info!("pool element stopped");
    Ok(())
}

/// Descriptors besides the connections: listener, registrar associations, announce socket,
/// stdio, the runtime's own.
const OTHER_DESCRIPTORS: u64 = 64;

/// `--max-connections` protects descriptors only below the process's limit.
fn warn_if_descriptors_short(max_connections: u32) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let needed = u64::from(max_connections) + OTHER_DESCRIPTORS;
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere.
    let available = limit.rlim_cur as u64;
    if available < needed {
        tracing::warn!(
            max_connections,
            descriptors = available,
            "--max-connections is close to the descriptor limit (ulimit -n): accepts may fail"
        );
    }
}

pub(crate) fn log_event(event: &Event, pe_id: PeId, pool: &PoolHandle) {
    match event {
        Event::Registered {
            registrar,
            home,
            first: true,
        } => tracing::info!(
            pe = %pe_id, pool = %pool, registrar = %registrar, home = %format_args!("{home:#010x}"),
            "pool element registered"
        ),
        Event::Registered { registrar, .. } => {
            tracing::debug!(pe = %pe_id, registrar = %registrar, "pool element reregistered")
        }
        Event::Rejected { registrar, cause } => tracing::warn!(
            pe = %pe_id, pool = %pool, registrar = %registrar,
            cause = %cause.map_or("none", |c| c.name()),
            "registration rejected"
        ),
        Event::HomeChanged { home } => {
            tracing::info!(pe = %pe_id, home = %format_args!("{home:#010x}"), "home registrar changed")
        }
        Event::RegistrarLost { registrar, reason } => {
            tracing::warn!(registrar = %registrar, reason = %reason.as_str(), "registrar lost")
        }
        Event::Deregistered { confirmed } => {
            tracing::info!(pe = %pe_id, pool = %pool, confirmed, "pool element deregistered")
        }
    }
}

fn accept(
    association: Association,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
    sessions: &mut JoinSet<()>,
) {
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let peer = association.peer_addr();
    let admitted = shared.admission().admit(peer.ip());
    if let Err(refusal) = admitted {
        // At once, so that a flood holds no descriptor; a pool user takes a close before any
        // frame for a refusal and tries another PE.
        association.abort();
        shared.warn_refused(id, peer, refusal);
        return;
    }
    let ticket = Ticket {
        shared: shared.clone(),
        source: peer.ip(),
        stage: Stage::Pending,
    };
    let shared = shared.clone();
    let shutdown = shutdown.clone();
    sessions.spawn(async move {
        serve(association, id, &shared, shutdown, ticket).await;
    });
}

/// A connection's place in the admission counts, given back when dropped.
struct Ticket {
    shared: Arc<Shared>,
    source: IpAddr,
    stage: Stage,
}

impl Ticket {
    fn advance(&mut self, to: Stage) -> Result<(), Refusal> {
        self.shared.admission().advance(self.source, to)?;
        self.stage = to;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.admission().release(self.source, self.stage);
    }
}

/// One of the `--max-sessions` places, held while a session computes and freed when dropped.
struct SessionSlot {
    shared: Arc<Shared>,
}

impl SessionSlot {
    /// A place, if one is free.
    fn try_take(shared: &Arc<Shared>) -> Option<SessionSlot> {
        shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < shared.max_sessions).then_some(active + 1)
            })
            .ok()?;
        shared.publish_load();
        Some(SessionSlot {
            shared: shared.clone(),
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
        self.shared.publish_load();
    }
}

/// Answers Endpoint Keep-Alives on a non-session association and passes them to the
/// registration client (an H flag makes the sender our home), until the peer closes, sends
/// anything else, or we shut down.
async fn serve_keep_alives(
    mut message: AsapMessage,
    sender: rserpool::transport::AssociationSender,
    mut receiver: rserpool::transport::AssociationReceiver,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = sender.peer_addr();
    while let AsapMessage::EndpointKeepAlive {
        home,
        server_id,
        pool_handle,
        pe_id,
    } = message
    {
        // Only keep-alives meant for this PE.
        if let AsapMessage::EndpointKeepAliveAck {
            pool_handle: ours,
            pe_id: our_id,
        } = &shared.keep_alive_ack
            && (&pool_handle != ours || pe_id.is_some_and(|id| id != *our_id))
        {
            break;
        }
        tracing::info!(peer = %peer, home, server = %format_args!("{server_id:#010x}"), "keep-alive from another registrar");
        if let Ok(bytes) = shared.keep_alive_ack.to_bytes()
            && sender.send(PPID_ASAP, bytes).await.is_err()
        {
            return;
        }
        if home && shared.adopt_takeover_associations {
            // A registrar taking us over: its association becomes our registrar association
            // (if our home is gone; the registration task decides).
            let _ = shared
                .foreign_keep_alives
                .send(registration::ForeignKeepAlive {
                    home,
                    server_id,
                    association: Some(Association::unsplit(sender, receiver)),
                });
            return;
        }
        let _ = shared
            .foreign_keep_alives
            .send(registration::ForeignKeepAlive {
                home,
                server_id,
                association: None,
            });
        let frame = tokio::select! {
            frame = receiver.recv() => frame,
            _ = stopped(&mut shutdown) => break,
        };
        message = match frame {
            Ok(frame) if frame.ppid == PPID_ASAP => match AsapMessage::decode(&frame.payload) {
                Ok(decoded) => decoded.message,
                Err(_) => break,
            },
            _ => break,
        };
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sender.close()).await;
}

/// Completes once shutdown was requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sends one hand-over of a session's outputs as one batch of frames. `Some(reason)` when the
/// session ends with it.
async fn forward(
    handover: Handover,
    sender: &AssociationSender,
    shared: &Shared,
    data: &mut u64,
) -> Option<&'static str> {
    let (mut frames, data_marks, ending) = handover.into_parts();
    let count = data_marks.len() as u64;
    match shared.crash_after {
        Some(limit) => {
            for mark in data_marks {
                let total = shared.data_total.fetch_add(1, Ordering::AcqRel) + 1;
                if total >= limit {
                    frames.truncate(mark);
                    let _ = sender.send_batch(frames).await;
                    tracing::warn!(data = total, "crash-after reached: aborting the process");
                    std::process::abort();
                }
            }
        }
        None => {
            shared.data_total.fetch_add(count, Ordering::AcqRel);
        }
    }
    *data += count;
    if sender.send_batch(frames).await.is_err() {
        return Some("peer-closed");
    }
    ending
}

/// How a session ended, for the log.
fn finished(id: u64, peer: SocketAddr, reason: &str, data: u64) {
    tracing::info!(session = id, peer = %peer, reason = %reason, data, "session finished");
}

async fn serve(
    association: Association,
    id: u64,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
    mut ticket: Ticket,
) {
    let peer = association.peer_addr();
    let (sender, mut receiver) = association.split();
    // Short: pool users send their request right after connecting, and a connection that
    // waits holds a pending place (heartbeats are answered by the transport, never seen here).
    let first = tokio::select! {
        first = tokio::time::timeout(shared.first_message_timeout, receiver.recv()) => first,
        _ = stopped(&mut shutdown) => {
            sender.abort();
            return;
        }
    };
    let frame = match first {
        Ok(Ok(frame)) => frame,
        Ok(Err(error)) => {
            tracing::debug!(session = id, peer = %peer, %error, "association ended before a request");
            return;
        }
        Err(_) => {
            sender.abort();
            let logged = lock(&shared.timeout_warnings).event(Instant::now());
            if let Some(suppressed) = logged {
                tracing::warn!(session = id, peer = %peer, reason = %"no-request", suppressed, "session aborted");
            }
            return;
        }
    };
    if frame.ppid == PPID_ASAP
        && let Ok(decoded) = AsapMessage::decode(&frame.payload)
        && let AsapMessage::EndpointKeepAlive { .. } = decoded.message
    {
        // Not a session: a registrar taking over from our home reaches us here.
        if let Err(refusal) = ticket.advance(Stage::KeepAlive) {
            sender.abort();
            shared.warn_refused(id, peer, refusal);
            return;
        }
        serve_keep_alives(decoded.message, sender, receiver, shared, shutdown).await;
        return;
    }
    let start = match decode_first(frame.ppid, &frame.payload) {
        Ok(start) => start,
        Err(error) => {
            tracing::warn!(session = id, peer = %peer, reason = %error, "session aborted");
            sender.abort();
            return;
        }
    };
    let requested = match start {
        session::Start::Compute(parameter) => parameter,
        session::Start::Resume(cookie) => cookie.parameter,
    };
    if let Err(error) = start.check_work(shared.max_work) {
        tracing::warn!(
            session = id, peer = %peer, width = requested.width, height = requested.height,
            max_iterations = requested.max_iterations, reason = %error, "session refused: too much work"
        );
        sender.abort();
        return;
    }
    let Some(slot) = SessionSlot::try_take(&ticket.shared) else {
        let (active, max) = (shared.active.load(Ordering::Acquire), shared.max_sessions);
        tracing::info!(session = id, peer = %peer, active, max, "session refused");
        // Closed before any frame: the PU fails over without reporting us unreachable.
        let _ = tokio::time::timeout(REFUSAL_CLOSE_TIMEOUT, sender.close()).await;
        sender.abort();
        return;
    };
    // Cannot fail: sessions are capped by their slots.
    let _ = ticket.advance(Stage::Session);
    let (session, initial) = Session::new(start, shared.config.clone(), Instant::now());
    let resumed = matches!(start, session::Start::Resume(_));
    let (x, y) = match start {
        session::Start::Resume(cookie) => (cookie.current_x, cookie.current_y),
        session::Start::Compute(_) => (0, 0),
    };
    let parameter = *session.parameter();
    tracing::info!(
        session = id, peer = %peer, resumed, x, y,
        width = parameter.width, height = parameter.height,
        max_iterations = parameter.max_iterations, algorithm = parameter.algorithm.0,
        "session started"
    );
    // Hand-overs of outputs; a few of them (about 1 MiB) let the worker run ahead of a slow
    // network.
    let (tx, mut rx) = mpsc::channel(4);
    // Fits: the channel is empty.
    let _ = tx.try_send(Handover::from(initial));
    let control = Arc::new(WorkerControl::default());
    shared.compute.submit(session, control.clone(), tx);
    let mut data = 0u64;
    let mut stopping = false;
    let reason = loop {
        tokio::select! {
            outputs = rx.recv() => {
                let Some(outputs) = outputs else {
                    // The worker stopped: after a final cookie on shutdown, or it was cancelled.
                    break if stopping { "shutdown" } else { "worker-ended" };
                };
                shared.compute.room_made();
                if let Some(reason) = forward(outputs, &sender, shared, &mut data).await {
                    break reason;
                }
            }
            frame = receiver.recv() => match frame {
                Ok(frame) if frame.ppid == PPID_ASAP
                    && matches!(AsapMessage::decode(&frame.payload), Ok(d) if matches!(d.message, AsapMessage::CookieEcho { .. })) => {
                    // rsplib aborts on a Cookie Echo in the middle of a session.
                    control.cancel();
                    sender.abort();
                    finished(id, peer, "unexpected-cookie-echo", data);
                    return;
                }
                Ok(frame) => tracing::debug!(session = id, ppid = frame.ppid, "ignoring message during computation"),
                Err(_) => {
                    control.cancel();
                    finished(id, peer, "peer-closed", data);
                    return;
                }
            },
            _ = stopped(&mut shutdown), if !stopping => {
                stopping = true;
                control.stop();
            }
        }
    };
    control.cancel();
    // The computation is over: its place is free while the close handshake completes, so that
    // the pool user's next picture, which may start before its old sessions' closes are
    // through, is not refused.
    drop(slot);
    if reason == "peer-closed" {
        sender.abort();
    } else {
        let _ = sender.close().await;
    }
    finished(id, peer, reason, data);
}

#[cfg(test)]
mod tests {
    use super::parse_capacity;

    #[test]
    fn capacity_accepts_integers_and_scientific_notation() {
        assert_eq!(parse_capacity("50000000"), Ok(50_000_000));
        assert_eq!(parse_capacity("5e7"), Ok(50_000_000));
        assert_eq!(parse_capacity("1.5e6"), Ok(1_500_000));
        for bad in ["0", "-5", "0.2", "NaN", "inf", "fast", "1e40"] {
            assert!(parse_capacity(bad).is_err(), "{bad} accepted");
        }
    }
}
