//! Encode and decode errors, and how a decode error is answered on the wire.

use super::param::{CauseCode, ErrorCause, OperationError, param_name};

/// Largest cause-specific information we put into an error cause: the cause must fit into an
/// Operation Error parameter inside an ASAP/ENRP message, all of whose lengths are 16 bits
/// (message header 4 + ENRP server ids 8 + parameter header 4 + cause header 4).
pub const MAX_CAUSE_INFO_LEN: usize = u16::MAX as usize - 20;

/// Why a value could not be encoded. Encoding never panics; an encoder that fails leaves the
/// output vector as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would be longer than the 16-bit length field allows.
    #[error("message of {length} bytes exceeds the 65535-byte limit of the length field")]
    MessageTooLong { length: usize },
    /// A parameter would be longer than the 16-bit length field allows.
    #[error("{} parameter of {length} bytes exceeds the 65535-byte limit", param_name(*param_type))]
    ParameterTooLong { param_type: u16, length: usize },
    /// The value breaks a rule of RFC 5352-5354 that the decoder enforces (so it could not be
    /// decoded again), e.g. an SCTP transport without addresses.
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
}

/// What the RFC 5354 §4 top bits of an unknown message type ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownMessageAction {
    /// `00`: discard silently.
    Discard,
    /// `01`: discard and report with an "Unrecognized Message" error.
    DiscardAndReport,
    /// `10`/`11`: reserved by the RFC; we discard silently.
    Reserved,
}

impl UnknownMessageAction {
    /// Action for the given message type byte.
    pub fn for_type(msg_type: u8) -> Self {
        match msg_type >> 6 {
            0b00 => UnknownMessageAction::Discard,
            0b01 => UnknownMessageAction::DiscardAndReport,
            _ => UnknownMessageAction::Reserved,
        }
    }
}

/// What the RFC 5354 §3 top bits of an unknown parameter type ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownParameterAction {
    /// `00`: stop processing, discard the message.
    Stop,
    /// `01`: stop processing, discard the message, report "Unrecognized Parameter".
    StopAndReport,
    /// `10`: skip the parameter and continue.
    Skip,
    /// `11`: skip the parameter, continue, and report "Unrecognized Parameter".
    SkipAndReport,
}

impl UnknownParameterAction {
    /// Action for the given parameter type.
    pub fn for_type(param_type: u16) -> Self {
        match param_type >> 14 {
            0b00 => UnknownParameterAction::Stop,
            0b01 => UnknownParameterAction::StopAndReport,
            0b10 => UnknownParameterAction::Skip,
            _ => UnknownParameterAction::SkipAndReport,
        }
    }
}

/// A message that could not be decoded, with what the caller needs to answer it.
///
/// [`WireError::cause_code`] and [`WireError::cause_info`] give the Operation Error cause to
/// send back (RFC 5354 §3.12); [`WireError::should_report`] says whether the RFC wants a report
/// at all; [`WireError::operation_error`] builds the parameter in one call.
///
/// Cause mapping: malformed or out-of-place parameters give *Invalid Values* (0x3) with the
/// offending TLV; unknown parameters give *Unrecognized Parameter* (0x1) with the whole TLV;
/// unknown message types give *Unrecognized Message* (0x2) with the message; framing problems
/// (bad length field, truncated header, missing mandatory parameter, stray bytes), for which the
/// RFC has no specific cause and no TLV to quote, give *Unspecified Error* (0x0).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the message header or its length field require.
    #[error("message truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The message length field is smaller than the fixed part of the message.
    #[error("message length field {length} is shorter than the {minimum}-byte minimum")]
    BadMessageLength { length: u16, minimum: usize },
    /// More bytes follow the message than its final padding allows.
    #[error("{extra} unexpected bytes after the end of the message")]
    TrailingBytes { extra: usize },
    /// The message type is unknown (RFC 5354 §4).
    #[error("unrecognized message type {msg_type:#04x} ({action:?})")]
    UnrecognizedMessage {
        msg_type: u8,
        action: UnknownMessageAction,
        /// The message as received (header and value, without padding), at most
        /// [`MAX_CAUSE_INFO_LEN`] bytes.
        message: Vec<u8>,
    },
    /// An unknown parameter whose type bits say "stop processing" (RFC 5354 §3).
    #[error("unrecognized parameter type {param_type:#06x} stops processing ({action:?})")]
    UnrecognizedParameter {
        param_type: u16,
        action: UnknownParameterAction,
        /// The whole TLV (header and value, without padding).
        tlv: Vec<u8>,
    },
    /// A parameter whose length or value is invalid.
    #[error("invalid {} parameter: {reason}", param_name(*param_type))]
    InvalidParameter {
        param_type: u16,
        reason: &'static str,
        /// The offending TLV as far as it lies inside its container.
        tlv: Vec<u8>,
    },
    /// A pool handle longer than [`super::param::MAX_POOL_HANDLE_LEN`].
    #[error("pool handle of {length} bytes exceeds the {max}-byte limit")]
    PoolHandleTooLong {
        length: usize,
        max: usize,
        tlv: Vec<u8>,
    },
    /// A Pool Member Selection Policy we cannot decode (unknown, or rsplib's unencodable ones).
    #[error("unsupported pool member selection policy type {policy_type:#010x}")]
    UnsupportedPolicy { policy_type: u32, tlv: Vec<u8> },
    /// A known parameter where the message does not allow it (wrong order, duplicate, extra).
    #[error("unexpected {} parameter in {message}", param_name(*param_type))]
    UnexpectedParameter {
        message: &'static str,
        param_type: u16,
        tlv: Vec<u8>,
    },
    /// A mandatory parameter is missing.
    #[error("{message} lacks its mandatory {param} parameter")]
    MissingParameter {
        message: &'static str,
        param: &'static str,
    },
    /// A fixed (non-TLV) field holds a value the RFC does not define.
    #[error("invalid {field} value {value:#x}")]
    InvalidField { field: &'static str, value: u32 },
}

impl WireError {
    /// The error cause code to report (RFC 5354 §3.12).
    pub fn cause_code(&self) -> CauseCode {
        match self {
            WireError::Truncated { .. }
            | WireError::BadMessageLength { .. }
            | WireError::TrailingBytes { .. }
            | WireError::MissingParameter { .. }
            | WireError::InvalidField { .. } => CauseCode::UNSPECIFIED,
            WireError::UnrecognizedMessage { .. } => CauseCode::UNRECOGNIZED_MESSAGE,
            WireError::UnrecognizedParameter { .. } => CauseCode::UNRECOGNIZED_PARAMETER,
            WireError::InvalidParameter { .. }
            | WireError::PoolHandleTooLong { .. }
            | WireError::UnsupportedPolicy { .. }
            | WireError::UnexpectedParameter { .. } => CauseCode::INVALID_VALUES,
        }
    }

    /// The cause-specific information: the offending TLV or message, or nothing.
    pub fn cause_info(&self) -> &[u8] {
        match self {
            WireError::UnrecognizedMessage { message, .. } => message,
            WireError::UnrecognizedParameter { tlv, .. }
            | WireError::InvalidParameter { tlv, .. }
            | WireError::PoolHandleTooLong { tlv, .. }
            | WireError::UnsupportedPolicy { tlv, .. }
            | WireError::UnexpectedParameter { tlv, .. } => tlv,
            _ => &[],
        }
    }

    /// Whether the RFC wants the sender told. `false` for the silent-discard cases: an unknown
    /// message type with top bits `00`/`10`/`11` and an unknown parameter with top bits `00`.
    pub fn should_report(&self) -> bool {
        match self {
            WireError::UnrecognizedMessage { action, .. } => {
                *action == UnknownMessageAction::DiscardAndReport
            }
            WireError::UnrecognizedParameter { action, .. } => {
                *action == UnknownParameterAction::StopAndReport
            }
            _ => true,
        }
    }

    /// The error cause describing this error (info capped at [`MAX_CAUSE_INFO_LEN`]).
    pub fn error_cause(&self) -> ErrorCause {
        let info = self.cause_info();
        ErrorCause {
            code: self.cause_code(),
            info: info.get(..MAX_CAUSE_INFO_LEN).unwrap_or(info).to_vec(),
        }
    }

    /// The Operation Error parameter to send back, or `None` when the RFC says to stay silent.
    pub fn operation_error(&self) -> Option<OperationError> {
        self.should_report().then(|| OperationError {
            causes: vec![self.error_cause()],
        })
    }
}

/// A decoded message plus the parameters that were skipped but must be reported (unknown
/// parameters whose type starts with bits `11`, RFC 5354 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<M> {
    pub message: M,
    /// Each skipped-and-reported TLV, whole (header and value, without padding).
    pub unrecognized: Vec<Vec<u8>>,
}

impl<M> Decoded<M> {
    /// The Operation Error to send back for the skipped-and-reported parameters: one
    /// "Unrecognized Parameter" cause per TLV (RFC 5354 §3.12.2), or `None` if there were none.
    pub fn unrecognized_report(&self) -> Option<OperationError> {
        if self.unrecognized.is_empty() {
            return None;
        }
        Some(OperationError {
            causes: self
                .unrecognized
                .iter()
                .map(|tlv| ErrorCause {
                    code: CauseCode::UNRECOGNIZED_PARAMETER,
                    info: tlv.get(..MAX_CAUSE_INFO_LEN).unwrap_or(tlv).to_vec(),
                })
                .collect(),
        })
    }
}

/// A checked message frame.
pub(crate) struct Frame<'a> {
    pub(crate) msg_type: u8,
    pub(crate) flags: u8,
    pub(crate) length: u16,
    /// Header and value, without padding.
    pub(crate) message: &'a [u8],
    /// The value after the 4-byte header.
    pub(crate) value: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Checks a message frame.
    ///
    /// Accepts both length styles: the RFC's (length excludes the final padding, which follows)
    /// and rsplib's (length includes it). The frame may also lack its final padding: padding
    /// carries no information and the transport frame (our PPID framing, or an SCTP message)
    /// already delimits the message, so a peer that omits it loses nothing. Anything beyond
    /// `roundup4(length)` is an error.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (msg_type, flags, length) = match bytes {
            [t, f, l0, l1, ..] => (*t, *f, u16::from_be_bytes([*l0, *l1])),
            _ => {
                return Err(WireError::Truncated {
                    needed: 4,
                    available: bytes.len(),
                });
            }
        };
        let len = usize::from(length);
        if len < 4 {
            return Err(WireError::BadMessageLength { length, minimum: 4 });
        }
        let Some(message) = bytes.get(..len) else {
            return Err(WireError::Truncated {
                needed: len,
                available: bytes.len(),
            });
        };
        let framed = super::buf::roundup4(len);
        if bytes.len() > framed {
            return Err(WireError::TrailingBytes {
                extra: bytes.len() - framed,
            });
        }
        Ok(Frame {
            msg_type,
            flags,
            length,
            message,
            value: message.get(4..).unwrap_or(&[]),
        })
    }

    /// The error for an unknown message type.
    pub(crate) fn unrecognized(&self) -> WireError {
        let message = self.message;
        WireError::UnrecognizedMessage {
            msg_type: self.msg_type,
            action: UnknownMessageAction::for_type(self.msg_type),
            message: message
                .get(..MAX_CAUSE_INFO_LEN)
                .unwrap_or(message)
                .to_vec(),
        }
    }
}

/// How many bytes the message starting at `bytes` occupies on the wire (`roundup4(length)`),
/// once its 4-byte header is available; for framing a byte stream.
pub fn message_frame_len(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [_, _, l0, l1, ..] => Some(super::buf::roundup4(usize::from(u16::from_be_bytes([
            *l0, *l1,
        ])))),
        _ => None,
    }
}
