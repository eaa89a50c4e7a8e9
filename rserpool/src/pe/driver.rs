//! Tokio driver for [`Registration`]: one framed-TCP association to the current registrar.

use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Action, Event, Registration, RegistrationConfig};
use crate::discovery::RegistrarTable;
use crate::timer::sleep_until;
use crate::transport::announce::{AnnounceReceiver, AnnounceReceiverConfig};
use crate::transport::{self, Association, AssociationConfig, AssociationError, PPID_ASAP};
use crate::wire::AsapMessage;

/// Bound on closing a registrar association gracefully.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type ConnectFuture =
    Pin<Box<dyn std::future::Future<Output = std::io::Result<Association>> + Send>>;

/// An Endpoint Keep-Alive that arrived on an association other than the registrar
/// association (a registrar taking this PE over connects to its data address).
#[derive(Debug)]
pub struct ForeignKeepAlive {
    /// The H flag: the sender wants to be our home.
    pub home: bool,
    pub server_id: u32,
    /// The association it came on, handed over with the H flag: it becomes the registrar
    /// association (as rsplib's PEs peel it off); `None` when the caller keeps it.
    pub association: Option<Association>,
}

/// Handle of a running registration task.
#[derive(Debug)]
pub struct RegistrationHandle {
    load: watch::Sender<f64>,
    foreign_keep_alives: mpsc::UnboundedSender<ForeignKeepAlive>,
    stop: watch::Sender<Stop>,
    task: JoinHandle<Option<Association>>,
}

/// How the registration task is to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Running,
    Deregister,
    Vanish,
}

impl RegistrationHandle {
    /// Reports the current load (fraction of capacity in use).
    pub fn set_load(&self, fraction: f64) {
        let _ = self.load.send(fraction);
    }

    /// A sender for keep-alives received on other associations.
    pub fn foreign_keep_alives(&self) -> mpsc::UnboundedSender<ForeignKeepAlive> {
        self.foreign_keep_alives.clone()
    }

    /// Deregisters and waits (at most `timeout`) for the task to finish.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(Stop::Deregister);
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
    }

    /// Stops at once without deregistering, as a crash would, and hands back the registrar
    /// association as it is: dropping it closes the connection (a killed process's kernel
    /// does the same); holding it unread makes a PE that hangs (the registrar finds out by
    /// its keep-alives).
    pub async fn vanish(self) -> Option<Association> {
        let _ = self.stop.send(Stop::Vanish);
        self.task.await.ok().flatten()
    }
}

/// Where the registration finds registrars: a static list, and Server Announces heard on
/// `announces` (when set).
#[derive(Clone, Debug)]
pub struct Registrars {
    /// Configured registrars, tried in order.
    pub table: RegistrarTable,
    /// Listen for Server Announces here.
    pub announces: Option<AnnounceReceiverConfig>,
}

impl Registrars {
    /// A static list of registrars, no announces.
    pub fn fixed(registrars: impl IntoIterator<Item = std::net::SocketAddr>) -> Self {
        Registrars {
            table: RegistrarTable::new(registrars),
            announces: None,
        }
    }
}

/// Starts registering `config` with `registrars`. Events are sent to `events` (dropped if
/// nobody listens).
pub fn spawn(
    config: RegistrationConfig,
    registrars: Registrars,
    association: AssociationConfig,
    events: mpsc::UnboundedSender<Event>,
) -> RegistrationHandle {
    let (load_tx, load_rx) = watch::channel(0.0);
    let (stop_tx, stop_rx) = watch::channel(Stop::Running);
    let (foreign_tx, foreign_rx) = mpsc::unbounded_channel();
    let core = Registration::new(config, registrars.table, Instant::now());
    let task = tokio::spawn(run(
        core,
        association,
        registrars.announces,
        events,
        load_rx,
        stop_rx,
        foreign_rx,
    ));
    RegistrationHandle {
        load: load_tx,
        foreign_keep_alives: foreign_tx,
        stop: stop_tx,
        task,
    }
}

async fn run(
    mut core: Registration,
    association_config: AssociationConfig,
    announces: Option<AnnounceReceiverConfig>,
    events: mpsc::UnboundedSender<Event>,
    mut load: watch::Receiver<f64>,
    mut stop: watch::Receiver<Stop>,
    mut foreign_keep_alives: mpsc::UnboundedReceiver<ForeignKeepAlive>,
) -> Option<Association> {
    let mut association: Option<Association> = None;
    let mut connecting: Option<ConnectFuture> = None;
    let mut shutdown_seen = false;
    let mut announces = announces.and_then(|config| match AnnounceReceiver::new(&config) {
        Ok(receiver) => Some(receiver),
        Err(error) => {
            tracing::warn!(%error, address = %config.address, "cannot listen for announces");
            None
        }
    });
    loop {
        while let Some(action) = core.poll_action() {
            match action {
                Action::Connect(address) => {
                    let config = association_config.clone();
                    connecting = Some(Box::pin(transport::connect(address, config)));
                }
                Action::Send(message) => {
                    let Some(assoc) = &association else { continue };
                    match message.to_bytes() {
                        // A full queue means the registrar is not reading; the response
                        // timeout handles that, so dropping here is safe.
                        Ok(bytes) => {
                            if assoc.try_send(PPID_ASAP, bytes).is_err() {
                                tracing::debug!(message = message.name(), "registrar send failed");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot encode ASAP message"),
                    }
                }
                Action::Disconnect => {
                    connecting = None;
                    if let Some(assoc) = association.take() {
                        // Graceful: queued messages (a Deregistration) go out first; bounded so
                        // that a dead registrar does not hold us up.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, assoc.close()).await;
                    }
                }
            }
        }
        while let Some(event) = core.poll_event() {
            let _ = events.send(event);
        }
        if core.is_stopped() {
            return None;
        }
        let deadline = core.poll_timeout();
        tokio::select! {
            result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match result {
                    Ok(assoc) => {
                        association = Some(assoc);
                        core.handle_connected(Instant::now());
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                        // A TLS refusal: a configuration problem the operator must see.
                        tracing::warn!(%error, "cannot connect to registrar");
                        core.handle_connect_failed(Instant::now());
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot connect to registrar");
                        core.handle_connect_failed(Instant::now());
                    }
                }
            }
            frame = async { association.as_mut().expect("guarded").recv().await }, if association.is_some() => {
                match frame {
                    Ok(frame) if frame.ppid == PPID_ASAP => match AsapMessage::decode(&frame.payload) {
                        Ok(decoded) => core.handle_message(decoded.message, Instant::now()),
                        Err(error) => {
                            tracing::debug!(%error, "undecodable ASAP message from registrar");
                            if let (Some(reply), Some(assoc)) = (AsapMessage::error_reply(&error), &association)
                                && let Ok(bytes) = reply.to_bytes()
                            {
                                let _ = assoc.try_send(PPID_ASAP, bytes);
                            }
                        }
                    },
                    Ok(frame) => tracing::debug!(ppid = frame.ppid, "ignoring non-ASAP frame from registrar"),
                    Err(error) => {
                        if matches!(error, AssociationError::Protocol(_)) {
                            tracing::warn!(%error, "registrar association ended");
                        } else {
                            tracing::debug!(%error, "registrar association ended");
                        }
                        association = None;
                        core.handle_disconnected(Instant::now());
                    }
                }
            }
            _ = sleep_until(deadline) => core.handle_timeout(Instant::now()),
            announce = async { announces.as_ref().expect("guarded").recv().await }, if announces.is_some() => {
                match announce {
                    Ok((payload, source)) => core.handle_announce(source, &payload, Instant::now()),
                    Err(error) => {
                        tracing::warn!(%error, "announce listener failed");
                        announces = None;
                    }
                }
            }
            changed = load.changed(), if !shutdown_seen => {
                if changed.is_ok() {
                    let fraction = *load.borrow_and_update();
                    core.set_load(fraction, Instant::now());
                }
            }
            Some(foreign) = foreign_keep_alives.recv() => {
                let now = Instant::now();
                match foreign.association {
                    Some(offered) if foreign.home => {
                        let peer = offered.peer_addr();
                        if core.handle_home_association(foreign.server_id, peer, now) {
                            connecting = None;
                            if let Some(old) = association.replace(offered) {
                                old.abort();
                            }
                        }
                    }
                    _ => core.handle_foreign_keep_alive(foreign.home, foreign.server_id, now),
                }
            }
            changed = stop.changed(), if !shutdown_seen || changed_ok(&stop) => {
                // A dropped handle counts as shutdown too.
                let requested = if changed.is_err() { Stop::Deregister } else { *stop.borrow_and_update() };
                match requested {
                    Stop::Vanish => return association,
                    Stop::Deregister if !shutdown_seen => {
                        shutdown_seen = true;
                        core.shutdown(Instant::now());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Whether the stop channel's sender is still there (a vanish may follow a shutdown).
fn changed_ok(stop: &watch::Receiver<Stop>) -> bool {
    stop.has_changed().is_ok()
}
