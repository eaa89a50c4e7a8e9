//! The ASAP pool element side (RFC 5352 §3): registration with a home registrar.
//!
//! [`Registration`] is a sans-I/O state machine: the caller reports connection outcomes,
//! received ASAP messages and announces, and the passing of time (`Instant`s) with `handle_*`,
//! and collects [`Action`]s (connect, send, disconnect), [`Event`]s (registered, rejected,
//! registrar lost, ...) and the next timeout with `poll_*`.
//! [`driver`] runs it on tokio over framed-TCP associations.
//!
//! Behaviour:
//! - Registers one User Transport under the configured pool handle and policy, with a
//!   registration life of 3 × the re-registration interval (milliseconds on the wire, as rsplib).
//! - Re-registers every re-registration interval, and at once when the load changes by at
//!   least 1 % under an adaptive policy (rsplib's rule).
//! - Answers Endpoint Keep-Alives with Keep-Alive Acks; the server identifier of a keep-alive
//!   on the association names the home registrar, and an H-flagged one from another server
//!   makes that server the new home (RFC 5352 KA2.4).
//! - A lost association, a registration timeout or a rejection marks the registrar failed in its
//!   own [`RegistrarTable`] and another candidate is tried (or the same one later); nothing here
//!   touches the PE's sessions.
//! - [`Registration::shutdown`] deregisters (bounded by the response timeout) and stops.

pub mod driver;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::discovery::RegistrarTable;
use crate::wire::policy::fraction_to_wire;
use crate::wire::{
    AsapMessage, CauseCode, PeId, Policy, PoolElement, PoolHandle, TransportAddress,
};

/// rsplib's `-registrarrequesttimeout` / `-registrarresponsetimeout` default.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before trying again after a connection attempt failed or no registrar is known.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Load change (as a wire fraction of `u32::MAX`) that triggers an immediate re-registration
/// under adaptive policies: 1 %.
pub const LOAD_UPDATE_THRESHOLD: u32 = u32::MAX / 100;

/// What the pool element registers.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// Pool to join.
    pub pool_handle: PoolHandle,
    /// Our identifier (random unless configured).
    pub pe_id: PeId,
    /// Policy and its values; the load field is managed by [`Registration::set_load`].
    pub policy: Policy,
    /// Where pool users reach us.
    pub user_transport: TransportAddress,
    /// Re-registration interval; the registration life is three times it.
    pub rereg_interval: Duration,
    /// How long to wait for a (de)registration response.
    pub response_timeout: Duration,
    /// Pause between connection attempts when the last one failed.
    pub retry_interval: Duration,
    /// Load change (a wire fraction of `u32::MAX`) that re-registers at once under adaptive
    /// policies ([`LOAD_UPDATE_THRESHOLD`], rsplib's 1 %, unless set).
    pub load_update_threshold: u32,
}

impl RegistrationConfig {
    /// A configuration with the default timeouts.
    pub fn new(
        pool_handle: PoolHandle,
        pe_id: PeId,
        policy: Policy,
        user_transport: TransportAddress,
        rereg_interval: Duration,
    ) -> Self {
        RegistrationConfig {
            pool_handle,
            pe_id,
            policy,
            user_transport,
            rereg_interval,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            load_update_threshold: LOAD_UPDATE_THRESHOLD,
        }
    }

    /// Registration life in milliseconds: 3 × the re-registration interval (saturating).
    pub fn registration_life_ms(&self) -> u32 {
        let ms = self.rereg_interval.as_millis().saturating_mul(3);
        u32::try_from(ms).unwrap_or(u32::MAX)
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open an association to this registrar; report with `handle_connected`/`handle_connect_failed`.
    Connect(SocketAddr),
    /// Send this message on the current association.
    Send(AsapMessage),
    /// Close the current association (or abandon the connection attempt).
    Disconnect,
}

/// Why a registrar was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The association ended.
    AssociationClosed,
    /// No (de)registration response within the response timeout.
    ResponseTimeout,
    /// The registrar rejected the registration.
    Rejected,
    /// An H-flagged keep-alive named another home registrar that we know how to reach.
    HomeMoved,
}

impl LossReason {
    /// A short word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::AssociationClosed => "association-closed",
            LossReason::ResponseTimeout => "response-timeout",
            LossReason::Rejected => "rejected",
            LossReason::HomeMoved => "home-moved",
        }
    }
}

/// What happened, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A registration was granted. `first` is true for the first grant on this association.
    Registered {
        registrar: SocketAddr,
        home: u32,
        first: bool,
    },
    /// The registrar rejected the registration.
    Rejected {
        registrar: SocketAddr,
        cause: Option<CauseCode>,
    },
    /// The home registrar identifier changed (keep-alive's server identifier, H flag).
    HomeChanged { home: u32 },
    /// The registrar association was given up; another will be tried.
    RegistrarLost {
        registrar: SocketAddr,
        reason: LossReason,
    },
    /// Shut down; `confirmed` tells whether the registrar answered the deregistration.
    Deregistered { confirmed: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// No association; try the best candidate at `retry_at`.
    Searching { retry_at: Instant },
    /// Waiting for the driver to report the connection outcome.
    Connecting { registrar: SocketAddr },
    /// Association up.
    Connected {
        registrar: SocketAddr,
        /// A grant was received on this association.
        registered: bool,
        /// Deadline of the outstanding registration, if one is outstanding.
        awaiting: Option<Instant>,
        /// When the next periodic re-registration is due (once registered).
        rereg_at: Option<Instant>,
    },
    /// Deregistration sent; waiting for the answer.
    Deregistering { deadline: Instant },
    /// Done; nothing more happens.
    Stopped,
}

/// The registration state machine of one pool element.
#[derive(Debug)]
pub struct Registration {
    config: RegistrationConfig,
    /// The registrars we know of: configured ones and those heard in announces.
    registrars: RegistrarTable,
    state: State,
    /// Home registrar identifier; 0 = unknown.
    home: u32,
    /// Current load (wire fraction) and the one last registered.
    load: u32,
    registered_load: u32,
    /// A load change arrived while a registration was outstanding.
    update_pending: bool,
    /// Registrar to move to after an H-flagged keep-alive from a known other registrar.
    preferred: Option<SocketAddr>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Registration {
    /// A client that starts looking for a registrar among `registrars` at `now`.
    pub fn new(config: RegistrationConfig, registrars: RegistrarTable, now: Instant) -> Self {
        Registration {
            config,
            registrars,
            state: State::Searching { retry_at: now },
            home: 0,
            load: 0,
            registered_load: 0,
            update_pending: false,
            preferred: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistrationConfig {
        &self.config
    }

    /// The home registrar identifier (0 = not known yet).
    pub fn home(&self) -> u32 {
        self.home
    }

    /// The registrar we are registered with, if any.
    pub fn registered_with(&self) -> Option<SocketAddr> {
        match self.state {
            State::Connected {
                registrar,
                registered: true,
                ..
            } => Some(registrar),
            _ => None,
        }
    }

    /// The registrars known so far.
    pub fn registrars(&self) -> &RegistrarTable {
        &self.registrars
    }

    /// A Server Announce datagram from `source` (ignored unless well formed): the registrar
    /// it names becomes a candidate, and registrars silent for too long are forgotten.
    pub fn handle_announce(&mut self, source: SocketAddr, payload: &[u8], now: Instant) {
        self.registrars.expire(now);
        if let Some(registrar) = self.registrars.handle_announce(source, payload, now) {
            tracing::trace!(address = %registrar.address, id = ?registrar.id, "server announce");
        }
    }

    /// Whether the client has stopped (after [`Registration::shutdown`]).
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Registration::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Searching { retry_at } => Some(*retry_at),
            State::Connected {
                awaiting, rereg_at, ..
            } => match (awaiting, rereg_at) {
                (Some(a), Some(r)) => Some((*a).min(*r)),
                (a, r) => a.or(*r),
            },
            State::Deregistering { deadline } => Some(*deadline),
            State::Connecting { .. } | State::Stopped => None,
        }
    }

    /// The Registration message as it would be sent now.
    pub fn registration_message(&self) -> AsapMessage {
        AsapMessage::Registration {
            pool_handle: self.config.pool_handle.clone(),
            pool_element: PoolElement {
                id: self.config.pe_id,
                home_registrar: self.home,
                registration_life_ms: self.config.registration_life_ms(),
                user_transport: self.config.user_transport.clone(),
                policy: self.config.policy.with_load(self.load),
                asap_transport: None,
            },
        }
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state.clone() {
            State::Searching { retry_at } if now >= retry_at => self.try_next_registrar(now),
            State::Connected {
                registrar,
                awaiting,
                rereg_at,
                ..
            } => {
                if awaiting.is_some_and(|deadline| now >= deadline) {
                    self.lose(registrar, LossReason::ResponseTimeout, now);
                } else if awaiting.is_none() && rereg_at.is_some_and(|at| now >= at) {
                    self.send_registration(now);
                }
            }
            State::Deregistering { deadline } if now >= deadline => self.stop(false),
            _ => {}
        }
    }

    /// The association asked for by [`Action::Connect`] is up.
    pub fn handle_connected(&mut self, now: Instant) {
        if let State::Connecting { registrar } = self.state {
            // The registrar we register with becomes home (RFC 5352 §3.1 rule 4); its
            // identifier is known if it announced itself, else a keep-alive will tell.
            self.home = self
                .registrars
                .candidates(now)
                .into_iter()
                .find(|r| r.address == registrar)
                .and_then(|r| r.id)
                .unwrap_or(0);
            self.state = State::Connected {
                registrar,
                registered: false,
                awaiting: None,
                rereg_at: None,
            };
            self.send_registration(now);
        }
    }

    /// The connection attempt failed.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if let State::Connecting { registrar } = self.state {
            self.mark_failed(registrar, now);
            self.state = State::Searching {
                retry_at: now + self.config.retry_interval,
            };
        }
    }

    /// The association to the registrar ended.
    pub fn handle_disconnected(&mut self, now: Instant) {
        match self.state {
            State::Connected { registrar, .. } | State::Connecting { registrar } => {
                let was_registered = matches!(
                    self.state,
                    State::Connected {
                        registered: true,
                        ..
                    }
                );
                self.mark_failed(registrar, now);
                self.events.push_back(Event::RegistrarLost {
                    registrar,
                    reason: LossReason::AssociationClosed,
                });
                // After a registration, another registrar at once (the failed one is tried
                // last). An association closed before any grant was refused (TLS, limits):
                // retrying at once would hammer the registrar.
                let retry_at = match was_registered {
                    true => now,
                    false => now + self.config.retry_interval,
                };
                self.state = State::Searching { retry_at };
            }
            State::Deregistering { .. } => self.stop(false),
            State::Searching { .. } | State::Stopped => {}
        }
    }

    /// An ASAP message arrived on the registrar association.
    pub fn handle_message(&mut self, message: AsapMessage, now: Instant) {
        match message {
            AsapMessage::RegistrationResponse {
                rejected,
                pool_handle,
                pe_id,
                error,
            } if pool_handle == self.config.pool_handle && pe_id == self.config.pe_id => {
                self.handle_registration_response(rejected, error.and_then(|e| e.first_code()), now)
            }
            AsapMessage::DeregistrationResponse { pe_id, .. } if pe_id == self.config.pe_id => {
                if matches!(self.state, State::Deregistering { .. }) {
                    self.stop(true);
                }
            }
            AsapMessage::EndpointKeepAlive {
                home, server_id, ..
            } => self.handle_keep_alive(home, server_id, now),
            _ => {}
        }
    }

    /// Sets the load (fraction of capacity in use, clamped to [0, 1]). Under an adaptive
    /// policy a change of at least 1 % since the last registration re-registers at once.
    pub fn set_load(&mut self, fraction: f64, now: Instant) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self.load = fraction_to_wire(fraction).unwrap_or(0);
        if !self.config.policy.is_adaptive() {
            return;
        }
        if self.load.abs_diff(self.registered_load) < self.config.load_update_threshold {
            return;
        }
        if let State::Connected {
            registered: true,
            awaiting,
            ..
        } = self.state
        {
            if awaiting.is_some() {
                self.update_pending = true;
            } else {
                self.send_registration(now);
            }
        }
    }

    /// Deregisters (if registered) and stops.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Connected {
                registered: true, ..
            } => {
                self.actions
                    .push_back(Action::Send(AsapMessage::Deregistration {
                        pool_handle: self.config.pool_handle.clone(),
                        pe_id: self.config.pe_id,
                    }));
                self.state = State::Deregistering {
                    deadline: now + self.config.response_timeout,
                };
            }
            State::Deregistering { .. } | State::Stopped => {}
            _ => self.stop(false),
        }
    }

    fn handle_registration_response(
        &mut self,
        rejected: bool,
        cause: Option<CauseCode>,
        now: Instant,
    ) {
        let State::Connected {
            registrar,
            registered,
            ..
        } = self.state
        else {
            return;
        };
        if rejected {
            self.events.push_back(Event::Rejected { registrar, cause });
            self.mark_failed(registrar, now);
            self.actions.push_back(Action::Disconnect);
            self.events.push_back(Event::RegistrarLost {
                registrar,
                reason: LossReason::Rejected,
            });
            // A rejection is unlikely to change at once: try again after an interval.
            self.state = State::Searching {
                retry_at: now + self.config.rereg_interval,
            };
            return;
        }
        self.registrars.mark_working(registrar);
        self.state = State::Connected {
            registrar,
            registered: true,
            awaiting: None,
            rereg_at: Some(now + self.config.rereg_interval),
        };
        self.events.push_back(Event::Registered {
            registrar,
            home: self.home,
            first: !registered,
        });
        if std::mem::take(&mut self.update_pending)
            && self.load.abs_diff(self.registered_load) >= self.config.load_update_threshold
        {
            self.send_registration(now);
        }
    }

    fn handle_keep_alive(&mut self, home_flag: bool, server_id: u32, now: Instant) {
        let State::Connected { registrar, .. } = self.state else {
            return;
        };
        self.actions.push_back(Action::Send(self.keep_alive_ack()));
        // Only the home registrar sends keep-alives on our association, so its identifier is
        // our home's; H additionally asks us to treat it as home from now on.
        if server_id != self.home {
            self.adopt_home(server_id, home_flag, Some(registrar), now);
        }
    }

    /// An Endpoint Keep-Alive that arrived on another association (a registrar taking over
    /// from our failed home connects to our data address). With the H flag its sender becomes
    /// our home; if we know where it listens, we register with it there. The caller answers
    /// with [`Registration::keep_alive_ack`].
    pub fn handle_foreign_keep_alive(&mut self, home_flag: bool, server_id: u32, now: Instant) {
        if !home_flag || server_id == self.home || self.is_stopped() {
            return;
        }
        let current = match self.state {
            State::Connected { registrar, .. } | State::Connecting { registrar } => Some(registrar),
            _ => None,
        };
        self.adopt_home(server_id, true, current, now);
    }

    /// A registrar taking this PE over (ENRP) sent a Keep-Alive with the H flag on an
    /// association it opened to our data address: as rsplib's PEs do, we make that association
    /// our registrar association (the driver swaps it in when this returns true) and register
    /// over it. Only while our home is gone (not registered): a host that merely reaches our
    /// data port cannot pull a PE away from a live registrar (rsplib's PEs adopt any).
    /// `registrar` is the association's peer address.
    pub fn handle_home_association(
        &mut self,
        server_id: u32,
        registrar: SocketAddr,
        now: Instant,
    ) -> bool {
        if self.is_stopped()
            || matches!(self.state, State::Deregistering { .. })
            || self.registered_with().is_some()
        {
            return false;
        }
        if let State::Connected {
            registrar: previous,
            ..
        } = self.state
        {
            self.events.push_back(Event::RegistrarLost {
                registrar: previous,
                reason: LossReason::HomeMoved,
            });
        }
        self.home = server_id;
        self.events
            .push_back(Event::HomeChanged { home: server_id });
        self.state = State::Connected {
            registrar,
            registered: false,
            awaiting: None,
            rereg_at: None,
        };
        self.send_registration(now);
        true
    }

    /// The Keep-Alive Ack this PE answers keep-alives with.
    pub fn keep_alive_ack(&self) -> AsapMessage {
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: self.config.pool_handle.clone(),
            pe_id: self.config.pe_id,
        }
    }

    fn adopt_home(
        &mut self,
        server_id: u32,
        home_flag: bool,
        current: Option<SocketAddr>,
        now: Instant,
    ) {
        self.home = server_id;
        self.events
            .push_back(Event::HomeChanged { home: server_id });
        if !home_flag {
            return;
        }
        // A new home we know at another address: move there (re-register with it).
        let elsewhere = self
            .registrars
            .candidates(now)
            .into_iter()
            .find(|r| r.id == Some(server_id) && Some(r.address) != current)
            .map(|r| r.address);
        let Some(address) = elsewhere else { return };
        self.preferred = Some(address);
        match current {
            Some(registrar) => {
                self.actions.push_back(Action::Disconnect);
                self.events.push_back(Event::RegistrarLost {
                    registrar,
                    reason: LossReason::HomeMoved,
                });
                self.state = State::Searching { retry_at: now };
            }
            None => {
                if let State::Searching { retry_at } = &mut self.state {
                    *retry_at = now;
                }
            }
        }
    }

    fn send_registration(&mut self, now: Instant) {
        if let State::Connected {
            awaiting, rereg_at, ..
        } = &mut self.state
        {
            *awaiting = Some(now + self.config.response_timeout);
            *rereg_at = None;
            self.registered_load = self.load;
            let message = self.registration_message();
            self.actions.push_back(Action::Send(message));
        }
    }

    fn try_next_registrar(&mut self, now: Instant) {
        let preferred = self.preferred.take();
        let next = preferred.or_else(|| self.registrars.candidates(now).first().map(|r| r.address));
        match next {
            Some(registrar) => {
                self.state = State::Connecting { registrar };
                self.actions.push_back(Action::Connect(registrar));
            }
            // Nobody known yet (waiting for announces or a restart).
            None => {
                self.state = State::Searching {
                    retry_at: now + self.config.retry_interval,
                }
            }
        }
    }

    fn lose(&mut self, registrar: SocketAddr, reason: LossReason, now: Instant) {
        self.mark_failed(registrar, now);
        self.actions.push_back(Action::Disconnect);
        self.events
            .push_back(Event::RegistrarLost { registrar, reason });
        self.state = State::Searching { retry_at: now };
    }

    fn mark_failed(&mut self, registrar: SocketAddr, now: Instant) {
        self.registrars.mark_failed(registrar, now);
    }

    fn stop(&mut self, confirmed: bool) {
        if !matches!(self.state, State::Searching { .. } | State::Stopped) {
            self.actions.push_back(Action::Disconnect);
        }
        self.state = State::Stopped;
        self.events.push_back(Event::Deregistered { confirmed });
    }
}

#[cfg(test)]
mod tests;
