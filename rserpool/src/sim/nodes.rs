//! The processes of the simulation: each wraps one role's sans-I/O machines and turns their
//! actions into [`Output`]s for the network, as that role's tokio driver does.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::counting::{Job, Serving, job_request};
use super::{AssociationId, End, Output, PeSpec, PuSpec, Record, Sink};
use crate::discovery::RegistrarTable;
use crate::pe::{Action as PeAction, Registration, RegistrationConfig};
use crate::pu::selector::{PeCandidate, PeSelector};
use crate::pu::session::{Action as SessionAction, SessionEvent, SessionState};
use crate::registrar::{Registrar, RegistrarConfig, Transmit};
use crate::transport::{AssociationError, Frame, PPID_ASAP};
use crate::wire::{AsapMessage, PeId, PoolHandle, TransportAddress};

fn asap_frame(message: &AsapMessage) -> Frame {
    Frame::new(
        PPID_ASAP,
        message
            .to_bytes()
            .expect("the machines build encodable messages"),
    )
}

fn decode_asap(frame: &Frame) -> Option<AsapMessage> {
    (frame.ppid == PPID_ASAP)
        .then(|| AsapMessage::decode(&frame.payload).ok())
        .flatten()
        .map(|decoded| decoded.message)
}

/// A connection attempt's outcome, for an end that may have given the attempt up meanwhile.
enum Outcome {
    Up(AssociationId),
    Failed,
    /// Nobody waits for it any more (an association that came up is closed again).
    Forgotten,
}

fn connect_outcome(
    id: Option<AssociationId>,
    wanted: &mut bool,
    from: End,
    outputs: &mut Vec<Output>,
) -> Outcome {
    match (id, std::mem::take(wanted)) {
        (Some(id), true) => Outcome::Up(id),
        (Some(id), false) => {
            outputs.push(Output::Close { id, from });
            Outcome::Forgotten
        }
        (None, true) => Outcome::Failed,
        (None, false) => Outcome::Forgotten,
    }
}

pub(super) struct RegistrarNode {
    pub(super) address: SocketAddr,
    /// Where its ENRP peers reach it.
    pub(super) enrp_address: SocketAddr,
    pub(super) core: Registrar,
}

impl RegistrarNode {
    pub(super) fn new(address: SocketAddr, config: RegistrarConfig) -> Self {
        RegistrarNode {
            address,
            enrp_address: SocketAddr::new(address.ip(), crate::transport::ENRP_PORT),
            core: Registrar::new(config),
        }
    }

    pub(super) fn drain(&mut self, index: usize, sink: &mut Sink<'_>) {
        let from = End::Registrar(index);
        while let Some(transmit) = self.core.poll_transmit() {
            sink.output(match transmit {
                Transmit::Send {
                    association,
                    payload,
                } => Output::Send {
                    id: association,
                    from,
                    frame: Frame::new(PPID_ASAP, payload),
                },
                Transmit::Close { association } => Output::Abort {
                    id: association,
                    from,
                },
                Transmit::Enrp { to, payload } => Output::Enrp {
                    from: index,
                    to,
                    payload,
                },
                Transmit::TakeoverKeepAlive { pe, payload } => Output::TakeoverKeepAlive {
                    from: index,
                    pe,
                    payload,
                },
            });
        }
        while let Some(event) = self.core.poll_event() {
            sink.record(Record::Registrar(index, event));
        }
    }
}

pub(super) struct PeNode {
    index: usize,
    pub(super) address: SocketAddr,
    pub(super) pe_id: PeId,
    pub(super) pool: PoolHandle,
    pub(super) registration: Registration,
    spec: PeSpec,
    /// The registrar association, once connected.
    registrar_association: Option<AssociationId>,
    /// A connection attempt is outstanding and still wanted.
    connecting: bool,
    /// Sessions: `None` until the first message arrived.
    sessions: BTreeMap<AssociationId, Option<Serving>>,
    outputs: Vec<Output>,
}

impl PeNode {
    pub(super) fn new(
        index: usize,
        spec: PeSpec,
        pe_id: PeId,
        address: SocketAddr,
        registrars: Vec<SocketAddr>,
        now: Instant,
    ) -> Self {
        let config = RegistrationConfig::new(
            spec.pool.clone(),
            pe_id,
            spec.policy,
            TransportAddress::Tcp {
                port: address.port(),
                address: address.ip(),
            },
            spec.rereg_interval,
        );
        PeNode {
            index,
            address,
            pe_id,
            pool: spec.pool.clone(),
            registration: Registration::new(config, RegistrarTable::new(registrars), now),
            spec,
            registrar_association: None,
            connecting: false,
            sessions: BTreeMap::new(),
            outputs: Vec::new(),
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self
            .sessions
            .values()
            .flatten()
            .filter_map(Serving::poll_timeout);
        self.registration
            .poll_timeout()
            .into_iter()
            .chain(sessions)
            .min()
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if self.registration.poll_timeout().is_some_and(|at| at <= now) {
            self.registration.handle_timeout(now);
        }
        let from = End::PeSession(self.index);
        let mut frames = Vec::new();
        for (&id, serving) in &mut self.sessions {
            let Some(serving) = serving else { continue };
            serving.handle_timeout(
                now,
                self.spec.item_interval,
                self.spec.cookie_every,
                self.spec.hostile,
                &mut frames,
            );
            for frame in frames.drain(..) {
                self.outputs.push(Output::Send { id, from, frame });
            }
        }
    }

    pub(super) fn drain(&mut self, sink: &mut Sink<'_>) {
        let from = End::PeRegistration(self.index);
        while let Some(action) = self.registration.poll_action() {
            match action {
                PeAction::Connect(address) => {
                    self.connecting = true;
                    sink.output(Output::Connect { from, to: address });
                }
                PeAction::Send(message) => {
                    if let Some(id) = self.registrar_association {
                        sink.output(Output::Send {
                            id,
                            from,
                            frame: asap_frame(&message),
                        });
                    }
                }
                PeAction::Disconnect => {
                    self.connecting = false;
                    if let Some(id) = self.registrar_association.take() {
                        sink.output(Output::Close { id, from });
                    }
                }
            }
        }
        while let Some(event) = self.registration.poll_event() {
            sink.record(Record::Pe(self.index, event));
        }
        for output in self.outputs.drain(..) {
            sink.output(output);
        }
    }

    pub(super) fn registration_connected(&mut self, id: Option<AssociationId>, now: Instant) {
        let from = End::PeRegistration(self.index);
        match connect_outcome(id, &mut self.connecting, from, &mut self.outputs) {
            Outcome::Up(id) => {
                self.registrar_association = Some(id);
                self.registration.handle_connected(now);
            }
            Outcome::Failed => self.registration.handle_connect_failed(now),
            Outcome::Forgotten => {}
        }
    }

    pub(super) fn registration_frame(&mut self, frame: &Frame, now: Instant) {
        if let Some(message) = decode_asap(frame) {
            self.registration.handle_message(message, now);
        }
    }

    pub(super) fn registration_closed(&mut self, id: AssociationId, now: Instant) {
        if self.registrar_association == Some(id) {
            self.registrar_association = None;
            self.registration.handle_disconnected(now);
        }
    }

    pub(super) fn session_opened(&mut self, id: AssociationId) {
        if self.sessions.len() >= self.spec.max_sessions {
            // Full: refuse by closing before any frame, as our pool element does.
            self.outputs.push(Output::Close {
                id,
                from: End::PeSession(self.index),
            });
            return;
        }
        self.sessions.insert(id, None);
    }

    pub(super) fn session_frame(&mut self, id: AssociationId, frame: &Frame, now: Instant) {
        let Some(slot @ None) = self.sessions.get_mut(&id) else {
            return;
        };
        match Serving::start(frame, now, self.spec.item_interval) {
            Some(serving) => *slot = Some(serving),
            None => {
                self.sessions.remove(&id);
                self.outputs.push(Output::Abort {
                    id,
                    from: End::PeSession(self.index),
                });
            }
        }
        self.update_load(now);
    }

    pub(super) fn session_closed(&mut self, id: AssociationId) {
        self.sessions.remove(&id);
    }

    /// A registrar taking this PE over opened association `id` to its data address and sent
    /// `payload` (a Keep-Alive) on it; `registrar` is where it comes from. As the pool element
    /// does: acknowledge, and with the H flag make it the registrar association.
    pub(super) fn takeover_association(
        &mut self,
        id: AssociationId,
        registrar: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) {
        let from = End::PeRegistration(self.index);
        let Some(AsapMessage::EndpointKeepAlive {
            home, server_id, ..
        }) = AsapMessage::decode(payload).ok().map(|d| d.message)
        else {
            self.outputs.push(Output::Abort { id, from });
            return;
        };
        self.outputs.push(Output::Send {
            id,
            from,
            frame: asap_frame(&self.registration.keep_alive_ack()),
        });
        if home
            && self
                .registration
                .handle_home_association(server_id, registrar, now)
        {
            self.connecting = false;
            if let Some(old) = self.registrar_association.replace(id) {
                self.outputs.push(Output::Abort { id: old, from });
            }
            return;
        }
        self.registration
            .handle_foreign_keep_alive(home, server_id, now);
        self.outputs.push(Output::Close { id, from });
    }

    /// Final cookies, graceful closes, deregistration.
    pub(super) fn shutdown(&mut self, now: Instant) {
        let from = End::PeSession(self.index);
        for (id, serving) in std::mem::take(&mut self.sessions) {
            if let Some(serving) = serving {
                self.outputs.push(Output::Send {
                    id,
                    from,
                    frame: serving.cookie_frame(),
                });
            }
            self.outputs.push(Output::Close { id, from });
        }
        self.registration.shutdown(now);
    }

    fn update_load(&mut self, now: Instant) {
        let busy = self.sessions.values().flatten().count();
        self.registration
            .set_load(busy as f64 / self.spec.max_sessions.max(1) as f64, now);
    }
}

struct PuSession {
    state: SessionState,
    association: Option<AssociationId>,
    /// A connection attempt is outstanding and still wanted.
    connecting: bool,
    /// The PE the selector counts this session on.
    holding: Option<PeId>,
    job: Job,
}

/// The pool user's registrar association: one at a time, the next registrar when one fails or
/// does not answer in time.
#[derive(Default)]
struct RegistrarLink {
    association: Option<AssociationId>,
    connecting: bool,
    /// Which of the known registrars is current.
    cursor: usize,
    /// Registrars tried in a row without an answer.
    failures: usize,
    /// Sessions waiting for a resolution not yet sent.
    queued: VecDeque<usize>,
    /// Resolutions sent, oldest first, with when.
    awaiting: VecDeque<(usize, Instant)>,
    /// Endpoint Unreachable reports not yet sent.
    reports: Vec<PeId>,
}

pub(super) struct PuNode {
    pub(super) address: SocketAddr,
    spec: PuSpec,
    /// The addresses of `spec.registrars`.
    registrars: Vec<SocketAddr>,
    selector: PeSelector,
    link: RegistrarLink,
    sessions: Vec<PuSession>,
    outputs: Vec<Output>,
    index: usize,
    rng: StdRng,
}

impl PuNode {
    pub(super) fn new(
        index: usize,
        spec: PuSpec,
        address: SocketAddr,
        registrars: Vec<SocketAddr>,
        seed: u64,
    ) -> Self {
        PuNode {
            address,
            registrars,
            selector: PeSelector::new(spec.stale_cache),
            spec,
            link: RegistrarLink::default(),
            sessions: Vec::new(),
            outputs: Vec::new(),
            index,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub(super) fn start_job(&mut self, items: u32, now: Instant) -> usize {
        let mut state = SessionState::new(self.spec.session.clone(), job_request(items));
        state.start(now);
        self.sessions.push(PuSession {
            state,
            association: None,
            connecting: false,
            holding: None,
            job: Job::new(items),
        });
        self.sessions.len() - 1
    }

    pub(super) fn job(&self, session: usize) -> &Job {
        &self.sessions[session].job
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let answer_due = self
            .link
            .awaiting
            .front()
            .map(|(_, sent)| *sent + self.spec.registrar_timeout);
        self.sessions
            .iter()
            .filter_map(|s| s.state.poll_timeout())
            .chain(answer_due)
            .min()
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        for session in &mut self.sessions {
            if session.state.poll_timeout().is_some_and(|at| at <= now) {
                session.state.handle_timeout(now);
            }
        }
        if self
            .link
            .awaiting
            .front()
            .is_some_and(|(_, sent)| *sent + self.spec.registrar_timeout <= now)
        {
            // The registrar does not answer: give it up, ask the next one.
            if let Some(id) = self.link.association.take() {
                self.outputs.push(Output::Abort {
                    id,
                    from: End::PuRegistrar(self.index),
                });
            }
            self.registrar_failed(now);
        }
    }

    pub(super) fn drain(&mut self, sink: &mut Sink<'_>) {
        let now = sink.now;
        for session in 0..self.sessions.len() {
            while let Some(action) = self.sessions[session].state.poll_action() {
                self.execute(session, action, sink);
            }
        }
        self.send_queued(now);
        for output in self.outputs.drain(..) {
            sink.output(output);
        }
    }

    fn execute(&mut self, session: usize, action: SessionAction, sink: &mut Sink<'_>) {
        let now = sink.now;
        let from = End::PuSession(self.index, session);
        let slot = &mut self.sessions[session];
        match action {
            SessionAction::Resolve { fresh } => self.resolve(session, fresh, now),
            SessionAction::Connect(pe) => {
                slot.connecting = true;
                self.outputs.push(Output::Connect {
                    from,
                    to: pe.address,
                });
            }
            SessionAction::Send(frame) => {
                if let Some(id) = slot.association {
                    self.outputs.push(Output::Send { id, from, frame });
                }
            }
            SessionAction::Abort => {
                slot.connecting = false;
                if let Some(id) = slot.association.take() {
                    self.outputs.push(Output::Abort { id, from });
                }
            }
            SessionAction::Close => {
                slot.connecting = false;
                if let Some(id) = slot.association.take() {
                    self.outputs.push(Output::Close { id, from });
                }
            }
            SessionAction::ReportUnreachable { pe_id } => {
                self.report_unreachable(pe_id);
                self.tell(session, SessionEvent::UnreachableReported { pe_id }, sink);
            }
            SessionAction::Avoid { pe_id, duration } => self.selector.avoid(pe_id, now, duration),
            SessionAction::Event(event) => {
                match &event {
                    SessionEvent::Refused { pe } => {
                        self.selector.refused(pe.id, now);
                        self.release(session);
                    }
                    SessionEvent::FailoverStarted { .. } | SessionEvent::Finished => {
                        self.release(session)
                    }
                    SessionEvent::Connected { .. } => self.sessions[session].job.connected(),
                    SessionEvent::Data { frame, .. } => {
                        let slot = &mut self.sessions[session];
                        if slot.job.record(frame) {
                            slot.state.handle_progress(now);
                        }
                        if slot.job.is_complete() && slot.job.finished_at.is_none() {
                            slot.job.finished_at = Some(now);
                            slot.state.finish(now);
                        }
                    }
                    _ => {}
                }
                self.tell(session, event, sink);
            }
        }
    }

    /// The session's story, in its job and in the records.
    fn tell(&mut self, session: usize, event: SessionEvent, sink: &mut Sink<'_>) {
        sink.record(Record::Session {
            pu: self.index,
            session,
            event: event.clone(),
        });
        self.sessions[session].job.events.push((sink.now, event));
    }

    pub(super) fn report_unreachable(&mut self, pe_id: PeId) {
        self.link.reports.push(pe_id);
        self.ensure_registrar();
    }

    /// As the driver: from a fresh cache when allowed, else ask the registrar.
    fn resolve(&mut self, session: usize, fresh: bool, now: Instant) {
        if !fresh && self.selector.is_fresh(now) {
            match self.selector.choose(now, &mut self.rng) {
                Some(pe) => return self.resolved(session, Some(pe), None, now),
                None if self.selector.cached_len() > 0 => {
                    return self.sessions[session]
                        .state
                        .handle_busy(now, "all listed pool elements busy".into());
                }
                None => {}
            }
        }
        self.link.queued.push_back(session);
        self.ensure_registrar();
    }

    fn resolved(
        &mut self,
        session: usize,
        chosen: Option<PeCandidate>,
        detail: Option<String>,
        now: Instant,
    ) {
        if let Some(pe) = &chosen {
            self.release(session);
            self.sessions[session].holding = Some(pe.id);
        }
        self.sessions[session]
            .state
            .handle_resolved(now, chosen, detail);
    }

    fn release(&mut self, session: usize) {
        if let Some(pe_id) = self.sessions[session].holding.take() {
            self.selector.release(pe_id);
        }
    }

    fn ensure_registrar(&mut self) {
        if self.link.association.is_none()
            && !self.link.connecting
            && let Some(&to) = self.registrars.get(self.link.cursor)
        {
            self.link.connecting = true;
            self.outputs.push(Output::Connect {
                from: End::PuRegistrar(self.index),
                to,
            });
        }
    }

    fn send_queued(&mut self, now: Instant) {
        let Some(id) = self.link.association else {
            return;
        };
        let from = End::PuRegistrar(self.index);
        for pe_id in self.link.reports.drain(..) {
            let message = AsapMessage::EndpointUnreachable {
                pool_handle: self.spec.pool.clone(),
                pe_id,
            };
            self.outputs.push(Output::Send {
                id,
                from,
                frame: asap_frame(&message),
            });
        }
        while let Some(session) = self.link.queued.pop_front() {
            let message = AsapMessage::HandleResolution {
                subscribe: false,
                pool_handle: self.spec.pool.clone(),
                items: Some(crate::pu::ALL_ITEMS),
            };
            self.outputs.push(Output::Send {
                id,
                from,
                frame: asap_frame(&message),
            });
            self.link.awaiting.push_back((session, now));
        }
    }

    pub(super) fn registrar_connected(&mut self, id: Option<AssociationId>, now: Instant) {
        let from = End::PuRegistrar(self.index);
        match connect_outcome(id, &mut self.link.connecting, from, &mut self.outputs) {
            Outcome::Up(id) => {
                self.link.association = Some(id);
                self.link.failures = 0;
            }
            Outcome::Failed => self.registrar_failed(now),
            Outcome::Forgotten => {}
        }
    }

    pub(super) fn registrar_frame(&mut self, frame: &Frame, now: Instant) {
        let Some(AsapMessage::HandleResolutionResponse {
            pool_handle,
            pool_elements,
            ..
        }) = decode_asap(frame)
        else {
            return;
        };
        if pool_handle != self.spec.pool {
            return;
        }
        let Some((session, _)) = self.link.awaiting.pop_front() else {
            return;
        };
        self.selector.store(&pool_elements, now);
        let chosen = self.selector.choose(now, &mut self.rng);
        if chosen.is_none() && !pool_elements.is_empty() {
            let detail = format!("all {} listed pool elements busy", pool_elements.len());
            self.sessions[session].state.handle_busy(now, detail);
        } else {
            self.resolved(session, chosen, None, now);
        }
    }

    pub(super) fn registrar_closed(&mut self, id: AssociationId, now: Instant) {
        if self.link.association == Some(id) {
            self.link.association = None;
            self.registrar_failed(now);
        }
    }

    /// The current registrar is lost: ask again at the next one; after every registrar failed
    /// in a row, the waiting sessions hear that no registrar answers.
    fn registrar_failed(&mut self, now: Instant) {
        let unanswered: Vec<usize> = self.link.awaiting.drain(..).map(|(s, _)| s).collect();
        for session in unanswered.into_iter().rev() {
            self.link.queued.push_front(session);
        }
        self.link.cursor = (self.link.cursor + 1) % self.registrars.len().max(1);
        self.link.failures += 1;
        if self.link.failures >= self.registrars.len() {
            self.link.failures = 0;
            for session in std::mem::take(&mut self.link.queued) {
                self.sessions[session].state.handle_resolved(
                    now,
                    None,
                    Some("no registrar answers".into()),
                );
            }
            return;
        }
        self.ensure_registrar();
    }

    pub(super) fn session_connected(
        &mut self,
        session: usize,
        id: Option<AssociationId>,
        now: Instant,
    ) {
        let slot = &mut self.sessions[session];
        let from = End::PuSession(self.index, session);
        match connect_outcome(id, &mut slot.connecting, from, &mut self.outputs) {
            Outcome::Up(id) => {
                slot.association = Some(id);
                slot.state.handle_connected(now);
            }
            Outcome::Failed => slot
                .state
                .handle_connect_failed(now, "connection refused".into()),
            Outcome::Forgotten => {}
        }
    }

    pub(super) fn session_frame(&mut self, session: usize, frame: Frame, now: Instant) {
        self.sessions[session].state.handle_frame(now, frame);
    }

    pub(super) fn session_closed(
        &mut self,
        session: usize,
        id: AssociationId,
        error: &AssociationError,
        now: Instant,
    ) {
        let slot = &mut self.sessions[session];
        if slot.association == Some(id) {
            slot.association = None;
            slot.state.handle_closed(now, error);
        }
    }
}
