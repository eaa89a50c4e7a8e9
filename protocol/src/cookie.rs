//! The `<FG-TD1>` session cookie a PE hands to the PU (inside an ASAP Cookie) so that another
//! PE can resume the computation after a failover.
//!
//! Layout (76 bytes, big-endian, rsplib's `FGPCookie`):
//!
//! | Offset | Size | Field                                                          |
//! |--------|------|----------------------------------------------------------------|
//! | 0      | 8    | ID `"<FG-TD1>"`                                                 |
//! | 8      | 60   | Parameter layout; its header Length is 4 (rsplib writes `sizeof(header)`) |
//! | 68     | 4    | CurrentX                                                       |
//! | 72     | 4    | CurrentY                                                       |
//!
//! We reproduce the Length = 4 quirk when encoding and accept 4 or 60 when decoding. The
//! position is where computation resumes: `(x, y)` inside the picture, or exactly
//! `(0, height)` for a finished picture.

use thiserror::Error;

use crate::message::{
    DecodeError, HEADER_LEN, PARAMETER_LEN, Parameter, ParameterError, TYPE_PARAMETER, read_header,
};

/// The cookie's identification string.
pub const COOKIE_ID: &[u8; 8] = b"<FG-TD1>";
/// Encoded size of a cookie.
pub const COOKIE_LEN: usize = COOKIE_ID.len() + PARAMETER_LEN + 8;
/// Length rsplib writes into the embedded Parameter header (the size of the header alone).
pub const RSPLIB_EMBEDDED_LENGTH: u16 = HEADER_LEN as u16;

/// A PE's restart point: the request and the next pixel to compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cookie {
    pub parameter: Parameter,
    pub current_x: u32,
    pub current_y: u32,
}

/// Why bytes are not a usable `<FG-TD1>` cookie.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CookieError {
    /// Not exactly 76 bytes.
    #[error("cookie has {0} bytes, expected {COOKIE_LEN}")]
    BadSize(usize),
    /// The ID is not `<FG-TD1>`.
    #[error("cookie ID is not <FG-TD1>")]
    BadId,
    /// The embedded message is not a Parameter.
    #[error("cookie embeds message type {0:#04x}, expected a Parameter")]
    NotAParameter(u8),
    /// The embedded Parameter's Length is neither 4 (rsplib) nor 60.
    #[error("cookie's embedded Parameter Length is {0}, expected 4 or 60")]
    BadEmbeddedLength(u16),
    /// The embedded Parameter is one a PE must not compute.
    #[error("cookie's Parameter is invalid: {0}")]
    InvalidParameter(#[from] ParameterError),
    /// The position is neither inside the picture nor exactly its end.
    #[error("cookie position ({x}, {y}) is outside the {width}x{height} picture")]
    PositionOutsideView {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    /// The embedded Parameter could not be read.
    #[error("cookie's Parameter is malformed: {0}")]
    Malformed(#[from] DecodeError),
}

impl Cookie {
    /// A cookie for the start of the computation.
    pub fn start(parameter: Parameter) -> Cookie {
        Cookie {
            parameter,
            current_x: 0,
            current_y: 0,
        }
    }

    /// Encodes the cookie as rsplib does (embedded Length = 4, Flags = 0).
    pub fn encode(&self) -> [u8; COOKIE_LEN] {
        let parameter = self.parameter.encode_with_length(RSPLIB_EMBEDDED_LENGTH);
        let mut out = [0u8; COOKIE_LEN];
        let bytes = COOKIE_ID
            .iter()
            .copied()
            .chain(parameter)
            .chain(self.current_x.to_be_bytes())
            .chain(self.current_y.to_be_bytes());
        for (slot, byte) in out.iter_mut().zip(bytes) {
            *slot = byte;
        }
        out
    }

    /// Decodes and checks a cookie: size 76, ID, embedded type Parameter with Length 4 or 60,
    /// a computable Parameter ([`Parameter::validate_computable`]: unknown algorithms are the
    /// test pattern) and a position inside the picture or exactly at its end. CurrentX at or
    /// beyond the width (before the last row) is normalised to the start of the next row.
    pub fn decode(bytes: &[u8]) -> Result<Cookie, CookieError> {
        if bytes.len() != COOKIE_LEN {
            return Err(CookieError::BadSize(bytes.len()));
        }
        let (id, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or(CookieError::BadSize(bytes.len()))?;
        if id != COOKIE_ID {
            return Err(CookieError::BadId);
        }
        let (embedded, position) = rest
            .split_first_chunk::<PARAMETER_LEN>()
            .ok_or(CookieError::BadSize(bytes.len()))?;
        let header = read_header(embedded)?;
        if header.kind != TYPE_PARAMETER {
            return Err(CookieError::NotAParameter(header.kind));
        }
        if header.length != RSPLIB_EMBEDDED_LENGTH && usize::from(header.length) != PARAMETER_LEN {
            return Err(CookieError::BadEmbeddedLength(header.length));
        }
        let parameter = Parameter::decode_body(embedded)?;
        let (x_bytes, y_bytes) = position
            .split_first_chunk::<4>()
            .ok_or(CookieError::BadSize(bytes.len()))?;
        let y_bytes: [u8; 4] = y_bytes
            .try_into()
            .map_err(|_| CookieError::BadSize(bytes.len()))?;
        let mut cookie = Cookie {
            parameter,
            current_x: u32::from_be_bytes(*x_bytes),
            current_y: u32::from_be_bytes(y_bytes),
        };
        parameter.validate_computable()?;
        // rsplib can send CurrentX = Width (its row loop had just finished); it resumes such a
        // cookie at the start of the next row, and so do we.
        if cookie.current_x >= parameter.width && cookie.current_y < parameter.height {
            cookie.current_x = 0;
            cookie.current_y += 1;
        }
        if !cookie.position_is_valid() {
            return Err(CookieError::PositionOutsideView {
                x: cookie.current_x,
                y: cookie.current_y,
                width: parameter.width,
                height: parameter.height,
            });
        }
        Ok(cookie)
    }

    /// Whether the position is inside the picture or exactly its end `(0, height)`.
    pub fn position_is_valid(&self) -> bool {
        let inside =
            self.current_x < self.parameter.width && self.current_y < self.parameter.height;
        inside || self.is_complete()
    }

    /// Whether the cookie marks a finished picture: position `(0, height)`.
    pub fn is_complete(&self) -> bool {
        self.current_x == 0 && self.current_y == self.parameter.height
    }

    /// Pixels before the position (already computed), in row-major order.
    pub fn pixels_done(&self) -> u64 {
        u64::from(self.current_y) * u64::from(self.parameter.width) + u64::from(self.current_x)
    }

    /// Whether both cookies are equal bit for bit (NaN-safe).
    pub fn bitwise_eq(&self, other: &Cookie) -> bool {
        self.encode() == other.encode()
    }
}
