//! UDP sockets for ASAP Server Announces and ENRP Presences.
//!
//! rsplib announces by multicast: ASAP to [`ASAP_ANNOUNCE_ADDR`] (239.0.0.50:3863), ENRP to
//! [`ENRP_ANNOUNCE_ADDR`] (239.0.0.51:9901), TTL [`DEFAULT_ANNOUNCE_TTL`]. A Server Announce
//! carries no transport parameter: receivers take the registrar's address *and port* from the
//! UDP source, so a registrar binds its [`AnnounceSender`] to its ASAP port
//! ([`AnnounceSenderConfig::bind`]).
//!
//! Receivers bind the port with `SO_REUSEADDR` + `SO_REUSEPORT`, so several pool elements and
//! pool users on one host all listen to the same announce port, and join the group when the
//! address is multicast. Multicast and broadcast datagrams reach every such socket; a
//! *unicast* datagram to a shared port reaches only one of them (the kernel balances unicast
//! over `SO_REUSEPORT` groups), so unicast announces suit one listener per host.
//!
//! On loopback-only setups (tests, one-host demos) set the multicast interface to 127.0.0.1 on
//! both sides: Linux then loops multicast through `lo` even though `lo` lacks the MULTICAST flag.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;

/// rsplib's ASAP announce group and port.
pub const ASAP_ANNOUNCE_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 0, 0, 50), 3863));
/// rsplib's ENRP presence group and port.
pub const ENRP_ANNOUNCE_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 0, 0, 51), 9901));
/// rsplib's default multicast TTL for announces (`-announcettl`).
pub const DEFAULT_ANNOUNCE_TTL: u32 = 30;
/// Largest datagram [`AnnounceReceiver::recv`] returns whole (bigger ones are truncated).
pub const MAX_ANNOUNCE_LEN: usize = 65_507;

/// Settings of an [`AnnounceSender`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceSenderConfig {
    /// Where announces go: a multicast group, a unicast or a broadcast address.
    pub destination: SocketAddr,
    /// Local address to send from; its port is what rsplib receivers take as the registrar's
    /// ASAP port. Port 0 picks a free one.
    pub bind: SocketAddr,
    /// Multicast TTL (IPv4) or hop limit (IPv6).
    pub ttl: u32,
    /// Whether our own host's group members receive our multicast.
    pub multicast_loop: bool,
    /// Interface address for outgoing IPv4 multicast (IP_MULTICAST_IF); 127.0.0.1 keeps it on
    /// loopback. `None` lets the routing table decide.
    pub multicast_interface_v4: Option<Ipv4Addr>,
    /// Interface index for outgoing IPv6 multicast; 0 lets the routing table decide.
    pub multicast_interface_v6: u32,
}

impl AnnounceSenderConfig {
    /// Announces to `destination` from any address and a free port, rsplib's TTL, loop on.
    pub fn new(destination: SocketAddr) -> Self {
        let bind = match destination {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        AnnounceSenderConfig {
            destination,
            bind,
            ttl: DEFAULT_ANNOUNCE_TTL,
            multicast_loop: true,
            multicast_interface_v4: None,
            multicast_interface_v6: 0,
        }
    }
}

/// Sends announce datagrams to one configured destination.
#[derive(Debug)]
pub struct AnnounceSender {
    socket: UdpSocket,
    destination: SocketAddr,
}

impl AnnounceSender {
    /// Opens the socket (must be called within a tokio runtime).
    pub fn new(config: &AnnounceSenderConfig) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::for_address(config.bind),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        // The registrar's announce port equals its ASAP TCP port; allow rebinding at restart.
        socket.set_reuse_address(true)?;
        match config.destination.ip() {
            IpAddr::V4(_) => {
                socket.set_broadcast(true)?;
                socket.set_multicast_ttl_v4(config.ttl)?;
                socket.set_multicast_loop_v4(config.multicast_loop)?;
                if let Some(interface) = config.multicast_interface_v4 {
                    socket.set_multicast_if_v4(&interface)?;
                }
                // Do not receive multicast for groups other sockets joined on our port.
                #[cfg(target_os = "linux")]
                socket.set_multicast_all_v4(false)?;
            }
            IpAddr::V6(_) => {
                socket.set_multicast_hops_v6(config.ttl)?;
                socket.set_multicast_loop_v6(config.multicast_loop)?;
                if config.multicast_interface_v6 != 0 {
                    socket.set_multicast_if_v6(config.multicast_interface_v6)?;
                }
            }
        }
        socket.bind(&SockAddr::from(config.bind))?;
        socket.set_nonblocking(true)?;
        Ok(AnnounceSender {
            socket: UdpSocket::from_std(socket.into())?,
            destination: config.destination,
        })
    }

    /// Sends one announce.
    pub async fn send(&self, payload: &[u8]) -> io::Result<()> {
        let sent = self.socket.send_to(payload, self.destination).await?;
        if sent != payload.len() {
            return Err(io::Error::other(format!(
                "announce truncated to {sent} of {} bytes",
                payload.len()
            )));
        }
        Ok(())
    }

    /// Where announces go.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// The address announces are sent from (receivers see this as the source).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Settings of an [`AnnounceReceiver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceReceiverConfig {
    /// The announce address: a multicast group (joined) or any other address, whose port is
    /// bound on all local addresses.
    pub address: SocketAddr,
    /// Interface address on which to join an IPv4 group; 127.0.0.1 for loopback,
    /// `UNSPECIFIED` lets the kernel choose.
    pub multicast_interface_v4: Ipv4Addr,
    /// Interface index on which to join an IPv6 group; 0 lets the kernel choose.
    pub multicast_interface_v6: u32,
}

impl AnnounceReceiverConfig {
    /// Listens to `address` on the default interface.
    pub fn new(address: SocketAddr) -> Self {
        AnnounceReceiverConfig {
            address,
            multicast_interface_v4: Ipv4Addr::UNSPECIFIED,
            multicast_interface_v6: 0,
        }
    }
}

/// Receives announce datagrams on a shared port.
#[derive(Debug)]
pub struct AnnounceReceiver {
    socket: UdpSocket,
}

impl AnnounceReceiver {
    /// Binds the port (shared with other receivers) and joins the group if multicast (must be
    /// called within a tokio runtime).
    pub fn new(config: &AnnounceReceiverConfig) -> io::Result<Self> {
        let address = config.address;
        let socket = Socket::new(
            Domain::for_address(address),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        let bind: SocketAddr = match address.ip() {
            IpAddr::V4(group) => {
                if group.is_multicast() {
                    socket.join_multicast_v4(&group, &config.multicast_interface_v4)?;
                    #[cfg(target_os = "linux")]
                    socket.set_multicast_all_v4(false)?;
                }
                (Ipv4Addr::UNSPECIFIED, address.port()).into()
            }
            IpAddr::V6(group) => {
                socket.set_only_v6(true)?;
                if group.is_multicast() {
                    socket.join_multicast_v6(&group, config.multicast_interface_v6)?;
                    #[cfg(target_os = "linux")]
                    socket.set_multicast_all_v6(false)?;
                }
                (std::net::Ipv6Addr::UNSPECIFIED, address.port()).into()
            }
        };
        socket.bind(&SockAddr::from(bind))?;
        socket.set_nonblocking(true)?;
        Ok(AnnounceReceiver {
            socket: UdpSocket::from_std(socket.into())?,
        })
    }

    /// Receives one datagram into `buf`: its length and source.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    /// Receives one datagram (up to [`MAX_ANNOUNCE_LEN`] bytes) and its source.
    pub async fn recv(&self) -> io::Result<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; MAX_ANNOUNCE_LEN];
        let (len, source) = self.socket.recv_from(&mut buf).await?;
        buf.truncate(len);
        Ok((buf, source))
    }

    /// The bound address (the wildcard address and the announce port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}
