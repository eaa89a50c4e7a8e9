//! The ENRP PE checksum (RFC 5353 §3.6.2).
//!
//! Each PE owned by a server contributes the byte block
//! `pool handle ‖ zero padding to a multiple of 4 ‖ PE identifier (4 bytes, big-endian)`;
//! the checksum is the Internet checksum (RFC 1071) over all blocks: the one's complement of the
//! one's complement sum of the big-endian 16-bit words. Every block has an even length, so the
//! sum does not depend on the order of the blocks, and a PE can be added or removed by adding or
//! subtracting its block's word sum. An empty set gives 0xFFFF.
//!
//! [`HandlespaceChecksum`] keeps the exact (unfolded) word sum in a `u64`, which cannot overflow
//! for any realistic handlespace (each block adds at most 18 × 0xFFFF). rsplib keeps the sum in
//! a `u32` that wraps after a few thousand PEs with long handles; below that it computes the
//! same value (it sums native-endian words and stores the result unswapped, which RFC 1071's
//! byte-order independence makes identical to this big-endian computation).

use super::param::{PeId, PoolHandle};

/// The RFC 5353 §3.6.2 byte block of one PE.
pub fn pe_checksum_block(pool_handle: &PoolHandle, pe_id: PeId) -> Vec<u8> {
    let handle = pool_handle.as_bytes();
    let mut block = Vec::with_capacity(super::buf::roundup4(handle.len()) + 4);
    block.extend_from_slice(handle);
    block.resize(super::buf::roundup4(handle.len()), 0);
    block.extend_from_slice(&pe_id.0.to_be_bytes());
    block
}

/// The sum of the big-endian 16-bit words of a PE's block (its contribution to the checksum).
pub fn pe_checksum_contribution(pool_handle: &PoolHandle, pe_id: PeId) -> u32 {
    pe_checksum_contribution_with(handle_word_sum(pool_handle), pe_id)
}

/// The word sum of a pool handle with its padding: the part of [`pe_checksum_contribution`]
/// every PE of the pool shares (a handle of at most 32 bytes sums to far below `u32::MAX`).
pub fn handle_word_sum(pool_handle: &PoolHandle) -> u32 {
    // Zero padding adds nothing; an odd last byte is the high byte of its word either way.
    word_sum(pool_handle.as_bytes()) as u32
}

/// [`pe_checksum_contribution`] from the pool's [`handle_word_sum`], without touching the
/// handle's bytes again.
pub fn pe_checksum_contribution_with(handle_word_sum: u32, pe_id: PeId) -> u32 {
    handle_word_sum + (pe_id.0 >> 16) + (pe_id.0 & 0xffff)
}

/// Sum of the big-endian 16-bit words of `data` (an odd last byte is padded with zero).
fn word_sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| match c {
            [a, b] => u64::from(u16::from_be_bytes([*a, *b])),
            [a] => u64::from(u16::from_be_bytes([*a, 0])),
            _ => 0,
        })
        .sum()
}

/// Folds carries into 16 bits and complements (RFC 1071).
fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(word_sum(data))
}

/// An incrementally maintained PE checksum for one server's PEs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HandlespaceChecksum {
    /// Exact sum of all block words; never folded, so removal is a plain subtraction.
    sum: u64,
}

impl HandlespaceChecksum {
    /// The checksum of no PEs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PE.
    pub fn add(&mut self, pool_handle: &PoolHandle, pe_id: PeId) {
        self.add_contribution(pe_checksum_contribution(pool_handle, pe_id));
    }

    /// Removes a PE that was added before. Removing one that was not added makes the value
    /// meaningless (it does not panic).
    pub fn remove(&mut self, pool_handle: &PoolHandle, pe_id: PeId) {
        self.remove_contribution(pe_checksum_contribution(pool_handle, pe_id));
    }

    /// Adds a contribution computed by [`pe_checksum_contribution`].
    pub fn add_contribution(&mut self, contribution: u32) {
        self.sum = self.sum.wrapping_add(u64::from(contribution));
    }

    /// Removes a contribution computed by [`pe_checksum_contribution`].
    pub fn remove_contribution(&mut self, contribution: u32) {
        self.sum = self.sum.wrapping_sub(u64::from(contribution));
    }

    /// The 16-bit checksum to send in ENRP_PRESENCE; 0xFFFF when empty.
    pub fn value(&self) -> u16 {
        finish(self.sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(s: &str) -> PoolHandle {
        s.parse().unwrap()
    }

    #[test]
    fn contribution_is_the_word_sum_of_the_block() {
        for (handle, id) in [
            ("a", 1),
            ("abc", 0xffff_ffff),
            ("abcd", 0x0001_0000),
            ("abcde", 7),
        ] {
            let block = pe_checksum_block(&ph(handle), PeId(id));
            assert_eq!(
                u64::from(pe_checksum_contribution(&ph(handle), PeId(id))),
                word_sum(&block),
                "{handle} {id}"
            );
        }
    }

    #[test]
    fn block_pads_the_handle_to_a_word_boundary() {
        assert_eq!(
            pe_checksum_block(&ph("abcde"), PeId(0x0102_0304)),
            vec![b'a', b'b', b'c', b'd', b'e', 0, 0, 0, 1, 2, 3, 4]
        );
        assert_eq!(
            pe_checksum_block(&ph("abcd"), PeId(0xdead_beef)),
            vec![b'a', b'b', b'c', b'd', 0xde, 0xad, 0xbe, 0xef]
        );
    }

    #[test]
    fn empty_is_ffff() {
        assert_eq!(HandlespaceChecksum::new().value(), 0xffff);
    }

    #[test]
    fn single_pe_matches_hand_computation() {
        // Block "abcd" ‖ 0x00000001: words 0x6162 + 0x6364 + 0x0000 + 0x0001 = 0xC4C7,
        // no carry; one's complement = 0x3B38.
        let mut c = HandlespaceChecksum::new();
        c.add(&ph("abcd"), PeId(1));
        assert_eq!(c.value(), 0x3b38);
    }

    #[test]
    fn carries_are_folded() {
        // Block "ab" ‖ 00 00 ‖ 0xffff0001: 0x6162 + 0x0000 + 0xffff + 0x0001 = 0x16162;
        // fold: 0x6162 + 0x1 = 0x6163; complement = 0x9E9C.
        let mut c = HandlespaceChecksum::new();
        c.add(&ph("ab"), PeId(0xffff_0001));
        assert_eq!(c.value(), 0x9e9c);
        // Adding "ab"/0x00009e9b brings the sum to 0x6163 + 0x6162 + 0x9e9b, folded:
        // 0x6163 + 0x6162 = 0xC2C5; + 0x9E9B = 0x16160 -> 0x6161; complement 0x9E9E.
        c.add(&ph("ab"), PeId(0x0000_9e9b));
        assert_eq!(c.value(), 0x9e9e);
    }

    #[test]
    fn two_pes_and_removal() {
        // "FractalGeneratorPool" (20 bytes, no padding) with PE ids 0x10 and 0x20.
        let pool = ph("FractalGeneratorPool");
        // Words of the handle: "Fr" 0x4672, "ac" 0x6163, "ta" 0x7461, "lG" 0x6c47, "en" 0x656e,
        // "er" 0x6572, "at" 0x6174, "or" 0x6f72, "Po" 0x506f, "ol" 0x6f6c.
        let handle_sum: u64 = [
            0x4672u64, 0x6163, 0x7461, 0x6c47, 0x656e, 0x6572, 0x6174, 0x6f72, 0x506f, 0x6f6c,
        ]
        .iter()
        .sum();
        assert_eq!(handle_sum, 0x3_E41E);
        let mut c = HandlespaceChecksum::new();
        c.add(&pool, PeId(0x10));
        // 0x3E41E + 0x10 = 0x3E42E -> 0xE42E + 0x3 = 0xE431 -> !0xE431 = 0x1BCE.
        assert_eq!(c.value(), 0x1bce);
        c.add(&pool, PeId(0x20));
        // 2 * 0x3E41E + 0x30 = 0x7C86C -> 0xC86C + 0x7 = 0xC873 -> !0xC873 = 0x378C.
        assert_eq!(c.value(), 0x378c);
        c.remove(&pool, PeId(0x10));
        // Only 0x20 left: 0x3E43E -> 0xE43E + 3 = 0xE441 -> !0xE441 = 0x1BBE.
        assert_eq!(c.value(), 0x1bbe);
        c.remove(&pool, PeId(0x20));
        assert_eq!(c.value(), 0xffff);
    }

    #[test]
    fn incremental_equals_rfc1071_over_concatenated_blocks() {
        let pes = [
            (ph("x"), PeId(7)),
            (ph("FractalGeneratorPool"), PeId(0x1a2b_3c4d)),
            (ph("EchoPool"), PeId(0xffff_ffff)),
            (ph("abc"), PeId(0x8000_0000)),
        ];
        let mut all = Vec::new();
        let mut c = HandlespaceChecksum::new();
        for (h, id) in &pes {
            all.extend(pe_checksum_block(h, *id));
            c.add(h, *id);
        }
        assert_eq!(c.value(), internet_checksum(&all));
        // Order independence.
        let mut reversed = HandlespaceChecksum::new();
        for (h, id) in pes.iter().rev() {
            reversed.add(h, *id);
        }
        assert_eq!(reversed, c);
    }

    #[test]
    fn internet_checksum_rfc1071_example() {
        // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to 0x2ddf0 -> 0xddf2; checksum !0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
