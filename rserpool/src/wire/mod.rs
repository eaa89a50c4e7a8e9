//! Wire codecs for ASAP (RFC 5352), ENRP (RFC 5353) and their parameters (RFC 5354).

pub mod param;
pub mod policy;
