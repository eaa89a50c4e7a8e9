//! The window's two outward interfaces: commands to the fractal client ([`ClientControl`],
//! events come back through an [`EventSink`]) and control of the bundled processes
//! ([`PoolControl`], implemented by [`crate::bundle::Bundle`]). Traits, so that tests and the
//! synthetic demo source can stand in for the real things.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use fractal_protocol::preset::Preset;

use crate::client::events::ClientEvent;

/// One picture to compute.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRequest {
    pub width: u32,
    pub height: u32,
    /// Sessions at once, 1 to 400 (the picture is cut into more work units).
    pub sessions: usize,
    pub preset: Preset,
}

/// Commands from the window to the fractal client. The client answers with events through the
/// [`EventSink`] it was created with.
pub trait ClientControl {
    /// Abandons the current image, if any, and starts this one (ImageStarted follows).
    fn start_image(&mut self, request: ImageRequest);
    /// Abandons the current image; sessions are closed.
    fn cancel(&mut self);
}

/// Where the client sends its events: a channel to the window that also wakes the window up
/// (at most about 60 times a second, however fast events come).
#[derive(Clone)]
pub struct EventSink {
    sender: mpsc::Sender<ClientEvent>,
    wake: Option<egui::Context>,
}

impl EventSink {
    /// A sink and its receiving end; `wake` is repainted on each event (None in tests).
    pub fn new(wake: Option<egui::Context>) -> (EventSink, mpsc::Receiver<ClientEvent>) {
        let (sender, receiver) = mpsc::channel();
        (EventSink { sender, wake }, receiver)
    }

    /// Delivers one event; false once the window has gone.
    pub fn send(&self, event: ClientEvent) -> bool {
        let delivered = self.sender.send(event).is_ok();
        if let Some(context) = &self.wake {
            context.request_repaint_after(Duration::from_millis(16));
        }
        delivered
    }
}

/// What the client needs to know to start (besides the images it is asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Registrars to use (the bundled one, or `--registrar`); empty = listen for announces.
    pub registrars: Vec<SocketAddr>,
    /// Pool handle.
    pub pool: String,
    /// TLS with the registrars; `None`: plain TCP.
    pub registrar_tls: Option<rserpool::transport::TlsConfig>,
}

/// Builds the client for the window (the real one, or a stand-in).
pub type ClientFactory =
    Box<dyn FnOnce(ClientConfig, EventSink) -> anyhow::Result<Box<dyn ClientControl>>>;

pub use crate::bundle::{BundledPe, BundledRegistrar, ChildState};

/// Control of the processes the GUI started (the bundled demo pool).
pub trait PoolControl {
    fn registrars(&self) -> Vec<BundledRegistrar>;
    /// SIGKILL to registrar `id`: its peers take its PEs over.
    fn kill_registrar(&mut self, id: u32);
    /// SIGSTOP when running, SIGCONT when hung.
    fn toggle_hang_registrar(&mut self, id: u32);
    fn pool_elements(&self) -> Vec<BundledPe>;
    /// SIGKILL: the PE dies without a word.
    fn kill(&mut self, slot: usize);
    /// SIGSTOP when running, SIGCONT when hung.
    fn toggle_hang(&mut self, slot: usize);
    /// SIGTERM: final cookies, deregistration, exit.
    fn stop(&mut self, slot: usize);
    /// Starts the PE of this slot again (killing it first if it still runs).
    fn restart(&mut self, slot: usize);
    /// Starts a new PE with this capacity (iterations per second; None = unlimited).
    fn add(&mut self, capacity: Option<u64>);
    /// Restarts registrar `id` at the same addresses (empty: it learns from its peers).
    fn restart_registrar(&mut self, id: u32);
    /// Reaps exited children and reads their readiness lines; call once per frame.
    fn poll(&mut self);
}
