//! The few wire accessors this module needs, in one place so that they can be swapped for the
//! wire module's own at merge.

use crate::wire::param::PoolHandle;

/// The bytes of a pool handle.
pub(crate) fn handle_bytes(handle: &PoolHandle) -> &[u8] {
    handle.as_bytes()
}
