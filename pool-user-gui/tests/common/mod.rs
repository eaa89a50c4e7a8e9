//! Fake registrar and fake pool elements for the client tests: built from the wire codecs and
//! the reference kernel, in-process. The fake PE lives in the `e2e` crate, whose `hostile-pe`
//! program runs the same PE as a real process.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use rserpool::transport::{self, AssociationConfig, Listener, PPID_ASAP};
use rserpool::wire::{AsapMessage, PeId, Policy, PoolElement, TransportAddress};

#[allow(unused_imports)] // Not every test binary uses all of them.
pub use e2e::fake_pe::{Behaviour, FakePe, Hostile};

pub const POOL: &str = "FractalGeneratorPool";

/// A registrar that lists whatever PEs the test puts in `elements` and records unreachable
/// reports.
pub struct FakeRegistrar {
    pub address: SocketAddr,
    pub elements: Arc<Mutex<Vec<PoolElement>>>,
    pub reports: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegistrar {
    pub async fn start() -> FakeRegistrar {
        let listener = transport::bind(local(0), AssociationConfig::default())
            .await
            .expect("bind registrar");
        let address = listener.local_addr().expect("registrar address");
        let elements = Arc::new(Mutex::new(Vec::new()));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let (list, seen) = (elements.clone(), reports.clone());
        let task = tokio::spawn(async move {
            let mut associations = tokio::task::JoinSet::new();
            while let Ok(mut association) = listener.accept().await {
                let (list, seen) = (list.clone(), seen.clone());
                associations.spawn(async move {
                    while let Ok(frame) = association.recv().await {
                        let Ok(decoded) = AsapMessage::decode(&frame.payload) else {
                            continue;
                        };
                        match decoded.message {
                            AsapMessage::HandleResolution { pool_handle, .. } => {
                                let pool_elements = list.lock().expect("list").clone();
                                let answer = AsapMessage::HandleResolutionResponse {
                                    accepted: true,
                                    pool_handle,
                                    policy: Some(Policy::RoundRobin),
                                    pool_elements,
                                    error: None,
                                };
                                let bytes = answer.to_bytes().expect("encodable");
                                if association.send(PPID_ASAP, bytes).await.is_err() {
                                    return;
                                }
                            }
                            AsapMessage::EndpointUnreachable { pe_id, .. } => {
                                seen.lock().expect("reports").push(pe_id.0)
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        FakeRegistrar {
            address,
            elements,
            reports,
            task,
        }
    }

    pub fn add(&self, pe: &FakePe) {
        self.elements.lock().expect("list").push(PoolElement {
            id: PeId(pe.id),
            home_registrar: 1,
            registration_life_ms: 15_000,
            user_transport: TransportAddress::Tcp {
                port: pe.address.port(),
                address: pe.address.ip(),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        });
    }

    pub fn reports_of(&self, pe_id: u32) -> usize {
        let reports = self.reports.lock().expect("reports");
        reports.iter().filter(|&&id| id == pe_id).count()
    }
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
