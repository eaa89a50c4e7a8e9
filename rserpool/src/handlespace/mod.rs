//! The registrar's handlespace (RFC 5351 §2, RFC 5352 §3, RFC 5353) and every pool policy
//! (RFC 5356 and rsplib's private ones).
//!
//! Pools are kept by handle, PEs by identifier within their pool. Each pool has a selection
//! structure that fits its policy (see [`policy`]): a `BTreeMap` ordered by
//! `(policy key, sequence number)` for the ordered policies, so that "take the first n and
//! re-insert the selected ones with a new sequence number" costs O(n log N), and a Fenwick tree of
//! weights for the weighted random ones, so that drawing n distinct PEs costs O(n log N).
//! Global indexes find PEs by association (to drop everything registered over a closed
//! association), by owner (home registrar, for ENRP) and by expiry time. The RFC 5353 §3.6.2
//! checksums, overall and per owner, are updated on every insert and remove.
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};

use crate::wire::param::{
    CauseCode, PeId, PoolElement, PoolHandle, TransportAddress, TransportUse,
};
use crate::wire::policy::Policy;

use crate::wire::checksum;
pub use crate::wire::checksum::HandlespaceChecksum;
use fenwick::Fenwick;
use members::Members;
pub use policy::{ALL_POLICY_KINDS, PolicyKind};
use policy::{OrderKey, Primary, SelectionMethod, SelectionState};

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

/// Which selection structure slot a PE occupies.
#[derive(Clone, Copy, Debug)]
enum SelectionSlot {
    /// Ordered pool: the PE sits under [`ordered_key`] of its current values and state (not
    /// stored: whoever changes those takes the PE out under its old key first), or nowhere
    /// when that is `None` (WRR weight 0).
    Ordered,
    /// Weighted pool: the Fenwick slot.
    Weighted(u32),
}

/// A registered PE and the registrar's bookkeeping for it.
#[derive(Clone, Debug)]
pub struct PoolElementEntry {
    element: PoolElement,
    association: Option<AssociationKey>,
    registered_at: Instant,
    expires_at: Option<Instant>,
    selection_count: u64,
    /// Boxed: nearly every PE has none, and an empty set inline costs 24 bytes per PE where
    /// `None` costs 8.
    #[allow(clippy::box_collection)]
    unreachable_reporters: Option<Box<BTreeSet<u64>>>,
    state: SelectionState,
    slot: SelectionSlot,
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
        self.expires_at
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

/// The weighted random selection structure: Fenwick slots and who holds them.
#[derive(Clone, Debug, Default)]
struct WeightedSlots {
    fenwick: Fenwick,
    holders: Vec<Option<PeId>>,
    free: Vec<usize>,
}

impl WeightedSlots {
    fn insert(&mut self, id: PeId, weight: u64) -> usize {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.holders.len();
                self.holders.push(None);
                if slot >= self.fenwick.capacity() {
                    self.fenwick
                        .grow((slot + 1).max(self.fenwick.capacity() * 2).max(4));
                }
                slot
            }
        };
        if let Some(holder) = self.holders.get_mut(slot) {
            *holder = Some(id);
        }
        self.fenwick.set(slot, weight);
        slot
    }

    fn remove(&mut self, slot: usize) {
        self.fenwick.set(slot, 0);
        if let Some(holder) = self.holders.get_mut(slot) {
            *holder = None;
            self.free.push(slot);
        }
    }

    fn holder(&self, slot: usize) -> Option<PeId> {
        self.holders.get(slot).copied().flatten()
    }
}

#[derive(Clone, Debug)]
enum Selection {
    Ordered(BTreeMap<OrderKey, PeId>),
    Weighted(WeightedSlots),
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
    picked: Vec<(OrderKey, PeId)>,
}

impl Pool {
    fn new(handle: PoolHandle, policy: Policy, user_transport: &TransportAddress) -> Self {
        let kind = PolicyKind::of(&policy);
        let selection = match kind.selection_method() {
            SelectionMethod::Ordered => Selection::Ordered(BTreeMap::new()),
            SelectionMethod::WeightedRandom => Selection::Weighted(WeightedSlots::default()),
        };
        Pool {
            handle_sum: checksum::handle_word_sum(&handle),
            handle,
            kind,
            policy,
            transport: transport_kind(user_transport),
            transport_use: transport_use(user_transport),
            elements: Members::default(),
            selection,
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

    /// Puts a PE (already in `elements`) into the selection structure.
    fn link(&mut self, id: PeId) {
        let Some(entry) = self.elements.get_mut(&id) else {
            return;
        };
        if let Policy::WeightedRoundRobin { weight } = entry.element.policy
            && weight > 0
        {
            // A newcomer joins at the current virtual time instead of jumping the queue.
            let head = match &self.selection {
                Selection::Ordered(map) => wrr_head_time(map),
                Selection::Weighted(_) => (0, 0, 1),
            };
            let (round, picks) = policy::wrr_join(head.0, head.1, head.2, weight);
            entry.state.wrr_round = round;
            entry.state.wrr_picks = picks;
        }
        link_entry(&mut self.selection, id, entry);
    }

    /// Re-sorts or re-weighs a PE after its values or state changed. `old_key` is the
    /// [`ordered_key`] it had before the change; for WRR, `old_weight` is the weight the PE's
    /// current WRR state was computed with.
    fn relink(&mut self, id: PeId, old_key: Option<OrderKey>, old_wrr_weight: Option<u32>) {
        let Some(entry) = self.elements.get_mut(&id) else {
            return;
        };
        match (&mut self.selection, entry.slot) {
            (Selection::Ordered(map), SelectionSlot::Ordered) => {
                if let Policy::WeightedRoundRobin { weight } = entry.element.policy
                    && weight > 0
                    && old_wrr_weight != Some(weight)
                {
                    // Weight changed: continue from the PE's own next-pick time (or the head's
                    // if it was not selectable) at the new spacing.
                    let (round, num, den) = match old_wrr_weight {
                        Some(old) if old > 0 => {
                            let (num, den) = policy::wrr_position(entry.state.wrr_picks, old);
                            (entry.state.wrr_round, num, den)
                        }
                        _ => wrr_head_time(map),
                    };
                    let (round, picks) = policy::wrr_join(round, num, den, weight);
                    entry.state.wrr_round = round;
                    entry.state.wrr_picks = picks;
                }
                // A re-registration that leaves the key as it was (round robin, an unchanged
                // load) leaves the PE where it is.
                let new_key = ordered_key(entry);
                if new_key != old_key {
                    if let Some(old_key) = old_key {
                        map.remove(&old_key);
                    }
                    if let Some(new_key) = new_key {
                        map.insert(new_key, id);
                    }
                }
            }
            (Selection::Weighted(slots), SelectionSlot::Weighted(slot)) => {
                slots.fenwick.set(
                    slot as usize,
                    policy::random_weight(&entry.element.policy, &entry.state),
                );
            }
            _ => debug_assert!(false, "selection slot does not match the pool's structure"),
        }
    }

    fn unlink(&mut self, entry: &PoolElementEntry) {
        match (&mut self.selection, entry.slot) {
            (Selection::Ordered(map), SelectionSlot::Ordered) => {
                if let Some(key) = ordered_key(entry) {
                    map.remove(&key);
                }
            }
            (Selection::Weighted(slots), SelectionSlot::Weighted(slot)) => {
                slots.remove(slot as usize)
            }
            _ => {}
        }
    }

    fn select<R: Rng + ?Sized>(
        &mut self,
        items: usize,
        max_increment: usize,
        rng: &mut R,
    ) -> Vec<PoolElement> {
        let mut chosen = Vec::with_capacity(items.min(self.elements.len()));
        match &mut self.selection {
            Selection::Ordered(map) => {
                let mut picked = std::mem::take(&mut self.picked);
                picked.clear();
                picked.extend(map.iter().take(items).map(|(k, id)| (*k, *id)));
                for (i, &(key, id)) in picked.iter().enumerate() {
                    let Some(entry) = self.elements.get_mut(&id) else {
                        continue;
                    };
                    entry.selection_count += 1;
                    chosen.push(entry.element.clone());
                    if i < max_increment {
                        // Re-insert behind everything else of equal key: round robin.
                        map.remove(&key);
                        entry.state.seq = self.next_seq;
                        self.next_seq += 1;
                        policy::advance_after_selection(&entry.element.policy, &mut entry.state);
                        if let Some(new_key) = ordered_key(entry) {
                            map.insert(new_key, id);
                        }
                    }
                }
                self.picked = picked;
            }
            Selection::Weighted(slots) => {
                // Draw without replacement: zero each drawn slot, restore afterwards.
                let mut drawn: Vec<(usize, u64)> =
                    Vec::with_capacity(items.min(self.elements.len()));
                while drawn.len() < items {
                    let total = slots.fenwick.total();
                    if total == 0 {
                        break;
                    }
                    let Some(slot) = slots.fenwick.find(rng.random_range(0..total)) else {
                        break;
                    };
                    drawn.push((slot, slots.fenwick.weight(slot)));
                    slots.fenwick.set(slot, 0);
                }
                for (i, (slot, weight)) in drawn.into_iter().enumerate() {
                    let mut weight = weight;
                    if let Some(id) = slots.holder(slot)
                        && let Some(entry) = self.elements.get_mut(&id)
                    {
                        entry.selection_count += 1;
                        entry.state.seq = self.next_seq;
                        self.next_seq += 1;
                        chosen.push(entry.element.clone());
                        if i < max_increment {
                            policy::advance_after_selection(
                                &entry.element.policy,
                                &mut entry.state,
                            );
                            weight = policy::random_weight(&entry.element.policy, &entry.state);
                        }
                    }
                    slots.fenwick.set(slot, weight);
                }
            }
        }
        chosen
    }
}

/// The WRR virtual time of an ordered selection's head, `(0, 0/1)` when empty.
fn wrr_head_time(map: &BTreeMap<OrderKey, PeId>) -> (u64, u64, u64) {
    if let Some((key, _)) = map.first_key_value()
        && let Primary::Wrr { round, num, den } = key.primary
    {
        return (round, num, den);
    }
    (0, 0, 1)
}

/// The sort key of a PE of an ordered pool from its current values and state.
fn ordered_key(entry: &PoolElementEntry) -> Option<OrderKey> {
    policy::order_primary(&entry.element.policy, &entry.state).map(|primary| OrderKey {
        primary,
        seq: entry.state.seq,
    })
}

/// Inserts a PE into its pool's selection structure and records where.
fn link_entry(selection: &mut Selection, id: PeId, entry: &mut PoolElementEntry) {
    match selection {
        Selection::Ordered(map) => {
            if let Some(key) = ordered_key(entry) {
                map.insert(key, id);
            }
            entry.slot = SelectionSlot::Ordered;
        }
        Selection::Weighted(slots) => {
            let weight = policy::random_weight(&entry.element.policy, &entry.state);
            // At most `max_pool_elements_per_pool` slots, far below u32::MAX.
            entry.slot = SelectionSlot::Weighted(slots.insert(id, weight) as u32);
        }
    }
}

/// A pool's place in [`Handlespace::slots`], stable while the pool exists.
type PoolSlot = u32;

/// A PE as the indexes name it: its pool's slot and its identifier (8 bytes, where the pool
/// handle itself would cost a pointer and a slower comparison in every index).
type PeKey = (PoolSlot, PeId);

/// The PEs registered over one association: nearly always one (a PE process registers itself),
/// kept inline; a bounded list otherwise (`max_pool_elements_per_association`).
#[derive(Clone, Debug)]
enum AssociationMembers {
    One(PeKey),
    Many(Vec<PeKey>),
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
            AssociationMembers::One(first) => *self = AssociationMembers::Many(vec![*first, key]),
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

/// Per-owner index and checksum.
#[derive(Clone, Debug, Default)]
struct OwnerIndex {
    elements: HashSet<PeKey, SeededHasher>,
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
    by_expiry: BTreeSet<(Instant, PeKey)>,
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
                    let previous_expiry = entry.expires_at;
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
                    let old_key = ordered_key(entry);
                    entry.element = element;
                    entry.association = ctx.association;
                    entry.registered_at = ctx.now;
                    entry.expires_at = expires_at;
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
                        if let Some(at) = previous_expiry {
                            self.by_expiry.remove(&(at, key));
                        }
                        if let Some(at) = expires_at {
                            self.by_expiry.insert((at, key));
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
            expires_at,
            selection_count: 0,
            unreachable_reporters: None,
            state: SelectionState {
                seq,
                ..SelectionState::default()
            },
            slot: SelectionSlot::Ordered,
        };
        pool.elements.insert(id, entry);
        pool.link(id);
        let contribution = checksum::pe_checksum_contribution_with(pool.handle_sum, id);

        let key = (slot, id);
        self.pool_element_count += 1;
        self.checksum.add_contribution(contribution);
        self.index_association(ctx.association, key);
        self.index_owner(ctx.owner, contribution, key);
        if let Some(at) = expires_at {
            self.by_expiry.insert((at, key));
        }
        Ok(RegistrationOutcome::New)
    }

    /// Removes a PE (ASAP Deregistration, ENRP DEL_PE, keep-alive failure); deletes its pool
    /// when it was the last member. `None` if unknown (RFC 5352 §3.2 still grants it).
    pub fn deregister(&mut self, handle: &PoolHandle, id: PeId) -> Option<PoolElement> {
        self.remove_entry(handle, id).map(|entry| entry.element)
    }

    /// Removes every PE registered over `association` (it closed or failed).
    pub fn remove_association(
        &mut self,
        association: AssociationKey,
    ) -> Vec<(PoolHandle, PoolElement)> {
        match self.by_association.remove(&association) {
            Some(AssociationMembers::One(key)) => self.remove_all([key]),
            Some(AssociationMembers::Many(keys)) => self.remove_all(keys),
            None => Vec::new(),
        }
    }

    /// Removes every PE owned by `owner` (a peer registrar that died without takeover); the
    /// removed PEs in (handle, id) order.
    pub fn remove_owned_by(&mut self, owner: RegistrarId) -> Vec<(PoolHandle, PoolElement)> {
        let mut removed = match self.by_owner.remove(&owner) {
            Some(index) => self.remove_all(index.elements),
            None => Vec::new(),
        };
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
        let mut transferred = Vec::with_capacity(moved.elements.len());
        for (slot, id) in moved.elements {
            let Some(pool) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            target
                .checksum
                .add_contribution(checksum::pe_checksum_contribution_with(pool.handle_sum, id));
            target.elements.insert((slot, id));
            if let Some(entry) = pool.elements.get_mut(&id) {
                entry.element.home_registrar = to;
            }
            transferred.push((pool.handle.clone(), id));
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
        let max_increment = self.config.max_increment;
        let pool = self.pool_mut(handle).ok_or(UnknownPool)?;
        let max_increment = max_increment.unwrap_or_else(|| pool.kind.default_max_increment());
        let elements = pool.select(items, max_increment, rng);
        Ok(Resolution {
            policy: pool.policy,
            elements,
        })
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
                Some(entry) => UnreachableOutcome::Removed(entry.element),
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

    /// The earliest registration expiry, to arm the caller's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// Removes every PE whose registration life ended at or before `now`.
    pub fn remove_expired(&mut self, now: Instant) -> Vec<(PoolHandle, PoolElement)> {
        let mut removed = Vec::new();
        while let Some(&(at, key)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            let handle = self.handle_of(key.0).cloned();
            match (handle, self.remove_key(key)) {
                (Some(handle), Some(entry)) => removed.push((handle, entry.element)),
                // Unreachable while the index is consistent; never loop forever.
                _ => {
                    self.by_expiry.remove(&(at, key));
                }
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

    /// The PEs owned by a registrar (in no particular order).
    pub fn owned_by(&self, owner: RegistrarId) -> impl Iterator<Item = (&PoolHandle, PeId)> {
        self.by_owner
            .get(&owner)
            .into_iter()
            .flat_map(|o| o.elements.iter())
            .filter_map(|(slot, id)| Some((self.handle_of(*slot)?, *id)))
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

    fn remove_all(
        &mut self,
        members: impl IntoIterator<Item = PeKey>,
    ) -> Vec<(PoolHandle, PoolElement)> {
        let members = members.into_iter();
        let mut removed = Vec::with_capacity(members.size_hint().0);
        for key in members {
            let Some(handle) = self.handle_of(key.0).cloned() else {
                continue;
            };
            if let Some(entry) = self.remove_key(key) {
                removed.push((handle, entry.element));
            }
        }
        removed
    }

    fn remove_entry(&mut self, handle: &PoolHandle, id: PeId) -> Option<PoolElementEntry> {
        let slot = *self.pools.get(handle)?;
        self.remove_key((slot, id))
    }

    /// Removes a PE from its pool and every index; deletes the pool when it was the last.
    fn remove_key(&mut self, key: PeKey) -> Option<PoolElementEntry> {
        let (slot, id) = key;
        let pool = self.slots.get_mut(slot as usize)?.as_mut()?;
        let entry = pool.elements.remove(&id)?;
        pool.unlink(&entry);
        let contribution = checksum::pe_checksum_contribution_with(pool.handle_sum, id);
        if pool.elements.is_empty() {
            let handle = pool.handle.clone();
            self.slots[slot as usize] = None;
            self.free_slots.push(slot);
            self.pools.remove(&handle);
        }
        self.pool_element_count -= 1;
        self.checksum.remove_contribution(contribution);
        self.unindex_association(entry.association, key);
        self.unindex_owner(entry.owner(), contribution, key);
        if let Some(at) = entry.expires_at {
            self.by_expiry.remove(&(at, key));
        }
        Some(entry)
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
        if index.elements.insert(key) {
            index.checksum.add_contribution(contribution);
        }
    }

    fn unindex_owner(&mut self, owner: RegistrarId, contribution: u32, key: PeKey) {
        if let Some(index) = self.by_owner.get_mut(&owner) {
            if index.elements.remove(&key) {
                index.checksum.remove_contribution(contribution);
            }
            if index.elements.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    /// Verifies every index, selection structure and checksum against the pools, recomputing
    /// from scratch. O(N log N); for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut count = 0;
        let mut checksum = HandlespaceChecksum::new();
        let mut by_association: HashMap<AssociationKey, BTreeSet<PeKey>> = HashMap::new();
        let mut by_owner: BTreeMap<RegistrarId, (BTreeSet<PeKey>, HandlespaceChecksum)> =
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
                match (&pool.selection, entry.slot) {
                    (Selection::Ordered(map), SelectionSlot::Ordered) => {
                        // Stored under its current key, or not at all when it has none (the
                        // selection's size below catches one stored under a stale key).
                        if let Some(key) = ordered_key(entry) {
                            if map.get(&key) != Some(id) {
                                return Err(format!("{}: missing from the selection", at(*id)));
                            }
                            selectable += 1;
                        }
                    }
                    (Selection::Weighted(slots), SelectionSlot::Weighted(slot)) => {
                        let slot = slot as usize;
                        if slots.holder(slot) != Some(*id) {
                            return Err(format!("{}: slot held by someone else", at(*id)));
                        }
                        let expected = policy::random_weight(&entry.element.policy, &entry.state);
                        if slots.fenwick.weight(slot) != expected {
                            return Err(format!("{}: stale weight", at(*id)));
                        }
                        selectable += 1;
                    }
                    _ => return Err(format!("{}: slot kind differs from the pool's", at(*id))),
                }
                if let Some(key) = entry.association {
                    by_association.entry(key).or_default().insert((slot, *id));
                }
                let owner = by_owner.entry(entry.owner()).or_default();
                owner.0.insert((slot, *id));
                owner.1.add(handle, *id);
                if let Some(at) = entry.expires_at {
                    by_expiry.insert((at, (slot, *id)));
                }
            }
            match &pool.selection {
                Selection::Ordered(map) => {
                    if map.len() != selectable {
                        return Err(format!("pool {handle:?}: selection holds strangers"));
                    }
                }
                Selection::Weighted(slots) => {
                    let held = slots.holders.iter().filter(|h| h.is_some()).count();
                    if held != selectable || held + slots.free.len() != slots.holders.len() {
                        return Err(format!("pool {handle:?}: slot bookkeeping broken"));
                    }
                    if slots.free.iter().any(|&s| slots.fenwick.weight(s) != 0) {
                        return Err(format!("pool {handle:?}: a free slot has weight"));
                    }
                    if !slots.fenwick.is_consistent() {
                        return Err(format!("pool {handle:?}: Fenwick sums broken"));
                    }
                }
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
            .map(|(k, v)| (*k, (v.elements.iter().copied().collect(), v.checksum)))
            .collect();
        if by_owner != owners {
            return Err("owner index or owner checksums differ".into());
        }
        if by_expiry != self.by_expiry {
            return Err("expiry index differs".into());
        }
        Ok(())
    }
}

/// When a registration of `life_ms` milliseconds made at `now` ends; `u32::MAX` = never.
fn expiry(now: Instant, life_ms: u32) -> Option<Instant> {
    if life_ms == u32::MAX {
        None
    } else {
        now.checked_add(Duration::from_millis(u64::from(life_ms)))
    }
}
