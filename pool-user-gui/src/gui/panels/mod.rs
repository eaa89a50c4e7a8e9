//! The window's panels, each a function of the state it shows. A panel whose buttons ask for
//! more than a setting returns what was asked ([`controls::Command`], [`pool::PoolAction`]) and
//! the app carries it out, so that drawing and its effects stay apart.

pub(crate) mod controls;
pub(crate) mod picture;
pub(crate) mod plots;
pub(crate) mod pool;
pub(crate) mod status;
pub(crate) mod story;
