//! Bounds-checked byte reader and TLV-aware writer shared by all codecs.
//!
//! The reader never panics: every read returns `None` when the input is too short. The writer
//! implements RFC 5354's padding rule: a TLV (or message) length covers everything up to the end
//! of its value, *including* padding between nested TLVs but *not* its own final padding. We get
//! that for free by padding lazily: padding is written just before the next item starts (or by
//! the message writer at the very end), never right after a TLV.

use super::error::EncodeError;

/// Rounds `n` up to the next multiple of 4.
pub const fn roundup4(n: usize) -> usize {
    (n + 3) & !3
}

/// A cursor over a byte slice with bounds-checked reads.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unread part of the input.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    /// Skips up to `n` bytes (fewer if the input ends first).
    pub(crate) fn skip_at_most(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n.min(self.remaining()));
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes(b.try_into().ok()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }
}

/// Appends big-endian fields and TLVs to a `Vec<u8>`, with 4-byte alignment measured from the
/// start of the message being written (the vector may already hold other data).
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing a message at the current end of `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        let base = out.len();
        Writer { out, base }
    }

    /// Writes zero bytes until the position is a multiple of 4 from the message start.
    pub(crate) fn align(&mut self) {
        while !(self.out.len() - self.base).is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }

    /// Pads the previous item, then writes a TLV header with a placeholder length.
    /// Returns the TLV's start offset for [`Writer::end_tlv`].
    pub(crate) fn begin_tlv(&mut self, param_type: u16) -> usize {
        self.align();
        let start = self.out.len();
        self.u16(param_type);
        self.u16(0);
        start
    }

    /// Patches the TLV's length (header + value, without final padding).
    pub(crate) fn end_tlv(&mut self, start: usize) -> Result<(), EncodeError> {
        let param_type = self.read_u16_at(start);
        let len = self.out.len() - start;
        let len16 = u16::try_from(len).map_err(|_| EncodeError::ParameterTooLong {
            param_type,
            length: len,
        })?;
        self.patch_u16(start + 2, len16);
        Ok(())
    }

    /// Writes a message header with a placeholder length; returns its start offset.
    pub(crate) fn begin_message(&mut self, msg_type: u8, flags: u8) -> usize {
        self.align();
        let start = self.out.len();
        self.u8(msg_type);
        self.u8(flags);
        self.u16(0);
        start
    }

    /// Patches the message length (without final padding), then writes the final padding.
    pub(crate) fn end_message(&mut self, start: usize) -> Result<(), EncodeError> {
        let len = self.out.len() - start;
        let len16 = u16::try_from(len).map_err(|_| EncodeError::MessageTooLong { length: len })?;
        self.patch_u16(start + 2, len16);
        self.align();
        Ok(())
    }

    fn read_u16_at(&self, pos: usize) -> u16 {
        match self.out.get(pos..pos + 2) {
            Some(&[a, b]) => u16::from_be_bytes([a, b]),
            _ => 0,
        }
    }

    fn patch_u16(&mut self, pos: usize, v: u16) {
        if let Some(slot) = self.out.get_mut(pos..pos + 2) {
            slot.copy_from_slice(&v.to_be_bytes());
        }
    }
}

/// Runs an encoder on `out`; on failure `out` is restored to its previous length, so callers
/// never see half-written messages.
pub(crate) fn encode_atomically(
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let original_len = out.len();
    let result = f(&mut Writer::new(out));
    if result.is_err() {
        out.truncate(original_len);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.bytes(1), Some(&[3u8][..]));
        assert_eq!(r.bytes(1), None);
        assert_eq!(r.bytes(usize::MAX), None);
        assert!(r.is_empty());
    }

    #[test]
    fn nested_tlv_lengths_exclude_only_the_final_padding() {
        let mut out = vec![0xEE]; // unrelated data before the message
        let mut w = Writer::new(&mut out);
        let msg = w.begin_message(0x01, 0);
        let outer = w.begin_tlv(0x000a);
        let inner1 = w.begin_tlv(0x0009);
        w.bytes(b"abcde"); // 5 bytes -> 3 bytes padding before the next TLV
        w.end_tlv(inner1).unwrap();
        let inner2 = w.begin_tlv(0x0009);
        w.bytes(b"x"); // last nested TLV: its padding is not part of the outer length
        w.end_tlv(inner2).unwrap();
        w.end_tlv(outer).unwrap();
        w.end_message(msg).unwrap();
        let expected: Vec<u8> = vec![
            0xEE, // pre-existing byte
            0x01, 0x00, 0x00, 0x19, // message header, length 4 + 21 = 25
            0x00, 0x0a, 0x00, 0x15, // outer TLV, length 4 + 12 + 5 = 21
            0x00, 0x09, 0x00, 0x09, b'a', b'b', b'c', b'd', b'e', 0, 0, 0, // inner1 + padding
            0x00, 0x09, 0x00, 0x05, b'x', // inner2, unpadded inside the outer length
            0, 0, 0, // final message padding
        ];
        assert_eq!(out, expected);
        assert_eq!((out.len() - 1) % 4, 0);
    }

    #[test]
    fn oversized_tlv_is_an_error_and_leaves_output_untouched() {
        let mut out = vec![7, 7];
        let err = encode_atomically(&mut out, |w| {
            let m = w.begin_message(1, 0);
            let t = w.begin_tlv(0x000d);
            w.bytes(&vec![0u8; 70_000]);
            w.end_tlv(t)?;
            w.end_message(m)
        })
        .unwrap_err();
        assert_eq!(
            err,
            EncodeError::ParameterTooLong {
                param_type: 0x000d,
                length: 70_004
            }
        );
        assert_eq!(out, vec![7, 7]);
    }
}
