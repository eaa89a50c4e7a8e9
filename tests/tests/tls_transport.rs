//! TLS associations (RFC 5355): mutual certificates from a pool CA made in the test.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rserpool::transport::pki::PoolCa;
use rserpool::transport::tls::TlsPem;
use rserpool::transport::{
    Association, AssociationConfig, AssociationError, Listener, PPID_ASAP, PPID_FGP, ProtocolError,
    TcpFramed, TlsConfig, Transport,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

struct Pool {
    ca: PoolCa,
}

impl Pool {
    fn new() -> Self {
        Pool {
            ca: PoolCa::new("test pool CA").unwrap(),
        }
    }

    fn member(&self, name: &str, names: &[&str]) -> TlsPem {
        self.ca.issue(name, names).unwrap()
    }

    fn server(&self) -> AssociationConfig {
        with_tls(TlsConfig::server_from_pem(&self.member("registrar", &["127.0.0.1"])).unwrap())
    }

    fn client(&self) -> AssociationConfig {
        with_tls(TlsConfig::client_from_pem(&self.member("pe", &[])).unwrap())
    }
}

fn with_tls(tls: TlsConfig) -> AssociationConfig {
    AssociationConfig {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(2),
        ..AssociationConfig::default()
    }
}

async fn listen(config: AssociationConfig) -> (impl Listener, SocketAddr) {
    let listener = TcpFramed::new(config)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The outcome of an association that must end without delivering a frame.
async fn refused(mut association: Association) -> AssociationError {
    match bounded("the association's end", association.recv()).await {
        Ok(frame) => panic!("a frame was delivered: PPID {}", frame.ppid),
        Err(error) => error,
    }
}

fn is_tls_refusal(error: &AssociationError) -> bool {
    matches!(error, AssociationError::Protocol(ProtocolError::Tls(_)))
}

#[tokio::test]
async fn members_exchange_frames_of_any_size_and_close_gracefully() {
    let pool = Pool::new();
    let (listener, addr) = listen(pool.server()).await;
    let connector = TcpFramed::new(pool.client());
    let (client, server) = bounded("connect", async {
        tokio::join!(connector.connect(addr), listener.accept())
    })
    .await;
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    // Larger than a TLS record and than rustls's send buffer, both ways.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        client.send(PPID_FGP, big.clone()).await.unwrap();
        server.send(PPID_ASAP, &b"answer"[..]).await.unwrap();
    }
    for _ in 0..3 {
        let frame = bounded("big frame", server.recv()).await.unwrap();
        assert_eq!((frame.ppid, &frame.payload[..]), (PPID_FGP, &big[..]));
        let frame = bounded("answer", client.recv()).await.unwrap();
        assert_eq!(
            (frame.ppid, &frame.payload[..]),
            (PPID_ASAP, &b"answer"[..])
        );
    }
    bounded("close", client.close()).await.unwrap();
    assert!(matches!(
        bounded("peer's close", server.recv()).await,
        Err(AssociationError::ClosedByPeer)
    ));
}

#[tokio::test]
async fn a_peer_without_tls_is_refused_before_any_frame() {
    let pool = Pool::new();
    let (listener, addr) = listen(pool.server()).await;
    let plain = TcpFramed::new(AssociationConfig::default());
    let (client, server) = bounded("connect", async {
        tokio::join!(plain.connect(addr), listener.accept())
    })
    .await;
    let client = client.unwrap();
    // An ASAP frame in the clear is not a TLS ClientHello.
    let _ = client.send(PPID_ASAP, &b"\x0c\x00\x00\x04"[..]).await;
    let error = refused(server.unwrap()).await;
    assert!(is_tls_refusal(&error), "{error:?}");
    let mut client = client;
    assert!(
        bounded("the plain client's end", client.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let pool = Pool::new();
    let stranger = Pool::new();
    let (listener, addr) = listen(pool.server()).await;

    // A client that trusts our CA, with a certificate from another: refused by the registrar.
    let mut impostor = stranger.member("pe", &[]);
    impostor.ca = pool.ca.certificate_pem().as_bytes().to_vec();
    let connector = TcpFramed::new(with_tls(TlsConfig::client_from_pem(&impostor).unwrap()));
    let (client, server) = bounded("connect", async {
        tokio::join!(connector.connect(addr), listener.accept())
    })
    .await;
    let error = refused(server.unwrap()).await;
    assert!(is_tls_refusal(&error), "{error:?}");
    // TLS 1.3 lets the client finish before the server checks its certificate: the client
    // learns it at its first read, and receives nothing.
    if let Ok(client) = client {
        assert!(
            bounded("client's end", refused(client))
                .await
                .to_string()
                .contains("TLS")
        );
    }

    // A registrar of another pool: our member refuses its certificate at connect.
    let (rogue, rogue_addr) = listen(stranger.server()).await;
    let connector = TcpFramed::new(pool.client());
    let (client, _server) = bounded("connect", async {
        tokio::join!(connector.connect(rogue_addr), rogue.accept())
    })
    .await;
    let error = client.expect_err("a registrar outside the pool was accepted");
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[tokio::test]
async fn the_registrar_certificate_must_name_the_address_or_the_configured_name() {
    let pool = Pool::new();
    let misnamed = with_tls(
        TlsConfig::server_from_pem(&pool.member("registrar", &["registrar.pool.example"])).unwrap(),
    );
    let (listener, addr) = listen(misnamed).await;
    let connector = TcpFramed::new(pool.client());
    let (client, _) = bounded("connect", async {
        tokio::join!(connector.connect(addr), listener.accept())
    })
    .await;
    let error = client.expect_err("a certificate for another name was accepted");
    assert!(error.to_string().contains("certificate"), "{error}");

    let named = with_tls(
        TlsConfig::client_from_pem(&pool.member("pe", &[]))
            .unwrap()
            .with_server_name("registrar.pool.example")
            .unwrap(),
    );
    let connector = TcpFramed::new(named);
    let (client, server) = bounded("connect", async {
        tokio::join!(connector.connect(addr), listener.accept())
    })
    .await;
    let (client, mut server) = (client.unwrap(), server.unwrap());
    client.send(PPID_ASAP, &b"hello"[..]).await.unwrap();
    assert_eq!(
        &bounded("hello", server.recv()).await.unwrap().payload[..],
        b"hello"
    );
}

#[tokio::test]
async fn a_stalled_handshake_holds_only_its_own_connection() {
    let pool = Pool::new();
    let (listener, addr) = listen(pool.server()).await;
    // Connected, silent: its handshake never starts.
    let mut staller = TcpStream::connect(addr).await.unwrap();
    let stalled = bounded("accepting the staller", listener.accept())
        .await
        .unwrap();
    // An honest member is accepted and served meanwhile.
    let connector = TcpFramed::new(pool.client());
    let (client, server) = bounded("connect", async {
        tokio::join!(connector.connect(addr), listener.accept())
    })
    .await;
    let (client, mut server) = (client.unwrap(), server.unwrap());
    client.send(PPID_ASAP, &b"served"[..]).await.unwrap();
    assert_eq!(
        &bounded("frame", server.recv()).await.unwrap().payload[..],
        b"served"
    );
    // The staller is cut off at the handshake bound (the connect timeout, 2 s here).
    let error = refused(stalled).await;
    assert!(error.to_string().contains("handshake timed out"), "{error}");
    let _ = staller.write_all(b"late").await;
}
