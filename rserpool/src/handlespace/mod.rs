//! The registrar's handlespace (RFC 5351 §2, RFC 5352 §3, RFC 5353) and every pool policy
//! (RFC 5356 and rsplib's private ones).
//!
//! Pools are kept by handle in slots; a pool keeps its PEs in a slab (`members`), found by
//! identifier, where a PE's position stays fixed while it is registered. Each pool has a
//! selection structure that fits its policy and names PEs by position (`selection`, with how
//! each policy ranks or weighs a PE in [`policy`]): a queue for round robin, a B-tree ordered by
//! `(policy value, sequence number)` for the other ordered policies, so that "take the first n
//! and re-insert the selected ones with a new sequence number" costs O(1) and O(n log N), and a
//! Fenwick tree of weights for the weighted random ones, so that drawing n distinct PEs costs
//! O(n log N). Global indexes find PEs by association (to drop everything registered over a
//! closed association), by owner (home registrar, for ENRP: PEs counted per pool) and by expiry
//! time. The RFC 5353 §3.6.2 checksums, overall and per owner, are updated on every insert and
//! remove.
//!
//! Sans-I/O: no sockets, no timers; the caller passes `now` and a random number generator.
//!
//! Decisions worth knowing:
//! * The owner given in [`RegistrationContext`] becomes the stored PE's `home_registrar`, and a
//!   given `registrator` transport replaces its `asap_transport` (RFC 5352 §3.1 rule 4).
//! * A PE identifier belongs to the association that registered it: a registration of a live
//!   PE id over a *different* association is refused with Non-unique PE Identifier (0x4)
//!   ([`ForeignReregistration::Reject`], the default). RFC 5352 §3.1 rule 3 reads "already a
//!   member ⇒ re-registration" and rsplib updates the entry, moving the PE to the new
//!   association: anyone who can reach the registrar could then take over a live PE's entry
//!   (lookups return the attacker's address) and remove the victim by closing its own
//!   association, the masquerade RFC 5355 §2.2 warns of. The price: a PE that lost its
//!   association without the registrar noticing waits until the old association is declared
//!   dead (transport heartbeats) before its registration from a new one is accepted.
//!   [`ForeignReregistration::Update`] restores rsplib's behaviour. Entries learnt without an
//!   association (from a peer registrar) may be taken over by a registration, as their home
//!   moves.
//! * A re-registration must pass the same consistency checks as a new one (policy type,
//!   transport type, transport use), even when the PE is the pool's only member (rule 3).
//! * Weight 0 (WRR, WRAND, WRAND-DPF) means "cannot serve" (RFC 5356 §3.2): such PEs are kept but
//!   never selected. rsplib treats a WRR weight of 0 like 1.
//! * Every handed-out PE counts in its selection counter; only the first MaxIncrement of an answer
//!   get their policy state advanced (rsplib), so with the default of 1 an LUD answer of three PEs
//!   degrades only the first. Set [`HandlespaceConfig::max_increment`] to the answer size to get
//!   RFC 5356 §5.2.2's literal "every returned entry".

mod fenwick;
mod members;
pub mod policy;
mod selection;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::wire::param::{
    CauseCode, PeId, PoolElement, PoolHandle, TransportAddress, TransportUse,
};
use crate::wire::policy::Policy;

use crate::timer::LazyMinHeap;
use crate::wire::checksum;
pub use crate::wire::checksum::HandlespaceChecksum;
use members::{Members, Position};
use policy::SelectionState;
pub use policy::{ALL_POLICY_KINDS, PolicyKind};
use selection::{Handout, Selection, SelectionKey};

/// The hasher of the handlespace's maps: fast, and seeded at random per map, so that keys a
/// peer chooses (pool handles, PE identifiers) cannot be picked to collide in advance.
type SeededHasher = foldhash::fast::RandomState;

/// Opaque key of the association a PE registered over (chosen by the registrar).
pub type AssociationKey = u64;

/// An ENRP server (registrar) identifier.
pub type RegistrarId = u32;

/// Error cause codes (RFC 5354 §3.12) this module produces.
mod cause {
    use crate::wire::param::CauseCode;
    pub const INVALID_VALUES: CauseCode = CauseCode(0x3);
    pub const NON_UNIQUE_PE_ID: CauseCode = CauseCode(0x4);
    pub const INCONSISTENT_POLICY: CauseCode = CauseCode(0x5);
    pub const LACK_OF_RESOURCES: CauseCode = CauseCode(0x6);
    pub const INCONSISTENT_TRANSPORT: CauseCode = CauseCode(0x7);
    pub const INCONSISTENT_DATA_CONTROL: CauseCode = CauseCode(0x8);
    pub const UNKNOWN_POOL_HANDLE: CauseCode = CauseCode(0x9);
}

/// What to do when a known PE id re-registers over another association than its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForeignReregistration {
    /// Treat it as a re-registration and move the PE to the new association (rsplib).
    Update,
    /// Refuse it with Non-unique PE Identifier (0x4): the id stays with its association.
    #[default]
    Reject,
}

/// Limits and tunables of a handlespace.
#[derive(Clone, Debug)]
pub struct HandlespaceConfig {
    /// Most pools; a registration that would create another fails with Lack of Resources.
    pub max_pools: usize,
    /// Most PEs in one pool.
    pub max_pool_elements_per_pool: usize,
    /// Most PEs in the whole handlespace.
    pub max_pool_elements: usize,
    /// Most PEs registered over one association: one peer cannot fill the handlespace (a PE
    /// process registers one; a gateway for many PEs stays well within).
    pub max_pool_elements_per_association: usize,
    /// MaxIncrement override (rsplib `-maxincrement`); `None` = the policy's default.
    pub max_increment: Option<usize>,
    /// Most distinct Endpoint Unreachable reporters remembered per PE (at least 1 is used). A
    /// threshold above this can never be reached.
    pub max_unreachable_reporters: usize,
    /// Re-registration of a known PE id over another association.
    pub foreign_reregistration: ForeignReregistration,
}

impl Default for HandlespaceConfig {
    fn default() -> Self {
        HandlespaceConfig {
            max_pools: 65_536,
            max_pool_elements_per_pool: 65_536,
            max_pool_elements: 1_048_576,
            max_pool_elements_per_association: 1024,
            max_increment: None,
            max_unreachable_reporters: 64,
            foreign_reregistration: ForeignReregistration::Reject,
        }
    }
}

/// Who registers a PE, over what, and when.
#[derive(Clone, Debug)]
pub struct RegistrationContext {
    /// The home registrar that will own the PE (ourselves for ASAP, the peer for ENRP updates).
    pub owner: RegistrarId,
    /// The association the registration came over; `None` for PEs learned via ENRP.
    pub association: Option<AssociationKey>,
    /// The transport the registration came from, recorded as the PE's ASAP transport
    /// (RFC 5352 §3.1 rule 4); `None` keeps what the PE parameter carries.
    pub registrator: Option<TransportAddress>,
    /// Time of the registration; the registration life counts from here.
    pub now: Instant,
}

/// A granted registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// The PE was not in the pool (the pool may have been created for it).
    New,
    /// The PE was known: its values were replaced and its degradation reset.
    Updated {
        previous_owner: RegistrarId,
        previous_association: Option<AssociationKey>,
    },
}

/// Resource limits of [`HandlespaceConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceLimit {
    Pools,
    PoolElementsPerPool,
    PoolElements,
    PoolElementsPerAssociation,
}

/// A refused registration; [`RegistrationError::cause_code`] gives the ASAP error cause.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// PE identifier 0 (Invalid Values, 0x3).
    #[error("PE identifier 0 is invalid")]
    InvalidPeId,
    /// The PE's policy type differs from the pool's (0x5); the cause info is `pool_policy`.
    #[error("policy type differs from the pool's ({:#010x})", PolicyKind::of(.pool_policy).policy_type())]
    InconsistentPolicy { pool_policy: Policy },
    /// The PE's user transport protocol differs from the pool's (0x7); the cause info is
    /// `pool_transport`, a current member's user transport.
    #[error("transport type differs from the pool's")]
    InconsistentTransport { pool_transport: TransportAddress },
    /// The PE's SCTP transport use (data only / data plus control) differs from the pool's (0x8).
    #[error("data/control configuration differs from the pool's ({pool_transport_use:?})")]
    InconsistentDataControl { pool_transport_use: TransportUse },
    /// The PE id is registered over another association (0x4), with
    /// [`ForeignReregistration::Reject`].
    #[error("PE identifier is registered over another association")]
    NonUniquePeId,
    /// A configured limit is reached (Lack of Resources, 0x6).
    #[error("lack of resources: {0:?} limit reached")]
    LackOfResources(ResourceLimit),
}

impl RegistrationError {
    /// The RFC 5354 §3.12 error cause code for the Registration Response.
    pub fn cause_code(&self) -> CauseCode {
        match self {
            RegistrationError::InvalidPeId => cause::INVALID_VALUES,
            RegistrationError::InconsistentPolicy { .. } => cause::INCONSISTENT_POLICY,
            RegistrationError::InconsistentTransport { .. } => cause::INCONSISTENT_TRANSPORT,
            RegistrationError::InconsistentDataControl { .. } => cause::INCONSISTENT_DATA_CONTROL,
            RegistrationError::NonUniquePeId => cause::NON_UNIQUE_PE_ID,
            RegistrationError::LackOfResources(_) => cause::LACK_OF_RESOURCES,
        }
    }
}

/// A handle resolution for a pool that does not exist (Unknown Pool Handle, 0x9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown pool handle")]
pub struct UnknownPool;

impl UnknownPool {
    /// The RFC 5354 §3.12 error cause code.
    pub fn cause_code(&self) -> CauseCode {
        cause::UNKNOWN_POOL_HANDLE
    }
}

/// The answer to a handle resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The pool's overall policy: type and values of the PE that created the pool
    /// (RFC 5352 §3.1 rule 1). Only its type is meaningful to a PU.
    pub policy: Policy,
    /// At most the requested number of distinct PEs, in the policy's order.
    pub elements: Vec<PoolElement>,
}

/// The PEs a removal by association took out: nearly always one (a PE process registers itself
/// over its own association), kept inline then, so the common case allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemovedElements {
    first: Option<(PoolHandle, PoolElement)>,
    rest: Vec<(PoolHandle, PoolElement)>,
}

impl RemovedElements {
    /// How many PEs were removed.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The removed PEs with their pool handles.
    pub fn iter(&self) -> impl Iterator<Item = &(PoolHandle, PoolElement)> {
        self.first.iter().chain(&self.rest)
    }
}

impl IntoIterator for RemovedElements {
    type Item = (PoolHandle, PoolElement);
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<(PoolHandle, PoolElement)>,
        std::vec::IntoIter<(PoolHandle, PoolElement)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

impl From<RemovedElements> for Vec<(PoolHandle, PoolElement)> {
    fn from(removed: RemovedElements) -> Self {
        removed.into_iter().collect()
    }
}

/// What an Endpoint Unreachable report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnreachableOutcome {
    /// The PE stays; this many distinct reporters have reported it so far.
    Counted(usize),
    /// The threshold was reached and the PE was removed.
    Removed(PoolElement),
    /// No such pool or PE.
    UnknownPe,
}

/// A registered PE and the registrar's bookkeeping for it.
#[derive(Clone, Debug)]
pub struct PoolElementEntry {
    element: PoolElement,
    association: Option<AssociationKey>,
    /// The registration life counts from here ([`PoolElementEntry::expires_at`]).
    registered_at: Instant,
    selection_count: u64,
    /// Boxed: nearly every PE has none, and an empty set inline costs 24 bytes per PE where
    /// `None` costs 8.
    #[allow(clippy::box_collection)]
    unreachable_reporters: Option<Box<BTreeSet<u64>>>,
    state: SelectionState,
}

impl PoolElementEntry {
    /// The PE as registered (with `home_registrar` = owner and the registrator transport).
    pub fn element(&self) -> &PoolElement {
        &self.element
    }

    /// The home registrar that owns the PE.
    pub fn owner(&self) -> RegistrarId {
        self.element.home_registrar
    }

    /// The association the PE registered over, if registered directly.
    pub fn association(&self) -> Option<AssociationKey> {
        self.association
    }

    /// The transport the registration came from (the PE's ASAP transport).
    pub fn registrator(&self) -> Option<&TransportAddress> {
        self.element.asap_transport.as_ref()
    }

    /// Time of the last (re-)registration.
    pub fn registered_at(&self) -> Instant {
        self.registered_at
    }

    /// When the registration life runs out; `None` for an infinite life.
    pub fn expires_at(&self) -> Option<Instant> {
        expiry(self.registered_at, self.element.registration_life_ms)
    }

    /// Accumulated degradation (RFC 5356 §5.2), 0 after every (re-)registration.
    pub fn degradation(&self) -> u32 {
        self.state.degradation
    }

    /// How often the PE was handed out in a handle resolution.
    pub fn selection_count(&self) -> u64 {
        self.selection_count
    }

    /// Number of distinct Endpoint Unreachable reporters so far.
    pub fn unreachable_reports(&self) -> usize {
        self.unreachable_reporters
            .as_ref()
            .map_or(0, |set| set.len())
    }

    /// The distinct Endpoint Unreachable reporters so far.
    pub fn unreachable_reporters(&self) -> impl Iterator<Item = u64> + '_ {
        self.unreachable_reporters
            .iter()
            .flat_map(|set| set.iter().copied())
    }
}

/// Transport protocol of a user transport, for the pool consistency check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransportKind {
    Dccp,
    Sctp,
    Tcp,
    Udp,
    UdpLite,
    Opaque,
}

fn transport_kind(transport: &TransportAddress) -> TransportKind {
    match transport {
        TransportAddress::Dccp { .. } => TransportKind::Dccp,
        TransportAddress::Sctp { .. } => TransportKind::Sctp,
        TransportAddress::Tcp { .. } => TransportKind::Tcp,
        TransportAddress::Udp { .. } => TransportKind::Udp,
        TransportAddress::UdpLite { .. } => TransportKind::UdpLite,
        TransportAddress::Opaque(_) => TransportKind::Opaque,
    }
}

fn transport_use(transport: &TransportAddress) -> Option<TransportUse> {
    match transport {
        TransportAddress::Sctp { transport_use, .. } => Some(*transport_use),
        _ => None,
    }
}

#[derive(Clone, Debug)]
struct Pool {
    handle: PoolHandle,
    /// The handle's part of each PE's checksum contribution.
    handle_sum: u32,
    kind: PolicyKind,
    /// The creating PE's policy: the pool's overall policy.
    policy: Policy,
    transport: TransportKind,
    transport_use: Option<TransportUse>,
    elements: Members,
    selection: Selection,
    next_seq: u64,
    /// Scratch space of [`Pool::select`], kept to save an allocation per resolution.
    picked: Vec<Position>,
}

impl Pool {
    fn new(handle: PoolHandle, policy: Policy, user_transport: &TransportAddress) -> Self {
        let kind = PolicyKind::of(&policy);
        Pool {
            handle_sum: checksum::handle_word_sum(&handle),
            handle,
            kind,
            policy,
            transport: transport_kind(user_transport),
            transport_use: transport_use(user_transport),
            elements: Members::default(),
            selection: Selection::new(kind),
            next_seq: 0,
            picked: Vec::new(),
        }
    }

    fn check_consistency(&self, element: &PoolElement) -> Result<(), RegistrationError> {
        if PolicyKind::of(&element.policy) != self.kind {
            return Err(RegistrationError::InconsistentPolicy {
                pool_policy: self.policy,
            });
        }
        if transport_kind(&element.user_transport) != self.transport {
            let pool_transport = self
                .elements
                .values()
                .next()
                .map(|e| e.element.user_transport.clone())
                .unwrap_or_else(|| element.user_transport.clone());
            return Err(RegistrationError::InconsistentTransport { pool_transport });
        }
        if let Some(pool_transport_use) = self.transport_use
            && transport_use(&element.user_transport) != Some(pool_transport_use)
        {
            return Err(RegistrationError::InconsistentDataControl { pool_transport_use });
        }
        Ok(())
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Adds a new PE to the slab and the selection structure.
    fn link(&mut self, mut entry: PoolElementEntry) {
        if let Policy::WeightedRoundRobin { weight } = entry.element.policy
            && weight > 0
        {
            // A newcomer joins at the current virtual time instead of jumping the queue.
            let (round, num, den) = self.selection.wrr_head_time();
            let (round, picks) = policy::wrr_join(round, num, den, weight);
            entry.state.wrr_round = round;
            entry.state.wrr_picks = picks;
        }
        let key = SelectionKey::of(&entry);
        let at = self.elements.insert(entry);
        if let Some(entry) = self.elements.at(at) {
            self.selection.insert(key, at, entry);
        }
    }

    /// Re-sorts or re-weighs a PE after its values or state changed. `old_key` is the
    /// [`SelectionKey`] it had before the change; for WRR, `old_wrr_weight` is the weight the
    /// PE's current WRR state was computed with.
    fn relink(&mut self, id: PeId, old_key: SelectionKey, old_wrr_weight: Option<u32>) {
        let Some(at) = self.elements.position(&id) else {
            return;
        };
        let Some(entry) = self.elements.at_mut(at) else {
            return;
        };
        if let Policy::WeightedRoundRobin { weight } = entry.element.policy
            && weight > 0
            && old_wrr_weight != Some(weight)
        {
            // Weight changed: continue from the PE's own next-pick time (or the head's if it
            // was not selectable) at the new spacing.
            let (round, num, den) = match old_wrr_weight {
                Some(old) if old > 0 => {
                    let (num, den) = policy::wrr_position(entry.state.wrr_picks, old);
                    (entry.state.wrr_round, num, den)
                }
                _ => self.selection.wrr_head_time(),
            };
            let (round, picks) = policy::wrr_join(round, num, den, weight);
            entry.state.wrr_round = round;
            entry.state.wrr_picks = picks;
        }
        let new_key = SelectionKey::of(entry);
        // A re-registration that leaves the key as it was (round robin, an unchanged load)
        // leaves an ordered PE where it is; a weighted one is re-weighed in place.
        if new_key != old_key || matches!(self.selection, Selection::Weighted(_)) {
            self.selection.rekey(old_key, new_key, at, entry);
        }
    }

    /// Removes a PE from the slab and the selection structure.
    #[inline]
    fn unlink(&mut self, id: &PeId) -> Option<PoolElementEntry> {
        let (at, entry) = self.elements.remove(id)?;
        self.selection
            .remove(SelectionKey::of(&entry), at, &self.elements);
        if self.elements.is_sparse() {
            self.compact();
        }
        Some(entry)
    }

    /// The pool shrank to under a quarter of its peak: moves its last entries into the holes
    /// and gives the rest of the slab back (amortized O(log n) per removal).
    fn compact(&mut self) {
        for (from, to) in self.elements.compact() {
            if let Some(entry) = self.elements.at(to) {
                self.selection.relocate(SelectionKey::of(entry), from, to);
            }
        }
        self.selection.shrink(self.elements.capacity());
    }

    fn select<R: Rng + ?Sized>(
        &mut self,
        items: usize,
        max_increment: usize,
        rng: &mut R,
        chosen: &mut Vec<PoolElement>,
    ) {
        let handout = Handout {
            elements: &mut self.elements,
            next_seq: &mut self.next_seq,
            chosen,
            items,
            max_increment,
        };
        self.selection.select(handout, &mut self.picked, rng);
    }
}

/// A pool's place in [`Handlespace::slots`], stable while the pool exists.
type PoolSlot = u32;

/// A PE as the indexes name it: its pool's slot and its identifier (8 bytes, where the pool
/// handle itself would cost a pointer and a slower comparison in every index).
type PeKey = (PoolSlot, PeId);

/// The PEs registered over one association: nearly always one (a PE process registers itself),
/// kept inline; a bounded list otherwise (`max_pool_elements_per_association`), boxed so that
/// the common case costs 16 bytes in the index.
#[derive(Clone, Debug)]
enum AssociationMembers {
    One(PeKey),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<PeKey>>),
}

impl AssociationMembers {
    fn as_slice(&self) -> &[PeKey] {
        match self {
            AssociationMembers::One(key) => std::slice::from_ref(key),
            AssociationMembers::Many(keys) => keys,
        }
    }

    fn insert(&mut self, key: PeKey) {
        if self.as_slice().contains(&key) {
            return;
        }
        match self {
            AssociationMembers::One(first) => {
                *self = AssociationMembers::Many(Box::new(vec![*first, key]))
            }
            AssociationMembers::Many(keys) => keys.push(key),
        }
    }

    /// Removes `key`; whether the association has no PE left.
    fn remove(&mut self, key: PeKey) -> bool {
        match self {
            AssociationMembers::One(only) => *only == key,
            AssociationMembers::Many(keys) => {
                if let Some(at) = keys.iter().position(|k| *k == key) {
                    keys.swap_remove(at);
                }
                keys.is_empty()
            }
        }
    }
}

/// What a registrar owns: the checksum of its PEs and how many of them each pool holds.
///
/// The bulk operations on an owner (takeover, removal, listing) scan the pools it has PEs in;
/// registering or removing one PE touches only this small map, where an index of every PE
/// (a hashed set, as before) cost a cache miss in a large table per registration and removal.
#[derive(Clone, Debug, Default)]
struct OwnerIndex {
    pools: HashMap<PoolSlot, u32, SeededHasher>,
    checksum: HandlespaceChecksum,
}

/// A read-only view of one pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolView<'a> {
    handle: &'a PoolHandle,
    pool: &'a Pool,
}

impl<'a> PoolView<'a> {
    /// The pool handle.
    pub fn handle(&self) -> &'a PoolHandle {
        self.handle
    }

    /// The pool's overall policy (its creating PE's).
    pub fn policy(&self) -> Policy {
        self.pool.policy
    }

    /// The pool's policy type, fixed by its first PE.
    pub fn policy_kind(&self) -> PolicyKind {
        self.pool.kind
    }

    /// Number of PEs (never 0: empty pools are removed).
    pub fn len(&self) -> usize {
        self.pool.elements.len()
    }

    /// Always false; pools disappear with their last PE.
    pub fn is_empty(&self) -> bool {
        self.pool.elements.is_empty()
    }

    /// One PE.
    pub fn get(&self, id: PeId) -> Option<&'a PoolElementEntry> {
        self.pool.elements.get(&id)
    }

    /// The PEs in identifier order.
    pub fn elements(&self) -> impl Iterator<Item = &'a PoolElementEntry> + 'a {
        self.pool.elements.values()
    }
}

/// A canonical copy of the handlespace's contents, for comparisons (e.g. between registrars).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlespaceSnapshot {
    /// Pools by handle.
    pub pools: BTreeMap<PoolHandle, PoolSnapshot>,
}

/// One pool of a [`HandlespaceSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The pool's policy type.
    pub policy: PolicyKind,
    /// PEs as registered, by identifier.
    pub elements: BTreeMap<PeId, PoolElement>,
}

/// The handlespace: every pool and PE a registrar knows, with indexes and checksums.
///
/// Pools live in slots; the indexes (by association, owner and expiry) name a PE by its pool's
/// slot and its identifier, so registering a PE clones no pool handle.
#[derive(Clone, Debug, Default)]
pub struct Handlespace {
    config: HandlespaceConfig,
    /// Pool handle to slot (hashed: a lookup costs one handle comparison, where a tree of
    /// handles compares the bytes of several).
    pools: HashMap<PoolHandle, PoolSlot, SeededHasher>,
    slots: Vec<Option<Pool>>,
    free_slots: Vec<PoolSlot>,
    pool_element_count: usize,
    by_association: HashMap<AssociationKey, AssociationMembers, SeededHasher>,
    by_owner: BTreeMap<RegistrarId, OwnerIndex>,
    /// When each PE's registration life ends, as `(expiry, PE)` items pruned lazily: a removal
    /// or re-registration leaves its old item behind, dropped when it comes up (it is stale
    /// unless the PE is still registered with that very expiry) or when a registration finds
    /// stale items outnumbering the PEs. (The registrar supervises its PEs with keep-alives and
    /// does not read this index.)
    by_expiry: LazyMinHeap<(Instant, PeKey)>,
    checksum: HandlespaceChecksum,
}

impl Handlespace {
    /// An empty handlespace.
    pub fn new(config: HandlespaceConfig) -> Self {
        Handlespace {
            config,
            ..Default::default()
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HandlespaceConfig {
        &self.config
    }

    /// Registers a PE or updates a registered one (RFC 5352 §3.1, ENRP Handle Update ADD_PE).
    ///
    /// Creates the pool if needed, with the PE's policy type, transport type and transport use.
    /// A PE already in the pool is re-registered: its values are replaced, its degradation reset,
    /// its round-robin position kept; owner, association and expiry follow `ctx`.
    pub fn register(
        &mut self,
        handle: &PoolHandle,
        mut element: PoolElement,
        ctx: RegistrationContext,
    ) -> Result<RegistrationOutcome, RegistrationError> {
        if element.id.0 == 0 {
            return Err(RegistrationError::InvalidPeId);
        }
        element.home_registrar = ctx.owner;
        if let Some(registrator) = ctx.registrator {
            element.asap_transport = Some(registrator);
        }
        let id = element.id;
        let expires_at = expiry(ctx.now, element.registration_life_ms);

        let existing = self.pools.get(handle).copied();
        match existing.and_then(|slot| Some((slot, self.slots.get_mut(slot as usize)?.as_mut()?))) {
            Some((slot, pool)) => {
                pool.check_consistency(&element)?;
                if let Some(entry) = pool.elements.get_mut(&id) {
                    let previous_owner = entry.owner();
                    let previous_association = entry.association;
                    let previous_expiry = entry.expires_at();
                    if self.config.foreign_reregistration == ForeignReregistration::Reject
                        && let (Some(old), Some(new)) = (previous_association, ctx.association)
                        && old != new
                    {
                        return Err(RegistrationError::NonUniquePeId);
                    }
                    let old_wrr_weight = match entry.element.policy {
                        Policy::WeightedRoundRobin { weight } => Some(weight),
                        _ => None,
                    };
                    let old_key = SelectionKey::of(entry);
                    entry.element = element;
                    entry.association = ctx.association;
                    entry.registered_at = ctx.now;
                    // RFC 5356 §5.2.2: the degradation counter restarts on every re-registration.
                    entry.state.degradation = 0;
                    pool.relink(id, old_key, old_wrr_weight);
                    let contribution = checksum::pe_checksum_contribution_with(pool.handle_sum, id);

                    let key = (slot, id);
                    if previous_association != ctx.association {
                        self.unindex_association(previous_association, key);
                        self.index_association(ctx.association, key);
                    }
                    if previous_owner != ctx.owner {
                        self.unindex_owner(previous_owner, contribution, key);
                        self.index_owner(ctx.owner, contribution, key);
                    }
                    if previous_expiry != expires_at {
                        // The old item stays, stale, until it comes up or the index is rebuilt.
                        if let Some(at) = expires_at {
                            self.push_expiry(at, key);
                        }
                    }
                    return Ok(RegistrationOutcome::Updated {
                        previous_owner,
                        previous_association,
                    });
                }
                if pool.elements.len() >= self.config.max_pool_elements_per_pool {
                    return Err(RegistrationError::LackOfResources(
                        ResourceLimit::PoolElementsPerPool,
                    ));
                }
            }
            None => {
                if self.pools.len() >= self.config.max_pools {
                    return Err(RegistrationError::LackOfResources(ResourceLimit::Pools));
                }
                if self.config.max_pool_elements_per_pool == 0 {
                    return Err(RegistrationError::LackOfResources(
                        ResourceLimit::PoolElementsPerPool,
                    ));
                }
            }
        }

        if self.pool_element_count >= self.config.max_pool_elements {
            return Err(RegistrationError::LackOfResources(
                ResourceLimit::PoolElements,
            ));
        }
        if let Some(association) = ctx.association
            && self
                .by_association
                .get(&association)
                .map_or(0, |members| members.as_slice().len())
                >= self.config.max_pool_elements_per_association
        {
            return Err(RegistrationError::LackOfResources(
                ResourceLimit::PoolElementsPerAssociation,
            ));
        }
        let slot = match existing {
            Some(slot) => slot,
            None => self.create_pool(Pool::new(
                handle.clone(),
                element.policy,
                &element.user_transport,
            )),
        };
        let Some(pool) = self.pool_at_mut(slot) else {
            debug_assert!(false, "a pool slot without its pool");
            return Err(RegistrationError::LackOfResources(ResourceLimit::Pools));
        };
        let seq = pool.take_seq();
        let entry = PoolElementEntry {
            element,
            association: ctx.association,
            registered_at: ctx.now,
            selection_count: 0,
            unreachable_reporters: None,
            state: SelectionState {
                seq,
                ..SelectionState::default()
            },
        };
        pool.link(entry);
        let contribution = checksum::pe_checksum_contribution_with(pool.handle_sum, id);

        let key = (slot, id);
        self.pool_element_count += 1;
        self.checksum.add_contribution(contribution);
        self.index_association(ctx.association, key);
        self.index_owner(ctx.owner, contribution, key);
        if let Some(at) = expires_at {
            self.push_expiry(at, key);
        }
        Ok(RegistrationOutcome::New)
    }

    /// Removes a PE (ASAP Deregistration, ENRP DEL_PE, keep-alive failure); deletes its pool
    /// when it was the last member. `None` if unknown (RFC 5352 §3.2 still grants it).
    pub fn deregister(&mut self, handle: &PoolHandle, id: PeId) -> Option<PoolElement> {
        self.remove_entry(handle, id)
    }

    /// Removes every PE registered over `association` (it closed or failed).
    pub fn remove_association(&mut self, association: AssociationKey) -> RemovedElements {
        match self.by_association.remove(&association) {
            Some(AssociationMembers::One(key)) => RemovedElements {
                first: self.remove_with_handle(key, true),
                rest: Vec::new(),
            },
            Some(AssociationMembers::Many(keys)) => RemovedElements {
                first: None,
                rest: self.remove_all(*keys, true),
            },
            None => RemovedElements::default(),
        }
    }

    /// Removes every PE owned by `owner` (a peer registrar that died without takeover); the
    /// removed PEs in (handle, id) order.
    pub fn remove_owned_by(&mut self, owner: RegistrarId) -> Vec<(PoolHandle, PoolElement)> {
        let owned: Vec<PeKey> = self.owned_keys(owner).collect();
        let mut removed = self.remove_all(owned, false);
        removed.sort_unstable_by(|a, b| (&a.0, a.1.id).cmp(&(&b.0, b.1.id)));
        removed
    }

    /// Makes `to` the owner of every PE owned by `from` (ENRP takeover, RFC 5353 §3.5) and
    /// returns them in (handle, id) order, e.g. to send each a Keep-Alive with the H flag.
    pub fn transfer_ownership(
        &mut self,
        from: RegistrarId,
        to: RegistrarId,
    ) -> Vec<(PoolHandle, PeId)> {
        if from == to {
            let mut owned: Vec<_> = self.owned_by(from).map(|(h, id)| (h.clone(), id)).collect();
            owned.sort_unstable();
            return owned;
        }
        let Some(moved) = self.by_owner.remove(&from) else {
            return Vec::new();
        };
        let target = self.by_owner.entry(to).or_default();
        let mut transferred = Vec::new();
        for (slot, count) in moved.pools {
            let Some(pool) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            *target.pools.entry(slot).or_default() += count;
            for (_, entry) in pool.elements.entries_mut() {
                if entry.element.home_registrar == from {
                    entry.element.home_registrar = to;
                    let id = entry.element.id;
                    target
                        .checksum
                        .add_contribution(checksum::pe_checksum_contribution_with(
                            pool.handle_sum,
                            id,
                        ));
                    transferred.push((pool.handle.clone(), id));
                }
            }
        }
        transferred.sort_unstable();
        transferred
    }

    /// Selects up to `items` distinct PEs of a pool by its policy (RFC 5352 §3.3, RFC 5356) and
    /// advances the policy state of the first MaxIncrement of them.
    pub fn resolve<R: Rng + ?Sized>(
        &mut self,
        handle: &PoolHandle,
        items: usize,
        rng: &mut R,
    ) -> Result<Resolution, UnknownPool> {
        let mut elements = Vec::new();
        let policy = self.resolve_into(handle, items, rng, &mut elements)?;
        Ok(Resolution { policy, elements })
    }

    /// [`Handlespace::resolve`] into the caller's buffer: appends the selected PEs to
    /// `elements` and answers with the pool's policy. (The registrar's answer takes the buffer
    /// as it is; a caller resolving in a loop reuses one.)
    pub fn resolve_into<R: Rng + ?Sized>(
        &mut self,
        handle: &PoolHandle,
        items: usize,
        rng: &mut R,
        elements: &mut Vec<PoolElement>,
    ) -> Result<Policy, UnknownPool> {
        let max_increment = self.config.max_increment;
        let pool = self.pool_mut(handle).ok_or(UnknownPool)?;
        let max_increment = max_increment.unwrap_or_else(|| pool.kind.default_max_increment());
        pool.select(items, max_increment, rng, elements);
        Ok(pool.policy)
    }

    /// Counts an Endpoint Unreachable report from `reporter` (e.g. a PU association key) and
    /// removes the PE once `threshold` distinct reporters have reported it (rsplib's
    /// MaxBadPEReports; a threshold of 0 acts as 1). Repeated reports from one reporter count once.
    pub fn report_unreachable(
        &mut self,
        handle: &PoolHandle,
        id: PeId,
        reporter: u64,
        threshold: usize,
    ) -> UnreachableOutcome {
        let cap = self.config.max_unreachable_reporters.max(1);
        let Some(entry) = self.entry_mut(handle, id) else {
            return UnreachableOutcome::UnknownPe;
        };
        if entry.unreachable_reports() < cap {
            entry
                .unreachable_reporters
                .get_or_insert_default()
                .insert(reporter);
        }
        let count = entry.unreachable_reports();
        if count >= threshold.max(1) {
            match self.remove_entry(handle, id) {
                Some(element) => UnreachableOutcome::Removed(element),
                None => UnreachableOutcome::UnknownPe,
            }
        } else {
            UnreachableOutcome::Counted(count)
        }
    }

    /// Takes back the report of `reporter` against a PE (the reporter went away).
    pub fn withdraw_unreachable_report(&mut self, handle: &PoolHandle, id: PeId, reporter: u64) {
        if let Some(entry) = self.entry_mut(handle, id)
            && let Some(set) = entry.unreachable_reporters.as_mut()
        {
            set.remove(&reporter);
            if set.is_empty() {
                entry.unreachable_reporters = None;
            }
        }
    }

    /// Forgets the Endpoint Unreachable reports of a PE (e.g. after a successful keep-alive).
    /// Returns whether the PE exists.
    pub fn clear_unreachable_reports(&mut self, handle: &PoolHandle, id: PeId) -> bool {
        match self.entry_mut(handle, id) {
            Some(entry) => {
                entry.unreachable_reporters = None;
                true
            }
            None => false,
        }
    }

    /// The earliest registration expiry, to arm the caller's timer. (`&mut`: drops the items
    /// that removals and re-registrations left stale at the head of the index.)
    pub fn next_expiry(&mut self) -> Option<Instant> {
        let slots = &self.slots;
        self.by_expiry
            .prune(|&(at, key)| expiry_is_live(slots, at, key));
        self.by_expiry.first().map(|&(at, _)| at)
    }

    /// Removes every PE whose registration life ended at or before `now`.
    pub fn remove_expired(&mut self, now: Instant) -> Vec<(PoolHandle, PoolElement)> {
        let mut removed = Vec::new();
        while let Some(&(at, key)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.by_expiry.pop();
            if expiry_is_live(&self.slots, at, key) {
                removed.extend(self.remove_with_handle(key, false));
            }
        }
        removed
    }

    /// One PE.
    pub fn get(&self, handle: &PoolHandle, id: PeId) -> Option<&PoolElementEntry> {
        self.pool_at(*self.pools.get(handle)?)?.elements.get(&id)
    }

    /// One pool.
    pub fn pool(&self, handle: &PoolHandle) -> Option<PoolView<'_>> {
        let pool = self.pool_at(*self.pools.get(handle)?)?;
        Some(PoolView {
            handle: &pool.handle,
            pool,
        })
    }

    /// All pools in handle order (sorted on each call: for listings, not for hot paths).
    pub fn pools(&self) -> impl Iterator<Item = PoolView<'_>> {
        let mut pools: Vec<&Pool> = self.slots.iter().flatten().collect();
        pools.sort_unstable_by(|a, b| a.handle.cmp(&b.handle));
        pools.into_iter().map(|pool| PoolView {
            handle: &pool.handle,
            pool,
        })
    }

    /// The PEs registered over an association.
    pub fn association_elements(
        &self,
        association: AssociationKey,
    ) -> impl Iterator<Item = (&PoolHandle, PeId)> {
        self.by_association
            .get(&association)
            .map_or(&[][..], AssociationMembers::as_slice)
            .iter()
            .filter_map(|(slot, id)| Some((self.handle_of(*slot)?, *id)))
    }

    /// The PEs owned by a registrar (in no particular order). Scans the pools it has PEs in.
    pub fn owned_by(&self, owner: RegistrarId) -> impl Iterator<Item = (&PoolHandle, PeId)> {
        self.owned_keys(owner)
            .filter_map(|(slot, id)| Some((self.handle_of(slot)?, id)))
    }

    /// The PEs owned by a registrar, as the indexes name them.
    fn owned_keys(&self, owner: RegistrarId) -> impl Iterator<Item = PeKey> + '_ {
        self.by_owner
            .get(&owner)
            .into_iter()
            .flat_map(|index| index.pools.keys())
            .filter_map(|&slot| Some((slot, self.pool_at(slot)?)))
            .flat_map(move |(slot, pool)| {
                pool.elements
                    .entries()
                    .filter(move |(_, entry)| entry.owner() == owner)
                    .map(move |(_, entry)| (slot, entry.element.id))
            })
    }

    /// Number of pools.
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    /// Number of PEs in all pools.
    pub fn pool_element_count(&self) -> usize {
        self.pool_element_count
    }

    /// Whether the handlespace holds no PE.
    pub fn is_empty(&self) -> bool {
        self.pool_element_count == 0
    }

    /// RFC 5353 §3.6.2 checksum over every PE.
    pub fn checksum(&self) -> u16 {
        self.checksum.value()
    }

    /// RFC 5353 §3.6.2 checksum over the PEs owned by `owner` (sent in ENRP Presence).
    pub fn owner_checksum(&self, owner: RegistrarId) -> u16 {
        self.by_owner
            .get(&owner)
            .map(|o| o.checksum)
            .unwrap_or_default()
            .value()
    }

    /// A canonical copy of all pools and PEs.
    pub fn snapshot(&self) -> HandlespaceSnapshot {
        let pools = self
            .pools()
            .map(|view| {
                let elements = view
                    .pool
                    .elements
                    .iter()
                    .map(|(id, e)| (*id, e.element.clone()))
                    .collect();
                (
                    view.handle.clone(),
                    PoolSnapshot {
                        policy: view.pool.kind,
                        elements,
                    },
                )
            })
            .collect();
        HandlespaceSnapshot { pools }
    }

    fn pool_at(&self, slot: PoolSlot) -> Option<&Pool> {
        self.slots.get(slot as usize)?.as_ref()
    }

    fn pool_at_mut(&mut self, slot: PoolSlot) -> Option<&mut Pool> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    fn pool_mut(&mut self, handle: &PoolHandle) -> Option<&mut Pool> {
        let slot = *self.pools.get(handle)?;
        self.pool_at_mut(slot)
    }

    fn entry_mut(&mut self, handle: &PoolHandle, id: PeId) -> Option<&mut PoolElementEntry> {
        self.pool_mut(handle)?.elements.get_mut(&id)
    }

    fn handle_of(&self, slot: PoolSlot) -> Option<&PoolHandle> {
        self.pool_at(slot).map(|pool| &pool.handle)
    }

    fn create_pool(&mut self, pool: Pool) -> PoolSlot {
        let handle = pool.handle.clone();
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(pool);
                slot
            }
            None => {
                self.slots.push(Some(pool));
                // At most `max_pools` slots exist, far below u32::MAX.
                (self.slots.len() - 1) as PoolSlot
            }
        };
        self.pools.insert(handle, slot);
        slot
    }

    /// Removes the PEs of `members`; `association_gone` says their association's index entry
    /// is already gone (removal by association), which saves looking it up again per PE.
    fn remove_all(
        &mut self,
        members: impl IntoIterator<Item = PeKey>,
        association_gone: bool,
    ) -> Vec<(PoolHandle, PoolElement)> {
        let members = members.into_iter();
        let mut removed = Vec::with_capacity(members.size_hint().0);
        removed.extend(members.filter_map(|key| self.remove_with_handle(key, association_gone)));
        removed
    }

    /// [`Handlespace::remove_key`], answering with the pool handle and the PE.
    fn remove_with_handle(
        &mut self,
        key: PeKey,
        association_gone: bool,
    ) -> Option<(PoolHandle, PoolElement)> {
        let handle = self.handle_of(key.0)?.clone();
        let element = self.remove_key(key, association_gone)?;
        Some((handle, element))
    }

    fn remove_entry(&mut self, handle: &PoolHandle, id: PeId) -> Option<PoolElement> {
        let slot = *self.pools.get(handle)?;
        self.remove_key((slot, id), false)
    }

    /// Removes a PE from its pool and every index; deletes the pool when it was the last.
    fn remove_key(&mut self, key: PeKey, association_gone: bool) -> Option<PoolElement> {
        let (slot, id) = key;
        let pool = self.slots.get_mut(slot as usize)?.as_mut()?;
        let PoolElementEntry {
            element,
            association,
            ..
        } = pool.unlink(&id)?;
        let contribution = checksum::pe_checksum_contribution_with(pool.handle_sum, id);
        if pool.elements.is_empty()
            && let Some(pool) = self.slots[slot as usize].take()
        {
            self.free_slots.push(slot);
            self.pools.remove(&pool.handle);
        }
        self.pool_element_count -= 1;
        self.checksum.remove_contribution(contribution);
        if !association_gone {
            self.unindex_association(association, key);
        }
        self.unindex_owner(element.home_registrar, contribution, key);
        // Its expiry item stays, stale, until it comes up or the next registration rebuilds the
        // index; nothing is left to expire once the handlespace is empty.
        if self.pool_element_count == 0 {
            self.by_expiry.rebuild([]);
        }
        Some(element)
    }

    /// Adds an expiry item; rebuilds the index when stale items outnumber the PEs (amortized
    /// O(1) per registration).
    fn push_expiry(&mut self, at: Instant, key: PeKey) {
        self.by_expiry.push((at, key));
        if self.by_expiry.len() > 2 * self.pool_element_count + 64 {
            let live = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, pool)| Some((slot as PoolSlot, pool.as_ref()?)))
                .flat_map(|(slot, pool)| {
                    pool.elements
                        .entries()
                        .filter_map(move |(_, e)| Some((e.expires_at()?, (slot, e.element.id))))
                });
            self.by_expiry.rebuild(live);
        }
    }

    fn index_association(&mut self, association: Option<AssociationKey>, key: PeKey) {
        if let Some(association) = association {
            self.by_association
                .entry(association)
                .and_modify(|members| members.insert(key))
                .or_insert(AssociationMembers::One(key));
        }
    }

    fn unindex_association(&mut self, association: Option<AssociationKey>, key: PeKey) {
        let Some(association) = association else {
            return;
        };
        if let Some(members) = self.by_association.get_mut(&association)
            && members.remove(key)
        {
            self.by_association.remove(&association);
        }
    }

    fn index_owner(&mut self, owner: RegistrarId, contribution: u32, key: PeKey) {
        let index = self.by_owner.entry(owner).or_default();
        *index.pools.entry(key.0).or_default() += 1;
        index.checksum.add_contribution(contribution);
    }

    fn unindex_owner(&mut self, owner: RegistrarId, contribution: u32, key: PeKey) {
        let Some(index) = self.by_owner.get_mut(&owner) else {
            return;
        };
        if let Some(count) = index.pools.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                index.pools.remove(&key.0);
            }
            index.checksum.remove_contribution(contribution);
        }
        if index.pools.is_empty() {
            self.by_owner.remove(&owner);
        }
    }

    /// Verifies every index, selection structure and checksum against the pools, recomputing
    /// from scratch. O(N log N); for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut count = 0;
        let mut checksum = HandlespaceChecksum::new();
        let mut by_association: HashMap<AssociationKey, BTreeSet<PeKey>> = HashMap::new();
        let mut by_owner: BTreeMap<RegistrarId, (BTreeMap<PoolSlot, u32>, HandlespaceChecksum)> =
            BTreeMap::new();
        let mut by_expiry = BTreeSet::new();
        let cap = self.config.max_unreachable_reporters.max(1);
        for (index, pool) in self.slots.iter().enumerate() {
            let slot = index as PoolSlot;
            let Some(pool) = pool else {
                if !self.free_slots.contains(&slot) {
                    return Err(format!("empty slot {slot} not free"));
                }
                continue;
            };
            if self.pools.get(&pool.handle) != Some(&slot) {
                return Err(format!(
                    "pool {:?} not found at its slot {slot}",
                    pool.handle
                ));
            }
        }
        if self.pools.len() + self.free_slots.len() != self.slots.len()
            || self
                .pools
                .iter()
                .any(|(handle, slot)| self.handle_of(*slot) != Some(handle))
        {
            return Err("pool slots leak or are shared".into());
        }
        for view in self.pools() {
            let (handle, pool) = (view.handle, view.pool);
            let slot = self.pools[handle];
            let at = |id: PeId| format!("pool {handle:?} PE {}", id.0);
            if pool.elements.is_empty() {
                return Err(format!("empty pool {handle:?} kept"));
            }
            let mut selectable = 0;
            if !pool.elements.is_consistent() {
                return Err(format!("pool {handle:?}: entry positions broken"));
            }
            for (id, entry) in pool.elements.iter() {
                count += 1;
                checksum.add(handle, *id);
                if entry.element.id != *id {
                    return Err(format!("{}: stored under the wrong id", at(*id)));
                }
                if PolicyKind::of(&entry.element.policy) != pool.kind {
                    return Err(format!("{}: policy kind differs from the pool's", at(*id)));
                }
                if transport_kind(&entry.element.user_transport) != pool.transport
                    || (pool.transport_use.is_some()
                        && transport_use(&entry.element.user_transport) != pool.transport_use)
                {
                    return Err(format!("{}: transport differs from the pool's", at(*id)));
                }
                if entry.state.seq >= pool.next_seq {
                    return Err(format!("{}: sequence number from the future", at(*id)));
                }
                if entry.unreachable_reports() > cap
                    || entry
                        .unreachable_reporters
                        .as_ref()
                        .is_some_and(|set| set.is_empty())
                {
                    return Err(format!("{}: too many reporters kept", at(*id)));
                }
                if let Policy::WeightedRoundRobin { weight } = entry.element.policy
                    && weight > 0
                    && entry.state.wrr_picks >= weight
                {
                    return Err(format!("{}: WRR picks beyond weight", at(*id)));
                }
                let Some(position) = pool.elements.position(id) else {
                    return Err(format!("{}: no position", at(*id)));
                };
                // Stored under its current key (the selection's size below catches one stored
                // under a stale key too), or not at all when it has none.
                match pool
                    .selection
                    .check_entry(SelectionKey::of(entry), position, entry)
                {
                    Ok(true) => selectable += 1,
                    Ok(false) => {}
                    Err(why) => return Err(format!("{}: {why}", at(*id))),
                }
                if let Some(key) = entry.association {
                    by_association.entry(key).or_default().insert((slot, *id));
                }
                let owner = by_owner.entry(entry.owner()).or_default();
                *owner.0.entry(slot).or_default() += 1;
                owner.1.add(handle, *id);
                if let Some(at) = entry.expires_at() {
                    by_expiry.insert((at, (slot, *id)));
                }
            }
            if let Err(why) = pool.selection.check_whole(selectable, &pool.elements) {
                return Err(format!("pool {handle:?}: {why}"));
            }
        }
        if count != self.pool_element_count {
            return Err(format!(
                "PE count {} but {count} stored",
                self.pool_element_count
            ));
        }
        if checksum != self.checksum {
            return Err("overall checksum differs from a fresh computation".into());
        }
        let associations: HashMap<AssociationKey, BTreeSet<PeKey>> = self
            .by_association
            .iter()
            .map(|(key, members)| (*key, members.as_slice().iter().copied().collect()))
            .collect();
        let listed: usize = self
            .by_association
            .values()
            .map(|members| members.as_slice().len())
            .sum();
        if by_association != associations
            || listed != by_association.values().map(BTreeSet::len).sum::<usize>()
        {
            return Err("association index differs".into());
        }
        let owners: BTreeMap<_, _> = self
            .by_owner
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    (v.pools.iter().map(|(s, n)| (*s, *n)).collect(), v.checksum),
                )
            })
            .collect();
        if by_owner != owners {
            return Err("owner index or owner checksums differ".into());
        }
        // Every registration life has its item; an empty handlespace keeps none.
        let items: BTreeSet<(Instant, PeKey)> = self.by_expiry.iter().copied().collect();
        if !by_expiry.is_subset(&items) {
            return Err("expiry index misses a PE".into());
        }
        if self.pool_element_count == 0 && self.by_expiry.len() > 0 {
            return Err("expiry index of an empty handlespace holds items".into());
        }
        Ok(())
    }
}

/// Whether the PE `key` is registered and its registration life ends at `at`.
fn expiry_is_live(slots: &[Option<Pool>], at: Instant, key: PeKey) -> bool {
    slots
        .get(key.0 as usize)
        .and_then(Option::as_ref)
        .and_then(|pool| pool.elements.get(&key.1))
        .is_some_and(|entry| entry.expires_at() == Some(at))
}

/// When a registration of `life_ms` milliseconds made at `now` ends; `u32::MAX` = never.
fn expiry(now: Instant, life_ms: u32) -> Option<Instant> {
    if life_ms == u32::MAX {
        None
    } else {
        now.checked_add(Duration::from_millis(u64::from(life_ms)))
    }
}
