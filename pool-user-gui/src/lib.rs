//! The Fractal Generator pool user: splits a picture into tiles, computes each tile in its own
//! RSerPool session, fails over between pool elements with ASAP cookies, and shows or writes
//! the result.
//!
//! * [`client`]: the fractal client over `rserpool`'s pool-user session layer; emits
//!   [`client::events::ClientEvent`]s that both front ends consume.
//! * [`headless`]: `pool-user --headless`, for scripts, tests and benchmarks.
//! * `gui` (feature `gui`, default): the eframe window.
//! * [`bundle`]: the bundled registrar and pool elements of the one-command demo, run as child
//!   processes of this very binary so that they can really be killed.

pub mod bundle;
pub mod client;
#[cfg(feature = "gui")]
pub mod gui;
pub mod headless;
