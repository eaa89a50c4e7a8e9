//! A fake pool element built from the FGP codecs and the reference kernel: it serves pictures
//! correctly, or fails the ways a test asks for (SIGKILL, SIGSTOP, refusals, lost Data) and
//! misbehaves the ways a hostile PE would (issue 16). The client tests of `pool-user-gui` run it
//! in-process; the `hostile-pe` program runs it as a real process registered at a registrar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fractal_protocol::cookie::Cookie;
use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::message::{Data, MAX_POINTS_PER_DATA, PPID_FGP, Parameter};
use rserpool::transport::{self, AssociationConfig, Listener, PPID_ASAP};
use rserpool::wire::{AsapMessage, CauseCode, ErrorCause, OperationError};
use tokio::sync::watch;

/// How a fake PE misbehaves.
#[derive(Clone, Copy, Default)]
pub struct Behaviour {
    /// Send a cookie after every this many Data messages (0 = never).
    pub cookie_every: u64,
    /// Like `--fail-after`: after this many Data messages of a session, cookie, then close.
    pub fail_after: Option<u64>,
    /// Like SIGKILL: after this many Data messages in total, every association and the
    /// listener vanish without a final cookie.
    pub crash_after: Option<u64>,
    /// Like SIGSTOP: after this many Data messages in total, nothing is sent any more (new
    /// associations are accepted but never served).
    pub hang_after: Option<u64>,
    /// Refuse sessions beyond this many at once (close before any frame).
    pub max_sessions: Option<u64>,
    /// Leave out the Data message with this number (counting all sessions, from 1) but go on
    /// as if it had been sent: later cookies skip its pixels, and the finalizer comes with
    /// them missing.
    pub skip_data: Option<u64>,
    /// Pause between Data messages.
    pub pace: Duration,
    /// After `.1` Data messages of a session, misbehave like this for ever instead.
    pub hostile: Option<(Hostile, u64)>,
}

/// What a hostile fake PE sends, every 50 ms, instead of new pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Hostile {
    /// Its last Data message again.
    RepeatData,
    /// Data messages without points, at its position.
    EmptyData,
    /// Cookies at its position, and ASAP Errors.
    CookieSpam,
    /// Cookies claiming the unit is finished.
    CookieAhead,
}

pub struct FakePe {
    pub id: u32,
    pub address: SocketAddr,
    pub data_sent: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePe {
    /// A PE listening on an ephemeral loopback port.
    pub async fn start(id: u32, behaviour: Behaviour) -> FakePe {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), id, behaviour).await
    }

    /// A PE listening on `listen`.
    pub async fn start_on(listen: SocketAddr, id: u32, behaviour: Behaviour) -> FakePe {
        let listener = transport::bind(listen, AssociationConfig::default())
            .await
            .expect("bind PE");
        let address = listener.local_addr().expect("PE address");
        let data_sent = Arc::new(AtomicU64::new(0));
        let sessions = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (crash, mut crashed) = watch::channel(false);
        let (total, active, refusals) = (data_sent.clone(), sessions.clone(), refused.clone());
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = crashed.wait_for(|&c| c) => return,
                };
                let Ok(association) = accepted else { return };
                let full = behaviour
                    .max_sessions
                    .is_some_and(|max| active.load(Ordering::SeqCst) >= max);
                if full {
                    refusals.fetch_add(1, Ordering::SeqCst);
                    drop(association);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (total, active, crash) = (total.clone(), active.clone(), crash.clone());
                running.spawn(async move {
                    serve(association, behaviour, &total, &crash).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FakePe {
            id,
            address,
            data_sent,
            refused,
            task,
        }
    }
}

async fn serve(
    mut association: transport::Association,
    behaviour: Behaviour,
    total: &AtomicU64,
    crash: &watch::Sender<bool>,
) {
    let hung = |total: &AtomicU64| {
        behaviour
            .hang_after
            .is_some_and(|n| total.load(Ordering::SeqCst) >= n)
    };
    if hung(total) {
        std::future::pending::<()>().await;
    }
    let Ok(first) = association.recv().await else {
        return;
    };
    let (parameter, mut position) = match first.ppid {
        PPID_FGP => match Parameter::decode(&first.payload) {
            Ok(parameter) => (parameter, (0, 0)),
            Err(_) => return association.abort(),
        },
        PPID_ASAP => match AsapMessage::decode(&first.payload).map(|d| d.message) {
            Ok(AsapMessage::CookieEcho { cookie }) => match Cookie::decode(&cookie) {
                Ok(cookie) => (cookie.parameter, (cookie.current_x, cookie.current_y)),
                Err(_) => return association.abort(),
            },
            _ => return association.abort(),
        },
        _ => return association.abort(),
    };
    let view = View::new(&parameter, KernelChoice::Scalar);
    let send_cookie = |position: (u32, u32)| {
        let cookie = Cookie {
            parameter,
            current_x: position.0,
            current_y: position.1,
        };
        let message = AsapMessage::Cookie {
            cookie: cookie.encode().to_vec(),
        };
        message.to_bytes().expect("encodable")
    };
    let mut sent_here = 0u64;
    let mut buffer = vec![0u32; MAX_POINTS_PER_DATA];
    let mut last_data = Vec::new();
    loop {
        if let Some((hostile, after)) = behaviour.hostile
            && sent_here >= after
        {
            let finished = (0, parameter.height);
            let frames = match hostile {
                Hostile::RepeatData => vec![(PPID_FGP, last_data.clone())],
                Hostile::EmptyData => {
                    let empty = Data::new(position.0, position.1, Vec::new());
                    vec![(PPID_FGP, empty.encode().expect("encodable"))]
                }
                Hostile::CookieSpam => {
                    let error = AsapMessage::Error {
                        error: OperationError::single(ErrorCause::new(CauseCode::UNSPECIFIED)),
                    };
                    vec![
                        (PPID_ASAP, send_cookie(position)),
                        (PPID_ASAP, error.to_bytes().expect("encodable")),
                    ]
                }
                Hostile::CookieAhead => vec![(PPID_ASAP, send_cookie(finished))],
            };
            for (ppid, payload) in frames {
                if association.send(ppid, payload).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let remaining = view.remaining_from(position);
        if remaining == 0 {
            break;
        }
        let count = remaining.min(MAX_POINTS_PER_DATA as u64) as usize;
        view.compute(position, &mut buffer[..count])
            .expect("inside the view");
        let data = Data::new(position.0, position.1, buffer[..count].to_vec());
        let sent_total = total.fetch_add(1, Ordering::SeqCst) + 1;
        last_data = data.encode().expect("encodable");
        if behaviour.skip_data != Some(sent_total)
            && association.send(PPID_FGP, last_data.clone()).await.is_err()
        {
            return;
        }
        position = view
            .advance(position, count as u64)
            .expect("advance within view");
        sent_here += 1;
        if behaviour.cookie_every > 0 && sent_here.is_multiple_of(behaviour.cookie_every) {
            let _ = association.send(PPID_ASAP, send_cookie(position)).await;
        }
        if behaviour.crash_after.is_some_and(|n| sent_total >= n) {
            let _ = crash.send(true);
            association.abort();
            return;
        }
        if hung(total) {
            std::future::pending::<()>().await;
        }
        if behaviour.fail_after == Some(sent_here) {
            let _ = association.send(PPID_ASAP, send_cookie(position)).await;
            let _ = association.close().await;
            return;
        }
        if !behaviour.pace.is_zero() {
            tokio::time::sleep(behaviour.pace).await;
        }
    }
    let finalizer = Data::finalizer().encode().expect("encodable");
    let _ = association.send(PPID_FGP, finalizer).await;
    let _ = association.close().await;
}
