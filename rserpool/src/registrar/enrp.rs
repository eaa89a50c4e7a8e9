//! ENRP (RFC 5353): registrars that keep one handlespace, and take over the PEs of a peer that
//! died. The procedures run inside the [`Registrar`] (they change its handlespace), driven like
//! the ASAP side: [`Registrar::handle_enrp`] takes a received message,
//! [`Registrar::handle_timeout`] runs the timers, and ENRP messages leave as
//! [`Transmit::Enrp`] to a peer's ENRP address or to the announce group. Started by
//! [`Registrar::start_enrp`].
//!
//! What happens, and where we differ from rsplib 3.5.10 (`../shared/reference/enrp-notes.md`):
//! * **Presence and liveness.** A PRESENCE (our id, our ENRP address, the checksum of the PEs
//!   we own) goes every heartbeat cycle to the group and to every peer, and at once at start to
//!   the static peers (rsplib waits for the mentor discovery timeout). Any message from a peer
//!   refreshes it (RFC §3.4.1; rsplib only counts PRESENCE). A peer silent for
//!   `max_time_last_heard` is asked for a PRESENCE; silent `max_time_no_response` more, it is
//!   dead.
//! * **Mentor.** The first peer heard during start-up is the mentor: we ask it for its peer list
//!   and for its whole handlespace, page by page (HANDLE_TABLE_REQUEST / RESPONSE with M). The
//!   responder pages from a snapshot of keys taken at the first request, skipping what left
//!   meanwhile. ASAP is served throughout, as in rsplib.
//! * **Updates.** Every granted registration of a PE we are home for goes to every peer as a
//!   HANDLE_UPDATE ADD, every removal of one as DEL. A DEL removes a PE only if its sender still
//!   owns it there (rsplib deletes unconditionally, so a late DEL from a PE's former home removed
//!   it after it had re-registered elsewhere). A PE learned from a peer lives for its
//!   registration life unless renewed.
//! * **Audit.** A PRESENCE whose checksum differs from ours for the PEs its sender owns starts a
//!   resynchronisation: we mark those PEs, ask the sender for its own PEs (W=1), and remove the
//!   marked ones that the answer did not renew.
//! * **Takeover.** A dead peer that owned PEs is taken over: INIT_TAKEOVER to every peer, and
//!   once every other live peer acknowledged (at once when there is none: rsplib never completes
//!   a takeover with two registrars), TAKEOVER_SERVER to all, the PEs become ours and each is
//!   sent an ASAP Endpoint Keep-Alive with the H flag at its user transport
//!   ([`Transmit::TakeoverKeepAlive`]) on an association the driver opens and makes one of its
//!   ASAP associations: the PE adopts it as its registrar association and registers over it
//!   (rsplib's PEs peel it off likewise), so a PE that knew only its dead home stays. Competing initiators: the highest identifier wins
//!   (RFC §3.5.1; rsplib has the lowest win). A takeover whose acknowledgements do not all come
//!   within `takeover_expiry` completes anyway: peers that do not answer are presumed dead too.
//!   A peer that acknowledged someone else's takeover and then hears nothing more takes over
//!   itself after twice that time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;

use super::{Registrar, RegistrarEvent, RemovalReason, Transmit};
use crate::handlespace::{RegistrarId, RegistrationContext};
use crate::timer::Deadlines;
use crate::wire::enrp::{EnrpBody, EnrpMessage, PoolEntry, UpdateAction};
use crate::wire::{
    AsapMessage, PeId, PoolElement, PoolHandle, ServerInformation, TransportAddress,
};

/// Most peers a registrar keeps: PRESENCEs from more identifiers are ignored, so that forged
/// ones cannot grow the table (and the updates sent to it) without bound.
pub const MAX_PEERS: usize = 256;

/// ENRP settings; the defaults are rsplib's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrpConfig {
    /// Where our peers reach our ENRP endpoint (sent in every PRESENCE).
    pub address: SocketAddr,
    /// Peers contacted without announces (`--peer`).
    pub static_peers: Vec<SocketAddr>,
    /// Whether PRESENCEs also go to the announce group.
    pub group: bool,
    /// PEER-HEARTBEAT-CYCLE: between our PRESENCEs (spread ±12.5 %).
    pub heartbeat_cycle: Duration,
    /// MAX-TIME-LAST-HEARD: a peer silent this long is asked for a PRESENCE.
    pub max_time_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE: ... and declared dead if it stays silent this much longer.
    pub max_time_no_response: Duration,
    /// Start-up ends after this without a complete download from a mentor.
    pub mentor_discovery_timeout: Duration,
    /// A takeover completes after this even without every acknowledgement.
    pub takeover_expiry: Duration,
    /// PEs per HANDLE_TABLE_RESPONSE page.
    pub max_elements_per_page: usize,
}

impl EnrpConfig {
    /// rsplib's timers for a registrar whose ENRP endpoint is `address`.
    pub fn new(address: SocketAddr) -> Self {
        EnrpConfig {
            address,
            static_peers: Vec::new(),
            group: true,
            heartbeat_cycle: Duration::from_millis(2444),
            max_time_last_heard: Duration::from_secs(5),
            max_time_no_response: Duration::from_secs(5),
            mentor_discovery_timeout: Duration::from_secs(5),
            takeover_expiry: Duration::from_secs(5),
            max_elements_per_page: 128,
        }
    }
}

/// Where an ENRP message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnrpDestination {
    /// A peer's ENRP endpoint.
    Peer(SocketAddr),
    /// The announce group (PRESENCE only).
    Group,
}

#[derive(Debug)]
struct Peer {
    address: SocketAddr,
    last_heard: Instant,
    /// When we asked it for a PRESENCE after `max_time_last_heard` of silence.
    asked_at: Option<Instant>,
}

impl Peer {
    fn deadline(&self, config: &EnrpConfig) -> Instant {
        match self.asked_at {
            Some(asked) => asked + config.max_time_no_response,
            None => self.last_heard + config.max_time_last_heard,
        }
    }
}

/// A handle table we receive from a peer, page by page.
#[derive(Debug)]
struct Download {
    own_children_only: bool,
    /// Given up (a lost request or page) if no page arrives by then: the audit may ask again.
    deadline: Instant,
    /// Audit: PEs of the peer not yet confirmed by the answer; removed when it ends.
    unconfirmed: HashSet<(PoolHandle, PeId)>,
}

/// A handle table we send to a peer: the keys at its first request, and how far we got.
#[derive(Debug)]
struct Upload {
    own_children_only: bool,
    /// Forgotten (the requester gave up) if no request continues it by then.
    deadline: Instant,
    keys: Vec<(PoolHandle, PeId)>,
    next: usize,
}

#[derive(Debug)]
struct Takeover {
    /// Peers whose acknowledgement is still missing.
    votes: BTreeSet<u32>,
    deadline: Instant,
}

/// The ENRP side of a registrar.
#[derive(Debug)]
pub(super) struct Enrp {
    config: EnrpConfig,
    peers: BTreeMap<u32, Peer>,
    next_heartbeat: Instant,
    /// Start-up runs until this, or until the mentor's table is complete.
    startup_until: Option<Instant>,
    mentor: Option<u32>,
    downloads: HashMap<u32, Download>,
    uploads: HashMap<u32, Upload>,
    takeovers: BTreeMap<u32, Takeover>,
    /// Takeovers of a target we acknowledged: the taker, and when we give up waiting for it.
    acknowledged: BTreeMap<u32, (u32, Instant)>,
    /// Registration life of PEs learned from peers.
    learned: Deadlines<(PoolHandle, PeId)>,
}

impl Enrp {
    fn new(config: EnrpConfig, now: Instant) -> Self {
        Enrp {
            startup_until: Some(now + config.mentor_discovery_timeout),
            config,
            peers: BTreeMap::new(),
            next_heartbeat: now,
            mentor: None,
            downloads: HashMap::new(),
            uploads: HashMap::new(),
            takeovers: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            learned: Deadlines::default(),
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().map(|p| p.deadline(&self.config));
        let takeovers = self.takeovers.values().map(|t| t.deadline);
        let downloads = self.downloads.values().map(|d| d.deadline);
        let uploads = self.uploads.values().map(|u| u.deadline);
        let acknowledged = self.acknowledged.values().map(|(_, at)| *at);
        [
            Some(self.next_heartbeat),
            self.startup_until,
            self.learned.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .chain(peers)
        .chain(takeovers)
        .chain(acknowledged)
        .chain(downloads)
        .chain(uploads)
        .min()
    }

    /// Whether start-up (mentor discovery and download) is still running.
    pub(super) fn starting(&self) -> bool {
        self.startup_until.is_some()
    }
}

/// A peer as others learn it (LIST_RESPONSE, PRESENCE).
fn server_information(id: u32, address: SocketAddr) -> ServerInformation {
    ServerInformation {
        server_id: id,
        transport: TransportAddress::Tcp {
            port: address.port(),
            address: address.ip(),
        },
    }
}

impl Registrar {
    /// Starts ENRP at `now` with `config`: PRESENCEs go out at once, and the first peer heard
    /// becomes the mentor whose handlespace we download.
    pub fn start_enrp(&mut self, config: EnrpConfig, now: Instant) {
        self.enrp = Some(Enrp::new(config, now));
    }

    /// Our peers (identifier and ENRP address), for a look from outside.
    pub fn enrp_peers(&self) -> Vec<(u32, SocketAddr)> {
        self.enrp
            .iter()
            .flat_map(|e| e.peers.iter().map(|(id, p)| (*id, p.address)))
            .collect()
    }

    /// Whether ENRP start-up (waiting for a mentor's handlespace) is over.
    pub fn enrp_started(&self) -> bool {
        self.enrp.as_ref().is_some_and(|e| !e.starting())
    }

    /// One ENRP message arrived (from a peer association or the announce group).
    pub fn handle_enrp(&mut self, bytes: &[u8], now: Instant) {
        if self.enrp.is_none() {
            return;
        }
        let message = match EnrpMessage::decode(bytes) {
            Ok(decoded) => decoded.message,
            Err(error) => {
                self.events.push_back(RegistrarEvent::BadPeerMessage {
                    error: error.to_string(),
                });
                return;
            }
        };
        let sender = message.sender_id;
        let name = message.name();
        if sender == self.config.id || sender == 0 {
            return;
        }
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let known = match enrp.peers.get_mut(&sender) {
            Some(peer) => {
                peer.last_heard = now;
                peer.asked_at = None;
                true
            }
            None => false,
        };
        match message.body {
            EnrpBody::Presence {
                reply_required,
                checksum,
                server_info,
            } => self.enrp_presence(sender, reply_required, checksum, server_info, now),
            // Only known peers are answered or believed: we must know where they listen.
            _ if !known => self.events.push_back(RegistrarEvent::BadPeerMessage {
                error: format!("{name} from unknown registrar {sender:#010x}"),
            }),
            EnrpBody::HandleTableRequest { own_children_only } => {
                self.enrp_table_request(sender, own_children_only, now)
            }
            EnrpBody::HandleTableResponse {
                reject,
                more_to_send,
                pools,
            } => self.enrp_table_response(sender, reject, more_to_send, pools, now),
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                ..
            } => self.enrp_update(sender, action, pool_handle, pool_element, now),
            EnrpBody::ListRequest => self.enrp_list_request(sender),
            EnrpBody::ListResponse { reject, servers } => {
                if !reject {
                    for server in servers {
                        if let Some(address) = server.transport.socket_addr() {
                            self.enrp_learn_peer(server.server_id, address, now);
                        }
                    }
                }
            }
            EnrpBody::InitTakeover { target_id } => self.enrp_init_takeover(sender, target_id, now),
            EnrpBody::InitTakeoverAck { target_id } => {
                self.enrp_takeover_ack(sender, target_id, now)
            }
            EnrpBody::TakeoverServer { target_id } => self.enrp_takeover_server(sender, target_id),
            EnrpBody::Error { error } => self.events.push_back(RegistrarEvent::BadPeerMessage {
                error: format!("ERROR from {sender:#010x}: {error:?}"),
            }),
        }
    }

    /// ENRP timers: heartbeats, silent peers, takeovers, expired learned PEs.
    pub(super) fn enrp_timeout(&mut self, now: Instant) {
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        // A download whose request or page was lost, an upload its requester gave up.
        enrp.downloads.retain(|_, d| d.deadline > now);
        enrp.uploads.retain(|_, u| u.deadline > now);
        if enrp
            .mentor
            .is_some_and(|m| !enrp.downloads.contains_key(&m))
        {
            enrp.mentor = None;
        }
        if enrp.startup_until.is_some_and(|until| now >= until) {
            enrp.startup_until = None;
            enrp.mentor = None;
            self.events
                .push_back(RegistrarEvent::EnrpStartupOver { mentor: None });
        }
        if now >= self.enrp.as_ref().map_or(now, |e| e.next_heartbeat) {
            self.enrp_heartbeat(now);
        }
        // Silent peers: ask once, then declare dead.
        let due: Vec<(u32, bool)> = self
            .enrp
            .as_ref()
            .map(|e| {
                e.peers
                    .iter()
                    .filter(|(_, p)| p.deadline(&e.config) <= now)
                    .map(|(id, p)| (*id, p.asked_at.is_some()))
                    .collect()
            })
            .unwrap_or_default();
        for (peer, asked) in due {
            if asked {
                self.enrp_peer_dead(peer, now);
            } else {
                if let Some(p) = self.enrp.as_mut().and_then(|e| e.peers.get_mut(&peer)) {
                    p.asked_at = Some(now);
                }
                self.send_presence_to_peer(peer, true);
            }
        }
        let expired: Vec<u32> = self
            .enrp
            .as_ref()
            .map(|e| {
                e.takeovers
                    .iter()
                    .filter(|(_, t)| t.deadline <= now)
                    .map(|(target, _)| *target)
                    .collect()
            })
            .unwrap_or_default();
        for target in expired {
            self.enrp_win_takeover(target);
        }
        let abandoned: Vec<u32> = self
            .enrp
            .as_ref()
            .map(|e| {
                e.acknowledged
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(target, _)| *target)
                    .collect()
            })
            .unwrap_or_default();
        for target in abandoned {
            if let Some(enrp) = self.enrp.as_mut() {
                enrp.acknowledged.remove(&target);
            }
            // The taker went silent too: the PEs are still the dead peer's; take them.
            let peer_gone = self
                .enrp
                .as_ref()
                .is_some_and(|e| !e.peers.contains_key(&target));
            if peer_gone && self.handlespace.owned_by(target).next().is_some() {
                self.enrp_start_takeover(target, now);
            }
        }
        loop {
            let Some(enrp) = self.enrp.as_mut() else {
                return;
            };
            let Some(((pool, pe), ())) = enrp.learned.pop_due(now) else {
                break;
            };
            let learned = self
                .handlespace
                .get(&pool, pe)
                .is_some_and(|e| e.association().is_none());
            if learned && let Some(element) = self.handlespace.deregister(&pool, pe) {
                self.removed(pool, element, RemovalReason::RegistrationLifeExpired);
            }
        }
    }

    pub(super) fn enrp_poll_timeout(&self) -> Option<Instant> {
        self.enrp.as_ref().and_then(Enrp::poll_timeout)
    }

    /// A PE we are home for was registered or updated: every peer learns it.
    pub(super) fn enrp_registered(&mut self, pool: &PoolHandle, pe: PeId) {
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        enrp.learned.remove(&(pool.clone(), pe));
        let Some(element) = self.handlespace.get(pool, pe).map(|e| e.element().clone()) else {
            return;
        };
        self.enrp_update_all(UpdateAction::AddPe, pool.clone(), element);
    }

    /// A PE left the handlespace: if it was ours, every peer learns it.
    pub(super) fn enrp_removed(&mut self, pool: &PoolHandle, element: &PoolElement) {
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        enrp.learned.remove(&(pool.clone(), element.id));
        if element.home_registrar == self.config.id {
            self.enrp_update_all(UpdateAction::DelPe, pool.clone(), element.clone());
        }
    }

    fn enrp_update_all(&mut self, action: UpdateAction, pool: PoolHandle, element: PoolElement) {
        for peer in self.enrp_peer_ids() {
            self.send_enrp_to_peer(
                peer,
                EnrpBody::HandleUpdate {
                    takeover_suggested: false,
                    action,
                    pool_handle: pool.clone(),
                    pool_element: element.clone(),
                },
            );
        }
    }

    fn enrp_peer_ids(&self) -> Vec<u32> {
        self.enrp
            .as_ref()
            .map(|e| e.peers.keys().copied().collect())
            .unwrap_or_default()
    }

    fn send_enrp(&mut self, to: EnrpDestination, receiver_id: u32, body: EnrpBody) {
        let message = EnrpMessage {
            sender_id: self.config.id,
            receiver_id,
            body,
        };
        match message.to_bytes() {
            Ok(payload) => {
                self.stats.enrp_messages_sent += 1;
                self.stats.enrp_bytes_sent += payload.len() as u64;
                self.transmits.push_back(Transmit::Enrp { to, payload });
            }
            Err(error) => self.events.push_back(RegistrarEvent::BadPeerMessage {
                error: format!("cannot encode our {}: {error}", message.name()),
            }),
        }
    }

    fn send_enrp_to_peer(&mut self, peer: u32, body: EnrpBody) {
        let Some(address) = self
            .enrp
            .as_ref()
            .and_then(|e| e.peers.get(&peer))
            .map(|p| p.address)
        else {
            return;
        };
        self.send_enrp(EnrpDestination::Peer(address), peer, body);
    }

    fn presence(&self, reply_required: bool) -> EnrpBody {
        let address = self
            .enrp
            .as_ref()
            .map(|e| e.config.address)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        EnrpBody::Presence {
            reply_required,
            checksum: self.handlespace.owner_checksum(self.config.id),
            server_info: Some(server_information(self.config.id, address)),
        }
    }

    fn send_presence_to_peer(&mut self, peer: u32, reply_required: bool) {
        let body = self.presence(reply_required);
        self.send_enrp_to_peer(peer, body);
    }

    /// PRESENCE to the group, every peer, and the static peers not known by identifier yet.
    fn enrp_heartbeat(&mut self, now: Instant) {
        let spread = self.rng.random_range(0.875..=1.125);
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        enrp.next_heartbeat = now + enrp.config.heartbeat_cycle.mul_f64(spread);
        let group = enrp.config.group;
        let known: HashSet<SocketAddr> = enrp.peers.values().map(|p| p.address).collect();
        let unknown_static: Vec<SocketAddr> = enrp
            .config
            .static_peers
            .iter()
            .filter(|a| !known.contains(a) && **a != enrp.config.address)
            .copied()
            .collect();
        if group {
            let body = self.presence(false);
            self.send_enrp(EnrpDestination::Group, 0, body);
        }
        for peer in self.enrp_peer_ids() {
            self.send_presence_to_peer(peer, false);
        }
        // Unknown ones must answer so that we learn their identifiers (during start-up: to find
        // a mentor at once).
        for address in unknown_static {
            let body = self.presence(true);
            self.send_enrp(EnrpDestination::Peer(address), 0, body);
        }
    }

    fn enrp_learn_peer(&mut self, id: u32, address: SocketAddr, now: Instant) -> bool {
        if id == 0 || id == self.config.id {
            return false;
        }
        let Some(enrp) = self.enrp.as_mut() else {
            return false;
        };
        if let Some(peer) = enrp.peers.get_mut(&id) {
            peer.address = address;
            return false;
        }
        if enrp.peers.len() >= MAX_PEERS {
            self.events.push_back(RegistrarEvent::BadPeerMessage {
                error: format!(
                    "registrar {id:#010x} at {address} ignored: {MAX_PEERS} peers known"
                ),
            });
            return false;
        }
        enrp.peers.insert(
            id,
            Peer {
                address,
                last_heard: now,
                asked_at: None,
            },
        );
        // A peer that comes back is not being taken over any more, and starts any table
        // download afresh.
        enrp.takeovers.remove(&id);
        enrp.acknowledged.remove(&id);
        enrp.uploads.remove(&id);
        self.events
            .push_back(RegistrarEvent::PeerUp { peer: id, address });
        // It learns us, and answers with its checksum (the audit tells whether we miss its PEs).
        self.send_presence_to_peer(id, true);
        let Some(enrp) = self.enrp.as_mut() else {
            return true;
        };
        if enrp.starting() && enrp.mentor.is_none() {
            enrp.mentor = Some(id);
            let deadline = now + enrp.config.max_time_no_response;
            enrp.downloads.insert(
                id,
                Download {
                    own_children_only: false,
                    deadline,
                    unconfirmed: HashSet::new(),
                },
            );
            self.send_enrp_to_peer(id, EnrpBody::ListRequest);
            self.send_enrp_to_peer(
                id,
                EnrpBody::HandleTableRequest {
                    own_children_only: false,
                },
            );
        }
        true
    }

    fn enrp_presence(
        &mut self,
        sender: u32,
        reply_required: bool,
        checksum: u16,
        server_info: Option<ServerInformation>,
        now: Instant,
    ) {
        let address = server_info
            .as_ref()
            .filter(|info| info.server_id == sender)
            .and_then(|info| info.transport.socket_addr());
        let known = self
            .enrp
            .as_ref()
            .is_some_and(|e| e.peers.contains_key(&sender));
        match address {
            Some(address) => {
                self.enrp_learn_peer(sender, address, now);
            }
            // Where it listens is unknown: nothing to answer to.
            None if !known => return,
            None => {}
        }
        if let Some(enrp) = self.enrp.as_mut() {
            // Alive after all: no takeover of it.
            if enrp.takeovers.remove(&sender).is_some() {
                self.events
                    .push_back(RegistrarEvent::TakeoverAborted { target: sender });
            }
        }
        if reply_required {
            self.send_presence_to_peer(sender, false);
        }
        self.enrp_audit(sender, checksum, now);
    }

    /// Compares a peer's checksum of its own PEs with ours of the PEs we list as its; on a
    /// mismatch, asks it for its PEs and drops those it no longer has.
    fn enrp_audit(&mut self, peer: u32, theirs: u16, now: Instant) {
        let ours = self.handlespace.owner_checksum(peer);
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        if ours == theirs || enrp.downloads.contains_key(&peer) {
            return;
        }
        let unconfirmed = self
            .handlespace
            .owned_by(peer)
            .map(|(pool, pe)| (pool.clone(), pe))
            .collect();
        let deadline = now + enrp.config.max_time_no_response;
        enrp.downloads.insert(
            peer,
            Download {
                own_children_only: true,
                deadline,
                unconfirmed,
            },
        );
        self.events
            .push_back(RegistrarEvent::AuditMismatch { peer, ours, theirs });
        self.send_enrp_to_peer(
            peer,
            EnrpBody::HandleTableRequest {
                own_children_only: true,
            },
        );
    }

    fn enrp_table_request(&mut self, requester: u32, own_children_only: bool, now: Instant) {
        let own = self.config.id;
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let page_limit = enrp.config.max_elements_per_page.max(1);
        let fresh = enrp
            .uploads
            .get(&requester)
            .is_none_or(|u| u.own_children_only != own_children_only);
        if fresh {
            let mut keys: Vec<(PoolHandle, PeId)> = if own_children_only {
                self.handlespace
                    .owned_by(own)
                    .map(|(pool, pe)| (pool.clone(), pe))
                    .collect()
            } else {
                self.handlespace
                    .pools()
                    .flat_map(|pool| {
                        let handle = pool.handle().clone();
                        pool.elements()
                            .map(move |e| (handle.clone(), e.element().id))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            keys.sort();
            enrp.uploads.insert(
                requester,
                Upload {
                    own_children_only,
                    deadline: now,
                    keys,
                    next: 0,
                },
            );
        }
        let wait = enrp.config.max_time_no_response;
        let Some(upload) = enrp.uploads.get_mut(&requester) else {
            return;
        };
        upload.deadline = now + wait;
        let mut pools: Vec<PoolEntry> = Vec::new();
        let mut count = 0;
        while count < page_limit && upload.next < upload.keys.len() {
            let (pool, pe) = &upload.keys[upload.next];
            upload.next += 1;
            // Left since the snapshot, or (W=1) no longer ours: skipped.
            let Some(entry) = self.handlespace.get(pool, *pe) else {
                continue;
            };
            if own_children_only && entry.owner() != own {
                continue;
            }
            let element = entry.element().clone();
            match pools.last_mut() {
                Some(last) if &last.pool_handle == pool => last.pool_elements.push(element),
                _ => pools.push(PoolEntry {
                    pool_handle: pool.clone(),
                    pool_elements: vec![element],
                }),
            }
            count += 1;
        }
        let more_to_send = upload.next < upload.keys.len();
        if !more_to_send {
            enrp.uploads.remove(&requester);
        }
        self.send_enrp_to_peer(
            requester,
            EnrpBody::HandleTableResponse {
                reject: false,
                more_to_send,
                pools,
            },
        );
    }

    fn enrp_table_response(
        &mut self,
        sender: u32,
        reject: bool,
        more_to_send: bool,
        pools: Vec<PoolEntry>,
        now: Instant,
    ) {
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let wait = enrp.config.max_time_no_response;
        let Some(download) = enrp.downloads.get_mut(&sender) else {
            return;
        };
        download.deadline = now + wait;
        let own_children_only = download.own_children_only;
        if reject {
            // Refused: nothing learnt, nothing to conclude about its PEs.
            enrp.downloads.remove(&sender);
            return;
        }
        let mut received = 0;
        for entry in pools {
            for element in entry.pool_elements {
                let pe = element.id;
                if self.enrp_learn_pe(&entry.pool_handle, element, now) {
                    received += 1;
                }
                if let Some(download) = self
                    .enrp
                    .as_mut()
                    .and_then(|e| e.downloads.get_mut(&sender))
                {
                    download
                        .unconfirmed
                        .remove(&(entry.pool_handle.clone(), pe));
                }
            }
        }
        if more_to_send {
            self.send_enrp_to_peer(sender, EnrpBody::HandleTableRequest { own_children_only });
            return;
        }
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let download = enrp.downloads.remove(&sender);
        let was_mentor = enrp.mentor == Some(sender);
        if was_mentor {
            enrp.mentor = None;
            enrp.startup_until = None;
        }
        // Audit: what the peer did not confirm is no longer its.
        for (pool, pe) in download.map(|d| d.unconfirmed).unwrap_or_default() {
            let stale = self
                .handlespace
                .get(&pool, pe)
                .is_some_and(|e| e.owner() == sender && e.association().is_none());
            if stale && let Some(element) = self.handlespace.deregister(&pool, pe) {
                self.removed(pool, element, RemovalReason::Resynchronised);
            }
        }
        self.events.push_back(RegistrarEvent::HandlespaceReceived {
            peer: sender,
            pes: received,
            own_children_only,
        });
        if was_mentor {
            self.events.push_back(RegistrarEvent::EnrpStartupOver {
                mentor: Some(sender),
            });
        }
    }

    /// Enters a PE learned from a peer; false if refused (ours, or the handlespace says no).
    fn enrp_learn_pe(&mut self, pool: &PoolHandle, element: PoolElement, now: Instant) -> bool {
        let owner: RegistrarId = element.home_registrar;
        if owner == 0 || owner == self.config.id {
            return false;
        }
        let pe = element.id;
        let life = Duration::from_millis(u64::from(element.registration_life_ms));
        let ctx = RegistrationContext {
            owner,
            association: None,
            registrator: None,
            now,
        };
        match self.handlespace.register(pool, element, ctx) {
            Ok(_) => {
                // Our keep-alives and reports are for PEs we are home for.
                self.keepalive.remove(&(pool.clone(), pe));
                if let Some(enrp) = self.enrp.as_mut() {
                    enrp.learned.insert((pool.clone(), pe), (), now + life);
                }
                true
            }
            Err(error) => {
                self.events.push_back(RegistrarEvent::BadPeerMessage {
                    error: format!("PE {pe} of pool {pool} from {owner:#010x} refused: {error}"),
                });
                false
            }
        }
    }

    fn enrp_update(
        &mut self,
        sender: u32,
        action: UpdateAction,
        pool: PoolHandle,
        element: PoolElement,
        now: Instant,
    ) {
        match action {
            UpdateAction::AddPe => {
                if element.home_registrar != sender {
                    self.events.push_back(RegistrarEvent::BadPeerMessage {
                        error: format!(
                            "ADD of PE {} homed at {:#010x} from {sender:#010x} ignored",
                            element.id, element.home_registrar
                        ),
                    });
                    return;
                }
                self.enrp_learn_pe(&pool, element, now);
            }
            UpdateAction::DelPe => {
                // Only from its current home: a late DEL from a former home must not remove a
                // PE that has registered elsewhere since.
                let owned_by_sender = self
                    .handlespace
                    .get(&pool, element.id)
                    .is_some_and(|e| e.owner() == sender && e.association().is_none());
                if owned_by_sender
                    && let Some(removed) = self.handlespace.deregister(&pool, element.id)
                {
                    self.removed(pool, removed, RemovalReason::PeerUpdate);
                }
            }
        }
    }

    fn enrp_list_request(&mut self, requester: u32) {
        let servers = self
            .enrp
            .as_ref()
            .map(|e| {
                e.peers
                    .iter()
                    .filter(|(id, _)| **id != requester)
                    .map(|(id, p)| server_information(*id, p.address))
                    .collect()
            })
            .unwrap_or_default();
        self.send_enrp_to_peer(
            requester,
            EnrpBody::ListResponse {
                reject: false,
                servers,
            },
        );
    }

    fn enrp_peer_dead(&mut self, peer: u32, now: Instant) {
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let Some(dead) = enrp.peers.remove(&peer) else {
            return;
        };
        enrp.downloads.remove(&peer);
        enrp.uploads.remove(&peer);
        if enrp.mentor == Some(peer) {
            enrp.mentor = None;
        }
        // Takeovers waiting for its vote need it no more.
        let mut decided = Vec::new();
        for (target, takeover) in enrp.takeovers.iter_mut() {
            if takeover.votes.remove(&peer) && takeover.votes.is_empty() {
                decided.push(*target);
            }
        }
        let someone_else_takes_over = enrp.acknowledged.contains_key(&peer);
        self.events.push_back(RegistrarEvent::PeerDown { peer });
        for target in decided {
            self.enrp_win_takeover(target);
        }
        if !someone_else_takes_over && self.handlespace.owned_by(peer).next().is_some() {
            // Its address still gets the INIT_TAKEOVER: if it lives, it says so.
            self.enrp_start_takeover_at(peer, Some(dead.address), now);
        }
    }

    fn enrp_start_takeover(&mut self, target: u32, now: Instant) {
        self.enrp_start_takeover_at(target, None, now);
    }

    fn enrp_start_takeover_at(&mut self, target: u32, address: Option<SocketAddr>, now: Instant) {
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let votes: BTreeSet<u32> = enrp
            .peers
            .keys()
            .copied()
            .filter(|id| *id != target)
            .collect();
        let deadline = now + enrp.config.takeover_expiry;
        enrp.takeovers.insert(
            target,
            Takeover {
                votes: votes.clone(),
                deadline,
            },
        );
        self.events
            .push_back(RegistrarEvent::TakeoverStarted { target });
        let body = EnrpBody::InitTakeover { target_id: target };
        for peer in votes.iter().copied() {
            self.send_enrp_to_peer(peer, body.clone());
        }
        if let Some(address) = address {
            self.send_enrp(EnrpDestination::Peer(address), target, body);
        }
        // Nobody else to ask (two registrars): ours at once.
        if votes.is_empty() {
            self.enrp_win_takeover(target);
        }
    }

    fn enrp_init_takeover(&mut self, initiator: u32, target: u32, now: Instant) {
        let own = self.config.id;
        if target == own {
            // We are alive: say so to everyone.
            let body = self.presence(false);
            self.send_enrp(EnrpDestination::Group, 0, body);
            for peer in self.enrp_peer_ids() {
                self.send_presence_to_peer(peer, false);
            }
            return;
        }
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        if enrp.takeovers.contains_key(&target) {
            // Competing initiators: the highest identifier wins (RFC 5353 §3.5.1).
            if initiator < own {
                return;
            }
            enrp.takeovers.remove(&target);
            self.events
                .push_back(RegistrarEvent::TakeoverAborted { target });
        }
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        let wait = enrp.config.takeover_expiry * 2;
        enrp.acknowledged.insert(target, (initiator, now + wait));
        self.send_enrp_to_peer(initiator, EnrpBody::InitTakeoverAck { target_id: target });
    }

    fn enrp_takeover_ack(&mut self, voter: u32, target: u32, _now: Instant) {
        let Some(takeover) = self
            .enrp
            .as_mut()
            .and_then(|e| e.takeovers.get_mut(&target))
        else {
            return;
        };
        takeover.votes.remove(&voter);
        if takeover.votes.is_empty() {
            self.enrp_win_takeover(target);
        }
    }

    /// Every PE of `target` becomes ours; each is told so with a Keep-Alive carrying the H flag.
    fn enrp_win_takeover(&mut self, target: u32) {
        let own = self.config.id;
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        if enrp.takeovers.remove(&target).is_none() {
            return;
        }
        enrp.peers.remove(&target);
        for peer in self.enrp_peer_ids() {
            self.send_enrp_to_peer(peer, EnrpBody::TakeoverServer { target_id: target });
        }
        let taken = self.handlespace.transfer_ownership(target, own);
        for (pool, pe) in &taken {
            let Some(user_transport) = self
                .handlespace
                .get(pool, *pe)
                .map(|e| e.element().user_transport.clone())
            else {
                continue;
            };
            let message = AsapMessage::EndpointKeepAlive {
                home: true,
                server_id: own,
                pool_handle: pool.clone(),
                pe_id: Some(*pe),
            };
            if let Ok(payload) = message.to_bytes() {
                self.transmits.push_back(Transmit::TakeoverKeepAlive {
                    pe: user_transport,
                    payload,
                });
            }
        }
        self.events.push_back(RegistrarEvent::TakeoverWon {
            target,
            pes: taken.len(),
        });
    }

    fn enrp_takeover_server(&mut self, taker: u32, target: u32) {
        // Our own PEs are ours while we live.
        if target == self.config.id || target == taker {
            return;
        }
        let Some(enrp) = self.enrp.as_mut() else {
            return;
        };
        enrp.acknowledged.remove(&target);
        enrp.takeovers.remove(&target);
        enrp.peers.remove(&target);
        let moved = self.handlespace.transfer_ownership(target, taker);
        self.events.push_back(RegistrarEvent::TakenOver {
            target,
            by: taker,
            pes: moved.len(),
        });
    }
}
