//! Connects the window to the real fractal client (`crate::client`): the client runs on its own
//! tokio runtime, its events go through the window's [`EventSink`] (which also wakes the
//! window), and the window's requests become client calls.

use std::sync::Arc;
use std::time::Duration;

use super::control::{ClientControl, ClientFactory, EventSink, ImageRequest};
use crate::client::events::ClientEvent;
use crate::client::{self, FractalClient};

/// How often the pool panel's view of the pool is refreshed.
const POOL_REFRESH: Duration = Duration::from_secs(1);

struct Linked {
    client: Arc<FractalClient>,
    /// Keeps the client's tasks running; dropped (and its tasks stopped) with the window.
    runtime: Arc<tokio::runtime::Runtime>,
}

impl ClientControl for Linked {
    fn start_image(&mut self, request: ImageRequest) {
        let view = request
            .preset
            .parameter_keep_aspect(request.width, request.height);
        let _guard = self.runtime.enter();
        self.client.start_image(client::ImageRequest::new(
            view,
            request.sessions,
            request.preset.name.clone(),
        ));
    }

    fn cancel(&mut self) {
        self.client.cancel();
    }
}

fn forward(
    runtime: &tokio::runtime::Runtime,
    sink: EventSink,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
) {
    runtime.spawn(async move {
        while let Some(event) = events.recv().await {
            if !sink.send(event) {
                break;
            }
        }
    });
}

/// Builds the real client for the window.
pub fn client_factory() -> ClientFactory {
    Box::new(|config, sink| {
        let runtime = Arc::new(tokio::runtime::Runtime::new()?);
        let _guard = runtime.enter();
        let registrars = config.registrars.clone();
        let mut pool_user = rserpool::pu::PoolUserConfig {
            registrars: config.registrars,
            ..Default::default()
        };
        pool_user.registrar_association.tls = config.registrar_tls;
        let view_association = pool_user.registrar_association.clone();
        let (client, events) = FractalClient::start(client::ClientConfig {
            pool: config.pool,
            pool_user,
            pixel_events: true,
        })?;
        client.start_pool_monitor(POOL_REFRESH);
        if registrars.len() > 1 {
            client.start_registrar_views(registrars, view_association, POOL_REFRESH);
        }
        forward(&runtime, sink, events);
        Ok(Box::new(Linked {
            client: Arc::new(client),
            runtime,
        }) as Box<dyn ClientControl>)
    })
}
