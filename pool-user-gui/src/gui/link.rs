//! Connects the window to the real fractal client (`crate::client`).
//!
//! MERGE POINT: the client is written on another branch (`pu`). Until the merge, the window
//! says that the client is missing (and `--demo-synthetic` shows a simulated pool). Against the
//! `pu` branch's API as of this writing (`FractalClient::start(ClientConfig) -> (client,
//! tokio UnboundedReceiver<ClientEvent>)`, `start_image(&self, client::ImageRequest { view,
//! sessions, preset })`, `cancel()`, `start_pool_monitor(interval)`; must run inside a tokio
//! runtime), this adapter was tried with a temporary merge of `pu` (the whole demo, including
//! the Xvfb test `tests/tests/gui_demo.rs`, passed with it):
//!
//! ```text
//! use super::control::{ClientControl, ClientFactory, ImageRequest};
//! use std::sync::Arc;
//!
//! struct Linked {
//!     client: Arc<crate::client::FractalClient>,
//!     runtime: Arc<tokio::runtime::Runtime>,
//! }
//!
//! impl ClientControl for Linked {
//!     fn start_image(&mut self, request: ImageRequest) {
//!         let view = request
//!             .preset
//!             .parameter_keep_aspect(request.width, request.height);
//!         let _guard = self.runtime.enter();
//!         self.client.start_image(crate::client::ImageRequest {
//!             view,
//!             sessions: request.sessions,
//!             preset: request.preset.name.clone(),
//!         });
//!     }
//!     fn cancel(&mut self) {
//!         self.client.cancel();
//!     }
//! }
//!
//! /// Builds the real client for the window.
//! pub fn client_factory() -> ClientFactory {
//!     Box::new(|config, sink| {
//!         let runtime = Arc::new(tokio::runtime::Runtime::new()?);
//!         let _guard = runtime.enter();
//!         let (client, mut events) =
//!             crate::client::FractalClient::start(crate::client::ClientConfig {
//!                 pool: config.pool,
//!                 pool_user: rserpool::pu::PoolUserConfig {
//!                     registrars: config.registrars,
//!                     ..Default::default()
//!                 },
//!             })?;
//!         client.start_pool_monitor(std::time::Duration::from_secs(1));
//!         runtime.spawn(async move {
//!             while let Some(event) = events.recv().await {
//!                 if !sink.send(event) {
//!                     break;
//!                 }
//!             }
//!         });
//!         Ok(Box::new(Linked {
//!             client: Arc::new(client),
//!             runtime: runtime.clone(),
//!         }) as Box<dyn ClientControl>)
//!     })
//! }
//! ```
//!
//! (Dropping a tokio `Runtime` inside the eframe callback is fine; it is dropped when the
//! window closes.)

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
