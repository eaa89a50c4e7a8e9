//! Wire codecs for ASAP (RFC 5352), ENRP (RFC 5353) and their parameters (RFC 5354).
//!
//! - [`asap::AsapMessage`] and [`enrp::EnrpMessage`]: typed messages with `encode`/`to_bytes`
//!   and `decode`. Decoding returns [`Decoded`] (the message plus skipped-and-reported
//!   parameters) or a [`WireError`] that knows which Operation Error cause answers it.
//! - [`param`]: the parameter value types and [`param::Parameter`] for single TLVs.
//! - [`policy::Policy`]: pool member selection policies (RFC 5356 and rsplib's).
//! - [`checksum`]: the ENRP handlespace (PE) checksum of RFC 5353 §3.6.2.
//! - [`examples`]: realistic instances of every message, for tests and demos.
//!
//! Rules shared by every codec:
//! - Lengths exclude the final padding when we send (RFC 5354 §2-4); both that and rsplib's
//!   style (padding included) are accepted on receipt. A message occupies `roundup4(length)`
//!   bytes; see [`message_frame_len`].
//! - Registration life is in milliseconds (rsplib, Wireshark), not seconds (RFC).
//! - Decoding never panics and allocates at most in proportion to its input (every length is
//!   16 bits, counts are bounded by the bytes present, addresses by [`MAX_TRANSPORT_ADDRESSES`]).
//! - Encoding never panics: what cannot be encoded (a length beyond 16 bits, an SCTP transport
//!   without addresses, an Operation Error without causes) is an [`EncodeError`], and the output
//!   vector is left as it was.

pub mod asap;
pub(crate) mod buf;
pub mod checksum;
pub mod enrp;
pub mod error;
pub mod examples;
pub mod param;
pub mod policy;

pub use asap::AsapMessage;
pub use buf::roundup4;
pub use checksum::HandlespaceChecksum;
pub use enrp::EnrpMessage;
pub use error::{
    Decoded, EncodeError, MAX_CAUSE_INFO_LEN, UnknownMessageAction, UnknownParameterAction,
    WireError, message_frame_len,
};
pub use param::{
    CauseCode, ErrorCause, MAX_POOL_HANDLE_LEN, MAX_TRANSPORT_ADDRESSES, OperationError, Parameter,
    PeId, PoolElement, PoolHandle, ServerInformation, TransportAddress, TransportUse,
};
pub use policy::Policy;

/// SCTP payload protocol identifier of ASAP (RFC 5352 §8.3); also our PPID framing value.
pub const PPID_ASAP: u32 = 11;
/// SCTP payload protocol identifier of ENRP (RFC 5353 §5.4).
pub const PPID_ENRP: u32 = 12;
/// Well-known ASAP port (RFC 5352 §8.2).
pub const ASAP_PORT: u16 = 3863;
/// Well-known ENRP port (RFC 5353 §5.3).
pub const ENRP_PORT: u16 = 9901;
