//! Reliable Server Pooling (RSerPool, RFC 5351-5356).

pub mod handlespace;
pub mod transport;
pub mod wire;
