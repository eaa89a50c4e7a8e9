//! The registrar driver's ENRP input and output: the ENRP listener (framed TCP, PPID 12), one
//! outgoing association per peer, the PRESENCE group (UDP multicast, rsplib's 239.0.0.51:9901),
//! and the short associations that carry a takeover's Keep-Alive to a PE.
//!
//! ENRP is message-oriented (rsplib uses a one-to-many SCTP socket): the core addresses a peer
//! by its ENRP address and never sees associations. A peer's link connects on its first message
//! and again after a failure; messages that find it down are dropped, which ENRP survives (the
//! next PRESENCE's checksum audit repairs what a lost update broke).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use super::EnrpDestination;
use crate::transport::announce::{
    AnnounceReceiver, AnnounceReceiverConfig, AnnounceSender, AnnounceSenderConfig,
};
use crate::transport::{
    self, Association, AssociationConfig, Listener, PPID_ENRP, TcpFramedListener,
};
use crate::wire::TransportAddress;

/// Messages waiting for one peer's link; more are dropped (and the audit repairs what they
/// carried). A burst of registrations sends one update per PE to every peer: room for 16k of
/// them (about 2 MB) keeps a burst of 10,000 whole.
const LINK_QUEUE: usize = 16 * 1024;
/// Most ENRP associations accepted at once.
const MAX_INBOUND: usize = 256;
/// How long a takeover's association to a PE may take, Keep-Alive and Ack included.
const TAKEOVER_CONTACT_TIMEOUT: Duration = Duration::from_secs(5);

/// The ENRP sockets of a running registrar.
pub(super) struct PeerLinks {
    links: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    group: Option<Arc<AnnounceSender>>,
    association: AssociationConfig,
    /// Associations opened to PEs for a takeover, with the Keep-Alive to send on them: the
    /// driver makes them ASAP associations of the core, so that the PE (which adopts the
    /// association as its registrar association) registers over it.
    takeovers: mpsc::Sender<(Association, Vec<u8>)>,
}

impl PeerLinks {
    pub(super) fn new(
        group: Option<AnnounceSender>,
        association: AssociationConfig,
        takeovers: mpsc::Sender<(Association, Vec<u8>)>,
    ) -> Self {
        PeerLinks {
            links: HashMap::new(),
            group: group.map(Arc::new),
            association,
            takeovers,
        }
    }

    /// Sends (or drops, see the module docs) one ENRP message.
    pub(super) fn send(&mut self, to: EnrpDestination, payload: Vec<u8>) {
        match to {
            EnrpDestination::Group => {
                if let Some(group) = self.group.clone() {
                    tokio::spawn(async move {
                        if let Err(error) = group.send(&payload).await {
                            debug!(%error, "ENRP presence to the group not sent");
                        }
                    });
                }
            }
            EnrpDestination::Peer(address) => {
                let association = self.association.clone();
                let link = self.links.entry(address).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(LINK_QUEUE);
                    tokio::spawn(link_task(address, rx, association));
                    tx
                });
                if link.try_send(payload).is_err() {
                    debug!(peer = %address, "ENRP link queue full; message dropped");
                }
            }
        }
    }

    /// Sends a takeover's Keep-Alive (H flag) to a PE at its user transport.
    pub(super) fn takeover_keep_alive(&self, pe: TransportAddress, payload: Vec<u8>) {
        let Some(address) = pe.socket_addr() else {
            return;
        };
        // The PE's data listener is plain (TLS protects registrar associations it opens).
        let config = AssociationConfig {
            connect_timeout: TAKEOVER_CONTACT_TIMEOUT,
            ..AssociationConfig::default()
        };
        let takeovers = self.takeovers.clone();
        tokio::spawn(async move {
            match transport::connect(address, config).await {
                Ok(association) => {
                    let _ = takeovers.send((association, payload)).await;
                }
                Err(error) => debug!(pe = %address, %error, "takeover keep-alive not delivered"),
            }
        });
    }
}

/// Carries one peer's messages: connects when there is something to send, reconnects after a
/// failure.
async fn link_task(
    address: SocketAddr,
    mut messages: mpsc::Receiver<Vec<u8>>,
    config: AssociationConfig,
) {
    let mut association = None;
    while let Some(payload) = messages.recv().await {
        if association.is_none() {
            match transport::connect(address, config.clone()).await {
                Ok(connected) => association = Some(connected),
                Err(error) => {
                    debug!(peer = %address, %error, "ENRP peer unreachable; message dropped");
                    continue;
                }
            }
        }
        if let Some(open) = association.as_ref()
            && let Err(error) = open.send(PPID_ENRP, payload).await
        {
            debug!(peer = %address, %error, "ENRP link lost; message dropped");
            association = None;
        }
    }
}

/// Accepts ENRP associations and hands every PPID 12 frame to `deliver`.
pub(super) async fn accept_loop(listener: TcpFramedListener, deliver: mpsc::Sender<Vec<u8>>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let mut association = match listener.accept().await {
            Ok(association) => association,
            Err(error) => {
                debug!(%error, "ENRP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_INBOUND {
            association.abort();
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (open, deliver) = (open.clone(), deliver.clone());
        tokio::spawn(async move {
            while let Ok(frame) = association.recv().await {
                if frame.ppid != PPID_ENRP {
                    // rsplib aborts an ENRP association that carries anything else.
                    association.abort();
                    break;
                }
                if deliver.send(frame.payload.to_vec()).await.is_err() {
                    break;
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The PRESENCE group: a sender and a receiver, on loopback when `local` is a loopback address.
pub(super) fn group_sockets(
    group: SocketAddr,
    local: IpAddr,
) -> io::Result<(AnnounceSender, AnnounceReceiver)> {
    let mut sender = AnnounceSenderConfig::new(group);
    let mut receiver = AnnounceReceiverConfig::new(group);
    if local.is_loopback() {
        sender.multicast_interface_v4 = Some(Ipv4Addr::LOCALHOST);
        receiver.multicast_interface_v4 = Ipv4Addr::LOCALHOST;
    }
    Ok((
        AnnounceSender::new(&sender)?,
        AnnounceReceiver::new(&receiver)?,
    ))
}

/// Hands every PRESENCE heard on the group to `deliver` (only PRESENCE travels there).
pub(super) async fn group_loop(receiver: AnnounceReceiver, deliver: mpsc::Sender<Vec<u8>>) {
    const PRESENCE: u8 = 0x01;
    loop {
        match receiver.recv().await {
            Ok((payload, _)) if payload.first() == Some(&PRESENCE) => {
                if deliver.send(payload).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                debug!(%error, "ENRP group receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
