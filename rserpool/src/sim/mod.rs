//! An in-memory network of registrars, pool elements and pool users in simulated time.
//!
//! [`Sim`] wires the sans-I/O machines of every role together the way their tokio drivers do
//! on real sockets, but with a message queue instead of sockets and a clock that jumps from one
//! event to the next: registration, resolution, failover, unreachable reports and removal run
//! in milliseconds of CPU, deterministically (one seed), without sleeps. Tests use it for
//! behaviour that crosses roles (like quinn-proto's `Pair`), ENRP between registrars included.
//!
//! What is modelled:
//! * **Associations** are reliable and ordered, as framed TCP: every message takes
//!   [`SimConfig::delay`], and a [`Filter`] may drop or delay chosen ones (a lost answer, a slow
//!   link). Connecting takes one delay; to a dead address it fails after one delay.
//! * **Processes** can be [killed](Sim::kill) (their kernel resets every association: peers
//!   see `Reset`), [hung](Sim::hang) (SIGSTOP: messages to them wait, their timers do not run,
//!   the kernel still accepts connections) and [resumed](Sim::resume), or
//!   [shut down](Sim::shutdown_pe) gracefully (final cookies, deregistration).
//! * **The application** is a counting service ([`counting`]): a job of N items; the PE sends
//!   one item per [`PeSpec::item_interval`] and an ASAP Cookie (the next item) every
//!   [`PeSpec::cookie_every`] items; the PU keeps how often it got each item, so a test sees
//!   whether anything was lost and how much was sent twice. A [`Hostility`] makes a PE
//!   send frames that are no progress instead (repeats, empty items, cookies).
//!
//! * **ENRP** messages between registrars travel like SCTP messages of a one-to-many socket:
//!   each alone, after one delay, addressed to a peer's ENRP address (10.0.0.N:9901) or to the
//!   announce group (every other registrar); an [`EnrpFilter`] may drop or delay them. A
//!   takeover's Keep-Alive reaches the PE at its data address.
//!
//! The pool user side follows `pu::driver` (cache, selector, one registrar association at a
//! time, trying the next registrar when one does not answer), the PE side `pe::driver`.

pub mod counting;
mod nodes;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::pe::Event as PeEvent;
use crate::pu::session::{SessionConfig, SessionEvent};
use crate::registrar::{EnrpConfig, EnrpDestination, Registrar, RegistrarConfig, RegistrarEvent};
use crate::transport::{AssociationError, Frame, PPID_ASAP};
use crate::wire::{AsapMessage, EnrpMessage, PeId, Policy, PoolHandle, TransportAddress};

pub use counting::{Hostility, Job};
use nodes::{PeNode, PuNode, RegistrarNode};

/// A process in the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Registrar(usize),
    Pe(usize),
    Pu(usize),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Registrar(i) => write!(f, "registrar{i}"),
            Node::Pe(i) => write!(f, "pe{i}"),
            Node::Pu(i) => write!(f, "pu{i}"),
        }
    }
}

/// One end of an association: which machine of which process it feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// A registrar's ASAP endpoint.
    Registrar(usize),
    /// A PE's registration association.
    PeRegistration(usize),
    /// A PE's side of a session with a pool user.
    PeSession(usize),
    /// A pool user's registrar association.
    PuRegistrar(usize),
    /// Session `.1` of pool user `.0`.
    PuSession(usize, usize),
}

impl End {
    /// The process this end belongs to.
    pub fn node(self) -> Node {
        match self {
            End::Registrar(i) => Node::Registrar(i),
            End::PeRegistration(i) | End::PeSession(i) => Node::Pe(i),
            End::PuRegistrar(i) | End::PuSession(i, _) => Node::Pu(i),
        }
    }
}

/// Identifies an association (the registrar's [`crate::handlespace::AssociationKey`] too).
pub type AssociationId = u64;

/// A message on its way, as a [`Filter`] sees it.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub from: End,
    pub to: End,
    pub frame: &'a Frame,
}

impl Envelope<'_> {
    /// The ASAP message carried, if it is one.
    pub fn asap(&self) -> Option<AsapMessage> {
        (self.frame.ppid == PPID_ASAP)
            .then(|| AsapMessage::decode(&self.frame.payload).ok())
            .flatten()
            .map(|decoded| decoded.message)
    }
}

/// What a [`Filter`] does with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Lost (as if the link ate it; the association stays up).
    Drop,
    /// Delivered this much later than usual (later messages of the association wait for it).
    Delay(Duration),
}

/// Decides the fate of each message (see [`Sim::set_filter`]).
pub type Filter = Box<dyn FnMut(&Envelope<'_>) -> Verdict>;

/// Decides the fate of each ENRP message from registrar `.0` to registrar `.1` (see
/// [`Sim::set_enrp_filter`]).
pub type EnrpFilter = Box<dyn FnMut(usize, usize, &EnrpMessage) -> Verdict>;

/// Settings of the network.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// One-way delay of every message and of connection set-up.
    pub delay: Duration,
    /// Seed of the pool users' random choices (each registrar has its own in its config).
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            delay: Duration::from_millis(1),
            seed: 1,
        }
    }
}

/// A pool element to add.
#[derive(Clone, Debug)]
pub struct PeSpec {
    pub pool: PoolHandle,
    pub policy: Policy,
    /// The registrars it knows, in order.
    pub registrars: Vec<usize>,
    pub rereg_interval: Duration,
    /// Sessions at once; one more is refused (closed before any frame).
    pub max_sessions: usize,
    /// Time per item of a job.
    pub item_interval: Duration,
    /// An ASAP Cookie after this many items.
    pub cookie_every: u32,
    /// Its identifier (default 0x1000 + its index); another PE's plays a thief.
    pub pe_id: Option<PeId>,
    /// Misbehaves instead of serving (`None`: an honest PE).
    pub hostile: Option<Hostility>,
}

impl PeSpec {
    /// A round-robin PE of `pool` registering with registrar 0: 4 sessions, an item every
    /// 10 ms, a cookie every 10 items, re-registration every 5 s.
    pub fn new(pool: &str) -> Self {
        PeSpec {
            pool: PoolHandle::new(pool.as_bytes()).expect("valid pool handle"),
            policy: Policy::RoundRobin,
            registrars: vec![0],
            rereg_interval: Duration::from_secs(5),
            max_sessions: 4,
            item_interval: Duration::from_millis(10),
            cookie_every: 10,
            pe_id: None,
            hostile: None,
        }
    }
}

/// A pool user to add.
#[derive(Clone, Debug)]
pub struct PuSpec {
    pub pool: PoolHandle,
    /// The registrars it knows, tried in order.
    pub registrars: Vec<usize>,
    pub session: SessionConfig,
    /// How long a Handle Resolution answer is used without asking again.
    pub stale_cache: Duration,
    /// How long to wait for a registrar's answer before trying the next one.
    pub registrar_timeout: Duration,
}

impl PuSpec {
    /// A pool user of `pool` asking registrar 0, with the default session timing.
    pub fn new(pool: &str) -> Self {
        PuSpec {
            pool: PoolHandle::new(pool.as_bytes()).expect("valid pool handle"),
            registrars: vec![0],
            session: SessionConfig::default(),
            stale_cache: crate::pu::selector::DEFAULT_STALE_CACHE,
            registrar_timeout: Duration::from_secs(2),
        }
    }
}

/// Something that happened, with its time, for assertions and for reading a failed test.
#[derive(Clone, Debug)]
pub enum Record {
    Registrar(usize, RegistrarEvent),
    Pe(usize, PeEvent),
    Session {
        pu: usize,
        session: usize,
        event: SessionEvent,
    },
    Fault(String),
}

#[derive(Debug)]
enum Delivery {
    /// A connection attempt reached `to`'s host: the association is up at both ends.
    Open { id: AssociationId },
    /// The answer to a connection attempt: up (`Ok`) or refused.
    ConnectOutcome { to: End, id: Option<AssociationId> },
    Frame {
        id: AssociationId,
        to: End,
        frame: Frame,
    },
    Closed {
        id: AssociationId,
        to: End,
        error: AssociationError,
    },
    /// An ENRP message for registrar `to`.
    Enrp { to: usize, payload: Vec<u8> },
    /// A registrar's takeover association reached PE `pe`'s data address, with a Keep-Alive.
    Takeover {
        id: AssociationId,
        pe: usize,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Running,
    Hung,
    Dead,
}

#[derive(Debug)]
struct Association {
    ends: [End; 2],
    /// A message is not delivered before this (keeps a delayed one ahead of later ones).
    order: Instant,
}

/// The simulated network (see the module docs).
pub struct Sim {
    config: SimConfig,
    now: Instant,
    registrars: Vec<RegistrarNode>,
    pes: Vec<PeNode>,
    pus: Vec<PuNode>,
    life: HashMap<Node, Life>,
    associations: BTreeMap<AssociationId, Association>,
    next_association: AssociationId,
    /// Deliveries by (time, sequence): equal times keep the order they were sent in.
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    pending: HashMap<usize, Delivery>,
    next_delivery: usize,
    sequence: u64,
    /// Deliveries to a hung process, handed over when it resumes.
    held: HashMap<Node, Vec<Delivery>>,
    filter: Option<Filter>,
    enrp_filter: Option<EnrpFilter>,
    records: Vec<(Instant, Record)>,
}

impl Sim {
    /// An empty network.
    pub fn new(config: SimConfig) -> Self {
        Sim {
            config,
            now: Instant::now(),
            registrars: Vec::new(),
            pes: Vec::new(),
            pus: Vec::new(),
            life: HashMap::new(),
            associations: BTreeMap::new(),
            next_association: 1,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            next_delivery: 0,
            sequence: 0,
            held: HashMap::new(),
            filter: None,
            enrp_filter: None,
            records: Vec::new(),
        }
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a registrar; its index is returned (addresses 10.0.0.1:3863, 10.0.0.2:3863, ...).
    pub fn add_registrar(&mut self, config: RegistrarConfig) -> usize {
        let index = self.registrars.len();
        let address = SocketAddr::new(host(0, index), 3863);
        self.registrars.push(RegistrarNode::new(address, config));
        self.life.insert(Node::Registrar(index), Life::Running);
        index
    }

    /// Adds a registrar that runs ENRP with the registrars `peers` (static peers, as
    /// `--peer`), with rsplib's ENRP timers; its index is returned.
    pub fn add_enrp_registrar(&mut self, config: RegistrarConfig, peers: &[usize]) -> usize {
        let index = self.add_registrar(config);
        self.start_enrp(index, peers);
        index
    }

    /// Registrar `index`'s ENRP configuration with `peers` as static peers.
    pub fn enrp_config(&self, index: usize, peers: &[usize]) -> EnrpConfig {
        let mut config = EnrpConfig::new(self.registrars[index].enrp_address);
        config.static_peers = peers
            .iter()
            .map(|&p| self.registrar_enrp_address(p))
            .collect();
        config
    }

    fn start_enrp(&mut self, index: usize, peers: &[usize]) {
        let config = self.enrp_config(index, peers);
        let now = self.now;
        self.registrars[index].core.start_enrp(config, now);
        self.pump();
    }

    /// Starts registrar `index` again after a kill, with an empty handlespace, `config`, and
    /// ENRP with `peers`.
    pub fn restart_registrar(&mut self, index: usize, config: RegistrarConfig, peers: &[usize]) {
        self.fault(format!("restart registrar{index}"));
        self.registrars[index].core = Registrar::new(config);
        self.life.insert(Node::Registrar(index), Life::Running);
        self.held.remove(&Node::Registrar(index));
        self.start_enrp(index, peers);
    }

    /// Registrar `index`'s ENRP address.
    pub fn registrar_enrp_address(&self, index: usize) -> SocketAddr {
        self.registrars[index].enrp_address
    }

    /// Lets `filter` decide the fate of every ENRP message from now on.
    pub fn set_enrp_filter(
        &mut self,
        filter: impl FnMut(usize, usize, &EnrpMessage) -> Verdict + 'static,
    ) {
        self.enrp_filter = Some(Box::new(filter));
    }

    /// Delivers every ENRP message again.
    pub fn clear_enrp_filter(&mut self) {
        self.enrp_filter = None;
    }

    /// Adds a pool element (data address 10.1.0.N:9000); it starts looking for a registrar at
    /// once. Its index is returned.
    pub fn add_pe(&mut self, spec: PeSpec) -> usize {
        let index = self.pes.len();
        let address = SocketAddr::new(host(1, index), 9000);
        let pe_id = spec.pe_id.unwrap_or(PeId(0x1000 + index as u32));
        let registrars = spec
            .registrars
            .iter()
            .map(|&r| self.registrars[r].address)
            .collect();
        self.pes.push(PeNode::new(
            index, spec, pe_id, address, registrars, self.now,
        ));
        self.life.insert(Node::Pe(index), Life::Running);
        self.pump();
        index
    }

    /// Adds a pool user (10.2.0.N); its index is returned.
    pub fn add_pu(&mut self, spec: PuSpec) -> usize {
        let index = self.pus.len();
        let seed = self.config.seed ^ (0x9e37_79b9 * (index as u64 + 1));
        let registrars = spec
            .registrars
            .iter()
            .map(|&r| self.registrars[r].address)
            .collect();
        let address = SocketAddr::new(host(2, index), 0);
        self.pus
            .push(PuNode::new(index, spec, address, registrars, seed));
        self.life.insert(Node::Pu(index), Life::Running);
        index
    }

    /// Starts a job of `items` items on pool user `pu`; returns the session's index.
    pub fn start_job(&mut self, pu: usize, items: u32) -> usize {
        let now = self.now;
        let session = self.pus[pu].start_job(items, now);
        self.pump();
        session
    }

    /// The job of session `session` of pool user `pu`.
    pub fn job(&self, pu: usize, session: usize) -> &Job {
        self.pus[pu].job(session)
    }

    /// Pool user `pu` reports PE `pe` unreachable to its registrar, as a session would.
    pub fn report_unreachable(&mut self, pu: usize, pe: usize) {
        let pe_id = self.pes[pe].pe_id;
        self.pus[pu].report_unreachable(pe_id);
        self.pump();
    }

    /// Registrar `index`'s state machine.
    pub fn registrar(&self, index: usize) -> &Registrar {
        &self.registrars[index].core
    }

    /// Hands registrar `index`'s machine to `act` (with the simulated time), then carries out
    /// what it produced: for input no simulated process makes, like thousands of
    /// registrations over associations that exist only in the machine.
    pub fn with_registrar(&mut self, index: usize, act: impl FnOnce(&mut Registrar, Instant)) {
        let now = self.now;
        act(&mut self.registrars[index].core, now);
        self.pump();
    }

    /// Registrar `index`'s ASAP address.
    pub fn registrar_address(&self, index: usize) -> SocketAddr {
        self.registrars[index].address
    }

    /// PE `index`'s identifier.
    pub fn pe_id(&self, index: usize) -> PeId {
        self.pes[index].pe_id
    }

    /// The user transport PE `index` registers.
    pub fn pe_user_transport(&self, index: usize) -> TransportAddress {
        let address = self.pes[index].address;
        TransportAddress::Tcp {
            port: address.port(),
            address: address.ip(),
        }
    }

    /// Whether registrar `registrar` lists PE `pe` in its handlespace.
    pub fn lists(&self, registrar: usize, pe: usize) -> bool {
        let node = &self.pes[pe];
        self.registrars[registrar]
            .core
            .handlespace()
            .get(&node.pool, node.pe_id)
            .is_some()
    }

    /// The registrar PE `index` is registered with, if any.
    pub fn registered_with(&self, index: usize) -> Option<usize> {
        let address = self.pes[index].registration.registered_with()?;
        self.registrars.iter().position(|r| r.address == address)
    }

    /// Everything that happened so far, in order.
    pub fn records(&self) -> &[(Instant, Record)] {
        &self.records
    }

    /// The registrar events so far, with their times.
    pub fn registrar_events(&self, index: usize) -> Vec<(Instant, RegistrarEvent)> {
        self.records
            .iter()
            .filter_map(|(at, record)| match record {
                Record::Registrar(i, event) if *i == index => Some((*at, event.clone())),
                _ => None,
            })
            .collect()
    }

    /// Lets `filter` decide the fate of every message from now on.
    pub fn set_filter(&mut self, filter: impl FnMut(&Envelope<'_>) -> Verdict + 'static) {
        self.filter = Some(Box::new(filter));
    }

    /// Delivers every message again.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// SIGKILL: the process is gone and its kernel resets every association it had.
    pub fn kill(&mut self, node: Node) {
        self.fault(format!("kill {node}"));
        self.life.insert(node, Life::Dead);
        self.held.remove(&node);
        let ids: Vec<AssociationId> = self
            .associations
            .iter()
            .filter(|(_, a)| a.ends.iter().any(|end| end.node() == node))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.reset(id, node);
        }
    }

    /// SIGSTOP: the process stops; what reaches it waits, its timers stand still.
    pub fn hang(&mut self, node: Node) {
        self.fault(format!("hang {node}"));
        self.life.insert(node, Life::Hung);
    }

    /// SIGCONT: a hung process runs again and takes what reached it meanwhile.
    pub fn resume(&mut self, node: Node) {
        self.fault(format!("resume {node}"));
        if self.life.get(&node) != Some(&Life::Hung) {
            return;
        }
        self.life.insert(node, Life::Running);
        for delivery in self.held.remove(&node).unwrap_or_default() {
            self.deliver(delivery);
        }
        self.pump();
    }

    /// A graceful shutdown of PE `index`: its sessions end with a final cookie and a graceful
    /// close, and it deregisters.
    pub fn shutdown_pe(&mut self, index: usize) {
        self.fault(format!("shutdown pe{index}"));
        let now = self.now;
        self.pes[index].shutdown(now);
        self.pump();
    }

    /// Runs until nothing is left to happen or `duration` has passed.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_until(end, |_| false);
    }

    /// Runs until `done` holds (checked after every step; returns true) or `deadline` (false).
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.next_event_time() {
                Some(at) if at <= deadline => self.step(at),
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
        }
    }

    /// Runs for at most `limit` until `done` holds; panics with the records if it does not.
    pub fn run_until_or_panic(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl FnMut(&Sim) -> bool,
    ) {
        let deadline = self.now + limit;
        if !self.run_until(deadline, done) {
            panic!("{what}: not within {limit:?}\n{}", self.dump());
        }
    }

    /// The records as text, one a line.
    pub fn dump(&self) -> String {
        let start = self.records.first().map_or(self.now, |(at, _)| *at);
        self.records
            .iter()
            .map(|(at, record)| format!("{:>8.3} s {record:?}\n", (*at - start).as_secs_f64()))
            .collect()
    }

    fn next_event_time(&self) -> Option<Instant> {
        let delivery = self.queue.peek().map(|Reverse((at, _, _))| *at);
        // Hung and dead processes have no timers.
        let running = |node: Node| self.life.get(&node) == Some(&Life::Running);
        let registrars = (0..self.registrars.len())
            .filter(|&i| running(Node::Registrar(i)))
            .filter_map(|i| self.registrars[i].core.poll_timeout());
        let pes = (0..self.pes.len())
            .filter(|&i| running(Node::Pe(i)))
            .filter_map(|i| self.pes[i].poll_timeout());
        let pus = (0..self.pus.len())
            .filter(|&i| running(Node::Pu(i)))
            .filter_map(|i| self.pus[i].poll_timeout());
        delivery
            .into_iter()
            .chain(registrars)
            .chain(pes)
            .chain(pus)
            .min()
    }

    fn step(&mut self, at: Instant) {
        self.now = self.now.max(at);
        let now = self.now;
        while let Some(Reverse((due, _, key))) = self.queue.peek().copied() {
            if due > now {
                break;
            }
            self.queue.pop();
            if let Some(delivery) = self.pending.remove(&key) {
                self.deliver(delivery);
            }
        }
        for (index, registrar) in self.registrars.iter_mut().enumerate() {
            if self.life[&Node::Registrar(index)] == Life::Running
                && registrar.core.poll_timeout().is_some_and(|t| t <= now)
            {
                registrar.core.handle_timeout(now);
            }
        }
        for (index, pe) in self.pes.iter_mut().enumerate() {
            if self.life[&Node::Pe(index)] == Life::Running {
                pe.handle_timeout(now);
            }
        }
        for (index, pu) in self.pus.iter_mut().enumerate() {
            if self.life[&Node::Pu(index)] == Life::Running {
                pu.handle_timeout(now);
            }
        }
        self.pump();
    }

    /// Hands a due delivery to its machine (or holds it for a hung process).
    fn deliver(&mut self, delivery: Delivery) {
        let node = match &delivery {
            Delivery::Open { id } => match self.associations.get(id) {
                Some(association) => association.ends[1].node(),
                None => return,
            },
            Delivery::ConnectOutcome { to, .. }
            | Delivery::Frame { to, .. }
            | Delivery::Closed { to, .. } => to.node(),
            Delivery::Enrp { to, .. } => Node::Registrar(*to),
            Delivery::Takeover { pe, .. } => Node::Pe(*pe),
        };
        match self.life[&node] {
            Life::Dead => return,
            Life::Hung => {
                self.held.entry(node).or_default().push(delivery);
                return;
            }
            Life::Running => {}
        }
        let now = self.now;
        match delivery {
            Delivery::Open { id } => {
                let Some(association) = self.associations.get(&id) else {
                    return;
                };
                let [from, to] = association.ends;
                match to {
                    End::Registrar(r) => {
                        let peer = SocketAddr::new(self.address_of(from.node()), 40000);
                        self.registrars[r].core.handle_association_opened(id, peer);
                    }
                    End::PeSession(p) => self.pes[p].session_opened(id),
                    _ => {}
                }
            }
            Delivery::ConnectOutcome { to, id } => self.connect_outcome(to, id, now),
            Delivery::Frame { id, to, frame } => {
                if self.associations.contains_key(&id) {
                    self.frame_arrived(id, to, frame, now);
                }
            }
            Delivery::Closed { id, to, error } => self.closed(id, to, &error, now),
            Delivery::Enrp { to, payload } => self.registrars[to].core.handle_enrp(&payload, now),
            Delivery::Takeover { id, pe, payload } => {
                let registrar = self.associations.get(&id).map(|a| a.ends[0]);
                if let Some(End::Registrar(r)) = registrar {
                    let address = self.registrars[r].address;
                    self.pes[pe].takeover_association(id, address, &payload, now);
                }
            }
        }
    }

    fn connect_outcome(&mut self, to: End, id: Option<AssociationId>, now: Instant) {
        match to {
            End::PeRegistration(p) => self.pes[p].registration_connected(id, now),
            End::PuRegistrar(u) => self.pus[u].registrar_connected(id, now),
            End::PuSession(u, s) => self.pus[u].session_connected(s, id, now),
            End::Registrar(_) | End::PeSession(_) => {}
        }
    }

    fn frame_arrived(&mut self, id: AssociationId, to: End, frame: Frame, now: Instant) {
        match to {
            End::Registrar(r) => self.registrars[r]
                .core
                .handle_message(id, &frame.payload, now),
            End::PeRegistration(p) => self.pes[p].registration_frame(&frame, now),
            End::PeSession(p) => self.pes[p].session_frame(id, &frame, now),
            End::PuRegistrar(u) => self.pus[u].registrar_frame(&frame, now),
            End::PuSession(u, s) => self.pus[u].session_frame(s, frame, now),
        }
    }

    fn closed(&mut self, id: AssociationId, to: End, error: &AssociationError, now: Instant) {
        self.associations.remove(&id);
        match to {
            End::Registrar(r) => self.registrars[r].core.handle_association_closed(id),
            End::PeRegistration(p) => self.pes[p].registration_closed(id, now),
            End::PeSession(p) => self.pes[p].session_closed(id),
            End::PuRegistrar(u) => self.pus[u].registrar_closed(id, now),
            End::PuSession(u, s) => self.pus[u].session_closed(s, id, error, now),
        }
    }

    /// Drains every machine's output into the network until all are quiet.
    fn pump(&mut self) {
        loop {
            let mut outputs = Vec::new();
            let mut sink = Sink {
                now: self.now,
                outputs: &mut outputs,
                records: &mut self.records,
            };
            let running = |node| self.life[&node] == Life::Running;
            for (index, registrar) in self.registrars.iter_mut().enumerate() {
                if running(Node::Registrar(index)) {
                    registrar.drain(index, &mut sink);
                }
            }
            for (index, pe) in self.pes.iter_mut().enumerate() {
                if running(Node::Pe(index)) {
                    pe.drain(&mut sink);
                }
            }
            for (index, pu) in self.pus.iter_mut().enumerate() {
                if running(Node::Pu(index)) {
                    pu.drain(&mut sink);
                }
            }
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                self.carry_out(output);
            }
        }
    }

    fn carry_out(&mut self, output: Output) {
        match output {
            Output::Connect { from, to } => self.connect(from, to),
            Output::Send { id, from, frame } => self.send(id, from, frame),
            Output::Close { id, from } => self.close(id, from, AssociationError::ClosedByPeer),
            Output::Abort { id, from } => self.close(id, from, AssociationError::Reset),
            Output::Enrp { from, to, payload } => self.send_enrp(from, to, payload),
            Output::TakeoverKeepAlive { from, pe, payload } => {
                let target = self.pes.iter().position(|p| {
                    TransportAddress::Tcp {
                        port: p.address.port(),
                        address: p.address.ip(),
                    } == pe
                });
                let Some(pe) = target.filter(|&p| self.life[&Node::Pe(p)] != Life::Dead) else {
                    return;
                };
                // The registrar opens an association to the PE's data address: an ASAP
                // association of the registrar, the PE's registrar association once adopted.
                let id = self.next_association;
                self.next_association += 1;
                self.associations.insert(
                    id,
                    Association {
                        ends: [End::Registrar(from), End::PeRegistration(pe)],
                        order: self.now,
                    },
                );
                let pe_address = self.pes[pe].address;
                self.registrars[from]
                    .core
                    .handle_association_opened(id, pe_address);
                // A connection, then the message: two delays.
                self.schedule(
                    self.config.delay * 2,
                    Delivery::Takeover { id, pe, payload },
                );
            }
        }
    }

    fn send_enrp(&mut self, from: usize, to: EnrpDestination, payload: Vec<u8>) {
        let targets: Vec<usize> = match to {
            EnrpDestination::Peer(address) => self
                .registrars
                .iter()
                .position(|r| r.enrp_address == address)
                .into_iter()
                .collect(),
            EnrpDestination::Group => (0..self.registrars.len()).filter(|&r| r != from).collect(),
        };
        for target in targets {
            let verdict = match (&mut self.enrp_filter, EnrpMessage::decode(&payload)) {
                (Some(filter), Ok(decoded)) => filter(from, target, &decoded.message),
                _ => Verdict::Deliver,
            };
            let extra = match verdict {
                Verdict::Deliver => Duration::ZERO,
                Verdict::Drop => {
                    self.fault(format!("dropped ENRP registrar{from} -> registrar{target}"));
                    continue;
                }
                Verdict::Delay(extra) => extra,
            };
            self.schedule(
                self.config.delay + extra,
                Delivery::Enrp {
                    to: target,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn connect(&mut self, from: End, to: SocketAddr) {
        let target = self
            .registrars
            .iter()
            .position(|r| r.address == to)
            .map(End::Registrar)
            .or_else(|| {
                self.pes
                    .iter()
                    .position(|p| p.address == to)
                    .map(End::PeSession)
            });
        // A hung host's kernel still completes the handshake; a dead one refuses.
        let reachable = target.filter(|end| self.life[&end.node()] != Life::Dead);
        let outcome = reachable.map(|end| {
            let id = self.next_association;
            self.next_association += 1;
            self.associations.insert(
                id,
                Association {
                    ends: [from, end],
                    order: self.now,
                },
            );
            self.schedule(self.config.delay, Delivery::Open { id });
            id
        });
        self.schedule(
            self.config.delay * 2,
            Delivery::ConnectOutcome {
                to: from,
                id: outcome,
            },
        );
    }

    fn send(&mut self, id: AssociationId, from: End, frame: Frame) {
        let Some(association) = self.associations.get(&id) else {
            return;
        };
        let to = other_end(association, from);
        let order = association.order;
        let verdict = match &mut self.filter {
            Some(filter) => filter(&Envelope {
                from,
                to,
                frame: &frame,
            }),
            None => Verdict::Deliver,
        };
        let extra = match verdict {
            Verdict::Deliver => Duration::ZERO,
            Verdict::Drop => {
                self.fault(format!("dropped {from:?} -> {to:?} ppid {}", frame.ppid));
                return;
            }
            Verdict::Delay(extra) => extra,
        };
        let due = (self.now + self.config.delay + extra).max(order);
        if let Some(association) = self.associations.get_mut(&id) {
            association.order = due;
        }
        let wait = due - self.now;
        self.schedule(wait, Delivery::Frame { id, to, frame });
    }

    fn close(&mut self, id: AssociationId, from: End, error: AssociationError) {
        let Some(association) = self.associations.get(&id) else {
            return;
        };
        let to = other_end(association, from);
        // After whatever was sent before: a graceful close does not overtake data.
        let due = (self.now + self.config.delay).max(association.order);
        self.schedule(due - self.now, Delivery::Closed { id, to, error });
        self.forget_end(id, from);
    }

    /// The process of `node` died: the other end of `id` sees a reset.
    fn reset(&mut self, id: AssociationId, node: Node) {
        let Some(association) = self.associations.get(&id) else {
            return;
        };
        for end in association.ends {
            if end.node() != node {
                self.schedule(
                    self.config.delay,
                    Delivery::Closed {
                        id,
                        to: end,
                        error: AssociationError::Reset,
                    },
                );
            }
        }
    }

    /// The end that closed an association forgets it at once (the driver drops its handle).
    fn forget_end(&mut self, id: AssociationId, end: End) {
        if let End::PeSession(p) = end {
            self.pes[p].session_closed(id);
        }
    }

    fn schedule(&mut self, after: Duration, delivery: Delivery) {
        let key = self.next_delivery;
        self.next_delivery += 1;
        self.sequence += 1;
        self.pending.insert(key, delivery);
        self.queue
            .push(Reverse((self.now + after, self.sequence, key)));
    }

    fn fault(&mut self, text: String) {
        self.records.push((self.now, Record::Fault(text)));
    }

    fn address_of(&self, node: Node) -> IpAddr {
        match node {
            Node::Registrar(i) => self.registrars[i].address.ip(),
            Node::Pe(i) => self.pes[i].address.ip(),
            Node::Pu(i) => self.pus[i].address.ip(),
        }
    }
}

/// Where the processes put what they produce in one pass: their requests to the network, and
/// what happened (for the records).
pub(crate) struct Sink<'a> {
    now: Instant,
    outputs: &'a mut Vec<Output>,
    records: &'a mut Vec<(Instant, Record)>,
}

impl Sink<'_> {
    fn output(&mut self, output: Output) {
        self.outputs.push(output);
    }

    fn record(&mut self, record: Record) {
        self.records.push((self.now, record));
    }
}

/// What a machine asks the network to do.
#[derive(Debug)]
pub(crate) enum Output {
    Connect {
        from: End,
        to: SocketAddr,
    },
    Send {
        id: AssociationId,
        from: End,
        frame: Frame,
    },
    Close {
        id: AssociationId,
        from: End,
    },
    Abort {
        id: AssociationId,
        from: End,
    },
    Enrp {
        from: usize,
        to: EnrpDestination,
        payload: Vec<u8>,
    },
    TakeoverKeepAlive {
        from: usize,
        pe: TransportAddress,
        payload: Vec<u8>,
    },
}

fn other_end(association: &Association, end: End) -> End {
    if association.ends[0] == end {
        association.ends[1]
    } else {
        association.ends[0]
    }
}

/// Host `index` of network `net` (10.net.0.index+1).
fn host(net: u8, index: usize) -> IpAddr {
    let [hi, lo] = u16::try_from(index + 1)
        .expect("fewer than 65535 hosts")
        .to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, net, hi, lo))
}
