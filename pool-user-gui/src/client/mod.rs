//! The fractal client: one RSerPool session per tile, failover with cookies, image assembly.

pub mod events;
