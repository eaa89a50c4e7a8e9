//! TLS for associations (RFC 5355 §4): both ends present a certificate from the pool's CA.
//!
//! RFC 5355 secures ASAP and ENRP with TLS over SCTP and mutual authentication; here TLS runs
//! inside the framed TCP connection, under the frames, so nothing above the transport changes.
//! A registrar configured with [`TlsConfig::server`] completes no handshake with a peer lacking a
//! certificate signed by the pool CA, and its association ends before any frame is delivered. A
//! pool element or pool user configured with [`TlsConfig::client`] checks the registrar's
//! certificate against the same CA and, by default, that it names the registrar's IP address
//! (override with [`TlsConfig::with_server_name`]).
//!
//! The session is driven sans-I/O (`rustls::Connection`) by the connection task in `tcp.rs`
//! through [`TlsSession`], with the socket's non-blocking `try_read`/`try_write`; the handshake
//! is bounded by the association's connect timeout. On an accepting side it runs in the
//! association's own task, so a peer that stalls its handshake holds only its own connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use thiserror::Error;
use tokio::net::TcpStream;

/// Where a member of a pool finds its certificate chain, its private key and the pool CA
/// (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no usable {what} in PEM form")]
    Missing { path: PathBuf, what: &'static str },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS peer verification set-up: {0}")]
    Verifier(String),
}

/// PEM contents of a member's credentials; [`TlsFiles`] read into memory.
#[derive(Clone, Debug)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl TlsPem {
    /// Reads the three files.
    pub fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(TlsPem {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            ca: read(&files.ca)?,
        })
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&self.cert)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(missing("certificate file", "certificate"));
        }
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| missing("key file", "private key"))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca).filter_map(Result::ok) {
            roots.add(ca)?;
        }
        if roots.is_empty() {
            return Err(missing("CA file", "CA certificate"));
        }
        Ok(Arc::new(roots))
    }
}

fn missing(path: &str, what: &'static str) -> TlsError {
    TlsError::Missing {
        path: PathBuf::from(path),
        what,
    }
}

/// Names the file a PEM error came from.
fn in_file(error: TlsError, files: &TlsFiles) -> TlsError {
    match error {
        TlsError::Missing { what, .. } => TlsError::Missing {
            path: match what {
                "certificate" => files.cert.clone(),
                "private key" => files.key.clone(),
                _ => files.ca.clone(),
            },
            what,
        },
        other => other,
    }
}

/// ring, named rather than taken from the process default: a dependency enabling another
/// provider must not make the configuration ambiguous. rustls deprecates it for lacking
/// post-quantum key exchange; aws-lc-rs has it but needs a long C build on every machine of
/// ours (SECURITY.md says what this leaves open). One line to change here.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings of one side of associations: cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    side: Side,
}

#[derive(Clone)]
enum Side {
    Client {
        config: Arc<ClientConfig>,
        /// Expected name in the server's certificate; `None`: its IP address.
        server_name: Option<ServerName<'static>>,
    },
    Server(Arc<ServerConfig>),
}

impl TlsConfig {
    /// The connecting side (pool element, pool user): presents its certificate and accepts a
    /// server only with a certificate from the pool CA.
    pub fn client(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::client_from_pem(&TlsPem::read(files)?).map_err(|error| in_file(error, files))
    }

    /// As [`TlsConfig::client`], from PEM in memory.
    pub fn client_from_pem(pem: &TlsPem) -> Result<Self, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(pem.roots()?)
            .with_client_auth_cert(pem.certificates()?, pem.key()?)?;
        Ok(TlsConfig {
            side: Side::Client {
                config: Arc::new(config),
                server_name: None,
            },
        })
    }

    /// The accepting side (registrar): refuses a peer without a certificate from the pool CA.
    pub fn server(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::server_from_pem(&TlsPem::read(files)?).map_err(|error| in_file(error, files))
    }

    /// As [`TlsConfig::server`], from PEM in memory.
    pub fn server_from_pem(pem: &TlsPem) -> Result<Self, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(pem.roots()?, provider())
            .build()
            .map_err(|error| TlsError::Verifier(error.to_string()))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(pem.certificates()?, pem.key()?)?;
        Ok(TlsConfig {
            side: Side::Server(Arc::new(config)),
        })
    }

    /// Expects `name` (a DNS name or an IP address) in the server's certificate instead of the
    /// address connected to. No effect on an accepting side.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        if let Side::Client { server_name, .. } = &mut self.side {
            let parsed = ServerName::try_from(name.to_owned())
                .map_err(|_| TlsError::ServerName(name.to_owned()))?;
            *server_name = Some(parsed);
        }
        Ok(self)
    }

    /// Whether this side accepts associations.
    pub fn is_server(&self) -> bool {
        matches!(self.side, Side::Server(_))
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.side {
            Side::Client { server_name, .. } => f
                .debug_struct("TlsConfig::Client")
                .field("server_name", server_name)
                .finish_non_exhaustive(),
            Side::Server(_) => f.write_str("TlsConfig::Server"),
        }
    }
}

/// Same configuration object (rustls configurations have no equality of their own).
impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        match (&self.side, &other.side) {
            (Side::Server(a), Side::Server(b)) => Arc::ptr_eq(a, b),
            (
                Side::Client {
                    config: a,
                    server_name: name_a,
                },
                Side::Client {
                    config: b,
                    server_name: name_b,
                },
            ) => Arc::ptr_eq(a, b) && name_a == name_b,
            _ => false,
        }
    }
}

impl Eq for TlsConfig {}

/// The socket as the blocking `Read`/`Write` rustls expects; `WouldBlock` passes through.
struct NonBlocking<'a>(&'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_failure(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(error))
}

/// A TLS error inside an `io::Error`, recognisable by the connection task.
#[derive(Debug, Error)]
#[error("TLS: {0}")]
pub(crate) struct TlsFailure(pub(crate) rustls::Error);

/// An established TLS session over a connected socket.
pub(crate) struct TlsSession {
    connection: rustls::Connection,
    /// Plaintext (or the peer's close_notify) is waiting in the session: reading needs no
    /// socket readiness.
    input_ready: bool,
    close_notify_queued: bool,
}

impl TlsSession {
    /// Runs the handshake for `config`'s side with `peer` over `tcp`.
    pub(crate) async fn handshake(
        tcp: &TcpStream,
        config: &TlsConfig,
        peer: SocketAddr,
    ) -> io::Result<TlsSession> {
        let connection = match &config.side {
            Side::Client {
                config,
                server_name,
            } => {
                let name = server_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(peer.ip().into()));
                rustls::Connection::Client(
                    ClientConnection::new(config.clone(), name).map_err(tls_failure)?,
                )
            }
            Side::Server(config) => rustls::Connection::Server(
                ServerConnection::new(config.clone()).map_err(tls_failure)?,
            ),
        };
        let mut session = TlsSession {
            connection,
            input_ready: false,
            close_notify_queued: false,
        };
        while session.connection.is_handshaking() {
            session.flush(tcp)?;
            if session.connection.wants_write() {
                tcp.writable().await?;
                continue;
            }
            tcp.readable().await?;
            match session.connection.read_tls(&mut NonBlocking(tcp)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    if let Err(error) = session.process() {
                        // The alert tells the peer why (bad certificate, unknown CA).
                        let _ = session.flush(tcp);
                        return Err(error);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        // The last flight (the client's Finished, a server's tickets) goes out with the first
        // write if the socket is full now.
        session.flush(tcp)?;
        Ok(session)
    }

    /// Decrypts what was read; on a TLS error the alert rustls queued is sent (best effort).
    fn process(&mut self) -> io::Result<()> {
        match self.connection.process_new_packets() {
            Ok(state) => {
                self.input_ready = state.plaintext_bytes_to_read() > 0 || state.peer_has_closed();
                Ok(())
            }
            Err(error) => Err(tls_failure(error)),
        }
    }

    /// Whether a read would make progress without the socket.
    pub(crate) fn input_ready(&self) -> bool {
        self.input_ready
    }

    /// Encrypted bytes are waiting for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.connection.wants_write()
    }

    /// Writes encrypted bytes until none are left or the socket is full.
    pub(crate) fn flush(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while self.connection.wants_write() {
            match self.connection.write_tls(&mut NonBlocking(tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads plaintext into `buf`'s spare capacity: `Ok(0)` at the end of the stream (the
    /// peer's close_notify or its FIN), `WouldBlock` when nothing is available.
    pub(crate) fn try_read_buf(
        &mut self,
        tcp: &TcpStream,
        buf: &mut BytesMut,
    ) -> io::Result<usize> {
        loop {
            if self.input_ready {
                let start = buf.len();
                let room = buf.capacity() - start;
                buf.resize(start + room, 0);
                let read = self.connection.reader().read(&mut buf[start..]);
                let read = match read {
                    Ok(read) => read,
                    // Plaintext exhausted: check for more records below.
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(error) => {
                        buf.truncate(start);
                        return Err(error);
                    }
                };
                buf.truncate(start + read);
                if read > 0 {
                    self.process()?;
                    return Ok(read);
                }
                self.process()?;
                if self.input_ready {
                    // Only the peer's close_notify is left.
                    return Ok(0);
                }
            }
            match self.connection.read_tls(&mut NonBlocking(tcp)) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    let processed = self.process();
                    // Replies the records asked for (alerts, key updates) leave when they can.
                    self.flush(tcp)?;
                    processed?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Encrypts as much of `data` as the session takes and writes what the socket takes;
    /// `WouldBlock` when neither takes anything.
    pub(crate) fn try_write(&mut self, tcp: &TcpStream, data: &[u8]) -> io::Result<usize> {
        self.flush(tcp)?;
        let taken = self.connection.writer().write(data)?;
        self.flush(tcp)?;
        match taken {
            0 if !data.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            taken => Ok(taken),
        }
    }

    /// Queues close_notify and writes it if the socket takes it.
    pub(crate) fn close_notify(&mut self, tcp: &TcpStream) -> io::Result<()> {
        if !self.close_notify_queued {
            self.close_notify_queued = true;
            self.connection.send_close_notify();
        }
        self.flush(tcp)
    }

    /// Whether close_notify still has to be queued before our FIN.
    pub(crate) fn close_notify_pending(&self) -> bool {
        !self.close_notify_queued
    }
}
