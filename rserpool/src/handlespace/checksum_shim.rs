// replaced by wire::checksum at merge
//! The handlespace checksum of RFC 5353 §3.6.2, with the API the wire helper's
//! `wire::checksum::HandlespaceChecksum` will have.
//!
//! Per PE the block `pool handle ‖ zero padding to a multiple of 4 ‖ PE id (big-endian)`; the
//! checksum is the Internet checksum (RFC 1071) over all blocks. We keep the exact, unfolded sum
//! of all 16-bit words in a `u64`, so adding and removing PEs in any order gives the same value as
//! a computation from scratch. The empty set gives 0xFFFF.

use crate::wire::param::{PeId, PoolHandle};

use super::wire_shim::handle_bytes;

/// Running RFC 5353 §3.6.2 checksum over a set of (pool handle, PE id) pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandlespaceChecksum {
    sum: u64,
}

impl HandlespaceChecksum {
    /// The checksum of the empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one PE's block.
    pub fn add(&mut self, handle: &PoolHandle, id: PeId) {
        self.sum = self.sum.wrapping_add(block_sum(handle, id));
    }

    /// Removes one PE's block (which must have been added).
    pub fn remove(&mut self, handle: &PoolHandle, id: PeId) {
        self.sum = self.sum.wrapping_sub(block_sum(handle, id));
    }

    /// The 16-bit checksum: one's complement of the folded sum.
    pub fn value(&self) -> u16 {
        let mut s = self.sum;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        // s < 2^16 after folding
        !(s as u16)
    }
}

fn block_sum(handle: &PoolHandle, id: PeId) -> u64 {
    // Zero padding to a multiple of 4 adds nothing; only an odd trailing byte needs pairing.
    let words = handle_bytes(handle)
        .chunks(2)
        .map(|c| {
            u64::from(u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum::<u64>();
    let id = id.0;
    words + u64::from(id >> 16) + u64::from(id & 0xffff)
}
