//! A fake registrar for pool element tests, built from the wire codecs: a framed-TCP listener
//! on loopback speaking ASAP that grants every Registration, answers every Deregistration, and
//! hands every ASAP message a pool element sends to the test, in order.
//!
//! Used by the in-process tests of the PE registration driver and of the `pool-element` library
//! and by the end-to-end tests of the `pool-element` program.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rserpool::transport::{self, AssociationConfig, AssociationSender, Listener, PPID_ASAP};
use rserpool::wire::{AsapMessage, PoolElement, PoolHandle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::READY_TIMEOUT;

/// What the fake registrar received: a message, or why a frame was not one.
type Received = Result<AsapMessage, String>;

/// A registrar that grants every registration and records every message.
///
/// Dropping it (or [`FakeRegistrar::stop`]) closes its listener and resets its associations.
pub struct FakeRegistrar {
    address: SocketAddr,
    messages: mpsc::UnboundedReceiver<Received>,
    associations: Arc<Mutex<Vec<AssociationSender>>>,
    accept: JoinHandle<()>,
}

impl FakeRegistrar {
    /// Listens on a free loopback port.
    pub async fn start() -> FakeRegistrar {
        let listener = transport::bind(
            "127.0.0.1:0".parse().expect("address"),
            AssociationConfig::default(),
        )
        .await
        .expect("bind");
        let address = listener.local_addr().expect("bound");
        let (tx, messages) = mpsc::unbounded_channel();
        let associations = Arc::new(Mutex::new(Vec::new()));
        let list = associations.clone();
        // The listener lives in this task: aborting it closes the listening socket.
        let accept = tokio::spawn(async move {
            while let Ok(association) = listener.accept().await {
                let (sender, mut receiver) = association.split();
                list.lock().expect("lock").push(sender.clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Ok(frame) = receiver.recv().await {
                        if frame.ppid != PPID_ASAP {
                            let _ = tx.send(Err(format!("a frame with PPID {}", frame.ppid)));
                            continue;
                        }
                        let message = match AsapMessage::decode(&frame.payload) {
                            Ok(decoded) => decoded.message,
                            Err(error) => {
                                let _ = tx.send(Err(format!("invalid ASAP: {error:?}")));
                                continue;
                            }
                        };
                        let reply = answer(&message);
                        let _ = tx.send(Ok(message));
                        if let Some(reply) = reply {
                            let _ = sender
                                .send(PPID_ASAP, reply.to_bytes().expect("encodable"))
                                .await;
                        }
                    }
                });
            }
        });
        FakeRegistrar {
            address,
            messages,
            associations,
            accept,
        }
    }

    /// The ASAP address to give the pool element.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The next message the pool element sent, whatever it is (within [`READY_TIMEOUT`]).
    pub async fn next(&mut self) -> AsapMessage {
        self.expect("the next message", |_| true).await
    }

    /// The next message satisfying `pred`; others are skipped. Panics after [`READY_TIMEOUT`],
    /// and on a frame that is not an ASAP message.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&AsapMessage) -> bool) -> AsapMessage {
        timeout(READY_TIMEOUT, async {
            loop {
                match self.messages.recv().await.expect("registrar running") {
                    Ok(message) if pred(&message) => return message,
                    Ok(_) => {}
                    Err(error) => panic!("the fake registrar received {error}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// The next Registration (others are skipped): its pool handle and pool element.
    pub async fn expect_registration(&mut self) -> (PoolHandle, PoolElement) {
        match self
            .expect("registration", |m| {
                matches!(m, AsapMessage::Registration { .. })
            })
            .await
        {
            AsapMessage::Registration {
                pool_handle,
                pool_element,
            } => (pool_handle, pool_element),
            _ => unreachable!(),
        }
    }

    /// Forgets the messages received so far.
    pub fn discard_received(&mut self) {
        while self.messages.try_recv().is_ok() {}
    }

    /// Sends `message` on every association accepted so far.
    pub async fn send_to_all(&self, message: AsapMessage) {
        let senders = self.associations.lock().expect("lock").clone();
        for sender in senders {
            let _ = sender
                .send(PPID_ASAP, message.to_bytes().expect("encodable"))
                .await;
        }
    }

    /// Resets every association accepted so far (a registrar restart); the listener stays.
    pub fn drop_associations(&self) {
        // Never poisoned (nothing panics while holding it); this also runs in `drop`.
        let mut list = self.associations.lock().unwrap_or_else(|e| e.into_inner());
        for sender in list.drain(..) {
            sender.abort();
        }
    }

    /// The registrar dies: the listener is closed when this returns (a pool element's next
    /// connection attempt is refused), and every association is reset.
    pub async fn stop(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.drop_associations();
    }
}

impl Drop for FakeRegistrar {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_associations();
    }
}

/// The registrar's answer to `message`: grants and confirmations only.
fn answer(message: &AsapMessage) -> Option<AsapMessage> {
    match message {
        AsapMessage::Registration {
            pool_handle,
            pool_element,
        } => Some(AsapMessage::RegistrationResponse {
            rejected: false,
            pool_handle: pool_handle.clone(),
            pe_id: pool_element.id,
            error: None,
        }),
        AsapMessage::Deregistration { pool_handle, pe_id } => {
            Some(AsapMessage::DeregistrationResponse {
                pool_handle: pool_handle.clone(),
                pe_id: *pe_id,
                error: None,
            })
        }
        _ => None,
    }
}
