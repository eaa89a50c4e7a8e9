//! UDP announce sockets on loopback.
//!
//! Multicast works on `lo` here although `lo` lacks the MULTICAST flag: with the multicast
//! interface set to 127.0.0.1 on sender and receivers, Linux routes the group via `lo`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool::transport::announce::{
    ASAP_ANNOUNCE_ADDR, AnnounceReceiver, AnnounceReceiverConfig, AnnounceSender,
    AnnounceSenderConfig, DEFAULT_ANNOUNCE_TTL, ENRP_ANNOUNCE_ADDR,
};

const BOUND: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// A free UDP port (bound and released; the test binds it again with SO_REUSEPORT at once).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loopback_receiver(address: SocketAddr) -> AnnounceReceiver {
    let config = AnnounceReceiverConfig {
        multicast_interface_v4: Ipv4Addr::LOCALHOST,
        ..AnnounceReceiverConfig::new(address)
    };
    AnnounceReceiver::new(&config).unwrap()
}

fn loopback_sender(destination: SocketAddr) -> AnnounceSender {
    let config = AnnounceSenderConfig {
        multicast_interface_v4: Some(Ipv4Addr::LOCALHOST),
        bind: "127.0.0.1:0".parse().unwrap(),
        ..AnnounceSenderConfig::new(destination)
    };
    AnnounceSender::new(&config).unwrap()
}

#[test]
fn defaults_are_rsplibs() {
    assert_eq!(ASAP_ANNOUNCE_ADDR, "239.0.0.50:3863".parse().unwrap());
    assert_eq!(ENRP_ANNOUNCE_ADDR, "239.0.0.51:9901".parse().unwrap());
    assert_eq!(DEFAULT_ANNOUNCE_TTL, 30);
    let config = AnnounceSenderConfig::new(ASAP_ANNOUNCE_ADDR);
    assert!(config.multicast_loop);
    assert_eq!(config.bind, "0.0.0.0:0".parse().unwrap());
}

#[tokio::test]
async fn two_receivers_on_one_port_both_get_a_multicast_announce() {
    let port = free_udp_port();
    let group = SocketAddr::new(ASAP_ANNOUNCE_ADDR.ip(), port);
    let first = loopback_receiver(group);
    let second = loopback_receiver(group);
    assert_eq!(first.local_addr().unwrap().port(), port);
    assert_eq!(second.local_addr().unwrap().port(), port);
    let sender = loopback_sender(group);
    let source = sender.local_addr().unwrap();
    sender.send(b"server announce").await.unwrap();
    for receiver in [&first, &second] {
        let (payload, from) = bounded("announce", receiver.recv()).await.unwrap();
        assert_eq!(payload, b"server announce");
        // rsplib receivers take the registrar's port from the announce's source.
        assert_eq!(from, source);
    }
}

#[tokio::test]
async fn receivers_get_only_the_group_they_joined() {
    let port = free_udp_port();
    let asap = loopback_receiver(SocketAddr::new(ASAP_ANNOUNCE_ADDR.ip(), port));
    let enrp = loopback_receiver(SocketAddr::new(ENRP_ANNOUNCE_ADDR.ip(), port));
    loopback_sender(SocketAddr::new(ENRP_ANNOUNCE_ADDR.ip(), port))
        .send(b"presence")
        .await
        .unwrap();
    loopback_sender(SocketAddr::new(ASAP_ANNOUNCE_ADDR.ip(), port))
        .send(b"announce")
        .await
        .unwrap();
    assert_eq!(bounded("asap", asap.recv()).await.unwrap().0, b"announce");
    assert_eq!(bounded("enrp", enrp.recv()).await.unwrap().0, b"presence");
}

#[tokio::test]
async fn sender_bound_to_a_fixed_port_is_seen_from_that_port() {
    let port = free_udp_port();
    let receiver = loopback_receiver(SocketAddr::new(ASAP_ANNOUNCE_ADDR.ip(), port));
    let asap_port = free_udp_port();
    let config = AnnounceSenderConfig {
        multicast_interface_v4: Some(Ipv4Addr::LOCALHOST),
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, asap_port)),
        ..AnnounceSenderConfig::new(SocketAddr::new(ASAP_ANNOUNCE_ADDR.ip(), port))
    };
    AnnounceSender::new(&config)
        .unwrap()
        .send(&[0x0a, 0, 0, 8, 0, 0, 0, 1])
        .await
        .unwrap();
    let (payload, from) = bounded("announce", receiver.recv()).await.unwrap();
    assert_eq!(payload, [0x0a, 0, 0, 8, 0, 0, 0, 1]);
    assert_eq!(from, SocketAddr::from((Ipv4Addr::LOCALHOST, asap_port)));
}

#[tokio::test]
async fn unicast_announce_reaches_a_receiver() {
    let port = free_udp_port();
    let receiver = loopback_receiver(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    loopback_sender(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .send(b"unicast")
        .await
        .unwrap();
    assert_eq!(
        bounded("unicast", receiver.recv()).await.unwrap().0,
        b"unicast"
    );
}
