//! RSerPool parameters (RFC 5354 §3) and the value types they carry.

use std::net::IpAddr;

use super::policy::Policy;

/// Longest pool handle we accept (rsplib's limit; the RFC sets none).
pub const MAX_POOL_HANDLE_LEN: usize = 32;

/// A pool handle (parameter 0x9): opaque bytes naming a pool, at most [`MAX_POOL_HANDLE_LEN`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolHandle(Vec<u8>);

/// Why bytes are not a valid pool handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolHandleError {
    #[error("a pool handle must not be empty")]
    Empty,
    #[error("pool handle of {0} bytes exceeds the {MAX_POOL_HANDLE_LEN}-byte limit")]
    TooLong(usize),
}

impl PoolHandle {
    /// A pool handle from its bytes (1 to [`MAX_POOL_HANDLE_LEN`] of them).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PoolHandleError> {
        let bytes = bytes.into();
        match bytes.len() {
            0 => Err(PoolHandleError::Empty),
            n if n > MAX_POOL_HANDLE_LEN => Err(PoolHandleError::TooLong(n)),
            _ => Ok(PoolHandle(bytes)),
        }
    }

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The handle's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false` (a pool handle has at least one byte); for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A pool element identifier (parameter 0xe and inside 0xa).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeId(pub u32);

/// SCTP transport use (RFC 5354 §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportUse {
    DataOnly,
    DataPlusControl,
}

/// A transport address parameter (0x3-0x7, 0x10).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransportAddress {
    Dccp { port: u16, service_code: u32, address: IpAddr },
    Sctp { port: u16, transport_use: TransportUse, addresses: Vec<IpAddr> },
    Tcp { port: u16, address: IpAddr },
    Udp { port: u16, address: IpAddr },
    UdpLite { port: u16, address: IpAddr },
    Opaque(Vec<u8>),
}

/// The Pool Element parameter (0xa).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolElement {
    pub id: PeId,
    /// Home ENRP server (registrar) identifier; 0 = unknown.
    pub home_registrar: u32,
    /// Registration life in **milliseconds**, as rsplib and Wireshark read it (the RFC says
    /// seconds); `u32::MAX` = infinite.
    pub registration_life_ms: u32,
    pub user_transport: TransportAddress,
    pub policy: Policy,
    /// The transport the PE registered over (rsplib sends it in ENRP messages).
    pub asap_transport: Option<TransportAddress>,
}

/// The Server Information parameter (0xb).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerInformation {
    pub server_id: u32,
    pub transport: TransportAddress,
}

/// An error cause code (RFC 5354 §3.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CauseCode(pub u16);

/// One error cause inside an Operation Error parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCause {
    pub code: CauseCode,
    pub info: Vec<u8>,
}

/// The Operation Error parameter (0xc): one or more causes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OperationError {
    pub causes: Vec<ErrorCause>,
}
