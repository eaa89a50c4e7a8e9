//! Sans-I/O codec for the association framing `PPID u32 BE | Length u32 BE | payload[Length]`.
//!
//! The decoder never trusts a length field: a header announcing more than the configured maximum
//! is refused with [`FrameError::TooLarge`] before anything is allocated for it.
//! [`FrameDecoder::decode_buf`] splits complete frames off a buffer the caller fills, without
//! copying, and says through [`FrameDecoder::wanted_len`] how much the next frame needs (at most
//! the header and the maximum), so the caller never reads more than one frame ahead. After an error the decoder stays failed (the stream has lost sync) and the
//! connection must be closed.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Bytes of the frame header (PPID + Length).
pub const HEADER_LEN: usize = 8;

/// Default largest payload accepted (256 KiB). ASAP/ENRP/FGP messages carry a 16-bit length, so
/// this leaves room for bundles of large handle table responses while bounding what one peer
/// can make us buffer.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 * 1024;

/// Smallest maximum a decoder may be configured with: every RSerPool message must fit.
pub const MIN_MAX_FRAME_LEN: usize = 64 * 1024;

/// One framed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Payload protocol identifier (as SCTP's PPID): ASAP 11, ENRP 12, FGP 32, 0 = heartbeat.
    pub ppid: u32,
    /// The message bytes (received ones share the connection's read buffer: keeping one pins
    /// that buffer, so long-lived data is copied out).
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `ppid` carrying `payload`.
    pub fn new(ppid: u32, payload: impl Into<Bytes>) -> Self {
        Frame {
            ppid,
            payload: payload.into(),
        }
    }

    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Framing violations.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A header announced (or a caller tried to send) a payload above the maximum.
    #[error("frame payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
}

/// Appends the encoding of one frame to `out`. Fails only if `payload` does not fit the 32-bit
/// length field.
pub fn encode_frame(ppid: u32, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len() as u64,
        max: u32::MAX as usize,
    })?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&ppid.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// A place in a [`FrameBatch`] between two messages, to cut the batch back to
/// ([`FrameBatch::truncate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMark {
    bytes: usize,
    frames: usize,
    largest_payload: usize,
    has_heartbeat_ppid: bool,
}

/// Messages encoded back to back as they go on the wire (header and payload each), for
/// `AssociationSender::send_batch`: one queue slot for all of them, and each message is
/// written once, where the connection sends it from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    frames: usize,
    largest_payload: usize,
    has_heartbeat_ppid: bool,
}

impl FrameBatch {
    /// An empty batch with room for `bytes` bytes of frames.
    pub fn with_capacity(bytes: usize) -> FrameBatch {
        FrameBatch {
            bytes: Vec::with_capacity(bytes),
            ..FrameBatch::default()
        }
    }

    /// Appends a message of `ppid` carrying `payload`.
    pub fn push(&mut self, ppid: u32, payload: &[u8]) {
        let _ = self.try_push_with(ppid, |out| {
            out.extend_from_slice(payload);
            Ok::<(), ()>(())
        });
    }

    /// Appends a message of `ppid` whose payload `encode` appends to the buffer it is given;
    /// if `encode` fails, the batch is left as it was.
    pub fn try_push_with<E>(
        &mut self,
        ppid: u32,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let header_at = self.bytes.len();
        self.bytes.extend_from_slice(&ppid.to_be_bytes());
        self.bytes.extend_from_slice(&[0; 4]);
        if let Err(error) = encode(&mut self.bytes) {
            self.bytes.truncate(header_at);
            return Err(error);
        }
        let len = self.bytes.len() - header_at - HEADER_LEN;
        // A payload beyond the 32-bit field is refused when sent (it exceeds every maximum).
        let field = u32::try_from(len).unwrap_or(u32::MAX);
        self.bytes[header_at + 4..header_at + HEADER_LEN].copy_from_slice(&field.to_be_bytes());
        self.frames += 1;
        self.largest_payload = self.largest_payload.max(len);
        self.has_heartbeat_ppid |= ppid == super::PPID_HEARTBEAT;
        Ok(())
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.frames
    }

    /// Where the batch ends now.
    pub fn mark(&self) -> FrameMark {
        FrameMark {
            bytes: self.bytes.len(),
            frames: self.frames,
            largest_payload: self.largest_payload,
            has_heartbeat_ppid: self.has_heartbeat_ppid,
        }
    }

    /// Drops the messages appended after `mark` (a mark of this batch, taken before).
    pub fn truncate(&mut self, mark: FrameMark) {
        if mark.bytes <= self.bytes.len() && mark.frames <= self.frames {
            self.bytes.truncate(mark.bytes);
            self.frames = mark.frames;
            self.largest_payload = mark.largest_payload;
            self.has_heartbeat_ppid = mark.has_heartbeat_ppid;
        }
    }

    /// The encoded frames.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the batch has no message.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The largest payload in the batch.
    pub fn largest_payload(&self) -> usize {
        self.largest_payload
    }

    /// Whether a message uses the transport's own PPID 0.
    pub fn has_heartbeat_ppid(&self) -> bool {
        self.has_heartbeat_ppid
    }

    /// The encoded frames.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Incremental frame decoder: append any chunking of the byte stream to a buffer, split complete
/// frames off its front.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads above `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            max_frame_len,
            failed: None,
        }
    }

    /// The configured maximum payload length.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Splits the next complete frame off the front of `buffer`, without copying its payload
    /// (it shares `buffer`'s memory). `Ok(None)` while `buffer` holds only part of a frame:
    /// [`FrameDecoder::wanted_len`] says how many bytes it needs in all. A header announcing
    /// more than the maximum fails before anything is allocated for it.
    pub fn decode_buf(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let Some((ppid, len)) = self.peek_header(buffer)? else {
            return Ok(None);
        };
        if buffer.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let mut frame = buffer.split_to(HEADER_LEN + len);
        frame.advance(HEADER_LEN);
        Ok(Some(Frame {
            ppid,
            payload: frame.freeze(),
        }))
    }

    /// Bytes `buffer` must hold for [`FrameDecoder::decode_buf`] to yield its next frame: the
    /// header, then the header and the payload it announces (at most the maximum).
    pub fn wanted_len(&self, buffer: &[u8]) -> usize {
        match buffer.get(..HEADER_LEN) {
            Some(header) => {
                let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                HEADER_LEN + (len as usize).min(self.max_frame_len)
            }
            None => HEADER_LEN,
        }
    }

    /// Call at end of a stream read with [`FrameDecoder::decode_buf`], with what is left in
    /// its buffer: fails if the stream stopped inside a frame.
    pub fn finish_buf(&self, buffer: &[u8]) -> Result<(), FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: buffer.len(),
            })
        }
    }

    /// The PPID and payload length of the frame at the front of `buffer`, once its header is
    /// there; a length above the maximum fails the decoder.
    fn peek_header(&mut self, buffer: &[u8]) -> Result<Option<(u32, usize)>, FrameError> {
        let Some(header) = buffer.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let ppid = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if u64::from(len) > self.max_frame_len as u64 {
            let error = FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_frame_len,
            };
            self.failed = Some(error.clone());
            return Err(error);
        }
        Ok(Some((ppid, len as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_decodes_to_its_frames_and_a_failed_encode_leaves_no_trace() {
        let mut batch = FrameBatch::with_capacity(64);
        batch.push(11, b"abc");
        assert_eq!(
            batch.try_push_with(32, |out| {
                out.extend_from_slice(b"partial");
                Err("no")
            }),
            Err("no")
        );
        batch
            .try_push_with(32, |out| {
                out.extend_from_slice(&[7; 300]);
                Ok::<(), ()>(())
            })
            .expect("encodes");
        batch.push(12, b"");
        assert_eq!((batch.len(), batch.largest_payload()), (3, 300));
        assert!(!batch.has_heartbeat_ppid());
        let bytes = batch.into_bytes();
        let mut decoder = FrameDecoder::default();
        let mut input = BytesMut::from(&bytes[..]);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode_buf(&mut input).expect("valid") {
            frames.push(frame);
        }
        assert_eq!(
            frames,
            [
                Frame::new(11, b"abc".to_vec()),
                Frame::new(32, vec![7; 300]),
                Frame::new(12, Vec::new())
            ]
        );
        assert!(input.is_empty());
    }

    #[test]
    fn a_batch_cut_back_to_a_mark_is_the_batch_it_was_then() {
        let mut batch = FrameBatch::with_capacity(64);
        batch.push(11, b"abc");
        let mark = batch.mark();
        let before = batch.clone();
        batch.push(32, &[1; 500]);
        batch.push(crate::transport::PPID_HEARTBEAT, b"x");
        assert_ne!(batch, before);
        batch.truncate(mark);
        assert_eq!(batch, before);
        assert_eq!((batch.len(), batch.largest_payload()), (1, 3));
        assert!(!batch.has_heartbeat_ppid());
        assert_eq!(
            batch.as_bytes(),
            [0, 0, 0, 11, 0, 0, 0, 3, b'a', b'b', b'c']
        );
        // A mark beyond the batch changes nothing.
        let mut longer = batch.clone();
        longer.push(12, b"more");
        let beyond = longer.mark();
        batch.truncate(beyond);
        assert_eq!(batch, before);
    }

    fn encode_all(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            encode_frame(frame.ppid, &frame.payload, &mut out).unwrap();
        }
        out
    }

    /// Feeds `stream` cut at `cuts` (positions, any order) into one buffer, as a connection's
    /// reads do, and collects the frames; returns what is left in the buffer too.
    fn decode_chunked(
        decoder: &mut FrameDecoder,
        stream: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<Frame>, BytesMut), FrameError> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for window in points.windows(2) {
            buffer.extend_from_slice(&stream[window[0]..window[1]]);
            while let Some(frame) = decoder.decode_buf(&mut buffer)? {
                frames.push(frame);
            }
            // Nothing is left that would make a frame: the caller may wait for more bytes.
            assert!(buffer.len() < decoder.wanted_len(&buffer));
            assert!(decoder.wanted_len(&buffer) <= HEADER_LEN + decoder.max_frame_len());
        }
        Ok((frames, buffer))
    }

    #[test]
    fn encodes_header_big_endian() {
        let mut out = Vec::new();
        encode_frame(0x0102_0304, b"xyz", &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 0, 0, 0, 3, b'x', b'y', b'z']);
    }

    #[test]
    fn decodes_empty_payload_and_leaves_following_bytes() {
        let mut stream = Vec::new();
        encode_frame(11, &[], &mut stream).unwrap();
        encode_frame(12, b"a", &mut stream).unwrap();
        let mut input = BytesMut::from(stream.as_slice());
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.decode_buf(&mut input).unwrap(),
            Some(Frame::new(11, vec![]))
        );
        assert_eq!(input.len(), 9);
        assert_eq!(
            decoder.decode_buf(&mut input).unwrap(),
            Some(Frame::new(12, b"a".to_vec()))
        );
        assert!(input.is_empty());
        assert_eq!(decoder.finish_buf(&input), Ok(()));
    }

    #[test]
    fn refuses_oversized_header_before_payload_arrives_and_stays_failed() {
        let mut decoder = FrameDecoder::new(MIN_MAX_FRAME_LEN);
        let mut header = BytesMut::new();
        header.extend_from_slice(&32u32.to_be_bytes());
        header.extend_from_slice(&(MIN_MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        let expected = FrameError::TooLarge {
            len: MIN_MAX_FRAME_LEN as u64 + 1,
            max: MIN_MAX_FRAME_LEN,
        };
        // It asks for no more than the maximum, whatever the header announced.
        assert_eq!(decoder.wanted_len(&header), HEADER_LEN + MIN_MAX_FRAME_LEN);
        assert_eq!(decoder.decode_buf(&mut header), Err(expected.clone()));
        let mut valid = BytesMut::from(&[0u8; 8][..]);
        assert_eq!(decoder.decode_buf(&mut valid), Err(expected.clone()));
        assert_eq!(decoder.finish_buf(&[]), Err(expected));
    }

    #[test]
    fn accepts_payload_of_exactly_the_maximum() {
        let mut decoder = FrameDecoder::new(MIN_MAX_FRAME_LEN);
        let frame = Frame::new(32, vec![7u8; MIN_MAX_FRAME_LEN]);
        let stream = encode_all(std::slice::from_ref(&frame));
        let (frames, rest) = decode_chunked(&mut decoder, &stream, &[3, 100, 5000]).unwrap();
        assert_eq!(frames, vec![frame]);
        assert!(rest.is_empty());
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let mut stream = Vec::new();
        encode_frame(11, b"hello", &mut stream).unwrap();
        for keep in [10, 5] {
            let mut decoder = FrameDecoder::default();
            let mut input = BytesMut::from(&stream[..keep]);
            assert_eq!(decoder.decode_buf(&mut input), Ok(None));
            assert_eq!(
                decoder.finish_buf(&input),
                Err(FrameError::Truncated { buffered: keep })
            );
        }
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            prop_oneof![Just(0u32), Just(11), Just(12), Just(32), any::<u32>()],
            prop::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(ppid, payload)| Frame::new(ppid, payload))
    }

    proptest! {
        #[test]
        fn any_chunking_decodes_the_same_frames(
            frames in prop::collection::vec(arb_frame(), 0..20),
            cuts in prop::collection::vec(any::<usize>(), 0..40),
        ) {
            let stream = encode_all(&frames);
            let mut decoder = FrameDecoder::default();
            let (decoded, rest) = decode_chunked(&mut decoder, &stream, &cuts).unwrap();
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(decoder.finish_buf(&rest), Ok(()));
        }

        /// Under a small maximum, a stream either decodes whole (every frame within it) or fails
        /// at the first frame beyond it, with every frame before that decoded, whatever the
        /// chunking.
        #[test]
        fn a_maximum_fails_at_the_first_frame_beyond_it(
            frames in prop::collection::vec(arb_frame(), 0..20),
            cuts in prop::collection::vec(any::<usize>(), 0..40),
            max in 0usize..300,
        ) {
            let stream = encode_all(&frames);
            let mut decoder = FrameDecoder::new(max);
            let first_too_large = frames.iter().position(|f| f.payload.len() > max);
            match (decode_chunked(&mut decoder, &stream, &cuts), first_too_large) {
                (Ok((decoded, rest)), None) => {
                    prop_assert_eq!(decoded, frames);
                    prop_assert!(rest.is_empty());
                }
                (Err(FrameError::TooLarge { len, .. }), Some(index)) => {
                    prop_assert_eq!(len, frames[index].payload.len() as u64);
                }
                (outcome, expected) => prop_assert!(false, "{outcome:?} for {expected:?}"),
            }
        }

        #[test]
        fn a_buffer_ending_inside_a_frame_is_truncated(
            frame in arb_frame(),
            keep in 1usize..1000,
        ) {
            let stream = encode_all(std::slice::from_ref(&frame));
            let keep = 1 + keep % (stream.len() - 1);
            let mut decoder = FrameDecoder::default();
            let mut buffer = BytesMut::from(&stream[..keep]);
            prop_assert_eq!(decoder.decode_buf(&mut buffer), Ok(None));
            prop_assert_eq!(
                decoder.finish_buf(&buffer),
                Err(FrameError::Truncated { buffered: keep })
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_ask_beyond_the_limit(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
            max in 0usize..2048,
        ) {
            let mut decoder = FrameDecoder::new(max);
            match decode_chunked(&mut decoder, &bytes, &cuts) {
                Ok((frames, _)) => prop_assert!(frames.iter().all(|f| f.payload.len() <= max)),
                Err(FrameError::TooLarge { len, .. }) => prop_assert!(len > max as u64),
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }

        #[test]
        fn a_huge_announced_length_asks_only_for_the_maximum(
            announced in 100_000u32..=u32::MAX,
            arrived in 0usize..5000,
        ) {
            let max = DEFAULT_MAX_FRAME_LEN;
            let mut decoder = FrameDecoder::new(max);
            let mut buffer = BytesMut::new();
            buffer.extend_from_slice(&32u32.to_be_bytes());
            buffer.extend_from_slice(&announced.to_be_bytes());
            buffer.extend(std::iter::repeat_n(0u8, arrived));
            prop_assert!(decoder.wanted_len(&buffer) <= HEADER_LEN + max);
            let outcome = decoder.decode_buf(&mut buffer);
            if announced as usize > max {
                prop_assert!(outcome.is_err());
            } else {
                prop_assert_eq!(outcome, Ok(None));
            }
        }
    }
}
