//! The tokio driver: [`PoolUser`] (registrar access, shared cache) and [`Session`] (runs a
//! [`SessionState`] over real associations).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};

use crate::discovery::{RegistrarTable, announce_receiver_config, listen_for_announces};
use crate::timer::sleep_until;
use crate::transport::{self, Association, AssociationConfig, Frame, HeartbeatConfig};
use crate::wire::{PeId, PoolHandle};

use super::registrar_client::{ALL_ITEMS, RegistrarClient, Request, Resolution, ResolveError};
use super::selector::{DEFAULT_STALE_CACHE, PeCandidate, PeSelector};
use super::session::{Action, FailureKind, SessionConfig, SessionEvent, SessionState};

/// Default address ASAP Server Announces are listened for (rsplib's).
pub const DEFAULT_ANNOUNCE_ADDRESS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(239, 0, 0, 50),
    3863,
));

/// Settings of a pool user.
#[derive(Clone, Debug)]
pub struct PoolUserConfig {
    /// Registrars to use (`--registrar`); empty = learn them from announces.
    pub registrars: Vec<SocketAddr>,
    /// Where to listen for announces when `registrars` is empty (`None`: do not listen).
    pub announce: Option<SocketAddr>,
    /// How long a Handle Resolution answer is used without asking again.
    pub stale_cache: Duration,
    /// Failover timing.
    pub session: SessionConfig,
    /// Associations to registrars.
    pub registrar_association: AssociationConfig,
    /// How long to wait for a registrar's answer.
    pub registrar_timeout: Duration,
    /// Associations to pool elements (heartbeat timeout follows the session timeout).
    pub pe_association: AssociationConfig,
    /// Every session on its own: it asks the registrar each time it needs a PE and takes the
    /// registrar's first choice (a registrar lists PEs in its policy's order) that the session
    /// itself has not seen fail, with no cache, no local policy and no memory shared with the
    /// other sessions. For many independent pool users in one process (the CalcApp workload,
    /// the paper's model, where the registrar chooses), which must not coordinate through a
    /// shared cache.
    pub registrars_choice: bool,
}

impl Default for PoolUserConfig {
    fn default() -> Self {
        PoolUserConfig {
            registrars: Vec::new(),
            announce: Some(DEFAULT_ANNOUNCE_ADDRESS),
            stale_cache: DEFAULT_STALE_CACHE,
            session: SessionConfig::default(),
            registrar_association: AssociationConfig {
                connect_timeout: Duration::from_secs(2),
                ..AssociationConfig::default()
            },
            registrar_timeout: Duration::from_secs(2),
            pe_association: AssociationConfig {
                connect_timeout: Duration::from_secs(2),
                close_timeout: Duration::from_secs(1),
                ..AssociationConfig::default()
            },
            registrars_choice: false,
        }
    }
}

impl PoolUserConfig {
    /// Sets the session timeout and derives the PE association's heartbeat and connect
    /// timeouts from it (a PE silent for that long is dead either way).
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        let timeout = timeout.max(Duration::from_millis(10));
        self.session.session_timeout = timeout;
        self.pe_association.heartbeat = Some(HeartbeatConfig {
            interval: (timeout / 4).min(Duration::from_secs(1)),
            timeout,
        });
        self.pe_association.connect_timeout = timeout;
        self
    }
}

struct Inner {
    config: PoolUserConfig,
    requests: mpsc::Sender<Request>,
    selectors: Mutex<HashMap<PoolHandle, PeSelector>>,
    announce_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.announce_task.take() {
            task.abort();
        }
    }
}

/// A pool user: registrar access and the per-pool cache shared by its sessions. Cheap to
/// clone; the background tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct PoolUser {
    inner: Arc<Inner>,
}

impl PoolUser {
    /// Starts the registrar client (and the announce listener when no registrar is
    /// configured). Must be called inside a tokio runtime.
    pub fn start(config: PoolUserConfig) -> PoolUser {
        let table = Arc::new(Mutex::new(RegistrarTable::new(config.registrars.clone())));
        let announce_task = match (config.registrars.is_empty(), config.announce) {
            (true, Some(address)) => {
                let receiver = announce_receiver_config(address, None);
                let table = table.clone();
                Some(tokio::spawn(async move {
                    let error = listen_for_announces(receiver, table).await;
                    tracing::warn!(%error, %address, "listening for registrar announces failed");
                }))
            }
            _ => None,
        };
        let (requests, receiver) = mpsc::channel(256);
        let client = RegistrarClient {
            table,
            association: config.registrar_association.clone(),
            answer_timeout: config.registrar_timeout,
            current: None,
        };
        tokio::spawn(client.run(receiver));
        PoolUser {
            inner: Arc::new(Inner {
                config,
                requests,
                selectors: Mutex::new(HashMap::new()),
                announce_task,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolUserConfig {
        &self.inner.config
    }

    /// Handle Resolution for every PE of `pool` (option 0x803f = 0xffffffff), e.g. for a pool
    /// panel. Also refreshes the sessions' cache.
    pub async fn list_pool(&self, pool: &PoolHandle) -> Result<Resolution, ResolveError> {
        let resolution = self.resolve(pool, ALL_ITEMS).await?;
        self.with_selector(pool, |selector| {
            selector.store(&resolution.elements, Instant::now())
        });
        Ok(resolution)
    }

    /// One Handle Resolution asking for `items` PEs.
    pub async fn resolve(&self, pool: &PoolHandle, items: u32) -> Result<Resolution, ResolveError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Resolve {
                pool: pool.clone(),
                items,
                shared: !self.inner.config.registrars_choice,
                reply,
            })
            .await
            .map_err(|_| ResolveError::Stopped)?;
        answer.await.map_err(|_| ResolveError::Stopped)?
    }

    /// Sends Endpoint Unreachable for `pe_id` (queued; never waits for the registrar).
    pub fn report_unreachable(&self, pool: &PoolHandle, pe_id: PeId) {
        let request = Request::Unreachable {
            pool: pool.clone(),
            pe_id,
        };
        if self.inner.requests.try_send(request).is_err() {
            tracing::debug!(
                pe = %pe_id,
                "unreachable report dropped (queue full)"
            );
        }
    }

    /// A session with `pool` that will start with `first_message` (not started yet: the first
    /// [`Session::next_event`] starts it).
    pub fn session(&self, pool: PoolHandle, first_message: Frame) -> Session {
        let state = SessionState::new(self.inner.config.session.clone(), first_message);
        self.session_with(pool, state)
    }

    /// A session with `pool` whose first PE resumes from `cookie` (a Cookie Echo), e.g. to hand
    /// it the rest of another session's work; `first_message` is the fallback of
    /// [`SessionState::resuming`].
    pub fn session_resuming(
        &self,
        pool: PoolHandle,
        first_message: Frame,
        cookie: Vec<u8>,
    ) -> Session {
        let config = self.inner.config.session.clone();
        self.session_with(pool, SessionState::resuming(config, first_message, cookie))
    }

    fn session_with(&self, pool: PoolHandle, state: SessionState) -> Session {
        Session {
            pool_user: self.clone(),
            pool,
            state,
            association: None,
            holding: None,
            events: VecDeque::new(),
            deferred: VecDeque::new(),
            burst_clock: None,
            rng: StdRng::from_rng(&mut rand::rng()),
            own_avoid: HashMap::new(),
        }
    }

    fn with_selector<T>(&self, pool: &PoolHandle, f: impl FnOnce(&mut PeSelector) -> T) -> T {
        let mut selectors = self
            .inner
            .selectors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let selector = selectors
            .entry(pool.clone())
            .or_insert_with(|| PeSelector::new(self.inner.config.stale_cache));
        f(selector)
    }
}

/// Frames of a burst that share one clock reading (see `Session::burst_clock`).
const FRAMES_PER_CLOCK_READING: u32 = 32;

/// One session with a pool: connects, receives, fails over. Drive it by calling
/// [`Session::next_event`] in a loop; dropping it aborts its association.
pub struct Session {
    pool_user: PoolUser,
    pool: PoolHandle,
    state: SessionState,
    association: Option<Association>,
    /// The PE the selector counts this session on (see [`PeSelector::release`]).
    holding: Option<PeId>,
    events: VecDeque<SessionEvent>,
    /// Actions [`Session::ready_event`] could not carry out without waiting, in order; the
    /// next [`Session::next_event`] starts with them.
    deferred: VecDeque<Action>,
    /// A clock reading for frames [`Session::ready_event`] takes in a burst (they had arrived
    /// by then), with how many more it may serve: a long burst still reads the clock now and
    /// then, so the silence timer never sees old times.
    burst_clock: Option<(Instant, u32)>,
    rng: StdRng,
    /// PEs this session avoids, with [`PoolUserConfig::registrars_choice`].
    own_avoid: HashMap<PeId, Instant>,
}

impl Session {
    /// The PE currently serving the session.
    pub fn current_pe(&self) -> Option<&PeCandidate> {
        self.state.current_pe()
    }

    /// The latest cookie.
    pub fn cookie(&self) -> Option<&[u8]> {
        self.state.cookie()
    }

    /// The application is done: closes the association gracefully (in the background).
    pub fn finish(&mut self) {
        self.release_pe();
        self.state.finish(Instant::now());
        // Finishing only produces actions that need no waiting.
        while let Some(action) = self.state.poll_action() {
            match action {
                Action::Close => self.close(),
                Action::Event(event) => self.events.push_back(event),
                other => tracing::debug!(?other, "unexpected action after finish"),
            }
        }
    }

    /// The application rejects the current PE: fail over to another one (carried out by the
    /// next [`Session::next_event`]).
    pub fn fail(&mut self, reason: FailureKind) {
        self.state.fail(Instant::now(), reason);
    }

    /// Drops the cookies the PEs sent (see [`SessionState::forget_cookie`]).
    pub fn forget_cookie(&mut self) {
        self.state.forget_cookie();
    }

    /// The current PE did new work: it keeps the session (see
    /// [`SessionState::handle_progress`]).
    pub fn progress(&mut self) {
        self.state.handle_progress(Instant::now());
    }

    /// The application's own restart point (see [`SessionState::set_fallback_cookie`]).
    pub fn set_fallback_cookie(&mut self, cookie: Vec<u8>) {
        self.state.set_fallback_cookie(cookie);
    }

    /// The current PE declined the session in the application's protocol (e.g. full): try
    /// another without reporting it (carried out by the next [`Session::next_event`]).
    pub fn reject(&mut self) {
        self.state.reject(Instant::now());
    }

    /// Sends an application message to the current PE; `false` if there is none (failing
    /// over) or the association is gone (its end is reported by [`Session::next_event`]).
    pub async fn send(&mut self, frame: Frame) -> bool {
        match self.association.as_ref() {
            Some(association) => association.send(frame.ppid, frame.payload).await.is_ok(),
            None => false,
        }
    }

    /// Runs the session until it has something to report. After [`SessionEvent::Finished`] it
    /// keeps returning `Finished`.
    pub async fn next_event(&mut self) -> SessionEvent {
        loop {
            if let Some(event) = self.next_event_until(None).await {
                return event;
            }
        }
    }

    /// [`Session::next_event`], or `None` once `deadline` (the application's own timer) has
    /// passed while the session waits. Nothing is lost when it returns `None`: call it again.
    pub async fn next_event_until(&mut self, deadline: Option<Instant>) -> Option<SessionEvent> {
        let application_deadline = deadline;
        self.burst_clock = None;
        self.state.start(Instant::now());
        while let Some(action) = self.deferred.pop_front() {
            self.execute(action).await;
        }
        loop {
            while let Some(action) = self.state.poll_action() {
                self.execute(action).await;
            }
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.state.is_finished() {
                return Some(SessionEvent::Finished);
            }
            if application_deadline.is_some_and(|due| due <= Instant::now()) {
                return None;
            }
            // Frames already waiting need no timer and no select (the common case while a PE
            // streams); like the biased select below, they count before an expired timer.
            if let Some(association) = self.association.as_mut() {
                match association.try_recv() {
                    Ok(Some(frame)) => {
                        self.state.handle_frame(Instant::now(), frame);
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        self.association = None;
                        self.state.handle_closed(Instant::now(), &error);
                        continue;
                    }
                }
            }
            let deadline = match (self.state.poll_timeout(), application_deadline) {
                (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
                (ours, theirs) => ours.or(theirs),
            };
            let sleep = sleep_until(deadline);
            let received = async {
                match self.association.as_mut() {
                    Some(association) => association.recv().await,
                    None => std::future::pending().await,
                }
            };
            // Biased: frames that are already waiting count before a timer that expired
            // while the application was busy.
            tokio::select! {
                biased;
                frame = received => {
                    let now = Instant::now();
                    match frame {
                        Ok(frame) => self.state.handle_frame(now, frame),
                        Err(error) => {
                            self.association = None;
                            self.state.handle_closed(now, &error);
                        }
                    }
                }
                () = sleep => self.state.handle_timeout(Instant::now()),
            }
        }
    }

    /// An event that is ready without waiting: one already queued, or one from a frame already
    /// received. `None` when [`Session::next_event`] has to wait (or to act) first. Lets an
    /// application take a burst of frames as one piece of work.
    pub fn ready_event(&mut self) -> Option<SessionEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if !self.deferred.is_empty() || self.state.is_finished() {
                return None;
            }
            // An ended association is handled by `next_event`.
            let frame = self.association.as_mut()?.try_recv().ok()??;
            let now = match &mut self.burst_clock {
                Some((now, uses)) if *uses > 0 => {
                    *uses -= 1;
                    *now
                }
                clock => {
                    clock
                        .insert((Instant::now(), FRAMES_PER_CLOCK_READING - 1))
                        .0
                }
            };
            self.state.handle_frame(now, frame);
            while let Some(action) = self.state.poll_action() {
                match action {
                    // Events behind a deferred action wait for it, to keep their order.
                    Action::Event(event) if self.deferred.is_empty() => {
                        self.events.push_back(event)
                    }
                    other => self.deferred.push_back(other),
                }
            }
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Resolve { fresh } => self.resolve(fresh).await,
            Action::Connect(pe) => {
                let config = self.pool_user.inner.config.pe_association.clone();
                match transport::connect(pe.address, config).await {
                    Ok(association) => {
                        self.association = Some(association);
                        self.state.handle_connected(Instant::now());
                    }
                    Err(error) => self
                        .state
                        .handle_connect_failed(Instant::now(), format!("{}: {error}", pe.address)),
                }
            }
            Action::Send(frame) => {
                if let Some(association) = self.association.as_ref()
                    && let Err(error) = association.send(frame.ppid, frame.payload).await
                {
                    // The receive side reports the association's end.
                    tracing::debug!(%error, "send to pool element failed");
                }
            }
            Action::Abort => {
                if let Some(association) = self.association.take() {
                    association.abort();
                }
            }
            Action::Close => self.close(),
            Action::ReportUnreachable { pe_id } => {
                self.pool_user.report_unreachable(&self.pool, pe_id);
                self.events
                    .push_back(SessionEvent::UnreachableReported { pe_id });
            }
            Action::Avoid { pe_id, duration } if self.pool_user.inner.config.registrars_choice => {
                self.own_avoid.insert(pe_id, Instant::now() + duration);
            }
            Action::Avoid { pe_id, duration } => {
                self.pool_user.with_selector(&self.pool, |selector| {
                    selector.avoid(pe_id, Instant::now(), duration)
                });
            }
            Action::Event(event) => {
                match &event {
                    SessionEvent::Refused { .. }
                        if self.pool_user.inner.config.registrars_choice => {}
                    SessionEvent::Refused { pe } => {
                        // Before the session lets go of the PE: the refusal counts our others.
                        self.pool_user.with_selector(&self.pool, |selector| {
                            selector.refused(pe.id, Instant::now())
                        });
                        self.release_pe();
                    }
                    // Not on that PE any more, while it waits for another.
                    SessionEvent::FailoverStarted { .. } => self.release_pe(),
                    _ => {}
                }
                self.events.push_back(event)
            }
        }
    }

    fn close(&mut self) {
        if let Some(association) = self.association.take() {
            tokio::spawn(async move {
                let _ = association.close().await;
            });
        }
    }

    /// Chooses a PE: from a fresh cache when allowed, else after asking the registrar.
    async fn resolve(&mut self, fresh: bool) {
        if self.pool_user.inner.config.registrars_choice {
            self.resolve_at_registrar().await;
            return;
        }
        let now = Instant::now();
        let rng = &mut self.rng;
        // From a fresh cache: a PE, or none free among those it lists (no need to ask).
        let cached = self.pool_user.with_selector(&self.pool, |selector| {
            if fresh || !selector.is_fresh(now) {
                return None;
            }
            Some(
                selector
                    .choose(now, rng)
                    .ok_or_else(|| selector.cached_len()),
            )
        });
        match cached {
            Some(Ok(pe)) => {
                self.resolved(now, Some(pe), None);
                return;
            }
            Some(Err(listed)) if listed > 0 => {
                self.busy(now, listed);
                return;
            }
            _ => {}
        }
        match self.pool_user.resolve(&self.pool, ALL_ITEMS).await {
            Ok(resolution) => {
                let now = Instant::now();
                let rng = &mut self.rng;
                let chosen = self.pool_user.with_selector(&self.pool, |selector| {
                    selector.store(&resolution.elements, now);
                    selector.choose(now, rng)
                });
                // Listed but all avoided: full (refused) or failed moments ago.
                if chosen.is_none() && !resolution.elements.is_empty() {
                    self.busy(now, resolution.elements.len());
                    return;
                }
                self.resolved(now, chosen, None);
            }
            Err(error) => self.resolved(Instant::now(), None, Some(error.to_string())),
        }
    }

    /// [`PoolUserConfig::registrars_choice`]: the registrar's first choice this session has
    /// not seen fail.
    async fn resolve_at_registrar(&mut self) {
        match self.pool_user.resolve(&self.pool, ALL_ITEMS).await {
            Ok(resolution) => {
                let now = Instant::now();
                self.own_avoid.retain(|_, until| now < *until);
                let chosen = resolution
                    .elements
                    .iter()
                    .filter_map(PeCandidate::from_pool_element)
                    .find(|pe| !self.own_avoid.contains_key(&pe.id));
                if chosen.is_none() && !resolution.elements.is_empty() {
                    self.busy(now, resolution.elements.len());
                    return;
                }
                self.state.handle_resolved(now, chosen, None);
            }
            Err(error) => self
                .state
                .handle_resolved(Instant::now(), None, Some(error.to_string())),
        }
    }

    /// The pool lists `listed` PEs but none is free (full or failed moments ago).
    fn busy(&mut self, now: Instant, listed: usize) {
        let detail = format!("all {listed} listed pool elements full or failed just now");
        self.state.handle_busy(now, detail);
    }

    /// Passes a resolution's outcome on; a chosen PE now counts this session (and the PE it
    /// had before no longer does).
    fn resolved(&mut self, now: Instant, chosen: Option<PeCandidate>, detail: Option<String>) {
        if let Some(pe) = &chosen {
            self.release_pe();
            self.holding = Some(pe.id);
        }
        self.state.handle_resolved(now, chosen, detail);
    }

    /// The selector no longer counts this session on its PE.
    fn release_pe(&mut self) {
        if let Some(pe_id) = self.holding.take() {
            self.pool_user
                .with_selector(&self.pool, |selector| selector.release(pe_id));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release_pe();
        if let Some(association) = self.association.take() {
            association.abort();
        }
    }
}
