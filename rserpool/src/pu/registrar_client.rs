//! The pool user's ASAP association to a registrar: Handle Resolution and Endpoint
//! Unreachable (a tokio task serving requests one at a time, so that answers match requests).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::discovery::SharedRegistrarTable;
use crate::transport::{self, Association, AssociationConfig, PPID_ASAP};
use crate::wire::param::HANDLE_RESOLUTION_ALL;
use crate::wire::{AsapMessage, PeId, Policy, PoolElement, PoolHandle};

/// A registrar's answer to a Handle Resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The registrar that answered.
    pub registrar: SocketAddr,
    /// The pool's policy, when the answer named one.
    pub policy: Option<Policy>,
    /// The PEs, in the registrar's order; empty for an empty or unknown pool.
    pub elements: Vec<PoolElement>,
}

/// Why a Handle Resolution got no answer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ResolveError {
    /// No registrar is known (none configured, no announce heard yet).
    #[error("no registrar known")]
    NoRegistrar,
    /// Every known registrar failed (connect, send, or no answer in time).
    #[error("no registrar reachable: {0}")]
    Unreachable(String),
    /// The pool user is shutting down.
    #[error("pool user stopped")]
    Stopped,
}

pub(crate) enum Request {
    Resolve {
        pool: PoolHandle,
        items: u32,
        /// Whether requests for the same pool queued meanwhile may take this answer (not
        /// for independent sessions: a registrar's answer is its choice for one asker).
        shared: bool,
        reply: oneshot::Sender<Result<Resolution, ResolveError>>,
    },
    Unreachable {
        pool: PoolHandle,
        pe_id: PeId,
    },
}

pub(crate) struct RegistrarClient {
    pub(crate) table: SharedRegistrarTable,
    pub(crate) association: AssociationConfig,
    pub(crate) answer_timeout: Duration,
    pub(crate) current: Option<Association>,
}

impl RegistrarClient {
    pub(crate) async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut next = None;
        loop {
            let request = match next.take() {
                Some(request) => request,
                None => match requests.recv().await {
                    Some(request) => request,
                    None => break,
                },
            };
            match request {
                Request::Resolve {
                    pool,
                    items,
                    shared,
                    reply,
                } => {
                    let answer = self.resolve(&pool, items).await;
                    // Sessions whose cache went stale together asked together (a new picture's
                    // tiles): the requests for the same pool queued meanwhile share this answer
                    // instead of waiting for one round trip each. Draining stops at any other
                    // request, so an Endpoint Unreachable is never overtaken.
                    // An independent session's answer (not `shared`) is the registrar's choice
                    // for it alone.
                    while shared && next.is_none() {
                        match requests.try_recv() {
                            Ok(Request::Resolve {
                                pool: other_pool,
                                items: other_items,
                                shared: true,
                                reply: other_reply,
                            }) if other_pool == pool && other_items == items => {
                                let _ = other_reply.send(answer.clone());
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = reply.send(answer);
                }
                Request::Unreachable { pool, pe_id } => {
                    let message = AsapMessage::EndpointUnreachable {
                        pool_handle: pool,
                        pe_id,
                    };
                    if let Err(error) = self.send_only(&message).await {
                        tracing::debug!(%error, pe = %pe_id, "endpoint unreachable not sent");
                    }
                }
            }
        }
        if let Some(association) = self.current.take() {
            let _ = association.close().await;
        }
    }

    /// Connects to the best known registrar unless already connected; drains anything the
    /// registrar sent unasked and notices a closed association.
    async fn ensure_connected(&mut self) -> Result<(), ResolveError> {
        if let Some(association) = self.current.as_mut() {
            loop {
                match association.try_recv() {
                    Ok(Some(frame)) => {
                        tracing::trace!(ppid = frame.ppid, "ignoring unsolicited registrar message")
                    }
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        tracing::info!(%error, registrar = %association.peer_addr(), "registrar association lost");
                        let lost = association.peer_addr();
                        self.current = None;
                        self.mark_failed(lost);
                        break;
                    }
                }
            }
        }
        let candidates = match self.table.lock() {
            Ok(mut table) => {
                let now = Instant::now();
                table.expire(now);
                table.candidates(now)
            }
            Err(_) => Vec::new(),
        };
        if candidates.is_empty() {
            return Err(ResolveError::NoRegistrar);
        }
        let mut last_error = String::new();
        for candidate in candidates {
            match transport::connect(candidate.address, self.association.clone()).await {
                Ok(association) => {
                    tracing::debug!(registrar = %candidate.address, "registrar association up");
                    if let Ok(mut table) = self.table.lock() {
                        table.mark_working(candidate.address);
                    }
                    self.current = Some(association);
                    return Ok(());
                }
                Err(error) => {
                    last_error = format!("{}: {error}", candidate.address);
                    self.mark_failed(candidate.address);
                }
            }
        }
        Err(ResolveError::Unreachable(last_error))
    }

    fn mark_failed(&self, address: SocketAddr) {
        if let Ok(mut table) = self.table.lock() {
            table.mark_failed(address, Instant::now());
        }
    }

    fn drop_current(&mut self) {
        if let Some(association) = self.current.take() {
            association.abort();
            self.mark_failed(association.peer_addr());
        }
    }

    async fn send_only(&mut self, message: &AsapMessage) -> Result<(), ResolveError> {
        let bytes = message
            .to_bytes()
            .map_err(|error| ResolveError::Unreachable(error.to_string()))?;
        for _ in 0..2 {
            self.ensure_connected().await?;
            if let Some(association) = self.current.as_ref()
                && association.send(PPID_ASAP, bytes.clone()).await.is_ok()
            {
                return Ok(());
            }
            self.drop_current();
        }
        Err(ResolveError::Unreachable("send failed".into()))
    }

    /// One Handle Resolution, trying a second registrar if the first fails.
    async fn resolve(&mut self, pool: &PoolHandle, items: u32) -> Result<Resolution, ResolveError> {
        let request = AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: pool.clone(),
            items: Some(items),
        };
        let mut last_error = ResolveError::NoRegistrar;
        for _ in 0..2 {
            if let Err(error) = self.send_only(&request).await {
                last_error = error;
                continue;
            }
            match self.await_answer(pool).await {
                Ok(resolution) => return Ok(resolution),
                Err(error) => {
                    last_error = error;
                    self.drop_current();
                }
            }
        }
        Err(last_error)
    }

    async fn await_answer(&mut self, pool: &PoolHandle) -> Result<Resolution, ResolveError> {
        let Some(association) = self.current.as_mut() else {
            return Err(ResolveError::Unreachable("no association".into()));
        };
        let registrar = association.peer_addr();
        let deadline = tokio::time::Instant::now() + self.answer_timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, association.recv())
                .await
                .map_err(|_| ResolveError::Unreachable(format!("{registrar}: no answer in time")))?
                .map_err(|error| ResolveError::Unreachable(format!("{registrar}: {error}")))?;
            if frame.ppid != PPID_ASAP {
                continue;
            }
            let Ok(decoded) = AsapMessage::decode(&frame.payload) else {
                tracing::debug!(%registrar, "undecodable message from registrar ignored");
                continue;
            };
            match decoded.message {
                AsapMessage::HandleResolutionResponse {
                    pool_handle,
                    policy,
                    pool_elements,
                    error,
                    ..
                } if &pool_handle == pool => {
                    if let Some(error) = error {
                        tracing::debug!(%registrar, cause = ?error.first_code(), "negative handle resolution");
                    }
                    return Ok(Resolution {
                        registrar,
                        policy,
                        elements: pool_elements,
                    });
                }
                AsapMessage::Error { error } => {
                    return Err(ResolveError::Unreachable(format!(
                        "{registrar}: operation error {:?}",
                        error.first_code()
                    )));
                }
                other => tracing::trace!(message = other.name(), "ignoring registrar message"),
            }
        }
    }
}

/// `items` for "every PE of the pool".
pub const ALL_ITEMS: u32 = HANDLE_RESOLUTION_ALL;

/// Asks the registrar at `registrar` once, on an association of its own, for every PE of
/// `pool` (a pool panel showing what each registrar lists, a test): no cache, no failover to
/// another registrar. Waits at most `timeout` for the answer.
pub async fn list_pool_at(
    registrar: SocketAddr,
    pool: &PoolHandle,
    config: AssociationConfig,
    timeout: Duration,
) -> Result<Resolution, ResolveError> {
    let unreachable = |error: &dyn std::fmt::Display| ResolveError::Unreachable(error.to_string());
    let mut association = transport::connect(registrar, config)
        .await
        .map_err(|e| unreachable(&e))?;
    let request = AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: pool.clone(),
        items: Some(HANDLE_RESOLUTION_ALL),
    };
    let bytes = request.to_bytes().map_err(|e| unreachable(&e))?;
    association
        .send(PPID_ASAP, bytes)
        .await
        .map_err(|e| unreachable(&e))?;
    let frame = tokio::time::timeout(timeout, association.recv())
        .await
        .map_err(|_| unreachable(&"no answer in time"))?
        .map_err(|e| unreachable(&e))?;
    let _ = association.close().await;
    match AsapMessage::decode(&frame.payload).map(|decoded| decoded.message) {
        Ok(AsapMessage::HandleResolutionResponse {
            policy,
            pool_elements,
            ..
        }) => Ok(Resolution {
            registrar,
            policy,
            elements: pool_elements,
        }),
        Ok(other) => Err(unreachable(&format_args!("unexpected {}", other.name()))),
        Err(error) => Err(unreachable(&error)),
    }
}
