//! CalcApp messages and the CalcApp cookie, byte for byte as rsplib's `calcapppackets.h`.
//!
//! Every message is 24 bytes, big-endian:
//!
//! | Offset | Size | Field     |
//! |--------|------|-----------|
//! | 0      | 1    | Type      |
//! | 1      | 1    | Flags (0) |
//! | 2      | 2    | Length (24) |
//! | 4      | 4    | JobID     |
//! | 8      | 8    | JobSize   |
//! | 16     | 8    | Completed |
//!
//! rsplib ignores Flags and Length on receipt and only needs 24 bytes; so do we, except that
//! a Length other than 24 is refused when decoding strictly ([`Message::decode`] is strict, as
//! a tolerant reader of a fixed layout would hide a peer's framing bug).
//!
//! The cookie (20 bytes, inside an ASAP Cookie / Cookie Echo): JobID u32, JobSize u64,
//! Completed u64, big-endian, no magic string.

use thiserror::Error;

/// Size of every CalcApp message.
pub const MESSAGE_LEN: usize = 24;
/// Size of the CalcApp cookie.
pub const COOKIE_LEN: usize = 20;
/// SCTP payload protocol identifier of CalcApp.
pub const PPID_CALCAPP: u32 = 34;
/// rsplib's default pool handle of the CalcApp service.
pub const DEFAULT_POOL_HANDLE: &str = "CalcAppPool";

/// CalcApp message types (rsplib numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Request = 1,
    Accept = 2,
    Reject = 3,
    /// Defined by rsplib; neither side sends or handles it.
    Abort = 4,
    Complete = 5,
    KeepAlive = 6,
    KeepAliveAck = 7,
}

impl MessageType {
    fn from_wire(value: u8) -> Option<MessageType> {
        Some(match value {
            1 => MessageType::Request,
            2 => MessageType::Accept,
            3 => MessageType::Reject,
            4 => MessageType::Abort,
            5 => MessageType::Complete,
            6 => MessageType::KeepAlive,
            7 => MessageType::KeepAliveAck,
            _ => return None,
        })
    }

    /// All types, in wire order.
    pub const ALL: [MessageType; 7] = [
        MessageType::Request,
        MessageType::Accept,
        MessageType::Reject,
        MessageType::Abort,
        MessageType::Complete,
        MessageType::KeepAlive,
        MessageType::KeepAliveAck,
    ];
}

/// One CalcApp message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageType,
    pub job_id: u32,
    pub job_size: u64,
    pub completed: u64,
}

/// Why bytes are not a CalcApp message or cookie.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CalcAppError {
    #[error("CalcApp message has {0} bytes, expected {MESSAGE_LEN}")]
    BadSize(usize),
    #[error("CalcApp message Length field is {0}, expected {MESSAGE_LEN}")]
    BadLength(u16),
    #[error("unknown CalcApp message type {0}")]
    UnknownType(u8),
    #[error("CalcApp cookie has {0} bytes, expected at least {COOKIE_LEN}")]
    BadCookieSize(usize),
    #[error("CalcApp cookie says {completed} of {size} calculations are done")]
    CookieBeyondJob { completed: u64, size: u64 },
}

impl Message {
    /// A message with only the job identifier set (Accept, Reject, KeepAlive, KeepAliveAck).
    pub fn for_job(kind: MessageType, job_id: u32) -> Message {
        Message {
            kind,
            job_id,
            job_size: 0,
            completed: 0,
        }
    }

    /// A Request for `job_size` calculations.
    pub fn request(job_id: u32, job_size: u64) -> Message {
        Message {
            kind: MessageType::Request,
            job_id,
            job_size,
            completed: 0,
        }
    }

    /// A Complete: all `job_size` calculations are done.
    pub fn complete(job_id: u32, job_size: u64) -> Message {
        Message {
            kind: MessageType::Complete,
            job_id,
            job_size,
            completed: job_size,
        }
    }

    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut bytes = [0u8; MESSAGE_LEN];
        bytes[0] = self.kind as u8;
        bytes[2..4].copy_from_slice(&(MESSAGE_LEN as u16).to_be_bytes());
        bytes[4..8].copy_from_slice(&self.job_id.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.job_size.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.completed.to_be_bytes());
        bytes
    }

    /// Decodes exactly one message; Flags are ignored as rsplib does.
    pub fn decode(bytes: &[u8]) -> Result<Message, CalcAppError> {
        if bytes.len() != MESSAGE_LEN {
            return Err(CalcAppError::BadSize(bytes.len()));
        }
        let length = u16::from_be_bytes([bytes[2], bytes[3]]);
        if usize::from(length) != MESSAGE_LEN {
            return Err(CalcAppError::BadLength(length));
        }
        let kind = MessageType::from_wire(bytes[0]).ok_or(CalcAppError::UnknownType(bytes[0]))?;
        Ok(Message {
            kind,
            job_id: u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
            job_size: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
            completed: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
        })
    }
}

/// A job's restart point, sent by the PE in ASAP Cookies and echoed to the next PE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobCookie {
    pub job_id: u32,
    pub job_size: u64,
    pub completed: u64,
}

impl JobCookie {
    pub fn encode(&self) -> [u8; COOKIE_LEN] {
        let mut bytes = [0u8; COOKIE_LEN];
        bytes[0..4].copy_from_slice(&self.job_id.to_be_bytes());
        bytes[4..12].copy_from_slice(&self.job_size.to_be_bytes());
        bytes[12..20].copy_from_slice(&self.completed.to_be_bytes());
        bytes
    }

    /// Decodes a cookie: at least 20 bytes as rsplib (extra bytes are ignored), and never
    /// more calculations done than the job has.
    pub fn decode(bytes: &[u8]) -> Result<JobCookie, CalcAppError> {
        if bytes.len() < COOKIE_LEN {
            return Err(CalcAppError::BadCookieSize(bytes.len()));
        }
        let cookie = JobCookie {
            job_id: u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")),
            job_size: u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
            completed: u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes")),
        };
        if cookie.completed > cookie.job_size {
            return Err(CalcAppError::CookieBeyondJob {
                completed: cookie.completed,
                size: cookie.job_size,
            });
        }
        Ok(cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_encodes_as_rsplib() {
        let bytes = Message::request(0x0102_0304, 10_000_000).encode();
        assert_eq!(
            bytes,
            [
                1, 0, 0, 24, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0x98, 0x96, 0x80, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn cookie_encodes_as_rsplib() {
        let cookie = JobCookie {
            job_id: 7,
            job_size: 0x1122_3344_5566_7788,
            completed: 5,
        };
        let bytes = cookie.encode();
        assert_eq!(&bytes[..4], &[0, 0, 0, 7]);
        assert_eq!(&bytes[4..12], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&bytes[12..], &5u64.to_be_bytes());
        assert_eq!(JobCookie::decode(&bytes), Ok(cookie));
    }

    #[test]
    fn malformed_input_is_refused() {
        assert_eq!(Message::decode(&[1; 23]), Err(CalcAppError::BadSize(23)));
        let mut bytes = Message::request(1, 2).encode();
        bytes[0] = 9;
        assert_eq!(Message::decode(&bytes), Err(CalcAppError::UnknownType(9)));
        bytes[0] = 1;
        bytes[3] = 25;
        assert_eq!(Message::decode(&bytes), Err(CalcAppError::BadLength(25)));
        assert_eq!(
            JobCookie::decode(&[0; 19]),
            Err(CalcAppError::BadCookieSize(19))
        );
        let beyond = JobCookie {
            job_id: 1,
            job_size: 5,
            completed: 6,
        };
        assert!(JobCookie::decode(&beyond.encode()).is_err());
    }

    proptest! {
        #[test]
        fn messages_round_trip(kind in 0usize..7, job_id: u32, job_size: u64, completed: u64) {
            let message = Message { kind: MessageType::ALL[kind], job_id, job_size, completed };
            prop_assert_eq!(Message::decode(&message.encode()), Ok(message));
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(&bytes);
            let _ = JobCookie::decode(&bytes);
        }
    }
}
