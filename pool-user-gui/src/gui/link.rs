//! Connects the window to the real fractal client (`crate::client`).
//!
//! MERGE POINT: the client is written on another branch. At merge, implement
//! [`ClientControl`](super::control::ClientControl) for the client's handle (start_image /
//! cancel), have the client deliver its `ClientEvent`s through the
//! [`EventSink`](super::control::EventSink), and return it from [`client_factory`]. Until then
//! the window says that the client is missing (and `--demo-synthetic` shows a simulated pool).

use super::control::ClientFactory;

/// Builds the real client for the window.
pub fn client_factory() -> ClientFactory {
    Box::new(|_config, _sink| {
        anyhow::bail!(
            "the fractal client is not linked into the GUI in this build \
             (see pool-user-gui/src/gui/link.rs); try --demo-synthetic"
        )
    })
}
