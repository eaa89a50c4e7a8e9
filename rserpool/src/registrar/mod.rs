//! The registrar (ENRP server in its ASAP role, RFC 5352): a sans-I/O state machine plus a thin
//! tokio [`driver`].
//!
//! [`Registrar`] takes events — an association opened or closed, ASAP bytes received on
//! association K, time passing — each with `now`, and produces [`Transmit`]s (bytes to send to
//! association K, or "close K"), [`RegistrarEvent`]s worth logging, and the next timer deadline.
//! It owns the [`Handlespace`] and the [`keepalive`] supervision of its PEs, and, once
//! [`Registrar::start_enrp`] is called, keeps that handlespace together with its peers
//! ([`enrp`]: ENRP messages in and out, takeovers).
//!
//! Decisions worth knowing:
//! * Address rule: a PE registers its user transport (TCP, UDP, ...). An unspecified IP means
//!   "the address I connect from" and is replaced by the association's peer IP; any other IP
//!   must equal the peer IP, else the registration is rejected with Invalid Values. An opaque
//!   transport cannot be checked and is rejected likewise.
//! * Handle Resolution Responses carry each PE with exactly the transport it registered (the
//!   registrator transport the handlespace records is not sent to PUs).
//! * Handle Resolution items: rsplib's option 0x803f (absent: [`RegistrarConfig::default_hr_items`],
//!   0xffffffff: all, 0: treated as 1), capped by [`RegistrarConfig::max_hr_items`]. The S flag
//!   (subscription) is not supported: the A flag of the answer stays 0.
//! * Only the association a PE registered over may deregister it or acknowledge its
//!   Keep-Alives; a Deregistration from elsewhere is refused with cause 0xa (rejected for
//!   security reasons). Deregistering an unknown PE is granted (RFC 5352 §3.2).
//! * Endpoint Unreachable reports count once per reporting association, only from one that was
//!   handed the PE, at a bounded rate, and go when it ends; at
//!   [`RegistrarConfig::max_bad_pe_reports`] distinct reporters the PE is probed with a
//!   Keep-Alive and removed only if it does not answer ([`reports`]).
//! * Messages that fail to decode get an ASAP Error with the cause the decoder names (or
//!   nothing where RFC 5354 says to discard silently). A Registration whose pool handle is too
//!   long cannot be answered with a Registration Response (that needs the handle), so it too gets
//!   an ASAP Error (Invalid Values, with the offending TLV). Well-formed messages a registrar does
//!   not take (responses, cookies, announces, ...) are discarded.
//! * Registration life is not enforced for PEs registered directly: keep-alives supervise them
//!   (as in rsplib); the handlespace keeps the life for ENRP and PUs.

pub mod driver;
pub mod enrp;
pub mod keepalive;
mod peer_links;
pub mod reports;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::handlespace::{
    AssociationKey, Handlespace, HandlespaceConfig, RegistrationContext, RegistrationError,
    RegistrationOutcome, UnreachableOutcome,
};
use crate::wire::param::HANDLE_RESOLUTION_ALL;
use crate::wire::{
    AsapMessage, CauseCode, ErrorCause, OperationError, Parameter, PeId, PoolElement, PoolHandle,
    TransportAddress,
};
pub use enrp::{EnrpConfig, EnrpDestination};
use keepalive::{KeepAliveAction, KeepAliveConfig, KeepAliveSupervisor};
use reports::{Ignored, ReportBook, ReportConfig};

/// Settings of a [`Registrar`].
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// Our registrar (ENRP server) identifier, non-zero.
    pub id: u32,
    /// Endpoint Keep-Alive timing.
    pub keepalive: KeepAliveConfig,
    /// Distinct Endpoint Unreachable reporters that have a PE probed, and removed if it does
    /// not answer (MAX-BAD-PE-REPORT, rsplib 3; see [`reports`]).
    pub max_bad_pe_reports: usize,
    /// Which reports count, and the probe they lead to.
    pub reports: ReportConfig,
    /// PEs per Handle Resolution Response when the request does not say (rsplib 3).
    pub default_hr_items: u32,
    /// Most PEs per Handle Resolution Response, whatever the request asks; `None` = no cap.
    pub max_hr_items: Option<u32>,
    /// Handlespace limits.
    pub handlespace: HandlespaceConfig,
    /// Seed of the random source (policies, keep-alive spread); tests fix it.
    pub seed: u64,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            id: 1,
            keepalive: KeepAliveConfig::default(),
            max_bad_pe_reports: 3,
            reports: ReportConfig::default(),
            default_hr_items: 3,
            max_hr_items: None,
            handlespace: HandlespaceConfig::default(),
            seed: 0x5eed,
        }
    }
}

/// Something the driver must do on an association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send one ASAP message (PPID 11).
    Send {
        association: AssociationKey,
        payload: Vec<u8>,
    },
    /// Close the association (it misbehaved beyond answering).
    Close { association: AssociationKey },
    /// Send one ENRP message (PPID 12) to a peer registrar or the announce group.
    Enrp {
        to: EnrpDestination,
        payload: Vec<u8>,
    },
    /// ENRP takeover: send this ASAP Endpoint Keep-Alive (H flag) to a PE at its user
    /// transport, on a new association.
    TakeoverKeepAlive {
        pe: TransportAddress,
        payload: Vec<u8>,
    },
}

/// Why a PE left the handlespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    Deregistered,
    KeepAliveTimeout,
    AssociationClosed,
    UnreachableReports,
    /// Its home registrar said so (ENRP HANDLE_UPDATE DEL).
    PeerUpdate,
    /// Its home registrar's checksum audit found it gone there.
    Resynchronised,
    /// Learned from a peer and not renewed within its registration life.
    RegistrationLifeExpired,
}

impl RemovalReason {
    /// The `reason=` value of the `pe removed` log line.
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Deregistered => "deregistered",
            RemovalReason::KeepAliveTimeout => "keepalive-timeout",
            RemovalReason::AssociationClosed => "association-closed",
            RemovalReason::UnreachableReports => "unreachable-reports",
            RemovalReason::PeerUpdate => "peer-update",
            RemovalReason::Resynchronised => "resynchronised",
            RemovalReason::RegistrationLifeExpired => "registration-life-expired",
        }
    }
}

/// Something worth logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// A new PE (`reregistration == false`) or an update of a known one.
    Registered {
        pool: PoolHandle,
        pe: PeId,
        user_transport: TransportAddress,
        reregistration: bool,
    },
    /// A registration was refused.
    RegistrationRejected {
        pool: PoolHandle,
        pe: PeId,
        cause: CauseCode,
        reason: String,
    },
    /// A PE left the handlespace.
    Removed {
        pool: PoolHandle,
        pe: PeId,
        reason: RemovalReason,
    },
    /// An Endpoint Unreachable report was counted (`count` distinct reporters so far).
    UnreachableReport {
        pool: PoolHandle,
        pe: PeId,
        reporter: AssociationKey,
        count: usize,
    },
    /// An Endpoint Unreachable report did not count.
    ReportIgnored {
        pool: PoolHandle,
        pe: PeId,
        reporter: AssociationKey,
        why: Ignored,
    },
    /// Enough reports: the PE is sent a Keep-Alive and left out of resolutions until it
    /// answers (or is removed).
    ProbeStarted { pool: PoolHandle, pe: PeId },
    /// The probed PE answered: its reports are cleared and it is selectable again.
    ProbeAnswered { pool: PoolHandle, pe: PeId },
    /// A message could not be decoded or was not acceptable.
    BadMessage {
        association: AssociationKey,
        error: String,
    },
    /// ENRP: a peer registrar was learned.
    PeerUp { peer: u32, address: SocketAddr },
    /// ENRP: a peer stayed silent and was declared dead.
    PeerDown { peer: u32 },
    /// ENRP start-up ended: with the mentor's handlespace, or without one (nobody answered).
    EnrpStartupOver { mentor: Option<u32> },
    /// ENRP: a peer's handle table arrived (`own_children_only`: only the PEs it owns, as
    /// after an audit).
    HandlespaceReceived {
        peer: u32,
        pes: usize,
        own_children_only: bool,
    },
    /// ENRP: a peer's checksum of its PEs differs from ours of them; resynchronising.
    AuditMismatch { peer: u32, ours: u16, theirs: u16 },
    /// ENRP: taking over a dead peer's PEs.
    TakeoverStarted { target: u32 },
    /// ENRP: the takeover ended, the target is alive or another registrar takes over.
    TakeoverAborted { target: u32 },
    /// ENRP: the target's PEs are ours now.
    TakeoverWon { target: u32, pes: usize },
    /// ENRP: another registrar took over the target's PEs.
    TakenOver { target: u32, by: u32, pes: usize },
    /// ENRP: a message from a peer could not be decoded or was not acceptable.
    BadPeerMessage { error: String },
}

/// Statistics counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistrarStats {
    pub registrations: u64,
    pub reregistrations: u64,
    pub rejected_registrations: u64,
    pub deregistrations: u64,
    pub handle_resolutions: u64,
    pub keepalives_sent: u64,
    pub unreachable_reports: u64,
    pub ignored_unreachable_reports: u64,
    pub bad_messages: u64,
    /// ENRP messages sent (one per destination; to the group counts once), and their bytes.
    pub enrp_messages_sent: u64,
    pub enrp_bytes_sent: u64,
    /// ASAP messages received (undecodable ones included) and sent on associations: the
    /// pool-maintenance overhead of the seed paper's fig. 8.
    pub asap_messages_received: u64,
    pub asap_messages_sent: u64,
}

/// The registrar state machine.
#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    handlespace: Handlespace,
    keepalive: KeepAliveSupervisor,
    reports: ReportBook,
    associations: HashMap<AssociationKey, SocketAddr>,
    rng: StdRng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<RegistrarEvent>,
    stats: RegistrarStats,
    /// `None` until [`Registrar::start_enrp`].
    enrp: Option<enrp::Enrp>,
}

impl Registrar {
    /// A registrar with an empty handlespace.
    pub fn new(config: RegistrarConfig) -> Self {
        Registrar {
            handlespace: Handlespace::new(config.handlespace.clone()),
            keepalive: KeepAliveSupervisor::new(config.keepalive),
            reports: ReportBook::new(config.reports),
            rng: StdRng::seed_from_u64(config.seed),
            config,
            associations: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: RegistrarStats::default(),
            enrp: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// The handlespace (read only).
    pub fn handlespace(&self) -> &Handlespace {
        &self.handlespace
    }

    /// Counters since start.
    pub fn stats(&self) -> RegistrarStats {
        self.stats
    }

    /// Number of open associations.
    pub fn association_count(&self) -> usize {
        self.associations.len()
    }

    /// A PE or PU connected from `peer`.
    pub fn handle_association_opened(&mut self, association: AssociationKey, peer: SocketAddr) {
        self.associations.insert(association, peer);
    }

    /// An association ended (closed, reset, timed out): every PE registered over it goes.
    pub fn handle_association_closed(&mut self, association: AssociationKey) {
        self.associations.remove(&association);
        // A pool user that left takes its reports with it.
        for (pool, pe) in self.reports.forget(association) {
            self.handlespace
                .withdraw_unreachable_report(&pool, pe, association);
        }
        for (pool, element) in self.handlespace.remove_association(association) {
            self.removed(pool, element, RemovalReason::AssociationClosed);
        }
    }

    /// One ASAP message (a frame's payload) arrived on `association`.
    pub fn handle_message(&mut self, association: AssociationKey, bytes: &[u8], now: Instant) {
        self.stats.asap_messages_received += 1;
        let decoded = match AsapMessage::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.bad_messages += 1;
                self.events.push_back(RegistrarEvent::BadMessage {
                    association,
                    error: error.to_string(),
                });
                if let Some(reply) = AsapMessage::error_reply(&error) {
                    self.send(association, &reply);
                }
                return;
            }
        };
        if let Some(report) = AsapMessage::unrecognized_reply(&decoded) {
            self.send(association, &report);
        }
        match decoded.message {
            AsapMessage::Registration {
                pool_handle,
                pool_element,
            } => self.handle_registration(association, pool_handle, pool_element, now),
            AsapMessage::Deregistration { pool_handle, pe_id } => {
                self.handle_deregistration(association, pool_handle, pe_id)
            }
            AsapMessage::HandleResolution {
                pool_handle, items, ..
            } => self.handle_handle_resolution(association, pool_handle, items),
            AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id } => {
                let owned = self
                    .handlespace
                    .get(&pool_handle, pe_id)
                    .is_some_and(|e| e.association() == Some(association));
                if owned {
                    self.keepalive
                        .acknowledged(&(pool_handle.clone(), pe_id), now, &mut self.rng);
                    self.alive(pool_handle, pe_id, now);
                }
            }
            AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
                self.handle_unreachable(association, pool_handle, pe_id, now)
            }
            other => {
                self.stats.bad_messages += 1;
                self.events.push_back(RegistrarEvent::BadMessage {
                    association,
                    error: format!("{} is not for a registrar; discarded", other.name()),
                });
            }
        }
    }

    /// Time passed: sends due Keep-Alives and removes PEs whose Keep-Alive went unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (pool, pe) in self.reports.handle_timeout(now) {
            if let Some(element) = self.handlespace.deregister(&pool, pe) {
                self.removed(pool, element, RemovalReason::UnreachableReports);
            }
        }
        for action in self.keepalive.handle_timeout(now) {
            match action {
                KeepAliveAction::Send((pool, pe)) => {
                    let Some(association) = self
                        .handlespace
                        .get(&pool, pe)
                        .and_then(|entry| entry.association())
                    else {
                        self.keepalive.remove(&(pool, pe));
                        continue;
                    };
                    self.send_keep_alive(association, pool, pe);
                }
                KeepAliveAction::TimedOut((pool, pe)) => {
                    if let Some(element) = self.handlespace.deregister(&pool, pe) {
                        self.removed(pool, element, RemovalReason::KeepAliveTimeout);
                    }
                }
            }
        }
        self.enrp_timeout(now);
    }

    /// When [`Registrar::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.keepalive.poll_timeout(),
            self.reports.poll_timeout(),
            self.enrp_poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to send or close.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<RegistrarEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, association: AssociationKey, message: &AsapMessage) {
        match message.to_bytes() {
            Ok(payload) => {
                self.stats.asap_messages_sent += 1;
                self.transmits.push_back(Transmit::Send {
                    association,
                    payload,
                })
            }
            // Only our own oversized answers can fail to encode; the peer learns nothing useful
            // from a half answer, so the association is closed rather than left waiting.
            Err(error) => {
                self.events.push_back(RegistrarEvent::BadMessage {
                    association,
                    error: format!("cannot encode {}: {error}", message.name()),
                });
                self.transmits.push_back(Transmit::Close { association });
            }
        }
    }

    fn removed(&mut self, pool: PoolHandle, element: PoolElement, reason: RemovalReason) {
        let pe = element.id;
        self.keepalive.remove(&(pool.clone(), pe));
        self.reports.end_probe(&(pool.clone(), pe));
        self.enrp_removed(&pool, &element);
        self.events
            .push_back(RegistrarEvent::Removed { pool, pe, reason });
    }

    fn reject_registration(
        &mut self,
        association: AssociationKey,
        pool: PoolHandle,
        pe: PeId,
        cause: ErrorCause,
        reason: String,
    ) {
        self.stats.rejected_registrations += 1;
        self.events.push_back(RegistrarEvent::RegistrationRejected {
            pool: pool.clone(),
            pe,
            cause: cause.code,
            reason,
        });
        let response = AsapMessage::RegistrationResponse {
            rejected: true,
            pool_handle: pool,
            pe_id: pe,
            error: Some(OperationError::single(cause)),
        };
        self.send(association, &response);
    }

    fn handle_registration(
        &mut self,
        association: AssociationKey,
        pool: PoolHandle,
        mut element: PoolElement,
        now: Instant,
    ) {
        let pe = element.id;
        let peer = self.associations.get(&association).copied();
        if let Err(reason) = apply_address_rule(&mut element.user_transport, peer) {
            let info = Parameter::Transport(element.user_transport.clone())
                .to_bytes()
                .unwrap_or_default();
            let cause = ErrorCause {
                code: CauseCode::INVALID_VALUES,
                info,
            };
            self.reject_registration(association, pool, pe, cause, reason.to_string());
            return;
        }
        let user_transport = element.user_transport.clone();
        let ctx = RegistrationContext {
            owner: self.config.id,
            association: Some(association),
            registrator: peer.map(|p| TransportAddress::Tcp {
                port: p.port(),
                address: p.ip(),
            }),
            now,
        };
        match self.handlespace.register(&pool, element, ctx) {
            Ok(outcome) => {
                let reregistration = matches!(outcome, RegistrationOutcome::Updated { .. });
                if reregistration {
                    self.stats.reregistrations += 1;
                } else {
                    self.stats.registrations += 1;
                }
                self.keepalive.alive((pool.clone(), pe), now, &mut self.rng);
                if reregistration {
                    self.alive(pool.clone(), pe, now);
                }
                self.events.push_back(RegistrarEvent::Registered {
                    pool: pool.clone(),
                    pe,
                    user_transport,
                    reregistration,
                });
                self.enrp_registered(&pool, pe);
                let response = AsapMessage::RegistrationResponse {
                    rejected: false,
                    pool_handle: pool,
                    pe_id: pe,
                    error: None,
                };
                self.send(association, &response);
            }
            Err(error) => {
                let cause = ErrorCause {
                    code: error.cause_code(),
                    info: registration_cause_info(&error),
                };
                self.reject_registration(association, pool, pe, cause, error.to_string());
            }
        }
    }

    fn handle_deregistration(&mut self, association: AssociationKey, pool: PoolHandle, pe: PeId) {
        let foreign = self
            .handlespace
            .get(&pool, pe)
            .is_some_and(|e| e.association() != Some(association));
        let error = if foreign {
            self.events.push_back(RegistrarEvent::BadMessage {
                association,
                error: format!(
                    "deregistration of pe {pe} in pool {pool} from another association refused"
                ),
            });
            Some(OperationError::single(ErrorCause::new(
                CauseCode::REJECTED_SECURITY,
            )))
        } else {
            if let Some(element) = self.handlespace.deregister(&pool, pe) {
                self.stats.deregistrations += 1;
                self.removed(pool.clone(), element, RemovalReason::Deregistered);
            }
            None
        };
        let response = AsapMessage::DeregistrationResponse {
            pool_handle: pool,
            pe_id: pe,
            error,
        };
        self.send(association, &response);
    }

    fn handle_handle_resolution(
        &mut self,
        association: AssociationKey,
        pool: PoolHandle,
        items: Option<u32>,
    ) {
        self.stats.handle_resolutions += 1;
        let wanted = items.unwrap_or(self.config.default_hr_items).max(1);
        let capped = self
            .config
            .max_hr_items
            .map_or(wanted, |cap| wanted.min(cap.max(1)));
        let count = if capped == HANDLE_RESOLUTION_ALL {
            usize::MAX
        } else {
            usize::try_from(capped).unwrap_or(usize::MAX)
        };
        // PEs under probe are left out; ask for as many more so the answer stays full.
        let probed = self.reports.probed_in(&pool);
        let mut pool_elements = Vec::new();
        let resolved = self.handlespace.resolve_into(
            &pool,
            count.saturating_add(probed),
            &mut self.rng,
            &mut pool_elements,
        );
        let mut response = match resolved {
            Ok(policy) => {
                if probed > 0 {
                    pool_elements.retain(|e| !self.reports.is_probed(&(pool.clone(), e.id)));
                }
                pool_elements.truncate(count);
                for element in &mut pool_elements {
                    element.asap_transport = None;
                }
                AsapMessage::HandleResolutionResponse {
                    accepted: false,
                    pool_handle: pool,
                    policy: Some(policy),
                    pool_elements,
                    error: None,
                }
            }
            Err(unknown) => AsapMessage::HandleResolutionResponse {
                accepted: false,
                pool_handle: pool,
                policy: None,
                pool_elements: Vec::new(),
                error: Some(OperationError::single(ErrorCause::new(
                    unknown.cause_code(),
                ))),
            },
        };
        // An ASAP message is at most 64 KiB: answer "all" of a huge pool with as many PEs as
        // fit (about 1,500 with IPv4 transports) rather than not at all.
        if let AsapMessage::HandleResolutionResponse {
            pool_elements,
            pool_handle,
            ..
        } = &mut response
        {
            let fitting = elements_that_fit(pool_elements);
            pool_elements.truncate(fitting);
            self.reports
                .handed_out(association, pool_handle, pool_elements.iter().map(|e| e.id));
        }
        self.send(association, &response);
    }

    fn handle_unreachable(
        &mut self,
        association: AssociationKey,
        pool: PoolHandle,
        pe: PeId,
        now: Instant,
    ) {
        self.stats.unreachable_reports += 1;
        let Some(home) = self.handlespace.get(&pool, pe).map(|e| e.association()) else {
            return;
        };
        let key = (pool.clone(), pe);
        if let Err(why) = self.reports.admit(association, &key, now) {
            self.stats.ignored_unreachable_reports += 1;
            self.events.push_back(RegistrarEvent::ReportIgnored {
                pool,
                pe,
                reporter: association,
                why,
            });
            return;
        }
        // Counted, never removed here: the probe decides.
        let UnreachableOutcome::Counted(count) =
            self.handlespace
                .report_unreachable(&pool, pe, association, usize::MAX)
        else {
            return;
        };
        self.events.push_back(RegistrarEvent::UnreachableReport {
            pool: pool.clone(),
            pe,
            reporter: association,
            count,
        });
        if count < self.config.max_bad_pe_reports.max(1) || self.reports.is_probed(&key) {
            return;
        }
        let Some(home) = home else {
            // Not ours to ask (no association): the reports have to do.
            if let Some(element) = self.handlespace.deregister(&pool, pe) {
                self.removed(pool, element, RemovalReason::UnreachableReports);
            }
            return;
        };
        self.reports.start_probe(key, now);
        self.send_keep_alive(home, pool.clone(), pe);
        self.events
            .push_back(RegistrarEvent::ProbeStarted { pool, pe });
    }

    /// An Endpoint Keep-Alive to a PE on its association (the periodic one, or a probe).
    fn send_keep_alive(&mut self, association: AssociationKey, pool: PoolHandle, pe: PeId) {
        self.stats.keepalives_sent += 1;
        let message = AsapMessage::EndpointKeepAlive {
            // We are already the PE's home registrar: no H flag (RFC 5352 §2.2.7 reserves it
            // for a registrar taking a PE over).
            home: false,
            server_id: self.config.id,
            pool_handle: pool,
            pe_id: Some(pe),
        };
        self.send(association, &message);
    }

    /// The PE showed it is alive (a Keep-Alive Ack or a re-registration on its association):
    /// a probe ends and the reports against it are forgotten.
    fn alive(&mut self, pool: PoolHandle, pe: PeId, now: Instant) {
        let key = (pool.clone(), pe);
        if self.reports.end_probe(&key) {
            let reporters: Vec<AssociationKey> = self
                .handlespace
                .get(&pool, pe)
                .map(|entry| entry.unreachable_reporters().collect())
                .unwrap_or_default();
            self.reports.disproved(&key, reporters, now);
            self.handlespace.clear_unreachable_reports(&pool, pe);
            self.events
                .push_back(RegistrarEvent::ProbeAnswered { pool, pe });
        }
    }
}

/// How many of `elements` (a prefix) fit one ASAP message next to the other parameters of a
/// Handle Resolution Response, which take well under 1 KiB. Each PE is encoded once.
fn elements_that_fit(elements: &[PoolElement]) -> usize {
    const BUDGET: usize = u16::MAX as usize - 1024;
    let mut total = 0usize;
    let mut out = Vec::new();
    for (index, element) in elements.iter().enumerate() {
        out.clear();
        if Parameter::PoolElement(element.clone())
            .encode(&mut out)
            .is_err()
        {
            return index;
        }
        total += out.len();
        if total > BUDGET {
            return index;
        }
    }
    elements.len()
}

/// The cause-specific information of a refused registration (RFC 5354 §3.12): the pool's
/// policy or transport parameter where the RFC names one.
fn registration_cause_info(error: &RegistrationError) -> Vec<u8> {
    let parameter = match error {
        RegistrationError::InconsistentPolicy { pool_policy } => Parameter::Policy(*pool_policy),
        RegistrationError::InconsistentTransport { pool_transport } => {
            Parameter::Transport(pool_transport.clone())
        }
        _ => return Vec::new(),
    };
    parameter.to_bytes().unwrap_or_default()
}

/// Why a user transport breaks the address rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressRuleError {
    #[error("the user transport's address is not the association's peer address")]
    ForeignAddress,
    #[error("an opaque user transport cannot be checked against the peer address")]
    Opaque,
    #[error("an unspecified address needs a known association peer")]
    UnknownPeer,
}

/// Checks the address rule (module docs) and substitutes the peer IP for unspecified ones.
pub fn apply_address_rule(
    transport: &mut TransportAddress,
    peer: Option<SocketAddr>,
) -> Result<(), AddressRuleError> {
    let peer_ip = peer.map(|p| p.ip().to_canonical());
    let check = |address: &mut IpAddr| -> Result<(), AddressRuleError> {
        if address.is_unspecified() {
            *address = peer_ip.ok_or(AddressRuleError::UnknownPeer)?;
            Ok(())
        } else if Some(address.to_canonical()) == peer_ip {
            Ok(())
        } else {
            Err(AddressRuleError::ForeignAddress)
        }
    };
    match transport {
        TransportAddress::Tcp { address, .. }
        | TransportAddress::Udp { address, .. }
        | TransportAddress::UdpLite { address, .. }
        | TransportAddress::Dccp { address, .. } => check(address),
        TransportAddress::Sctp { addresses, .. } => addresses.iter_mut().try_for_each(check),
        TransportAddress::Opaque(_) => Err(AddressRuleError::Opaque),
    }
}
