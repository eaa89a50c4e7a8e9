//! Finding registrars: a static list (`--registrar`, repeatable) and ASAP Server Announces.
//!
//! [`RegistrarTable`] is the sans-I/O part: it learns registrars from announces (RFC 5352
//! §3.6: a PE or PU keeps every registrar it hears from, and forgets one it has not heard from
//! for a while) and from configuration, remembers which ones recently failed, and says which to
//! try next. [`listen_for_announces`] is the thin tokio driver feeding it from a UDP socket.
//!
//! Where an announce carries a TCP transport parameter we connect there (our registrars put
//! their framed-TCP ASAP address in it); otherwise we take the UDP source address and port, as
//! rsplib does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::transport::announce::{AnnounceReceiver, AnnounceReceiverConfig};
use crate::wire::{AsapMessage, TransportAddress};

/// rsplib's `-registrarannouncetimeout` default: an announced registrar not heard from for this
/// long is forgotten.
pub const DEFAULT_ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a registrar that failed (connect refused, association lost) is tried only after
/// all others.
pub const DEFAULT_FAILURE_PENALTY: Duration = Duration::from_secs(2);

/// A registrar we know of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownRegistrar {
    /// Where its ASAP endpoint is.
    pub address: SocketAddr,
    /// Its registrar identifier, when an announce told us.
    pub id: Option<u32>,
    /// Whether it came from the static list (never forgotten).
    pub configured: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    id: Option<u32>,
    configured: bool,
    last_heard: Option<Instant>,
    failed_at: Option<Instant>,
}

/// Known registrars: configured ones, announced ones, and recent failures.
#[derive(Clone, Debug)]
pub struct RegistrarTable {
    entries: HashMap<SocketAddr, Entry>,
    /// Configured addresses in command-line order (tried in that order).
    configured_order: Vec<SocketAddr>,
    announce_timeout: Duration,
    failure_penalty: Duration,
}

impl RegistrarTable {
    /// A table holding `configured` registrars, with the default timeouts.
    pub fn new(configured: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut table = RegistrarTable {
            entries: HashMap::new(),
            configured_order: Vec::new(),
            announce_timeout: DEFAULT_ANNOUNCE_TIMEOUT,
            failure_penalty: DEFAULT_FAILURE_PENALTY,
        };
        for address in configured {
            if table.entries.contains_key(&address) {
                continue;
            }
            table.configured_order.push(address);
            table.entries.insert(
                address,
                Entry {
                    id: None,
                    configured: true,
                    last_heard: None,
                    failed_at: None,
                },
            );
        }
        table
    }

    /// Sets how long announced registrars are remembered without a new announce.
    pub fn with_announce_timeout(mut self, timeout: Duration) -> Self {
        self.announce_timeout = timeout;
        self
    }

    /// Sets how long a failed registrar goes to the back of the queue.
    pub fn with_failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Handles one announce datagram from `source`. Returns the registrar it named, or `None`
    /// for anything that is not a well-formed Server Announce (ignored: announces are
    /// unauthenticated hints, and there is no one to send an error to).
    pub fn handle_announce(
        &mut self,
        source: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) -> Option<KnownRegistrar> {
        let decoded = AsapMessage::decode(payload).ok()?;
        let AsapMessage::ServerAnnounce {
            server_id,
            transports,
        } = decoded.message
        else {
            return None;
        };
        let address = announced_address(source, &transports);
        let entry = self.entries.entry(address).or_insert(Entry {
            id: None,
            configured: false,
            last_heard: None,
            failed_at: None,
        });
        entry.id = Some(server_id);
        entry.last_heard = Some(now);
        Some(KnownRegistrar {
            address,
            id: Some(server_id),
            configured: entry.configured,
        })
    }

    /// Records that connecting to, or talking with, `address` failed.
    pub fn mark_failed(&mut self, address: SocketAddr, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&address) {
            entry.failed_at = Some(now);
        }
    }

    /// Records that `address` works (clears its failure mark).
    pub fn mark_working(&mut self, address: SocketAddr) {
        if let Some(entry) = self.entries.get_mut(&address) {
            entry.failed_at = None;
        }
    }

    /// Forgets announced registrars not heard from within the announce timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.announce_timeout;
        self.entries.retain(|_, entry| {
            entry.configured
                || entry
                    .last_heard
                    .is_some_and(|heard| now.saturating_duration_since(heard) < timeout)
        });
    }

    /// Registrars to try, best first: those without a recent failure before those with one;
    /// among equals, most recently announced first, then configured ones in configuration
    /// order. Expired announced registrars are left out.
    pub fn candidates(&self, now: Instant) -> Vec<KnownRegistrar> {
        // Sort key: penalised last; announced before configured-only; most recently heard
        // first; then configuration order; then address (for a stable order).
        type SortKey = (
            bool,
            bool,
            std::cmp::Reverse<Option<Instant>>,
            usize,
            SocketAddr,
        );
        let mut list: Vec<(SortKey, KnownRegistrar)> = self
            .entries
            .iter()
            .filter(|(_, entry)| {
                entry.configured
                    || entry.last_heard.is_some_and(|heard| {
                        now.saturating_duration_since(heard) < self.announce_timeout
                    })
            })
            .map(|(address, entry)| {
                let penalised = entry
                    .failed_at
                    .is_some_and(|at| now.saturating_duration_since(at) < self.failure_penalty);
                let order = self
                    .configured_order
                    .iter()
                    .position(|a| a == address)
                    .unwrap_or(usize::MAX);
                let key = (
                    penalised,
                    entry.last_heard.is_none(),
                    std::cmp::Reverse(entry.last_heard),
                    order,
                    *address,
                );
                let registrar = KnownRegistrar {
                    address: *address,
                    id: entry.id,
                    configured: entry.configured,
                };
                (key, registrar)
            })
            .collect();
        list.sort_by_key(|entry| entry.0);
        list.into_iter().map(|(_, registrar)| registrar).collect()
    }

    /// Whether any registrar is known at all.
    pub fn is_empty(&self, now: Instant) -> bool {
        self.candidates(now).is_empty()
    }
}

/// The ASAP address an announce names: its first TCP transport parameter (with the source IP
/// when the parameter says "any"), else the UDP source.
fn announced_address(source: SocketAddr, transports: &[TransportAddress]) -> SocketAddr {
    transports
        .iter()
        .find_map(|t| match t {
            TransportAddress::Tcp { port, address } => {
                let ip = if address.is_unspecified() {
                    source.ip()
                } else {
                    *address
                };
                Some(SocketAddr::new(ip, *port))
            }
            _ => None,
        })
        .unwrap_or(source)
}

/// A table shared between the announce listener and its users.
pub type SharedRegistrarTable = Arc<Mutex<RegistrarTable>>;

/// Listens for Server Announces on `config` and feeds `table` until the task is dropped or
/// the socket fails. Returns the socket error.
pub async fn listen_for_announces(
    config: AnnounceReceiverConfig,
    table: SharedRegistrarTable,
) -> std::io::Error {
    let receiver = match AnnounceReceiver::new(&config) {
        Ok(receiver) => receiver,
        Err(error) => return error,
    };
    loop {
        match receiver.recv().await {
            Ok((payload, source)) => {
                let learned = match table.lock() {
                    Ok(mut table) => {
                        let now = Instant::now();
                        table.expire(now);
                        table.handle_announce(source, &payload, now)
                    }
                    Err(_) => None,
                };
                if let Some(registrar) = learned {
                    tracing::trace!(address = %registrar.address, id = ?registrar.id, "server announce");
                }
            }
            Err(error) => return error,
        }
    }
}

/// The receiver configuration for the usual announce address; on a loopback-only address the
/// group is joined on 127.0.0.1 so that one-host demos and tests work.
pub fn announce_receiver_config(
    address: SocketAddr,
    local_ip: Option<IpAddr>,
) -> AnnounceReceiverConfig {
    let mut config = AnnounceReceiverConfig::new(address);
    if let Some(IpAddr::V4(ip)) = local_ip
        && ip.is_loopback()
    {
        config.multicast_interface_v4 = ip;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn announce(id: u32, tcp: Option<SocketAddr>) -> Vec<u8> {
        let transports = tcp
            .map(|a| TransportAddress::Tcp {
                port: a.port(),
                address: a.ip(),
            })
            .into_iter()
            .collect();
        AsapMessage::ServerAnnounce {
            server_id: id,
            transports,
        }
        .to_bytes()
        .expect("encodable")
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn configured_registrars_keep_their_order() {
        let table = RegistrarTable::new([addr(2), addr(1), addr(2)]);
        let now = Instant::now();
        let order: Vec<_> = table.candidates(now).iter().map(|r| r.address).collect();
        assert_eq!(order, vec![addr(2), addr(1)]);
    }

    #[test]
    fn announce_prefers_tcp_parameter_and_expires() {
        let now = Instant::now();
        let mut table = RegistrarTable::new([addr(9)]);
        let learned = table
            .handle_announce(addr(5000), &announce(7, Some(addr(4000))), now)
            .expect("announce accepted");
        assert_eq!(learned.address, addr(4000));
        assert_eq!(learned.id, Some(7));
        let learned = table
            .handle_announce(addr(5001), &announce(8, None), now)
            .expect("announce accepted");
        assert_eq!(learned.address, addr(5001));
        // Announced ones first (most recent first), then configured.
        assert_eq!(table.candidates(now).len(), 3);
        assert_eq!(table.candidates(now)[2].address, addr(9));
        let later = now + DEFAULT_ANNOUNCE_TIMEOUT;
        table.expire(later);
        let left: Vec<_> = table.candidates(later).iter().map(|r| r.address).collect();
        assert_eq!(left, vec![addr(9)]);
    }

    #[test]
    fn failed_registrars_go_last_for_a_while() {
        let now = Instant::now();
        let mut table = RegistrarTable::new([addr(1), addr(2)]);
        table.mark_failed(addr(1), now);
        let order: Vec<_> = table.candidates(now).iter().map(|r| r.address).collect();
        assert_eq!(order, vec![addr(2), addr(1)]);
        let later = now + DEFAULT_FAILURE_PENALTY;
        let order: Vec<_> = table.candidates(later).iter().map(|r| r.address).collect();
        assert_eq!(order, vec![addr(1), addr(2)]);
    }

    #[test]
    fn garbage_and_other_messages_are_ignored() {
        let now = Instant::now();
        let mut table = RegistrarTable::new([]);
        assert!(table.handle_announce(addr(1), &[1, 2, 3], now).is_none());
        let other = AsapMessage::CookieEcho { cookie: vec![1] }
            .to_bytes()
            .expect("encodable");
        assert!(table.handle_announce(addr(1), &other, now).is_none());
        assert!(table.is_empty(now));
    }
}
