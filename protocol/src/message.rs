//! FGP messages, byte-compatible with rsplib's `fractalgeneratorpackets.h` (all big-endian).
//!
//! Every message starts with the common header `Type u8 | Flags u8 | Length u16`, where Length
//! counts the whole message including the header. Doubles travel as IEEE-754 bit patterns in
//! network byte order (rsplib's `doubleToNetwork` on IEEE platforms). Flags are sent as 0 and
//! ignored on receipt, as rsplib does.
//!
//! | Message   | Type | Layout after the header                                   | Length        |
//! |-----------|------|-----------------------------------------------------------|---------------|
//! | Parameter | 0x01 | Width, Height, MaxIterations, AlgorithmID (u32); C1Real, C1Imag, C2Real, C2Imag, N (f64) | 60 |
//! | Data      | 0x02 | StartX, StartY, Points (u32); Points x u32 (at most 324)  | 16 + 4*Points |
//!
//! Decoding is strict: the Length field must equal both the number of bytes given (one transport
//! frame carries exactly one message) and the size the type's layout implies.

use thiserror::Error;

use crate::kernel;

/// SCTP payload protocol identifier of FGP.
pub const PPID_FGP: u32 = 32;
/// Most points one Data message carries (rsplib's `FGD_MAX_POINTS`).
pub const MAX_POINTS_PER_DATA: usize = 324;

/// Message type of the Parameter message.
pub const TYPE_PARAMETER: u8 = 0x01;
/// Message type of the Data message.
pub const TYPE_DATA: u8 = 0x02;
/// Size of the common header (Type, Flags, Length).
pub const HEADER_LEN: usize = 4;
/// Encoded size of a Parameter message.
pub const PARAMETER_LEN: usize = 60;
/// Encoded size of a Data message without points.
pub const DATA_HEADER_LEN: usize = 16;
/// Largest encoded Data message (324 points: 1312 bytes).
pub const MAX_DATA_LEN: usize = DATA_HEADER_LEN + 4 * MAX_POINTS_PER_DATA;

/// Largest width or height a PE accepts (rsplib's limit).
pub const MAX_DIMENSION: u32 = 65_536;
/// Largest MaxIterations a PE accepts (rsplib's limit).
pub const MAX_ITERATIONS_LIMIT: u32 = 1_000_000;

/// Start coordinate of the finalizer Data message.
const FINALIZER_START: u32 = u32::MAX;

/// Fractal algorithm identifiers of the Parameter message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlgorithmId(pub u32);

impl AlgorithmId {
    /// z <- z^2 - c (rsplib's sign), escape at |z|^2 >= 2.
    pub const MANDELBROT: AlgorithmId = AlgorithmId(1);
    /// z <- z^N - c with real N.
    pub const MANDELBROT_N: AlgorithmId = AlgorithmId(2);

    /// Whether this is an algorithm a PE implements (Mandelbrot or MandelbrotN).
    pub fn is_known(self) -> bool {
        self == Self::MANDELBROT || self == Self::MANDELBROT_N
    }

    /// rsplib's `.fsf` name of the algorithm, if known.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::MANDELBROT => Some("Mandelbrot"),
            Self::MANDELBROT_N => Some("MandelbrotN"),
            _ => None,
        }
    }
}

/// FGP Parameter (type 0x01, 60 bytes): what to compute.
///
/// C1 is the top-left corner (pixel (0, 0)), C2 the bottom-right corner just outside the
/// picture; see [`crate::tiling::pixel_c`] for the pixel to complex mapping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parameter {
    pub width: u32,
    pub height: u32,
    pub max_iterations: u32,
    pub algorithm: AlgorithmId,
    pub c1_real: f64,
    pub c1_imag: f64,
    pub c2_real: f64,
    pub c2_imag: f64,
    pub n: f64,
}

/// FGP Data (type 0x02): iteration counts of consecutive pixels in row-major order, starting at
/// (`start_x`, `start_y`). The finalizer has no points and start = (0xFFFFFFFF, 0xFFFFFFFF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub start_x: u32,
    pub start_y: u32,
    pub points: Vec<u32>,
}

/// Any FGP message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Parameter(Parameter),
    Data(Data),
}

/// Why bytes are not a well-formed FGP message.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than the message needs.
    #[error("FGP message truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    /// The Type field names no FGP message.
    #[error("unknown FGP message type {0:#04x}")]
    UnknownType(u8),
    /// A specific message type was expected.
    #[error("expected FGP message type {expected:#04x}, found {found:#04x}")]
    UnexpectedType { expected: u8, found: u8 },
    /// The Length field disagrees with the number of bytes received.
    #[error("FGP Length field says {declared} bytes, message has {actual}")]
    LengthMismatch { declared: u16, actual: usize },
    /// A Parameter whose Length is not 60.
    #[error("FGP Parameter Length must be {PARAMETER_LEN}, is {0}")]
    BadParameterLength(u16),
    /// A Data message whose Length is not 16 + 4 * Points.
    #[error("FGP Data Length {length} does not fit {points} points")]
    BadDataLength { length: u16, points: u32 },
    /// A Data message claiming more than 324 points.
    #[error("FGP Data carries {0} points, at most {MAX_POINTS_PER_DATA} allowed")]
    TooManyPoints(u32),
}

/// Why a message cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A Data message with more than 324 points.
    #[error("FGP Data with {0} points exceeds the limit of {MAX_POINTS_PER_DATA}")]
    TooManyPoints(usize),
}

/// Why a Parameter would make a PE misbehave.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParameterError {
    /// Width or height is zero: nothing to compute.
    #[error("empty picture {width}x{height}")]
    EmptyPicture { width: u32, height: u32 },
    /// Width or height above rsplib's limit of 65536.
    #[error("picture {width}x{height} exceeds {MAX_DIMENSION} pixels per side")]
    PictureTooLarge { width: u32, height: u32 },
    /// MaxIterations above rsplib's limit of 1,000,000.
    #[error("MaxIterations {0} exceeds {MAX_ITERATIONS_LIMIT}")]
    TooManyIterations(u32),
    /// An algorithm no PE implements.
    #[error("unknown algorithm {0}")]
    UnknownAlgorithm(u32),
    /// A corner coordinate is NaN or infinite.
    #[error("corner coordinate is not finite")]
    NonFiniteCoordinate,
    /// The per-pixel step overflows (corners too far apart).
    #[error("pixel step is not finite")]
    NonFiniteStep,
    /// MandelbrotN with a NaN or infinite exponent.
    #[error("exponent N is not finite")]
    NonFiniteExponent,
}

/// A bounds-checked big-endian reader; every read returns `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn f64(&mut self) -> Option<f64> {
        self.array().map(f64::from_be_bytes)
    }
}

/// The common header as read from the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) kind: u8,
    pub(crate) length: u16,
}

pub(crate) fn read_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let mut reader = Reader { bytes };
    let truncated = DecodeError::Truncated {
        needed: HEADER_LEN,
        available: bytes.len(),
    };
    let kind = reader.u8().ok_or(truncated.clone())?;
    let _flags = reader.u8().ok_or(truncated.clone())?;
    let length = reader.u16().ok_or(truncated)?;
    Ok(Header { kind, length })
}

/// Checks that the Length field covers exactly the given bytes.
fn check_length(header: Header, actual: usize) -> Result<(), DecodeError> {
    if usize::from(header.length) != actual {
        return Err(DecodeError::LengthMismatch {
            declared: header.length,
            actual,
        });
    }
    Ok(())
}

impl Parameter {
    /// Encodes the message (Length = 60, Flags = 0).
    pub fn encode(&self) -> [u8; PARAMETER_LEN] {
        self.encode_with_length(PARAMETER_LEN as u16)
    }

    /// Encodes with a given header Length; the cookie needs rsplib's Length = 4 quirk.
    pub(crate) fn encode_with_length(&self, length: u16) -> [u8; PARAMETER_LEN] {
        let mut out = [0u8; PARAMETER_LEN];
        let words = [
            self.width,
            self.height,
            self.max_iterations,
            self.algorithm.0,
        ];
        let doubles = [
            self.c1_real,
            self.c1_imag,
            self.c2_real,
            self.c2_imag,
            self.n,
        ];
        // Type, Flags = 0, Length, then the fields at their fixed offsets.
        let fields = [TYPE_PARAMETER, 0]
            .into_iter()
            .chain(length.to_be_bytes())
            .chain(words.into_iter().flat_map(u32::to_be_bytes))
            .chain(doubles.into_iter().flat_map(f64::to_be_bytes));
        for (slot, byte) in out.iter_mut().zip(fields) {
            *slot = byte;
        }
        out
    }

    /// Appends the encoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }

    /// Decodes a Parameter message occupying exactly `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Parameter, DecodeError> {
        let header = read_header(bytes)?;
        if header.kind != TYPE_PARAMETER {
            return Err(DecodeError::UnexpectedType {
                expected: TYPE_PARAMETER,
                found: header.kind,
            });
        }
        check_length(header, bytes.len())?;
        if usize::from(header.length) != PARAMETER_LEN {
            return Err(DecodeError::BadParameterLength(header.length));
        }
        Self::decode_body(bytes)
    }

    /// Reads the fields of a 60-byte Parameter layout without looking at Type or Length.
    pub(crate) fn decode_body(bytes: &[u8]) -> Result<Parameter, DecodeError> {
        let truncated = DecodeError::Truncated {
            needed: PARAMETER_LEN,
            available: bytes.len(),
        };
        let mut reader = Reader {
            bytes: bytes.get(HEADER_LEN..).ok_or(truncated.clone())?,
        };
        let mut read = || -> Option<Parameter> {
            Some(Parameter {
                width: reader.u32()?,
                height: reader.u32()?,
                max_iterations: reader.u32()?,
                algorithm: AlgorithmId(reader.u32()?),
                c1_real: reader.f64()?,
                c1_imag: reader.f64()?,
                c2_real: reader.f64()?,
                c2_imag: reader.f64()?,
                n: reader.f64()?,
            })
        };
        read().ok_or(truncated)
    }

    /// Checks the limits under which a PE computes this request safely: rsplib's (width and
    /// height at most 65536, MaxIterations at most 1,000,000) plus a non-empty picture, a known
    /// algorithm, finite corners, a finite pixel step and (for MandelbrotN) a finite exponent.
    pub fn validate(&self) -> Result<(), ParameterError> {
        if !self.algorithm.is_known() {
            return Err(ParameterError::UnknownAlgorithm(self.algorithm.0));
        }
        self.validate_computable()
    }

    /// The checks a PE applies before computing: those of [`Parameter::validate`] except that
    /// an unknown algorithm is accepted (a PE answers it with the test pattern, as rsplib does).
    pub fn validate_computable(&self) -> Result<(), ParameterError> {
        if self.width == 0 || self.height == 0 {
            return Err(ParameterError::EmptyPicture {
                width: self.width,
                height: self.height,
            });
        }
        if self.width > MAX_DIMENSION || self.height > MAX_DIMENSION {
            return Err(ParameterError::PictureTooLarge {
                width: self.width,
                height: self.height,
            });
        }
        if self.max_iterations > MAX_ITERATIONS_LIMIT {
            return Err(ParameterError::TooManyIterations(self.max_iterations));
        }
        let corners = [self.c1_real, self.c1_imag, self.c2_real, self.c2_imag];
        if !corners.iter().all(|value| value.is_finite()) {
            return Err(ParameterError::NonFiniteCoordinate);
        }
        let (step_x, step_y) = self.steps();
        if !step_x.is_finite() || !step_y.is_finite() {
            return Err(ParameterError::NonFiniteStep);
        }
        if self.algorithm == AlgorithmId::MANDELBROT_N && !self.n.is_finite() {
            return Err(ParameterError::NonFiniteExponent);
        }
        Ok(())
    }

    /// Per-pixel steps `((C2Real - C1Real) / Width, (C2Imag - C1Imag) / Height)`, computed
    /// exactly as rsplib's PE does.
    #[inline]
    pub fn steps(&self) -> (f64, f64) {
        (
            (self.c2_real - self.c1_real) / f64::from(self.width),
            (self.c2_imag - self.c1_imag) / f64::from(self.height),
        )
    }

    /// Number of pixels of the picture.
    pub fn pixel_count(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Whether all fields are equal bit for bit (NaN-safe, distinguishes -0.0 from +0.0).
    pub fn bitwise_eq(&self, other: &Parameter) -> bool {
        self.encode() == other.encode()
    }
}

impl Data {
    /// A Data message with the given points.
    pub fn new(start_x: u32, start_y: u32, points: Vec<u32>) -> Data {
        Data {
            start_x,
            start_y,
            points,
        }
    }

    /// The finalizer: no points, start = (0xFFFFFFFF, 0xFFFFFFFF).
    pub fn finalizer() -> Data {
        Data::new(FINALIZER_START, FINALIZER_START, Vec::new())
    }

    /// Whether this is the finalizer (rsplib's test: no points and both starts 0xFFFFFFFF).
    pub fn is_finalizer(&self) -> bool {
        self.points.is_empty() && self.start_x == FINALIZER_START && self.start_y == FINALIZER_START
    }

    /// Encoded size: 16 + 4 * points.
    pub fn encoded_len(&self) -> usize {
        DATA_HEADER_LEN + 4 * self.points.len()
    }

    /// Appends the encoded message to `out`; fails for more than 324 points.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.points.len() > MAX_POINTS_PER_DATA {
            return Err(EncodeError::TooManyPoints(self.points.len()));
        }
        let length = self.encoded_len();
        out.reserve(length);
        out.push(TYPE_DATA);
        out.push(0);
        // At most 1312, checked above.
        out.extend_from_slice(&(length as u16).to_be_bytes());
        out.extend_from_slice(&self.start_x.to_be_bytes());
        out.extend_from_slice(&self.start_y.to_be_bytes());
        out.extend_from_slice(&(self.points.len() as u32).to_be_bytes());
        // Resized once and filled in place: a loop of pushes would not vectorise.
        let start = out.len();
        out.resize(start + 4 * self.points.len(), 0);
        encode_be_words(&self.points, &mut out[start..]);
        Ok(())
    }

    /// Encodes the message; fails for more than 324 points.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes a Data message occupying exactly `bytes`. Allocates at most 324 points, and only
    /// after the Length has been checked against the bytes present.
    pub fn decode(bytes: &[u8]) -> Result<Data, DecodeError> {
        DataView::decode(bytes).map(|view| view.to_data())
    }
}

/// Writes `values` as big-endian words into `out` (as many as both have room for). Every
/// point of every Data message passes here and through [`decode_be_words`]: with AVX2 (checked
/// at run time) a whole register of words is swapped at once.
fn encode_be_words(values: &[u32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available, checked just above.
        unsafe { encode_be_words_avx2(values, out) };
        return;
    }
    encode_be_words_portable(values, out);
}

#[inline(always)]
fn encode_be_words_portable(values: &[u32], out: &mut [u8]) {
    let (words, _) = out.as_chunks_mut::<4>();
    for (word, value) in words.iter_mut().zip(values) {
        *word = value.to_be_bytes();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_be_words_avx2(values: &[u32], out: &mut [u8]) {
    encode_be_words_portable(values, out);
}

/// Reads big-endian words of `from` into `out` (as many as both have).
fn decode_be_words(from: &[u8], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available, checked just above.
        unsafe { decode_be_words_avx2(from, out) };
        return;
    }
    decode_be_words_portable(from, out);
}

#[inline(always)]
fn decode_be_words_portable(from: &[u8], out: &mut [u32]) {
    let (words, _) = from.as_chunks::<4>();
    for (value, word) in out.iter_mut().zip(words) {
        *value = u32::from_be_bytes(*word);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_be_words_avx2(from: &[u8], out: &mut [u32]) {
    decode_be_words_portable(from, out);
}

/// [`decode_be_words`] that also returns the iterations behind the decoded values
/// ([`kernel::iterations_in`] of them), summed from registers in the same pass: reading `out`
/// back afterwards waits for its cache lines, fetched for the stores, to arrive.
fn decode_be_words_counting(from: &[u8], out: &mut [u32], max_iterations: u32) -> u64 {
    let count = out.len().min(from.len() / 4);
    if !kernel::sum_fits_u32(count, max_iterations) {
        decode_be_words(from, out);
        return kernel::iterations_in(&out[..count], max_iterations);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available, checked just above.
        return u64::from(unsafe { decode_be_words_counting_avx2(from, out, max_iterations) });
    }
    u64::from(decode_be_words_counting_portable(from, out, max_iterations))
}

/// The caller makes sure that the sum fits in 32 bits.
#[inline(always)]
fn decode_be_words_counting_portable(from: &[u8], out: &mut [u32], max_iterations: u32) -> u32 {
    let (words, _) = from.as_chunks::<4>();
    let mut sum = 0u32;
    for (value, word) in out.iter_mut().zip(words) {
        let decoded = u32::from_be_bytes(*word);
        *value = decoded;
        sum = sum.wrapping_add(kernel::evaluations(decoded, max_iterations));
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_be_words_counting_avx2(from: &[u8], out: &mut [u32], max_iterations: u32) -> u32 {
    decode_be_words_counting_portable(from, out, max_iterations)
}

/// A Data message checked like [`Data::decode`] but not copied: its points stay big-endian in
/// the received bytes, so a receiver can put them straight where they belong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataView<'a> {
    pub start_x: u32,
    pub start_y: u32,
    /// The points as sent: 4 bytes each, big-endian.
    points: &'a [u8],
}

impl<'a> DataView<'a> {
    /// Checks a Data message occupying exactly `bytes` (the same checks as [`Data::decode`]).
    pub fn decode(bytes: &'a [u8]) -> Result<DataView<'a>, DecodeError> {
        let header = read_header(bytes)?;
        if header.kind != TYPE_DATA {
            return Err(DecodeError::UnexpectedType {
                expected: TYPE_DATA,
                found: header.kind,
            });
        }
        check_length(header, bytes.len())?;
        let truncated = DecodeError::Truncated {
            needed: DATA_HEADER_LEN,
            available: bytes.len(),
        };
        let mut reader = Reader {
            bytes: bytes.get(HEADER_LEN..).ok_or(truncated.clone())?,
        };
        let start_x = reader.u32().ok_or(truncated.clone())?;
        let start_y = reader.u32().ok_or(truncated.clone())?;
        let count = reader.u32().ok_or(truncated)?;
        if count as usize > MAX_POINTS_PER_DATA {
            return Err(DecodeError::TooManyPoints(count));
        }
        let count = count as usize;
        // With the Length equal to the bytes present (checked above), the points are all there.
        if usize::from(header.length) != DATA_HEADER_LEN + 4 * count {
            return Err(DecodeError::BadDataLength {
                length: header.length,
                points: count as u32,
            });
        }
        Ok(DataView {
            start_x,
            start_y,
            points: reader.bytes,
        })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len() / 4
    }

    /// Whether the message carries no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Whether this is the finalizer (see [`Data::is_finalizer`]).
    pub fn is_finalizer(&self) -> bool {
        self.is_empty() && self.start_x == FINALIZER_START && self.start_y == FINALIZER_START
    }

    /// The points in order.
    pub fn points(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        // The length is a multiple of 4 (checked when decoded).
        self.points
            .as_chunks::<4>()
            .0
            .iter()
            .map(|word| u32::from_be_bytes(*word))
    }

    /// Writes points `skip..` into `out`, as many as both have.
    pub fn copy_points_to(&self, skip: usize, out: &mut [u32]) {
        let from = self
            .points
            .get(skip.saturating_mul(4)..)
            .unwrap_or_default();
        decode_be_words(from, out);
    }

    /// [`DataView::copy_points_to`], returning the iterations behind the copied points
    /// ([`kernel::iterations_in`] of `out` afterwards, for a picture of `max_iterations`).
    pub fn copy_points_counting(&self, skip: usize, out: &mut [u32], max_iterations: u32) -> u64 {
        let from = self
            .points
            .get(skip.saturating_mul(4)..)
            .unwrap_or_default();
        decode_be_words_counting(from, out, max_iterations)
    }

    /// An owned [`Data`].
    pub fn to_data(&self) -> Data {
        Data {
            start_x: self.start_x,
            start_y: self.start_y,
            points: {
                let mut points = vec![0; self.len()];
                self.copy_points_to(0, &mut points);
                points
            },
        }
    }
}

impl Message {
    /// Decodes one message occupying exactly `bytes`, dispatching on the Type field.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        match read_header(bytes)?.kind {
            TYPE_PARAMETER => Parameter::decode(bytes).map(Message::Parameter),
            TYPE_DATA => Data::decode(bytes).map(Message::Data),
            other => Err(DecodeError::UnknownType(other)),
        }
    }

    /// Encodes the message; fails only for a Data message with more than 324 points.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        match self {
            Message::Parameter(parameter) => Ok(parameter.encode().to_vec()),
            Message::Data(data) => data.encode(),
        }
    }
}

impl From<Parameter> for Message {
    fn from(parameter: Parameter) -> Message {
        Message::Parameter(parameter)
    }
}

impl From<Data> for Message {
    fn from(data: Data) -> Message {
        Message::Data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both word converters agree with the plain per-word conversion, for lengths around a
    /// register's width and with more room on either side than the other has.
    #[test]
    fn word_conversions_match_the_scalar_definition() {
        for count in [0usize, 1, 7, 8, 9, 31, 324] {
            let values: Vec<u32> = (0..count as u32)
                .map(|i| i.wrapping_mul(0x9e37_79b9))
                .collect();
            let scalar: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            for room in [count.saturating_sub(1), count, count + 1] {
                let mut portable = vec![0xaa; 4 * room];
                encode_be_words_portable(&values, &mut portable);
                let mut dispatched = vec![0xaa; 4 * room];
                encode_be_words(&values, &mut dispatched);
                let written = 4 * room.min(count);
                assert_eq!(portable[..written], scalar[..written]);
                assert!(portable[written..].iter().all(|&b| b == 0xaa));
                assert_eq!(dispatched, portable);

                let mut decoded = vec![7; room];
                decode_be_words_portable(&scalar, &mut decoded);
                let mut decoded_dispatched = vec![7; room];
                decode_be_words(&scalar, &mut decoded_dispatched);
                assert_eq!(decoded[..room.min(count)], values[..room.min(count)]);
                assert!(decoded[room.min(count)..].iter().all(|&v| v == 7));
                assert_eq!(decoded_dispatched, decoded);
            }
        }
    }

    /// Decoding while counting gives the plain decode and the iterations of what it decoded,
    /// in 32 bits and (for sums that could overflow them) in 64, wherever the output starts.
    #[test]
    fn decoding_while_counting_matches_decoding_then_counting() {
        for count in [0usize, 1, 7, 8, 9, 16, 17, 31, 100, 324] {
            // Escaped points, points at any maximum, and values beyond it.
            let values: Vec<u32> = (0..count as u32)
                .map(|i| match i % 5 {
                    0 => u32::MAX,
                    1 => 0,
                    _ => i.wrapping_mul(0x9e37_79b9) % 5000,
                })
                .collect();
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            for max in [0, 1, 1000, 4000, u32::MAX / 8, u32::MAX] {
                for room in [count.saturating_sub(1), count, count + 1] {
                    for offset in 0..8 {
                        let mut plain = vec![7; offset + room];
                        decode_be_words(&bytes, &mut plain[offset..]);
                        let expected =
                            kernel::iterations_in(&plain[offset..offset + room.min(count)], max);
                        let mut counted = vec![7; offset + room];
                        let iterations =
                            decode_be_words_counting(&bytes, &mut counted[offset..], max);
                        let case = format!("{count} values, max {max}, room {room}, at {offset}");
                        assert_eq!(counted, plain, "{case}");
                        assert_eq!(iterations, expected, "{case}");
                        if kernel::sum_fits_u32(room.min(count), max) {
                            let mut portable = vec![7; offset + room];
                            let sum = decode_be_words_counting_portable(
                                &bytes,
                                &mut portable[offset..],
                                max,
                            );
                            assert_eq!((portable, u64::from(sum)), (plain, expected), "{case}");
                        }
                    }
                }
            }
        }
    }
}
