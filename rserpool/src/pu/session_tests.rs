//! Simulated-time tests of the failover state machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::transport::{AssociationError, Frame, PPID_ASAP};
use crate::wire::{AsapMessage, PeId, Policy, PoolElement, TransportAddress};

use super::selector::{PeCandidate, PeSelector};
use super::session::{Action, FailureKind, SessionConfig, SessionEvent, SessionState};

const FGP: u32 = 32;

fn pe(id: u32) -> PeCandidate {
    PeCandidate {
        id: PeId(id),
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, 9000 + id as u16)),
        policy: Policy::RoundRobin,
    }
}

fn element(id: u32) -> PoolElement {
    PoolElement {
        id: PeId(id),
        home_registrar: 1,
        registration_life_ms: 15_000,
        user_transport: TransportAddress::Tcp {
            port: 9000 + id as u16,
            address: Ipv4Addr::LOCALHOST.into(),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

fn first_message() -> Frame {
    Frame::new(FGP, vec![1, 2, 3])
}

fn cookie_frame(bytes: &[u8]) -> Frame {
    let message = AsapMessage::Cookie {
        cookie: bytes.to_vec(),
    };
    Frame::new(PPID_ASAP, message.to_bytes().expect("encodable"))
}

fn drain(state: &mut SessionState) -> Vec<Action> {
    std::iter::from_fn(|| state.poll_action()).collect()
}

fn events(actions: &[Action]) -> Vec<&SessionEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn reports(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ReportUnreachable { pe_id } => Some(pe_id.0),
            _ => None,
        })
        .collect()
}

/// A session connected to `pe(1)` at `t0` that has received one data frame.
fn connected(t0: Instant) -> SessionState {
    let mut state = SessionState::new(SessionConfig::default(), first_message());
    state.start(t0);
    assert_eq!(drain(&mut state), vec![Action::Resolve { fresh: false }]);
    state.handle_resolved(t0, Some(pe(1)), None);
    assert_eq!(drain(&mut state), vec![Action::Connect(pe(1))]);
    state.handle_connected(t0);
    let actions = drain(&mut state);
    assert_eq!(actions[0], Action::Send(first_message()));
    state.handle_frame(t0, Frame::new(FGP, vec![9]));
    drain(&mut state);
    state
}

#[test]
fn data_silence_is_detected_after_the_session_timeout_and_reported_once() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    let timeout = state.config().session_timeout;
    assert_eq!(state.poll_timeout(), Some(t0 + timeout));
    // Just before the timeout nothing happens.
    state.handle_timeout(t0 + timeout - Duration::from_millis(1));
    assert!(drain(&mut state).is_empty());
    // Progress pushes the deadline.
    let t1 = t0 + Duration::from_millis(1500);
    state.handle_frame(t1, Frame::new(FGP, vec![1]));
    state.handle_progress(t1);
    drain(&mut state);
    state.handle_timeout(t0 + timeout);
    assert!(drain(&mut state).is_empty());
    state.handle_timeout(t1 + timeout);
    let actions = drain(&mut state);
    assert_eq!(actions[0], Action::Abort);
    assert_eq!(reports(&actions), vec![1]);
    assert!(actions.contains(&Action::Resolve { fresh: true }));
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SessionEvent::FailoverStarted { reason: FailureKind::DataSilence, silent_for, pe: p, .. }
            if *silent_for == timeout && p.id == PeId(1)
    )));
    // The old association closing afterwards does not report again.
    state.handle_closed(t1 + timeout, &AssociationError::Reset);
    state.handle_timeout(t1 + timeout * 3);
    assert!(reports(&drain(&mut state)).is_empty());
}

#[test]
fn connection_loss_fails_over_with_the_last_cookie() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    state.handle_frame(t0, cookie_frame(b"first"));
    state.handle_frame(t0, cookie_frame(b"second"));
    let actions = drain(&mut state);
    assert_eq!(
        events(&actions).len(),
        2,
        "each cookie is reported: {actions:?}"
    );
    assert_eq!(state.cookie(), Some(&b"second"[..]));
    let t1 = t0 + Duration::from_millis(100);
    state.handle_closed(t1, &AssociationError::Reset);
    let actions = drain(&mut state);
    assert_eq!(reports(&actions), vec![1]);
    assert!(actions.contains(&Action::Avoid {
        pe_id: PeId(1),
        duration: SessionConfig::default().avoid_failed_for
    }));
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SessionEvent::FailoverStarted {
            have_cookie: true,
            reason: FailureKind::ConnectionLost(_),
            ..
        }
    )));
    state.handle_resolved(t1, Some(pe(2)), None);
    assert_eq!(drain(&mut state), vec![Action::Connect(pe(2))]);
    let t2 = t1 + Duration::from_millis(5);
    state.handle_connected(t2);
    let actions = drain(&mut state);
    let echo = AsapMessage::CookieEcho {
        cookie: b"second".to_vec(),
    }
    .to_bytes()
    .expect("encodable");
    assert_eq!(actions[0], Action::Send(Frame::new(PPID_ASAP, echo)));
    // Completed only when the new PE delivers.
    assert!(
        !events(&actions)
            .iter()
            .any(|e| matches!(e, SessionEvent::FailoverCompleted { .. }))
    );
    let t3 = t2 + Duration::from_millis(3);
    state.handle_frame(t3, Frame::new(FGP, vec![7]));
    let actions = drain(&mut state);
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SessionEvent::FailoverCompleted { old_pe, new_pe, took, resumed: true }
            if old_pe.id == PeId(1) && new_pe.id == PeId(2) && *took == t3 - t1
    )));
}

#[test]
fn failure_before_any_cookie_restarts_with_the_first_message() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    state.handle_closed(t0, &AssociationError::Reset);
    let actions = drain(&mut state);
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SessionEvent::FailoverStarted {
            have_cookie: false,
            ..
        }
    )));
    state.handle_resolved(t0, Some(pe(2)), None);
    drain(&mut state);
    state.handle_connected(t0);
    assert_eq!(drain(&mut state)[0], Action::Send(first_message()));
}

#[test]
fn refusal_tries_another_pe_without_reporting() {
    let t0 = Instant::now();
    let mut state = SessionState::new(SessionConfig::default(), first_message());
    state.start(t0);
    drain(&mut state);
    state.handle_resolved(t0, Some(pe(1)), None);
    state.handle_connected(t0);
    drain(&mut state);
    // Closed before any frame: a full PE.
    state.handle_closed(t0, &AssociationError::ClosedByPeer);
    let actions = drain(&mut state);
    assert!(reports(&actions).is_empty(), "{actions:?}");
    assert!(actions.contains(&Action::Avoid {
        pe_id: PeId(1),
        duration: SessionConfig::default().avoid_refused_for
    }));
    assert!(events(&actions).contains(&&SessionEvent::Refused { pe: pe(1) }));
    assert!(actions.contains(&Action::Resolve { fresh: false }));
    // A heartbeat timeout before any frame is a failure, not a refusal.
    state.handle_resolved(t0, Some(pe(2)), None);
    state.handle_connected(t0);
    drain(&mut state);
    state.handle_closed(
        t0,
        &AssociationError::HeartbeatTimeout {
            silent_for: Duration::from_secs(2),
        },
    );
    assert_eq!(reports(&drain(&mut state)), vec![2]);
}

#[test]
fn connect_failure_is_reported_and_avoided() {
    let t0 = Instant::now();
    let mut state = SessionState::new(SessionConfig::default(), first_message());
    state.start(t0);
    drain(&mut state);
    state.handle_resolved(t0, Some(pe(3)), None);
    drain(&mut state);
    state.handle_connect_failed(t0, "refused".into());
    let actions = drain(&mut state);
    assert_eq!(reports(&actions), vec![3]);
    assert!(actions.contains(&Action::Resolve { fresh: true }));
}

#[test]
fn empty_pool_backs_off_with_a_cap_and_never_gives_up() {
    let config = SessionConfig::default();
    let mut state = SessionState::new(config.clone(), first_message());
    let mut now = Instant::now();
    state.start(now);
    drain(&mut state);
    let mut waits = Vec::new();
    for _ in 0..12 {
        state.handle_resolved(now, None, None);
        let actions = drain(&mut state);
        let retry_in = events(&actions)
            .iter()
            .find_map(|e| match e {
                SessionEvent::PoolEmpty { retry_in, .. } => Some(*retry_in),
                _ => None,
            })
            .expect("PoolEmpty reported");
        assert_eq!(state.poll_timeout(), Some(now + retry_in));
        // Not before the wait is over.
        state.handle_timeout(now + retry_in - Duration::from_millis(1));
        assert!(drain(&mut state).is_empty());
        now += retry_in;
        state.handle_timeout(now);
        assert_eq!(drain(&mut state), vec![Action::Resolve { fresh: true }]);
        waits.push(retry_in);
    }
    assert_eq!(waits[0], config.backoff_initial);
    assert_eq!(waits[1], config.backoff_initial * 2);
    assert!(waits.iter().all(|w| *w <= config.backoff_max));
    assert_eq!(*waits.last().expect("waits"), config.backoff_max);
    // A PE at last: the session goes on, and the backoff starts over after its first frame.
    state.handle_resolved(now, Some(pe(1)), None);
    state.handle_connected(now);
    state.handle_frame(now, Frame::new(FGP, vec![1]));
    state.handle_closed(now, &AssociationError::Reset);
    drain(&mut state);
    state.handle_resolved(now, None, None);
    let actions = drain(&mut state);
    assert!(events(&actions).contains(&&SessionEvent::PoolEmpty {
        retry_in: config.backoff_initial,
        detail: None
    }));
}

#[test]
fn finish_closes_and_later_closure_is_not_a_failure() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    state.finish(t0);
    let actions = drain(&mut state);
    assert_eq!(actions[0], Action::Close);
    assert!(events(&actions).contains(&&SessionEvent::Finished));
    state.handle_closed(t0, &AssociationError::ClosedByPeer);
    state.handle_timeout(t0 + Duration::from_secs(60));
    assert!(drain(&mut state).is_empty());
    assert_eq!(state.poll_timeout(), None);
}

/// The session and the shared selector together, as the driver combines them: a PE that
/// failed is not chosen again although the registrar keeps listing it.
#[test]
fn failed_pe_is_not_chosen_again_while_the_registrar_lists_it() {
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(1);
    let mut selector = PeSelector::new(Duration::ZERO);
    let mut now = Instant::now();
    let mut state = SessionState::new(SessionConfig::default(), first_message());
    state.start(now);
    let mut chosen = Vec::new();
    let mut total_reports = 0;
    for round in 0..6 {
        // Run the actions like the driver does, with a registrar that always lists 1 and 2.
        while let Some(action) = state.poll_action() {
            match action {
                Action::Resolve { .. } => {
                    selector.store(&[element(1), element(2)], now);
                    let pe = selector.choose(now, &mut rng);
                    state.handle_resolved(now, pe, None);
                }
                Action::Connect(pe) => {
                    chosen.push(pe.id);
                    state.handle_connected(now);
                }
                Action::Avoid { pe_id, duration } => selector.avoid(pe_id, now, duration),
                Action::ReportUnreachable { .. } => total_reports += 1,
                _ => {}
            }
        }
        if round == 0 {
            state.handle_frame(now, Frame::new(FGP, vec![0]));
            // PE hangs: detected by silence.
            now += state.config().session_timeout;
            state.handle_timeout(now);
        } else {
            // Keep the current PE alive.
            now += Duration::from_millis(100);
            state.handle_frame(now, Frame::new(FGP, vec![0]));
        }
    }
    assert_eq!(chosen, vec![PeId(1), PeId(2)], "PE 1 was not chosen again");
    assert_eq!(total_reports, 1);
}

#[test]
fn graceful_close_after_data_fails_over_without_report() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    state.handle_frame(t0, cookie_frame(b"c"));
    drain(&mut state);
    state.handle_closed(t0, &AssociationError::ClosedByPeer);
    let actions = drain(&mut state);
    assert!(reports(&actions).is_empty(), "{actions:?}");
    assert!(actions.contains(&Action::Avoid {
        pe_id: PeId(1),
        duration: SessionConfig::default().avoid_refused_for
    }));
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SessionEvent::FailoverStarted {
            have_cookie: true,
            reason: FailureKind::ConnectionLost(_),
            ..
        }
    )));
    assert!(actions.contains(&Action::Resolve { fresh: true }));
}

/// The Cookie Echo frame of `cookie`.
fn echo_frame(cookie: &[u8]) -> Frame {
    let echo = AsapMessage::CookieEcho {
        cookie: cookie.to_vec(),
    };
    Frame::new(PPID_ASAP, echo.to_bytes().expect("encodable"))
}

#[test]
fn a_resuming_session_echoes_its_cookie_and_forgetting_returns_to_it() {
    let t0 = Instant::now();
    let mut state =
        SessionState::resuming(SessionConfig::default(), first_message(), b"start".to_vec());
    state.start(t0);
    drain(&mut state);
    state.handle_resolved(t0, Some(pe(1)), None);
    drain(&mut state);
    state.handle_connected(t0);
    let actions = drain(&mut state);
    assert_eq!(actions[0], Action::Send(echo_frame(b"start")));
    assert!(events(&actions).contains(&&SessionEvent::Connected {
        pe: pe(1),
        resumed: true
    }));
    // The PE's own cookie replaces it; forgetting that one goes back to the first.
    state.handle_frame(t0, cookie_frame(b"later"));
    drain(&mut state);
    assert_eq!(state.cookie(), Some(&b"later"[..]));
    state.forget_cookie();
    assert_eq!(state.cookie(), Some(&b"start"[..]));
    state.fail(t0, FailureKind::ProtocolError("bad".into()));
    drain(&mut state);
    state.handle_resolved(t0, Some(pe(2)), None);
    drain(&mut state);
    state.handle_connected(t0);
    assert_eq!(drain(&mut state)[0], Action::Send(echo_frame(b"start")));
}

#[test]
fn a_busy_pool_is_asked_again_soon_without_backing_off() {
    let t0 = Instant::now();
    let config = SessionConfig::default();
    let mut state = SessionState::new(config.clone(), first_message());
    state.start(t0);
    drain(&mut state);
    for round in 0..5u32 {
        let now = t0 + config.avoid_refused_for * round;
        state.handle_busy(
            now,
            "all 2 listed pool elements full or failed just now".into(),
        );
        let actions = drain(&mut state);
        assert!(events(&actions).iter().any(|e| matches!(
            e,
            SessionEvent::PoolEmpty { retry_in, detail: Some(_) } if *retry_in == config.avoid_refused_for
        )));
        assert_eq!(state.poll_timeout(), Some(now + config.avoid_refused_for));
        state.handle_timeout(now + config.avoid_refused_for);
        // The cached answer will do: it lists PEs, they were only full.
        assert_eq!(drain(&mut state), vec![Action::Resolve { fresh: false }]);
    }
    // An empty pool still backs off from the start.
    let now = t0 + config.avoid_refused_for * 5;
    state.handle_resolved(now, None, None);
    assert_eq!(state.poll_timeout(), Some(now + config.backoff_initial));
}

fn asap_frame(message: AsapMessage) -> Frame {
    Frame::new(PPID_ASAP, message.to_bytes().expect("encodable"))
}

/// What a hostile PE sends to look alive: data the application finds nothing new in, cookies,
/// ASAP errors. None of it is progress.
fn busy_frames() -> Vec<Frame> {
    vec![
        Frame::new(FGP, vec![9]),
        Frame::new(FGP, Vec::new()),
        cookie_frame(b"spam"),
        asap_frame(AsapMessage::Error {
            error: crate::wire::OperationError::single(crate::wire::ErrorCause::new(
                crate::wire::CauseCode::UNSPECIFIED,
            )),
        }),
        asap_frame(AsapMessage::BusinessCard {
            pool_handle: crate::wire::PoolHandle::new(b"p".to_vec()).expect("handle"),
            policy: None,
            pool_elements: Vec::new(),
        }),
    ]
}

#[test]
fn frames_without_progress_do_not_keep_a_pe() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    let timeout = state.config().session_timeout;
    // A frame every 100 ms, none of them progress: the deadline stays.
    let mut now = t0;
    while now + Duration::from_millis(100) < t0 + timeout {
        now += Duration::from_millis(100);
        for frame in busy_frames() {
            state.handle_frame(now, frame);
        }
        drain(&mut state);
        assert_eq!(state.poll_timeout(), Some(t0 + timeout));
        state.handle_timeout(now);
        assert!(
            drain(&mut state)
                .iter()
                .all(|a| matches!(a, Action::Event(_)))
        );
    }
    state.handle_timeout(t0 + timeout);
    let actions = drain(&mut state);
    assert_eq!(actions[0], Action::Abort);
    assert_eq!(reports(&actions), vec![1]);
    assert!(actions.contains(&Action::Avoid {
        pe_id: PeId(1),
        duration: SessionConfig::default().avoid_failed_for
    }));
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SessionEvent::FailoverStarted { reason: FailureKind::DataSilence, silent_for, .. }
            if *silent_for == timeout
    )));
}

#[test]
fn progress_restarts_the_silence_timer_and_a_new_pe_gets_a_full_timeout() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    let timeout = state.config().session_timeout;
    let t1 = t0 + timeout / 2;
    state.handle_progress(t1);
    assert_eq!(state.poll_timeout(), Some(t1 + timeout));
    state.handle_timeout(t1 + timeout);
    drain(&mut state);
    // The next PE's timer runs from its connect.
    let t2 = t1 + timeout + Duration::from_millis(5);
    state.handle_resolved(t2, Some(pe(2)), None);
    state.handle_connected(t2);
    drain(&mut state);
    assert_eq!(state.poll_timeout(), Some(t2 + timeout));
    // Progress outside a connection is ignored.
    let mut idle = SessionState::new(SessionConfig::default(), first_message());
    idle.handle_progress(t0);
    assert_eq!(idle.poll_timeout(), None);
}

#[test]
fn a_protocol_error_is_reported_and_the_pe_avoided() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    let t1 = t0 + Duration::from_millis(10);
    state.fail(t1, FailureKind::ProtocolError("cookie ahead".into()));
    let actions = drain(&mut state);
    assert_eq!(actions[0], Action::Abort);
    assert_eq!(reports(&actions), vec![1]);
    assert!(actions.contains(&Action::Avoid {
        pe_id: PeId(1),
        duration: SessionConfig::default().avoid_failed_for
    }));
    assert!(actions.contains(&Action::Resolve { fresh: true }));
}

/// Connects `state` (resolving) to `pe(id)` at `now`; the PE sends `cookie`.
fn connect_with_cookie(state: &mut SessionState, now: Instant, id: u32, cookie: &[u8]) -> Frame {
    state.handle_resolved(now, Some(pe(id)), None);
    state.handle_connected(now);
    let sent = drain(state)
        .into_iter()
        .find_map(|a| match a {
            Action::Send(frame) => Some(frame),
            _ => None,
        })
        .expect("a first message");
    state.handle_frame(now, cookie_frame(cookie));
    drain(state);
    sent
}

fn dropped(actions: &[Action]) -> Option<bool> {
    events(actions).iter().find_map(|e| match e {
        SessionEvent::FailoverStarted {
            cookies_dropped, ..
        } => Some(*cookies_dropped),
        _ => None,
    })
}

#[test]
fn failovers_without_progress_end_in_the_fallback_cookie() {
    let t0 = Instant::now();
    let max = SessionConfig::default().max_stalled_failovers;
    assert!(max >= 2, "a single failover never drops cookies");
    let mut state = connected(t0);
    state.set_fallback_cookie(b"own".to_vec());
    state.handle_frame(t0, cookie_frame(b"pe-1"));
    drain(&mut state);
    let timeout = state.config().session_timeout;
    let mut now = t0;
    // Each PE echoes the previous PE's cookie, sends its own and stalls.
    for n in 1..max {
        now += timeout;
        state.handle_timeout(now);
        assert_eq!(dropped(&drain(&mut state)), Some(false), "failover {n}");
        let sent = connect_with_cookie(&mut state, now, n + 1, format!("pe-{}", n + 1).as_bytes());
        assert_eq!(sent, echo_frame(format!("pe-{n}").as_bytes()));
    }
    now += timeout;
    state.handle_timeout(now);
    assert_eq!(dropped(&drain(&mut state)), Some(true));
    assert_eq!(state.cookie(), Some(&b"own"[..]));
    let sent = connect_with_cookie(&mut state, now, 9, b"pe-9");
    assert_eq!(sent, echo_frame(b"own"));
    // Progress: the count starts again, the next failover echoes the PE's cookie.
    state.handle_progress(now);
    now += timeout;
    state.handle_timeout(now);
    assert_eq!(dropped(&drain(&mut state)), Some(false));
    assert_eq!(state.cookie(), Some(&b"pe-9"[..]));
}

#[test]
fn without_a_fallback_stalled_failovers_restart_from_the_first_message() {
    let t0 = Instant::now();
    let mut state = connected(t0);
    let timeout = state.config().session_timeout;
    let mut now = t0;
    for n in 1..=state.config().max_stalled_failovers {
        state.handle_frame(now, cookie_frame(b"pe"));
        drain(&mut state);
        now += timeout;
        state.handle_timeout(now);
        drain(&mut state);
        state.handle_resolved(now, Some(pe(n + 1)), None);
        state.handle_connected(now);
        let sent = drain(&mut state);
        let expected = if n < state.config().max_stalled_failovers {
            echo_frame(b"pe")
        } else {
            first_message()
        };
        assert!(
            sent.contains(&Action::Send(expected)),
            "failover {n}: {sent:?}"
        );
    }
}
