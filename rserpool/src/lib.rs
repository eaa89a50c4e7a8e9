//! Reliable Server Pooling (RSerPool, RFC 5351-5356).

pub mod discovery;
pub mod handlespace;
pub mod pe;
pub mod pu;
pub mod registrar;
pub mod sim;
pub mod timer;
pub mod transport;
pub mod wire;
