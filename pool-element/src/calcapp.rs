//! The CalcApp pool element (`pool-element --service calcapp`): rsplib's `rspserver -calcapp`.
//!
//! One task owns the sans-I/O [`CalcAppService`]; each association gets a small reader task
//! that forwards its frames. Calculations are emulated by time, so dozens of these PEs fit on
//! a laptop.
//!
//! **Churn** (the seed paper's failure model): with `--mtbf`, each *life* of the PE lasts an
//! exponentially distributed time, then ends cleanly (with probability
//! `--clean-shutdown-probability`: a final cookie per job, sessions closed, deregistered) or
//! uncleanly (no cookie, no deregistration: `--unclean close` closes every socket as a killed
//! process's kernel does; `--unclean hang` leaves them open and silent, as a hung host, so
//! peers find out by their keep-alives). The PE then comes back, after `--downtime`
//! (default: at once), under a new port and a new PE identifier.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use fractal_protocol::calcapp::{
    CalcAppService, DEFAULT_POOL_HANDLE, JobLeft, Message, MessageType, PPID_CALCAPP,
    ServiceConfig, ServiceOutput, SessionId,
};
use rand::RngExt;
use rserpool::discovery::{RegistrarTable, announce_receiver_config};
use rserpool::pe::RegistrationConfig;
use rserpool::pe::driver::{self as registration, Registrars, RegistrationHandle};
use rserpool::transport::{
    self, Association, AssociationConfig, AssociationReceiver, AssociationSender, Listener,
    PPID_ASAP,
};
use rserpool::wire::policy::fraction_to_wire;
use rserpool::wire::{AsapMessage, PeId, PoolHandle, TransportAddress};
use tokio::sync::mpsc;

use crate::{Cli, capacity, log_event};

/// Bound on the final cookies and closes of a clean shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on the deregistration of a clean shutdown.
const DEREGISTRATION_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a hung life's sockets stay open and silent before they are closed after all.
const HANG_HOLD: Duration = Duration::from_secs(120);

/// CalcApp options (rsplib's `-cap...` options, same defaults).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "CalcApp service (--service calcapp)")]
pub struct CalcAppArgs {
    /// Most jobs at once; more are rejected.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_jobs: u32,
    /// A KeepAlive to each job's pool user this long after its Accept or last
    /// KeepAliveAck, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2500, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_interval: u64,
    /// A KeepAlive unanswered for this many milliseconds drops the job.
    #[arg(long, value_name = "MS", default_value_t = 2500, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_timeout: u64,
    /// A cookie at least every this many calculations of a job (5e6 as rsplib).
    #[arg(long, value_name = "CALCULATIONS", default_value = "5000000", value_parser = crate::parse_work)]
    pub cookie_max_calculations: u64,
    /// Mean lifetime in seconds (exponential); at its end the PE shuts down and comes back
    /// under a new address [default: lives for ever].
    #[arg(long, visible_alias = "uptime", value_name = "SECONDS", value_parser = parse_seconds)]
    pub mtbf: Option<f64>,
    /// Mean time in seconds (exponential) before a shut-down PE comes back [default: 0, at
    /// once, as in the paper].
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = parse_seconds)]
    pub downtime: f64,
    /// Share of lives that end cleanly (final cookies, deregistration); the others end
    /// uncleanly.
    #[arg(long, value_name = "P", default_value_t = 1.0, value_parser = parse_probability)]
    pub clean_shutdown_probability: f64,
    /// What an unclean end does with the sockets: close them as a killed process's kernel
    /// does, or hang (leave them open and silent, as a hung host).
    #[arg(long, value_enum, default_value = "close")]
    pub unclean: Unclean,
    /// Append one JSON line per life and per job completed or left behind to this file (for
    /// experiments).
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
}

/// How an unclean shutdown leaves its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unclean {
    Close,
    Hang,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("`{text}` must be at least 0 seconds"));
    }
    Ok(seconds)
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("`{text}` must be between 0 and 1"));
    }
    Ok(p)
}

/// An exponential draw with this mean (0: always 0).
fn exponential(mean: f64) -> f64 {
    let uniform: f64 = rand::rng().random();
    -mean * (1.0 - uniform).ln()
}

/// What reader tasks tell the service task.
enum Inbound {
    Frame(SessionId, rserpool::transport::Frame),
    Closed(SessionId),
}

/// The JSON-lines statistics file.
struct StatsFile(Option<File>);

impl StatsFile {
    fn line(&mut self, line: String) {
        if let Some(file) = &mut self.0
            && let Err(error) = writeln!(file, "{line}")
        {
            tracing::warn!(%error, "cannot write statistics; no more will be written");
            self.0 = None;
        }
    }
}

fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// How one life ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Asked to stop (SIGINT/SIGTERM): clean, and no next life.
    Stop,
    /// Its time was up (churn).
    Failure { clean: bool },
}

/// Runs the CalcApp pool element until `shutdown`, life after life.
pub async fn run_until(
    cli: Cli,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let pool_name = cli.pool.as_deref().unwrap_or(DEFAULT_POOL_HANDLE);
    let pool = PoolHandle::new(pool_name.as_bytes())
        .map_err(|e| anyhow::anyhow!("--pool {pool_name:?}: {e}"))?;
    if cli.listen.ip().is_unspecified() && cli.listen.is_ipv6() {
        bail!("--listen: use an IPv4 address or 0.0.0.0");
    }
    let args = &cli.calcapp;
    let capacity = cli.capacity.unwrap_or(1_000_000);
    let service_config = ServiceConfig {
        capacity: capacity as f64,
        max_jobs: args.max_jobs as usize,
        keep_alive_interval: Duration::from_millis(args.keep_alive_interval),
        keep_alive_timeout: Duration::from_millis(args.keep_alive_timeout),
        cookie_max_calculations: args.cookie_max_calculations,
        cookie_max_time: Duration::from_millis(cli.cookie_max_time.unwrap_or(5000)),
    };
    let delay = Duration::from_millis(cli.network_delay);
    let registrar_association = AssociationConfig {
        tls: cli.tls.client()?,
        receive_delay: delay,
        ..AssociationConfig::default()
    };
    let session_association = AssociationConfig {
        receive_delay: delay,
        ..AssociationConfig::default()
    };
    let mut stats = StatsFile(match &args.stats {
        Some(path) => Some(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    });
    let policy = capacity::registered_policy(cli.policy, capacity);
    tracing::info!(
        capacity, max_jobs = args.max_jobs, policy = %policy, pool = %pool,
        mtbf = ?args.mtbf, clean_shutdown_probability = args.clean_shutdown_probability,
        "CalcApp pool element"
    );
    let mut ready = ready;
    tokio::pin!(shutdown);
    for life in 0u64.. {
        let listener = transport::bind(cli.listen, session_association.clone())
            .await
            .with_context(|| format!("listening on {}", cli.listen))?;
        let data_addr = listener.local_addr()?;
        if let Some(ready) = ready.take() {
            let _ = ready.send(data_addr);
        }
        // A new identifier for every life, as rsplib (unless one was given).
        let pe_id = PeId(cli.id.unwrap_or_else(rand::random));
        let mut config = RegistrationConfig::new(
            pool.clone(),
            pe_id,
            policy,
            TransportAddress::Tcp {
                port: data_addr.port(),
                address: data_addr.ip(),
            },
            Duration::from_millis(cli.rereg_interval),
        );
        // Every job started or ended reaches the registrar (rsplib: changes of 1 %).
        let job_load = fraction_to_wire(1.0 / f64::from(args.max_jobs)).unwrap_or(u32::MAX);
        config.load_update_threshold = config.load_update_threshold.min(job_load / 2).max(1);
        let registrars = Registrars {
            table: RegistrarTable::new(cli.registrars.iter().copied()),
            announces: cli
                .registrars
                .is_empty()
                .then(|| announce_receiver_config(cli.announce_listen, Some(data_addr.ip()))),
        };
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let registration =
            registration::spawn(config, registrars, registrar_association.clone(), events_tx);
        let logged_pool = pool.clone();
        let events_task = tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                log_event(&event, pe_id, &logged_pool);
            }
        });
        let uptime = args
            .mtbf
            .map(|mean| Duration::from_secs_f64(exponential(mean).min(1e9)));
        tracing::info!(
            life, pe = %pe_id, data = %data_addr, uptime = ?uptime,
            "CalcApp pool element up"
        );
        let started = Instant::now();
        let mut run = Life {
            service: CalcAppService::new(service_config.clone(), Instant::now()),
            sessions: HashMap::new(),
            next_session: 1,
            registration: &registration,
            pe_id,
            stats: &mut stats,
            max_connections: cli.max_connections as usize,
            first_message_timeout: Duration::from_millis(cli.first_message_timeout),
            keep_alive_ack: AsapMessage::EndpointKeepAliveAck {
                pool_handle: pool.clone(),
                pe_id,
            },
            foreign: registration.foreign_keep_alives(),
            lateness: Lateness::default(),
        };
        let end = run
            .serve(
                listener,
                uptime,
                args.clean_shutdown_probability,
                &mut shutdown,
            )
            .await;
        let clean = !matches!(end, End::Failure { clean: false });
        let left = run.service.shutdown(clean, Instant::now());
        let service_stats = run.service.stats().clone();
        let lateness = run.lateness.clone();
        let sessions = run.flush_and_take_sessions();
        drop(run);
        LifeRecord {
            pe_id,
            address: data_addr,
            started,
            end,
            service: &service_stats,
            left: &left,
            lateness: &lateness,
        }
        .write(&mut stats);
        tracing::info!(
            life, pe = %pe_id, clean, jobs = left.len(),
            lost = left.iter().map(JobLeft::lost).sum::<f64>(),
            accepted = service_stats.accepted, completed = service_stats.completed,
            "CalcApp pool element {}",
            match end {
                End::Stop => "stopping",
                End::Failure { clean: true } => "shutting down cleanly",
                End::Failure { clean: false } => "failing",
            }
        );
        if clean {
            // Cookies first, then the closes; deregistered after.
            let closes = sessions.into_values().map(|session| async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.sender.close()).await;
                session.sender.abort();
            });
            futures_join_all(closes).await;
            registration.shutdown(DEREGISTRATION_TIMEOUT).await;
        } else {
            let registrar = registration.vanish().await;
            match args.unclean {
                Unclean::Close => {
                    for session in sessions.into_values() {
                        session.sender.abort();
                        session.reader.abort();
                    }
                    if let Some(registrar) = registrar {
                        registrar.abort();
                    }
                }
                Unclean::Hang => {
                    let held: Vec<_> = sessions.into_values().collect();
                    tokio::spawn(async move {
                        // The readers stopped reading (their channel is gone); the sockets
                        // stay open, unanswered, for a while.
                        tokio::time::sleep(HANG_HOLD).await;
                        drop((held, registrar));
                    });
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), events_task).await;
        if end == End::Stop {
            break;
        }
        if args.downtime > 0.0 {
            let down = Duration::from_secs_f64(exponential(args.downtime).min(1e9));
            tracing::info!(?down, "CalcApp pool element down");
            tokio::select! {
                () = tokio::time::sleep(down) => {}
                () = &mut shutdown => break,
            }
        }
    }
    tracing::info!("pool element stopped");
    Ok(())
}

/// Awaits all futures (no `futures` crate for one call).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for future in futures {
        set.spawn(future);
    }
    while set.join_next().await.is_some() {}
}

/// What one life leaves in the statistics file.
struct LifeRecord<'a> {
    pe_id: PeId,
    address: SocketAddr,
    started: Instant,
    end: End,
    service: &'a fractal_protocol::calcapp::service::ServiceStats,
    left: &'a [JobLeft],
    lateness: &'a Lateness,
}

impl LifeRecord<'_> {
    fn write(&self, stats: &mut StatsFile) {
        let LifeRecord {
            pe_id,
            address,
            started,
            end,
            service,
            left,
            lateness,
        } = *self;
        let uptime = started.elapsed().as_secs_f64();
        let clean = !matches!(end, End::Failure { clean: false });
        for job in left {
            stats.line(format!(
            r#"{{"event":"left","pe":{},"job":{},"size":{},"completed":{:.0},"cookie_completed":{:.0},"lost":{:.0},"cookie_overdue":{:.6},"clean":{clean}}}"#,
            pe_id.0, job.job_id, job.job_size, job.completed, job.cookie_completed, job.lost(), job.cookie_overdue.as_secs_f64()
        ));
        }
        stats.line(format!(
        r#"{{"event":"life","pe":{},"address":"{address}","end":{:.6},"uptime":{uptime:.6},"clean":{clean},"failure":{},"accepted":{},"rejected":{},"completed":{},"cookies":{},"used_calculations":{:.0},{}}}"#,
        pe_id.0,
        unix_time(),
        matches!(end, End::Failure { .. }),
        service.accepted,
        service.rejected,
        service.completed,
        service.cookies,
        service.used_calculations,
        lateness.json(),
    ));
    }
}

/// One association to a pool user.
struct SessionLink {
    sender: AssociationSender,
    reader: tokio::task::JoinHandle<()>,
}

/// One life of the PE.
struct Life<'a> {
    service: CalcAppService,
    sessions: HashMap<SessionId, SessionLink>,
    next_session: SessionId,
    registration: &'a RegistrationHandle,
    pe_id: PeId,
    stats: &'a mut StatsFile,
    max_connections: usize,
    first_message_timeout: Duration,
    keep_alive_ack: AsapMessage,
    foreign: mpsc::UnboundedSender<registration::ForeignKeepAlive>,
    lateness: Lateness,
}

/// How late the service's timers fire (completions, cookies, keep-alives): the accuracy of
/// the emulated capacity, since a late completion is capacity lost.
#[derive(Clone, Debug, Default)]
struct Lateness {
    count: u64,
    total: Duration,
    max: Duration,
    /// Timers later than [`LATE`].
    late: u64,
}

/// A timer this late costs a 1 s job 0.5 % of its speed.
const LATE: Duration = Duration::from_millis(5);

impl Lateness {
    fn record(&mut self, late: Duration) {
        self.count += 1;
        self.total += late;
        self.max = self.max.max(late);
        if late > LATE {
            self.late += 1;
        }
    }

    fn json(&self) -> String {
        let mean = if self.count > 0 {
            self.total.as_secs_f64() / self.count as f64
        } else {
            0.0
        };
        format!(
            r#""timers":{},"timer_late_mean":{mean:.6},"timer_late_max":{:.6},"timers_late_5ms":{}"#,
            self.count,
            self.max.as_secs_f64(),
            self.late
        )
    }
}

impl Life<'_> {
    async fn serve(
        &mut self,
        listener: transport::TcpFramedListener,
        uptime: Option<Duration>,
        clean_probability: f64,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> End {
        let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(1024);
        let end_of_life = uptime.map(|uptime| tokio::time::Instant::now() + uptime);
        loop {
            self.carry_out();
            let deadline = self.service.poll_timeout();
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(association) => self.accept(association, &inbound_tx),
                    Err(error) => tracing::warn!(%error, "accept failed"),
                },
                Some(inbound) = inbound_rx.recv() => self.handle(inbound),
                () = rserpool::timer::sleep_until(deadline) => {
                    let now = Instant::now();
                    if let Some(deadline) = deadline {
                        self.lateness.record(now.saturating_duration_since(deadline));
                    }
                    self.service.handle_timeout(now);
                }
                () = async { tokio::time::sleep_until(end_of_life.expect("guarded")).await }, if end_of_life.is_some() => {
                    let clean = rand::rng().random::<f64>() < clean_probability;
                    return End::Failure { clean };
                }
                () = shutdown.as_mut() => return End::Stop,
            }
        }
    }

    fn accept(&mut self, association: Association, inbound: &mpsc::Sender<Inbound>) {
        if self.sessions.len() >= self.max_connections {
            association.abort();
            tracing::warn!(peer = %association.peer_addr(), "connection refused: --max-connections");
            return;
        }
        let session = self.next_session;
        self.next_session += 1;
        let (sender, receiver) = association.split();
        let reader = tokio::spawn(read_session(
            session,
            receiver,
            inbound.clone(),
            self.first_message_timeout,
        ));
        self.sessions
            .insert(session, SessionLink { sender, reader });
    }

    fn handle(&mut self, inbound: Inbound) {
        let now = Instant::now();
        let session = match &inbound {
            Inbound::Frame(session, _) | Inbound::Closed(session) => *session,
        };
        self.handle_inbound(inbound, now);
        self.carry_out();
        // A session is for one job: one without a job after its message (anything but a
        // Request or Cookie Echo, or a Reject already closing it) holds no connection here.
        if self.sessions.contains_key(&session) && !self.service.has_job(session) {
            tracing::debug!(session, "session without a job closed");
            self.drop_session(session, now);
        }
    }

    fn handle_inbound(&mut self, inbound: Inbound, now: Instant) {
        match inbound {
            Inbound::Closed(session) => {
                if let Some(link) = self.sessions.remove(&session) {
                    link.sender.abort();
                }
                self.service.handle_closed(session, now);
            }
            Inbound::Frame(session, frame) if frame.ppid == PPID_CALCAPP => {
                match Message::decode(&frame.payload) {
                    Ok(message) => self.service.handle_message(session, message, now),
                    Err(error) => {
                        tracing::warn!(session, %error, "session aborted");
                        self.drop_session(session, now);
                    }
                }
            }
            Inbound::Frame(session, frame) if frame.ppid == PPID_ASAP => {
                match AsapMessage::decode(&frame.payload).map(|decoded| decoded.message) {
                    Ok(AsapMessage::CookieEcho { cookie }) => {
                        self.service.handle_cookie_echo(session, &cookie, now)
                    }
                    Ok(AsapMessage::EndpointKeepAlive {
                        home, server_id, ..
                    }) => {
                        // A registrar taking us over (ENRP): answer; the registration decides.
                        if let (Some(link), Ok(bytes)) =
                            (self.sessions.get(&session), self.keep_alive_ack.to_bytes())
                        {
                            let _ = link.sender.try_send(PPID_ASAP, bytes);
                        }
                        let _ = self.foreign.send(registration::ForeignKeepAlive {
                            home,
                            server_id,
                            association: None,
                        });
                    }
                    _ => tracing::debug!(session, "ignoring ASAP message in a session"),
                }
            }
            Inbound::Frame(session, frame) => {
                tracing::debug!(session, ppid = frame.ppid, "ignoring message");
            }
        }
    }

    fn drop_session(&mut self, session: SessionId, now: Instant) {
        if let Some(link) = self.sessions.remove(&session) {
            link.sender.abort();
            link.reader.abort();
        }
        self.service.handle_closed(session, now);
    }

    /// Carries out the service's outputs.
    fn carry_out(&mut self) {
        while let Some(output) = self.service.poll_output() {
            match output {
                ServiceOutput::Send { session, message } => {
                    if message.kind == MessageType::Complete {
                        self.stats.line(format!(
                            r#"{{"event":"complete","pe":{},"job":{},"size":{}}}"#,
                            self.pe_id.0, message.job_id, message.job_size
                        ));
                    }
                    self.send(session, PPID_CALCAPP, message.encode().to_vec());
                }
                ServiceOutput::Cookie { session, cookie } => {
                    let cookie = AsapMessage::Cookie {
                        cookie: cookie.encode().to_vec(),
                    };
                    if let Ok(bytes) = cookie.to_bytes() {
                        self.send(session, PPID_ASAP, bytes);
                    }
                }
                ServiceOutput::Finished { session } => {
                    // The pool user closes after the Complete; we close too, bounded.
                    if let Some(link) = self.sessions.remove(&session) {
                        link.reader.abort();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.sender.close()).await;
                            link.sender.abort();
                        });
                    }
                }
                ServiceOutput::Abort { session, reason } => {
                    tracing::debug!(session, reason = reason.as_str(), "session aborted");
                    if let Some(link) = self.sessions.remove(&session) {
                        link.sender.abort();
                        link.reader.abort();
                    }
                }
                ServiceOutput::Load(load) => self.registration.set_load(load),
            }
        }
    }

    /// Sends without waiting: a pool user whose queue is full is not reading, and is dropped.
    fn send(&mut self, session: SessionId, ppid: u32, bytes: Vec<u8>) {
        let Some(link) = self.sessions.get(&session) else {
            return;
        };
        if link.sender.try_send(ppid, bytes).is_err() {
            tracing::debug!(session, "send failed: session dropped");
            self.drop_session(session, Instant::now());
        }
    }

    /// The last outputs (a clean shutdown's cookies) go out; the sessions are handed over.
    fn flush_and_take_sessions(&mut self) -> HashMap<SessionId, SessionLink> {
        self.carry_out();
        for link in self.sessions.values() {
            link.reader.abort();
        }
        std::mem::take(&mut self.sessions)
    }
}

/// Forwards a session's frames to the service task; the first must come within
/// `first_message_timeout`.
async fn read_session(
    session: SessionId,
    mut receiver: AssociationReceiver,
    inbound: mpsc::Sender<Inbound>,
    first_message_timeout: Duration,
) {
    let first = tokio::time::timeout(first_message_timeout, receiver.recv()).await;
    let mut next = match first {
        Ok(frame) => frame,
        Err(_) => {
            tracing::debug!(session, "no first message in time");
            let _ = inbound.send(Inbound::Closed(session)).await;
            return;
        }
    };
    loop {
        match next {
            Ok(frame) => {
                if inbound.send(Inbound::Frame(session, frame)).await.is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = inbound.send(Inbound::Closed(session)).await;
                return;
            }
        }
        next = receiver.recv().await;
    }
}
