//! RSerPool parameters (RFC 5354 §3) and the value types they carry.
//!
//! Every parameter is a TLV `Type u16 | Length u16 | Value | padding to 4`; the length never
//! covers the final padding when we send, and both styles are accepted on receipt (see
//! [`super::buf`]). [`Parameter`] encodes and decodes any single parameter; messages use the same
//! routines internally.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::buf::{Reader, Writer, encode_atomically, roundup4};
use super::error::{Decoded, EncodeError, UnknownParameterAction, WireError};
use super::policy::Policy;

/// Longest pool handle we accept (rsplib's limit; the RFC sets none).
pub const MAX_POOL_HANDLE_LEN: usize = 32;

/// Most IP addresses we accept in one SCTP transport parameter (rsplib's
/// `MAX_PE_TRANSPORTADDRESSES`).
pub const MAX_TRANSPORT_ADDRESSES: usize = 64;

/// `items` value of the Handle Resolution option asking for all PEs of the pool.
pub const HANDLE_RESOLUTION_ALL: u32 = u32::MAX;

/// Parameter type codes (RFC 5354 §3, plus rsplib's Handle Resolution option).
pub mod param_type {
    pub const IPV4_ADDRESS: u16 = 0x0001;
    pub const IPV6_ADDRESS: u16 = 0x0002;
    pub const DCCP_TRANSPORT: u16 = 0x0003;
    pub const SCTP_TRANSPORT: u16 = 0x0004;
    pub const TCP_TRANSPORT: u16 = 0x0005;
    pub const UDP_TRANSPORT: u16 = 0x0006;
    pub const UDP_LITE_TRANSPORT: u16 = 0x0007;
    pub const POOL_MEMBER_SELECTION_POLICY: u16 = 0x0008;
    pub const POOL_HANDLE: u16 = 0x0009;
    pub const POOL_ELEMENT: u16 = 0x000a;
    pub const SERVER_INFORMATION: u16 = 0x000b;
    pub const OPERATION_ERROR: u16 = 0x000c;
    pub const COOKIE: u16 = 0x000d;
    pub const PE_IDENTIFIER: u16 = 0x000e;
    pub const PE_CHECKSUM: u16 = 0x000f;
    pub const OPAQUE_TRANSPORT: u16 = 0x0010;
    /// draft-dreibholz-rserpool-asap-hropt: base type 0x3f sent with the "skip" bits (0x8000)
    /// so that receivers that do not know it ignore it. Received with any action bits.
    pub const HANDLE_RESOLUTION: u16 = 0x803f;
}

/// A human-readable name for a parameter type (Wireshark's wording).
pub fn param_name(param_type: u16) -> &'static str {
    match known_param_type(param_type) {
        Some(param_type::IPV4_ADDRESS) => "IPv4 Address",
        Some(param_type::IPV6_ADDRESS) => "IPv6 Address",
        Some(param_type::DCCP_TRANSPORT) => "DCCP Transport",
        Some(param_type::SCTP_TRANSPORT) => "SCTP Transport",
        Some(param_type::TCP_TRANSPORT) => "TCP Transport",
        Some(param_type::UDP_TRANSPORT) => "UDP Transport",
        Some(param_type::UDP_LITE_TRANSPORT) => "UDP-Lite Transport",
        Some(param_type::POOL_MEMBER_SELECTION_POLICY) => "Pool Member Selection Policy",
        Some(param_type::POOL_HANDLE) => "Pool Handle",
        Some(param_type::POOL_ELEMENT) => "Pool Element",
        Some(param_type::SERVER_INFORMATION) => "Server Information",
        Some(param_type::OPERATION_ERROR) => "Operation Error",
        Some(param_type::COOKIE) => "Cookie",
        Some(param_type::PE_IDENTIFIER) => "PE Identifier",
        Some(param_type::PE_CHECKSUM) => "PE Checksum",
        Some(param_type::OPAQUE_TRANSPORT) => "Opaque Transport",
        Some(param_type::HANDLE_RESOLUTION) => "Handle Resolution",
        _ => "unknown",
    }
}

/// The canonical type of a parameter we understand, `None` for unknown ones.
/// The Handle Resolution option is matched on its base type 0x3f like rsplib does.
pub(crate) fn known_param_type(raw: u16) -> Option<u16> {
    match raw {
        0x0001..=0x0010 => Some(raw),
        _ if raw & 0x3fff == 0x003f => Some(param_type::HANDLE_RESOLUTION),
        _ => None,
    }
}

pub(crate) fn is_transport_type(t: u16) -> bool {
    matches!(
        t,
        param_type::DCCP_TRANSPORT
            | param_type::SCTP_TRANSPORT
            | param_type::TCP_TRANSPORT
            | param_type::UDP_TRANSPORT
            | param_type::UDP_LITE_TRANSPORT
            | param_type::OPAQUE_TRANSPORT
    )
}

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// A pool handle (parameter 0x9): opaque bytes naming a pool, 1 to [`MAX_POOL_HANDLE_LEN`]
/// bytes. The length limit is enforced on construction, so encoding cannot fail on it.
/// Shared, immutable bytes: a clone (into an index, an answer, a log event) is a reference
/// count, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolHandle(std::sync::Arc<[u8]>);

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
            _ => Ok(PoolHandle(bytes.into())),
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

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let t = w.begin_tlv(param_type::POOL_HANDLE);
        w.bytes(&self.0);
        w.end_tlv(t)
    }

    pub(crate) fn read(tlv: &Tlv<'_>) -> Result<Self, WireError> {
        match PoolHandle::new(tlv.value) {
            Ok(handle) => Ok(handle),
            Err(PoolHandleError::Empty) => Err(tlv.invalid("empty pool handle")),
            Err(PoolHandleError::TooLong(length)) => Err(WireError::PoolHandleTooLong {
                length,
                max: MAX_POOL_HANDLE_LEN,
                tlv: tlv.whole.to_vec(),
            }),
        }
    }
}

impl std::str::FromStr for PoolHandle {
    type Err = PoolHandleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PoolHandle::new(s.as_bytes())
    }
}

impl TryFrom<&str> for PoolHandle {
    type Error = PoolHandleError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        PoolHandle::new(s.as_bytes())
    }
}

impl TryFrom<&[u8]> for PoolHandle {
    type Error = PoolHandleError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        PoolHandle::new(b)
    }
}

impl TryFrom<Vec<u8>> for PoolHandle {
    type Error = PoolHandleError;
    fn try_from(b: Vec<u8>) -> Result<Self, Self::Error> {
        PoolHandle::new(b)
    }
}

impl AsRef<[u8]> for PoolHandle {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Printable ASCII as is, other bytes escaped (`\xNN`).
impl fmt::Display for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

/// A pool element identifier (parameter 0xe and inside 0xa).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeId(pub u32);

impl From<u32> for PeId {
    fn from(v: u32) -> Self {
        PeId(v)
    }
}

/// Hexadecimal, as rsplib prints identifiers (`$1a2b3c4d` there, `0x1a2b3c4d` here).
impl fmt::Display for PeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// SCTP transport use (RFC 5354 §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportUse {
    DataOnly,
    DataPlusControl,
}

impl TransportUse {
    /// The wire value (0 = DATA ONLY, 1 = DATA plus CONTROL).
    pub fn to_wire(self) -> u16 {
        match self {
            TransportUse::DataOnly => 0,
            TransportUse::DataPlusControl => 1,
        }
    }

    /// The value for a wire code, `None` for codes the RFC does not define.
    pub fn from_wire(v: u16) -> Option<Self> {
        match v {
            0 => Some(TransportUse::DataOnly),
            1 => Some(TransportUse::DataPlusControl),
            _ => None,
        }
    }
}

/// A transport address parameter (0x3-0x7, 0x10).
///
/// TCP, UDP and UDP-Lite carry a reserved 16-bit field that we send as 0 and ignore on receipt
/// (RFC 5354 §3.5-3.7). Note that rsplib and Wireshark read the TCP one as "Transport Use" and
/// rsplib writes its control-channel flag there; the RFC says TCP "MUST always be treated as
/// Data Only".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransportAddress {
    Dccp {
        port: u16,
        service_code: u32,
        address: IpAddr,
    },
    /// At least one and at most [`MAX_TRANSPORT_ADDRESSES`] addresses.
    Sctp {
        port: u16,
        transport_use: TransportUse,
        addresses: Vec<IpAddr>,
    },
    Tcp {
        port: u16,
        address: IpAddr,
    },
    Udp {
        port: u16,
        address: IpAddr,
    },
    UdpLite {
        port: u16,
        address: IpAddr,
    },
    Opaque(Vec<u8>),
}

impl TransportAddress {
    /// The parameter type this transport is carried in.
    pub fn param_type(&self) -> u16 {
        match self {
            TransportAddress::Dccp { .. } => param_type::DCCP_TRANSPORT,
            TransportAddress::Sctp { .. } => param_type::SCTP_TRANSPORT,
            TransportAddress::Tcp { .. } => param_type::TCP_TRANSPORT,
            TransportAddress::Udp { .. } => param_type::UDP_TRANSPORT,
            TransportAddress::UdpLite { .. } => param_type::UDP_LITE_TRANSPORT,
            TransportAddress::Opaque(_) => param_type::OPAQUE_TRANSPORT,
        }
    }

    /// The address to reach: the (first) IP address with the port; `None` for an opaque
    /// transport or an SCTP one without addresses.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            TransportAddress::Tcp { port, address }
            | TransportAddress::Udp { port, address }
            | TransportAddress::UdpLite { port, address }
            | TransportAddress::Dccp { port, address, .. } => {
                Some(SocketAddr::new(*address, *port))
            }
            TransportAddress::Sctp {
                port, addresses, ..
            } => addresses.first().map(|a| SocketAddr::new(*a, *port)),
            TransportAddress::Opaque(_) => None,
        }
    }

    /// The port, `None` for an opaque transport.
    pub fn port(&self) -> Option<u16> {
        match self {
            TransportAddress::Dccp { port, .. }
            | TransportAddress::Sctp { port, .. }
            | TransportAddress::Tcp { port, .. }
            | TransportAddress::Udp { port, .. }
            | TransportAddress::UdpLite { port, .. } => Some(*port),
            TransportAddress::Opaque(_) => None,
        }
    }

    /// The IP addresses (empty for an opaque transport).
    pub fn addresses(&self) -> Vec<IpAddr> {
        match self {
            TransportAddress::Sctp { addresses, .. } => addresses.clone(),
            TransportAddress::Dccp { address, .. }
            | TransportAddress::Tcp { address, .. }
            | TransportAddress::Udp { address, .. }
            | TransportAddress::UdpLite { address, .. } => vec![*address],
            TransportAddress::Opaque(_) => Vec::new(),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let t = w.begin_tlv(self.param_type());
        match self {
            TransportAddress::Dccp {
                port,
                service_code,
                address,
            } => {
                w.u16(*port);
                w.u16(0);
                w.u32(*service_code);
                write_address(w, *address)?;
            }
            TransportAddress::Sctp {
                port,
                transport_use,
                addresses,
            } => {
                if addresses.is_empty() {
                    return Err(EncodeError::Invalid("SCTP transport without addresses"));
                }
                if addresses.len() > MAX_TRANSPORT_ADDRESSES {
                    return Err(EncodeError::Invalid(
                        "SCTP transport with more than 64 addresses",
                    ));
                }
                w.u16(*port);
                w.u16(transport_use.to_wire());
                for a in addresses {
                    write_address(w, *a)?;
                }
            }
            TransportAddress::Tcp { port, address }
            | TransportAddress::Udp { port, address }
            | TransportAddress::UdpLite { port, address } => {
                w.u16(*port);
                w.u16(0);
                write_address(w, *address)?;
            }
            TransportAddress::Opaque(data) => w.bytes(data),
        }
        w.end_tlv(t)
    }

    pub(crate) fn read(tlv: &Tlv<'_>, ctx: &mut Ctx) -> Result<Self, WireError> {
        let mut r = Reader::new(tlv.value);
        let fixed_len = match tlv.ty {
            param_type::OPAQUE_TRANSPORT => {
                return Ok(TransportAddress::Opaque(tlv.value.to_vec()));
            }
            param_type::DCCP_TRANSPORT => 8,
            param_type::SCTP_TRANSPORT
            | param_type::TCP_TRANSPORT
            | param_type::UDP_TRANSPORT
            | param_type::UDP_LITE_TRANSPORT => 4,
            _ => return Err(tlv.invalid("not a transport parameter")),
        };
        let (Some(port), Some(second), Some(service_code)) = (
            r.u16(),
            r.u16(),
            if fixed_len == 8 { r.u32() } else { Some(0) },
        ) else {
            return Err(tlv.invalid("transport parameter too short"));
        };
        let what = param_name(tlv.ty);
        let mut addresses = Vec::new();
        for sub in parse_tlvs(r.rest(), ctx)? {
            if addresses.len() == MAX_TRANSPORT_ADDRESSES {
                return Err(tlv.invalid("more than 64 addresses"));
            }
            match sub.ty {
                param_type::IPV4_ADDRESS | param_type::IPV6_ADDRESS => {
                    addresses.push(read_address(&sub)?)
                }
                _ => return Err(sub.unexpected(what)),
            }
        }
        if tlv.ty == param_type::SCTP_TRANSPORT {
            let Some(transport_use) = TransportUse::from_wire(second) else {
                return Err(tlv.invalid("transport use is neither DATA ONLY nor DATA plus CONTROL"));
            };
            if addresses.is_empty() {
                return Err(tlv.invalid("SCTP transport without addresses"));
            }
            return Ok(TransportAddress::Sctp {
                port,
                transport_use,
                addresses,
            });
        }
        let [address] = addresses[..] else {
            return Err(tlv.invalid("transport must carry exactly one address"));
        };
        Ok(match tlv.ty {
            param_type::DCCP_TRANSPORT => TransportAddress::Dccp {
                port,
                service_code,
                address,
            },
            param_type::TCP_TRANSPORT => TransportAddress::Tcp { port, address },
            param_type::UDP_TRANSPORT => TransportAddress::Udp { port, address },
            _ => TransportAddress::UdpLite { port, address },
        })
    }
}

fn write_address(w: &mut Writer<'_>, address: IpAddr) -> Result<(), EncodeError> {
    match address {
        IpAddr::V4(a) => {
            let t = w.begin_tlv(param_type::IPV4_ADDRESS);
            w.bytes(&a.octets());
            w.end_tlv(t)
        }
        IpAddr::V6(a) => {
            let t = w.begin_tlv(param_type::IPV6_ADDRESS);
            w.bytes(&a.octets());
            w.end_tlv(t)
        }
    }
}

fn read_address(tlv: &Tlv<'_>) -> Result<IpAddr, WireError> {
    match tlv.ty {
        param_type::IPV4_ADDRESS => <[u8; 4]>::try_from(tlv.value)
            .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
            .map_err(|_| tlv.invalid("IPv4 address length is not 8")),
        param_type::IPV6_ADDRESS => <[u8; 16]>::try_from(tlv.value)
            .map(|o| IpAddr::V6(Ipv6Addr::from(o)))
            .map_err(|_| tlv.invalid("IPv6 address length is not 20")),
        _ => Err(tlv.invalid("not an address parameter")),
    }
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
    /// The transport the PE registered over (rsplib sends it in ENRP messages). The RFC wants
    /// SCTP here; we accept any transport because our associations run over TCP.
    pub asap_transport: Option<TransportAddress>,
}

impl PoolElement {
    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let t = w.begin_tlv(param_type::POOL_ELEMENT);
        w.u32(self.id.0);
        w.u32(self.home_registrar);
        w.u32(self.registration_life_ms);
        self.user_transport.write(w)?;
        self.policy.write(w)?;
        if let Some(asap) = &self.asap_transport {
            asap.write(w)?;
        }
        w.end_tlv(t)
    }

    pub(crate) fn read(tlv: &Tlv<'_>, ctx: &mut Ctx) -> Result<Self, WireError> {
        let mut r = Reader::new(tlv.value);
        let (Some(id), Some(home_registrar), Some(registration_life_ms)) =
            (r.u32(), r.u32(), r.u32())
        else {
            return Err(tlv.invalid("pool element parameter too short"));
        };
        let mut params = Params::new(parse_tlvs(r.rest(), ctx)?, "Pool Element parameter");
        let user = params.required_where(is_transport_type, "User Transport")?;
        let user_transport = TransportAddress::read(&user, ctx)?;
        let policy = Policy::read(&params.required(param_type::POOL_MEMBER_SELECTION_POLICY)?)?;
        let asap_transport = match params.take_where(is_transport_type) {
            Some(t) => Some(TransportAddress::read(&t, ctx)?),
            None => None,
        };
        params.finish()?;
        Ok(PoolElement {
            id: PeId(id),
            home_registrar,
            registration_life_ms,
            user_transport,
            policy,
            asap_transport,
        })
    }
}

/// The Server Information parameter (0xb).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerInformation {
    pub server_id: u32,
    /// The RFC wants SCTP here; any transport is accepted (our associations run over TCP).
    pub transport: TransportAddress,
}

impl ServerInformation {
    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let t = w.begin_tlv(param_type::SERVER_INFORMATION);
        w.u32(self.server_id);
        self.transport.write(w)?;
        w.end_tlv(t)
    }

    pub(crate) fn read(tlv: &Tlv<'_>, ctx: &mut Ctx) -> Result<Self, WireError> {
        let mut r = Reader::new(tlv.value);
        let Some(server_id) = r.u32() else {
            return Err(tlv.invalid("server information parameter too short"));
        };
        let mut params = Params::new(parse_tlvs(r.rest(), ctx)?, "Server Information parameter");
        let transport = TransportAddress::read(
            &params.required_where(is_transport_type, "Server Transport")?,
            ctx,
        )?;
        params.finish()?;
        Ok(ServerInformation {
            server_id,
            transport,
        })
    }
}

/// An error cause code (RFC 5354 §3.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CauseCode(pub u16);

impl CauseCode {
    pub const UNSPECIFIED: CauseCode = CauseCode(0x0);
    /// Info: the whole unrecognized TLV.
    pub const UNRECOGNIZED_PARAMETER: CauseCode = CauseCode(0x1);
    /// Info: the unrecognized message.
    pub const UNRECOGNIZED_MESSAGE: CauseCode = CauseCode(0x2);
    /// Info: the offending TLV.
    pub const INVALID_VALUES: CauseCode = CauseCode(0x3);
    pub const NON_UNIQUE_PE_IDENTIFIER: CauseCode = CauseCode(0x4);
    /// Info: the pool's policy TLV.
    pub const INCONSISTENT_POOLING_POLICY: CauseCode = CauseCode(0x5);
    pub const LACK_OF_RESOURCES: CauseCode = CauseCode(0x6);
    /// Info: the pool's transport TLV.
    pub const INCONSISTENT_TRANSPORT_TYPE: CauseCode = CauseCode(0x7);
    pub const INCONSISTENT_DATA_CONTROL_CONFIGURATION: CauseCode = CauseCode(0x8);
    pub const UNKNOWN_POOL_HANDLE: CauseCode = CauseCode(0x9);
    pub const REJECTED_SECURITY: CauseCode = CauseCode(0xa);
    /// rsplib's private "invalid message" (`RSPERR_INVALID_MESSAGE`); we never send it.
    pub const RSPLIB_INVALID_MESSAGE: CauseCode = CauseCode(0x10);
    /// rsplib's private "invalid value" (`RSPERR_INVALID_VALUE`); we never send it.
    pub const RSPLIB_INVALID_VALUE: CauseCode = CauseCode(0x11);

    /// The RFC's name for the code ("unknown" for unassigned ones).
    pub fn name(self) -> &'static str {
        match self.0 {
            0x0 => "Unspecified Error",
            0x1 => "Unrecognized Parameter",
            0x2 => "Unrecognized Message",
            0x3 => "Invalid Values",
            0x4 => "Non-unique PE Identifier",
            0x5 => "Inconsistent Pooling Policy",
            0x6 => "Lack of Resources",
            0x7 => "Inconsistent Transport Type",
            0x8 => "Inconsistent Data/Control Configuration",
            0x9 => "Unknown Pool Handle",
            0xa => "Rejected due to security considerations",
            0x10 => "Invalid Message (rsplib)",
            0x11 => "Invalid Value (rsplib)",
            _ => "unknown",
        }
    }
}

impl fmt::Display for CauseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

/// One error cause inside an Operation Error parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCause {
    pub code: CauseCode,
    pub info: Vec<u8>,
}

impl ErrorCause {
    /// A cause without cause-specific information.
    pub fn new(code: CauseCode) -> Self {
        ErrorCause {
            code,
            info: Vec::new(),
        }
    }

    /// "Unrecognized Parameter" carrying the whole unrecognized TLV.
    pub fn unrecognized_parameter(tlv: impl Into<Vec<u8>>) -> Self {
        ErrorCause {
            code: CauseCode::UNRECOGNIZED_PARAMETER,
            info: tlv.into(),
        }
    }

    /// "Unrecognized Message" carrying the message.
    pub fn unrecognized_message(message: impl Into<Vec<u8>>) -> Self {
        ErrorCause {
            code: CauseCode::UNRECOGNIZED_MESSAGE,
            info: message.into(),
        }
    }

    /// "Invalid Values" carrying the offending TLV.
    pub fn invalid_values(tlv: impl Into<Vec<u8>>) -> Self {
        ErrorCause {
            code: CauseCode::INVALID_VALUES,
            info: tlv.into(),
        }
    }

    /// "Inconsistent Pooling Policy" carrying the pool's policy TLV.
    pub fn inconsistent_pooling_policy(pool_policy: &Policy) -> Result<Self, EncodeError> {
        Ok(ErrorCause {
            code: CauseCode::INCONSISTENT_POOLING_POLICY,
            info: Parameter::Policy(*pool_policy).to_bytes()?,
        })
    }

    /// "Inconsistent Transport Type" carrying the pool's transport TLV.
    pub fn inconsistent_transport_type(
        pool_transport: &TransportAddress,
    ) -> Result<Self, EncodeError> {
        Ok(ErrorCause {
            code: CauseCode::INCONSISTENT_TRANSPORT_TYPE,
            info: Parameter::Transport(pool_transport.clone()).to_bytes()?,
        })
    }
}

/// The Operation Error parameter (0xc): one or more causes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OperationError {
    pub causes: Vec<ErrorCause>,
}

impl OperationError {
    /// An Operation Error with a single cause.
    pub fn single(cause: ErrorCause) -> Self {
        OperationError {
            causes: vec![cause],
        }
    }

    /// The first cause's code (every valid Operation Error has one).
    pub fn first_code(&self) -> Option<CauseCode> {
        self.causes.first().map(|c| c.code)
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        if self.causes.is_empty() {
            return Err(EncodeError::Invalid("Operation Error without causes"));
        }
        let t = w.begin_tlv(param_type::OPERATION_ERROR);
        for cause in &self.causes {
            w.align();
            let length = 4 + cause.info.len();
            let Ok(length16) = u16::try_from(length) else {
                return Err(EncodeError::ParameterTooLong {
                    param_type: param_type::OPERATION_ERROR,
                    length,
                });
            };
            w.u16(cause.code.0);
            w.u16(length16);
            w.bytes(&cause.info);
        }
        w.end_tlv(t)
    }

    pub(crate) fn read(tlv: &Tlv<'_>) -> Result<Self, WireError> {
        let mut r = Reader::new(tlv.value);
        let mut causes = Vec::new();
        while !r.is_empty() {
            let (Some(code), Some(length)) = (r.u16(), r.u16()) else {
                return Err(tlv.invalid("truncated error cause"));
            };
            let Some(info_len) = usize::from(length).checked_sub(4) else {
                return Err(tlv.invalid("error cause length below 4"));
            };
            let Some(info) = r.bytes(info_len) else {
                return Err(tlv.invalid("error cause overruns the parameter"));
            };
            causes.push(ErrorCause {
                code: CauseCode(code),
                info: info.to_vec(),
            });
            r.skip_at_most(roundup4(usize::from(length)) - usize::from(length));
        }
        if causes.is_empty() {
            return Err(tlv.invalid("Operation Error without causes"));
        }
        Ok(OperationError { causes })
    }
}

// ---------------------------------------------------------------------------------------------
// Any single parameter
// ---------------------------------------------------------------------------------------------

/// Any one parameter, for encoding or decoding a standalone TLV (e.g. to fill or read the
/// cause-specific information of an error cause).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Parameter {
    /// 0x1 or 0x2.
    Address(IpAddr),
    /// 0x3-0x7, 0x10.
    Transport(TransportAddress),
    /// 0x8.
    Policy(Policy),
    /// 0x9.
    PoolHandle(PoolHandle),
    /// 0xa.
    PoolElement(PoolElement),
    /// 0xb.
    ServerInformation(ServerInformation),
    /// 0xc.
    OperationError(OperationError),
    /// 0xd.
    Cookie(Vec<u8>),
    /// 0xe.
    PeIdentifier(PeId),
    /// 0xf.
    PeChecksum(u16),
    /// 0x803f; `items` = how many PEs the PU wants, [`HANDLE_RESOLUTION_ALL`] = all.
    HandleResolution { items: u32 },
}

impl Parameter {
    /// The parameter type this value is sent as.
    pub fn param_type(&self) -> u16 {
        match self {
            Parameter::Address(IpAddr::V4(_)) => param_type::IPV4_ADDRESS,
            Parameter::Address(IpAddr::V6(_)) => param_type::IPV6_ADDRESS,
            Parameter::Transport(t) => t.param_type(),
            Parameter::Policy(_) => param_type::POOL_MEMBER_SELECTION_POLICY,
            Parameter::PoolHandle(_) => param_type::POOL_HANDLE,
            Parameter::PoolElement(_) => param_type::POOL_ELEMENT,
            Parameter::ServerInformation(_) => param_type::SERVER_INFORMATION,
            Parameter::OperationError(_) => param_type::OPERATION_ERROR,
            Parameter::Cookie(_) => param_type::COOKIE,
            Parameter::PeIdentifier(_) => param_type::PE_IDENTIFIER,
            Parameter::PeChecksum(_) => param_type::PE_CHECKSUM,
            Parameter::HandleResolution { .. } => param_type::HANDLE_RESOLUTION,
        }
    }

    /// Appends the TLV *without* its final padding (the length of a TLV never covers it; a
    /// container adds it before the next item).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_atomically(out, |w| self.write(w))
    }

    /// The TLV as bytes, without final padding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Parameter::Address(a) => write_address(w, *a),
            Parameter::Transport(t) => t.write(w),
            Parameter::Policy(p) => p.write(w),
            Parameter::PoolHandle(h) => h.write(w),
            Parameter::PoolElement(pe) => pe.write(w),
            Parameter::ServerInformation(s) => s.write(w),
            Parameter::OperationError(e) => e.write(w),
            Parameter::Cookie(c) => write_cookie(w, c),
            Parameter::PeIdentifier(id) => write_pe_id(w, *id),
            Parameter::PeChecksum(c) => write_pe_checksum(w, *c),
            Parameter::HandleResolution { items } => write_handle_resolution(w, *items),
        }
    }

    /// Decodes exactly one TLV (its final padding may be present or not). Unknown types give
    /// [`WireError::UnrecognizedParameter`] whatever their action bits.
    pub fn decode(bytes: &[u8]) -> Result<Decoded<Parameter>, WireError> {
        let mut ctx = Ctx::default();
        let (tlv, rest) = split_tlv(bytes)?;
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes { extra: rest.len() });
        }
        let Some(ty) = known_param_type(tlv.raw_type) else {
            return Err(WireError::UnrecognizedParameter {
                param_type: tlv.raw_type,
                action: UnknownParameterAction::for_type(tlv.raw_type),
                tlv: tlv.whole.to_vec(),
            });
        };
        let tlv = Tlv { ty, ..tlv };
        let parameter = match ty {
            param_type::IPV4_ADDRESS | param_type::IPV6_ADDRESS => {
                Parameter::Address(read_address(&tlv)?)
            }
            t if is_transport_type(t) => {
                Parameter::Transport(TransportAddress::read(&tlv, &mut ctx)?)
            }
            param_type::POOL_MEMBER_SELECTION_POLICY => Parameter::Policy(Policy::read(&tlv)?),
            param_type::POOL_HANDLE => Parameter::PoolHandle(PoolHandle::read(&tlv)?),
            param_type::POOL_ELEMENT => Parameter::PoolElement(PoolElement::read(&tlv, &mut ctx)?),
            param_type::SERVER_INFORMATION => {
                Parameter::ServerInformation(ServerInformation::read(&tlv, &mut ctx)?)
            }
            param_type::OPERATION_ERROR => Parameter::OperationError(OperationError::read(&tlv)?),
            param_type::COOKIE => Parameter::Cookie(tlv.value.to_vec()),
            param_type::PE_IDENTIFIER => Parameter::PeIdentifier(read_pe_id(&tlv)?),
            param_type::PE_CHECKSUM => Parameter::PeChecksum(read_pe_checksum(&tlv)?),
            _ => Parameter::HandleResolution {
                items: read_handle_resolution(&tlv)?,
            },
        };
        Ok(Decoded {
            message: parameter,
            unrecognized: ctx.unrecognized,
        })
    }
}

pub(crate) fn write_cookie(w: &mut Writer<'_>, cookie: &[u8]) -> Result<(), EncodeError> {
    let t = w.begin_tlv(param_type::COOKIE);
    w.bytes(cookie);
    w.end_tlv(t)
}

pub(crate) fn write_pe_id(w: &mut Writer<'_>, id: PeId) -> Result<(), EncodeError> {
    let t = w.begin_tlv(param_type::PE_IDENTIFIER);
    w.u32(id.0);
    w.end_tlv(t)
}

pub(crate) fn read_pe_id(tlv: &Tlv<'_>) -> Result<PeId, WireError> {
    <[u8; 4]>::try_from(tlv.value)
        .map(|b| PeId(u32::from_be_bytes(b)))
        .map_err(|_| tlv.invalid("PE identifier length is not 8"))
}

/// Length 6: the checksum plus two padding bytes that the length does not cover.
pub(crate) fn write_pe_checksum(w: &mut Writer<'_>, checksum: u16) -> Result<(), EncodeError> {
    let t = w.begin_tlv(param_type::PE_CHECKSUM);
    w.u16(checksum);
    w.end_tlv(t)
}

pub(crate) fn read_pe_checksum(tlv: &Tlv<'_>) -> Result<u16, WireError> {
    <[u8; 2]>::try_from(tlv.value)
        .map(u16::from_be_bytes)
        .map_err(|_| tlv.invalid("PE checksum length is not 6"))
}

pub(crate) fn write_handle_resolution(w: &mut Writer<'_>, items: u32) -> Result<(), EncodeError> {
    let t = w.begin_tlv(param_type::HANDLE_RESOLUTION);
    w.u32(items);
    w.end_tlv(t)
}

pub(crate) fn read_handle_resolution(tlv: &Tlv<'_>) -> Result<u32, WireError> {
    <[u8; 4]>::try_from(tlv.value)
        .map(u32::from_be_bytes)
        .map_err(|_| tlv.invalid("handle resolution option length is not 8"))
}

// ---------------------------------------------------------------------------------------------
// TLV lists
// ---------------------------------------------------------------------------------------------

/// Decoding state shared by nested parsers: the skipped-and-reported TLVs.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub(crate) unrecognized: Vec<Vec<u8>>,
}

/// One TLV found in a container.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    /// Canonical type ([`known_param_type`]) for known parameters, else the raw type.
    pub(crate) ty: u16,
    pub(crate) raw_type: u16,
    pub(crate) value: &'a [u8],
    /// Header and value, without padding.
    pub(crate) whole: &'a [u8],
}

impl Tlv<'_> {
    pub(crate) fn invalid(&self, reason: &'static str) -> WireError {
        WireError::InvalidParameter {
            param_type: self.raw_type,
            reason,
            tlv: self.whole.to_vec(),
        }
    }

    pub(crate) fn unexpected(&self, message: &'static str) -> WireError {
        WireError::UnexpectedParameter {
            message,
            param_type: self.raw_type,
            tlv: self.whole.to_vec(),
        }
    }
}

/// Splits the first TLV off `data`; returns it and what follows its padding.
fn split_tlv(data: &[u8]) -> Result<(Tlv<'_>, &[u8]), WireError> {
    let mut r = Reader::new(data);
    let (Some(raw_type), Some(length)) = (r.u16(), r.u16()) else {
        return Err(WireError::TrailingBytes { extra: data.len() });
    };
    let len = usize::from(length);
    if len < 4 {
        return Err(WireError::InvalidParameter {
            param_type: raw_type,
            reason: "parameter length below 4",
            tlv: data.get(..4).unwrap_or(data).to_vec(),
        });
    }
    let Some(whole) = data.get(..len) else {
        return Err(WireError::InvalidParameter {
            param_type: raw_type,
            reason: "parameter length exceeds its container",
            tlv: data.to_vec(),
        });
    };
    // The last TLV of a container may lack its padding (RFC style), so stop at the end.
    let next = data.get(roundup4(len)..).unwrap_or(&[]);
    let tlv = Tlv {
        ty: raw_type,
        raw_type,
        value: whole.get(4..).unwrap_or(&[]),
        whole,
    };
    Ok((tlv, next))
}

/// Parses a sequence of TLVs, applying RFC 5354 §3's rules to unknown types: `00`/`01` stop
/// (an error), `10` skips, `11` skips and records the TLV in `ctx` for reporting.
pub(crate) fn parse_tlvs<'a>(mut data: &'a [u8], ctx: &mut Ctx) -> Result<Vec<Tlv<'a>>, WireError> {
    let mut tlvs = Vec::new();
    while !data.is_empty() {
        let (tlv, next) = split_tlv(data)?;
        data = next;
        match known_param_type(tlv.raw_type) {
            Some(ty) => tlvs.push(Tlv { ty, ..tlv }),
            None => match UnknownParameterAction::for_type(tlv.raw_type) {
                action @ (UnknownParameterAction::Stop | UnknownParameterAction::StopAndReport) => {
                    return Err(WireError::UnrecognizedParameter {
                        param_type: tlv.raw_type,
                        action,
                        tlv: tlv.whole.to_vec(),
                    });
                }
                UnknownParameterAction::Skip => {}
                UnknownParameterAction::SkipAndReport => ctx.unrecognized.push(tlv.whole.to_vec()),
            },
        }
    }
    Ok(tlvs)
}

/// A cursor over the known TLVs of a container, consumed in the order the RFC defines.
pub(crate) struct Params<'a> {
    tlvs: std::vec::IntoIter<Tlv<'a>>,
    peeked: Option<Tlv<'a>>,
    container: &'static str,
}

impl<'a> Params<'a> {
    pub(crate) fn new(tlvs: Vec<Tlv<'a>>, container: &'static str) -> Self {
        let mut tlvs = tlvs.into_iter();
        let peeked = tlvs.next();
        Params {
            tlvs,
            peeked,
            container,
        }
    }

    fn advance(&mut self) -> Option<Tlv<'a>> {
        let current = self.peeked.take();
        self.peeked = self.tlvs.next();
        current
    }

    /// The next TLV if it satisfies `pred`.
    pub(crate) fn take_where(&mut self, pred: impl Fn(u16) -> bool) -> Option<Tlv<'a>> {
        match self.peeked {
            Some(t) if pred(t.ty) => self.advance(),
            _ => None,
        }
    }

    /// The next TLV if it has type `ty`.
    pub(crate) fn take(&mut self, ty: u16) -> Option<Tlv<'a>> {
        self.take_where(|t| t == ty)
    }

    /// The next TLV, which must satisfy `pred`.
    pub(crate) fn required_where(
        &mut self,
        pred: impl Fn(u16) -> bool,
        name: &'static str,
    ) -> Result<Tlv<'a>, WireError> {
        match self.peeked {
            Some(t) if pred(t.ty) => Ok(self.advance().unwrap_or(t)),
            Some(t) => Err(t.unexpected(self.container)),
            None => Err(WireError::MissingParameter {
                message: self.container,
                param: name,
            }),
        }
    }

    /// The next TLV, which must have type `ty` (a missing or other one is a [`WireError`]).
    pub(crate) fn required(&mut self, ty: u16) -> Result<Tlv<'a>, WireError> {
        self.required_where(|t| t == ty, param_name(ty))
    }

    /// Fails on any TLV left over.
    pub(crate) fn finish(mut self) -> Result<(), WireError> {
        match self.advance() {
            Some(t) => Err(t.unexpected(self.container)),
            None => Ok(()),
        }
    }
}
