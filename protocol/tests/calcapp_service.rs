//! The CalcApp service and job client, each alone, in simulated time.

use std::time::{Duration, Instant};

use fractal_protocol::calcapp::{
    AbortReason, CalcAppService, ClientAction, ClientConfig, ClientFailure, JobClient, JobCookie,
    Message, MessageType, ServiceConfig, ServiceOutput, SessionId,
};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A service whose cookies and keep-alives stay out of the way unless a test wants them.
fn quiet(capacity: f64, max_jobs: usize) -> ServiceConfig {
    ServiceConfig {
        capacity,
        max_jobs,
        keep_alive_interval: Duration::from_secs(1000),
        keep_alive_timeout: Duration::from_secs(1000),
        cookie_max_calculations: u64::MAX / 2,
        cookie_max_time: Duration::from_secs(1000),
    }
}

fn drain(service: &mut CalcAppService) -> Vec<ServiceOutput> {
    std::iter::from_fn(|| service.poll_output()).collect()
}

/// Runs the service's timers until `until`, answering nothing; returns what it did, stamped.
fn run_until(service: &mut CalcAppService, until: Instant) -> Vec<(Instant, ServiceOutput)> {
    let mut seen = Vec::new();
    for _ in 0..100_000 {
        match service.poll_timeout() {
            Some(due) if due <= until => {
                service.handle_timeout(due);
                seen.extend(drain(service).into_iter().map(|output| (due, output)));
            }
            _ => return seen,
        }
    }
    panic!("the service's timers did not settle");
}

fn completions(outputs: &[(Instant, ServiceOutput)]) -> Vec<(Instant, SessionId)> {
    outputs
        .iter()
        .filter_map(|(at, output)| match output {
            ServiceOutput::Send {
                session,
                message:
                    Message {
                        kind: MessageType::Complete,
                        ..
                    },
            } => Some((*at, *session)),
            _ => None,
        })
        .collect()
}

fn close_to(actual: Instant, expected: Instant) -> bool {
    let gap = if actual > expected {
        actual - expected
    } else {
        expected - actual
    };
    gap <= ms(1)
}

#[test]
fn running_jobs_share_the_capacity_equally() {
    let t0 = Instant::now();
    let mut service = CalcAppService::new(quiet(1e6, 10), t0);
    service.handle_message(1, Message::request(11, 1_000_000), t0);
    let accepted = drain(&mut service);
    assert!(accepted.contains(&ServiceOutput::Send {
        session: 1,
        message: Message::for_job(MessageType::Accept, 11)
    }));
    assert!(accepted.contains(&ServiceOutput::Load(0.1)));
    // Alone for 0.5 s: half done. Then two jobs at 500k/s each: A's other half takes 1 s.
    let mut outputs = run_until(&mut service, t0 + ms(500));
    service.handle_message(2, Message::request(12, 1_000_000), t0 + ms(500));
    let progress = service.job_progress(1, t0 + ms(500)).unwrap();
    assert!((progress - 500_000.0).abs() < 1.0, "{progress}");
    outputs.extend(run_until(&mut service, t0 + ms(5000)));
    let done = completions(&outputs);
    assert_eq!(done.len(), 2, "{outputs:?}");
    // A: 0.5 + 1.0 s. B: 0.5 M in that second, then alone: 0.5 s more.
    assert_eq!(done[0].1, 1);
    assert!(close_to(done[0].0, t0 + ms(1500)), "{:?}", done[0].0 - t0);
    assert_eq!(done[1].1, 2);
    assert!(close_to(done[1].0, t0 + ms(2000)), "{:?}", done[1].0 - t0);
    let stats = service.stats();
    assert_eq!((stats.accepted, stats.completed), (2, 2));
    assert!(
        (stats.used_calculations - 2e6).abs() < 10.0,
        "{}",
        stats.used_calculations
    );
    assert_eq!(service.jobs(), 0);
    assert!(
        outputs
            .iter()
            .any(|(_, o)| *o == ServiceOutput::Finished { session: 2 })
    );
}

#[test]
fn a_full_service_rejects_requests_and_cookie_echoes() {
    let t0 = Instant::now();
    let mut service = CalcAppService::new(quiet(1e6, 2), t0);
    service.handle_message(1, Message::request(1, 10), t0);
    service.handle_message(2, Message::request(2, 10), t0);
    drain(&mut service);
    service.handle_message(3, Message::request(3, 10), t0);
    let cookie = JobCookie {
        job_id: 4,
        job_size: 10,
        completed: 5,
    }
    .encode();
    service.handle_cookie_echo(4, &cookie, t0);
    assert_eq!(
        drain(&mut service),
        vec![
            ServiceOutput::Send {
                session: 3,
                message: Message::for_job(MessageType::Reject, 3)
            },
            ServiceOutput::Finished { session: 3 },
            ServiceOutput::Send {
                session: 4,
                message: Message::for_job(MessageType::Reject, 4)
            },
            ServiceOutput::Finished { session: 4 },
        ]
    );
    assert_eq!(service.stats().rejected, 2);
    // Room again once a session closes.
    service.handle_closed(1, t0);
    service.handle_message(3, Message::request(3, 10), t0);
    assert!(drain(&mut service).contains(&ServiceOutput::Send {
        session: 3,
        message: Message::for_job(MessageType::Accept, 3)
    }));
}

#[test]
fn cookies_follow_calculations_or_time_whichever_comes_first() {
    let t0 = Instant::now();
    // By calculations: every 100k at 1M/s, i.e. every 0.1 s.
    let mut service = CalcAppService::new(
        ServiceConfig {
            cookie_max_calculations: 100_000,
            ..quiet(1e6, 10)
        },
        t0,
    );
    service.handle_message(1, Message::request(1, 1_000_000), t0);
    drain(&mut service);
    let outputs = run_until(&mut service, t0 + ms(2000));
    let cookies: Vec<(Instant, JobCookie)> = outputs
        .iter()
        .filter_map(|(at, o)| match o {
            ServiceOutput::Cookie { cookie, .. } => Some((*at, *cookie)),
            _ => None,
        })
        .collect();
    // 9 cookies (100k .. 900k); the 10th would coincide with the Complete.
    assert!((9..=10).contains(&cookies.len()), "{cookies:?}");
    for (n, (at, cookie)) in cookies.iter().take(9).enumerate() {
        let expected = 100_000 * (n as u64 + 1);
        assert!(cookie.completed.abs_diff(expected) <= 2, "{cookie:?}");
        assert!(close_to(*at, t0 + ms(100 * (n as u64 + 1))));
    }
    // By time: every 0.3 s, with calculations far from their limit.
    let mut service = CalcAppService::new(
        ServiceConfig {
            cookie_max_time: ms(300),
            ..quiet(1e6, 10)
        },
        t0,
    );
    service.handle_message(1, Message::request(1, 1_000_000), t0);
    drain(&mut service);
    let times: Vec<Instant> = run_until(&mut service, t0 + ms(2000))
        .into_iter()
        .filter(|(_, o)| matches!(o, ServiceOutput::Cookie { .. }))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(times.len(), 3, "0.3, 0.6, 0.9 s");
    assert!(close_to(times[2], t0 + ms(900)));
}

#[test]
fn a_job_resumes_from_its_cookie() {
    let t0 = Instant::now();
    let mut service = CalcAppService::new(quiet(1e6, 10), t0);
    let cookie = JobCookie {
        job_id: 9,
        job_size: 2_000_000,
        completed: 1_500_000,
    };
    service.handle_cookie_echo(5, &cookie.encode(), t0);
    assert!(drain(&mut service).contains(&ServiceOutput::Send {
        session: 5,
        message: Message::for_job(MessageType::Accept, 9)
    }));
    let done = completions(&run_until(&mut service, t0 + ms(5000)));
    assert_eq!(done.len(), 1);
    assert!(
        close_to(done[0].0, t0 + ms(500)),
        "the remaining 0.5 M at 1 M/s"
    );
    // A short or impossible cookie aborts the session.
    service.handle_cookie_echo(6, &[0; 12], t0);
    let bad = JobCookie {
        job_id: 1,
        job_size: 1,
        completed: 2,
    }
    .encode();
    service.handle_cookie_echo(7, &bad, t0);
    assert_eq!(
        drain(&mut service),
        vec![
            ServiceOutput::Abort {
                session: 6,
                reason: AbortReason::BadCookie
            },
            ServiceOutput::Abort {
                session: 7,
                reason: AbortReason::BadCookie
            },
        ]
    );
}

#[test]
fn an_unanswered_keep_alive_drops_the_job_and_an_answered_one_keeps_it() {
    let t0 = Instant::now();
    let config = ServiceConfig {
        keep_alive_interval: ms(2500),
        keep_alive_timeout: ms(2500),
        ..quiet(1e6, 10)
    };
    let mut service = CalcAppService::new(config, t0);
    service.handle_message(1, Message::request(1, 100_000_000), t0);
    service.handle_message(2, Message::request(2, 100_000_000), t0);
    drain(&mut service);
    // Both get a KeepAlive at 2.5 s; only session 2 answers.
    let outputs = run_until(&mut service, t0 + ms(2500));
    let keep_alives = outputs
        .iter()
        .filter(|(_, o)| matches!(o, ServiceOutput::Send { message, .. } if message.kind == MessageType::KeepAlive))
        .count();
    assert_eq!(keep_alives, 2);
    service.handle_message(
        2,
        Message::for_job(MessageType::KeepAliveAck, 2),
        t0 + ms(2600),
    );
    // A pool user's KeepAlive is answered.
    service.handle_message(
        2,
        Message::for_job(MessageType::KeepAlive, 2),
        t0 + ms(2700),
    );
    assert_eq!(
        drain(&mut service),
        vec![ServiceOutput::Send {
            session: 2,
            message: Message::for_job(MessageType::KeepAliveAck, 2)
        }]
    );
    let outputs = run_until(&mut service, t0 + ms(5000));
    assert!(
        outputs.contains(&(
            t0 + ms(5000),
            ServiceOutput::Abort {
                session: 1,
                reason: AbortReason::KeepAliveTimeout
            }
        )),
        "{outputs:?}"
    );
    assert_eq!(service.jobs(), 1);
    let left = &service.stats().jobs_left;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].job_id, 1);
    // 5 s at half of 1 M/s, none of it saved by a cookie.
    assert!((left[0].lost() - 2.5e6).abs() < 10.0, "{:?}", left[0]);
}

#[test]
fn a_clean_shutdown_sends_a_cookie_per_job_and_an_unclean_one_none() {
    let t0 = Instant::now();
    for clean in [true, false] {
        let mut service = CalcAppService::new(quiet(1e6, 10), t0);
        service.handle_message(1, Message::request(1, 10_000_000), t0);
        service.handle_message(2, Message::request(2, 10_000_000), t0);
        drain(&mut service);
        let left = service.shutdown(clean, t0 + ms(1000));
        let cookies: Vec<JobCookie> = drain(&mut service)
            .into_iter()
            .filter_map(|o| match o {
                ServiceOutput::Cookie { cookie, .. } => Some(cookie),
                _ => None,
            })
            .collect();
        assert_eq!(left.len(), 2);
        if clean {
            assert_eq!(cookies.len(), 2);
            assert!(cookies.iter().all(|c| c.completed.abs_diff(500_000) <= 1));
            assert!(left.iter().all(|l| l.lost() < 1.0));
        } else {
            assert!(cookies.is_empty());
            assert!(left.iter().all(|l| (l.lost() - 500_000.0).abs() < 1.0));
        }
        assert_eq!(service.jobs(), 0);
        assert_eq!(service.poll_timeout(), None);
    }
}

#[test]
fn hostile_input_gets_a_clean_answer() {
    let t0 = Instant::now();
    let mut service = CalcAppService::new(quiet(1e6, 10), t0);
    // A job of u64::MAX calculations schedules without overflowing the clock.
    service.handle_message(1, Message::request(1, u64::MAX), t0);
    assert!(service.poll_timeout().is_some());
    // A second Request in the session aborts it, and its job.
    service.handle_message(1, Message::request(2, 5), t0);
    let outputs = drain(&mut service);
    assert_eq!(
        outputs.last(),
        Some(&ServiceOutput::Abort {
            session: 1,
            reason: AbortReason::SecondRequest
        })
    );
    assert_eq!(service.jobs(), 0);
    // Messages only a PE sends, and keep-alives of unknown jobs, are ignored.
    for kind in [
        MessageType::Accept,
        MessageType::Reject,
        MessageType::Complete,
        MessageType::KeepAlive,
    ] {
        service.handle_message(9, Message::for_job(kind, 77), t0);
    }
    assert!(drain(&mut service).is_empty());
}

fn actions(client: &mut JobClient) -> Vec<ClientAction> {
    std::iter::from_fn(|| client.poll_action()).collect()
}

#[test]
fn the_client_keeps_its_pe_with_keep_alives_and_fails_over_without_an_answer() {
    let t0 = Instant::now();
    let config = ClientConfig {
        keep_alive_interval: ms(1000),
        keep_alive_timeout: ms(1000),
    };
    let mut client = JobClient::new(config, 3, 5_000, t0);
    client.start(t0);
    client.handle_connected(t0);
    // No answer to the Request within the timeout.
    client.handle_timeout(t0 + ms(1000));
    assert_eq!(
        actions(&mut client),
        vec![ClientAction::FailOver(ClientFailure::NoAnswer)]
    );
    client.handle_disconnected(true);
    // The next PE accepts.
    client.handle_connected(t0 + ms(1100));
    client.handle_message(t0 + ms(1200), Message::for_job(MessageType::Accept, 3));
    assert_eq!(actions(&mut client), vec![ClientAction::Progress]);
    assert_eq!(client.poll_timeout(), Some(t0 + ms(2200)));
    client.handle_timeout(t0 + ms(2200));
    assert_eq!(
        actions(&mut client),
        vec![ClientAction::Send(Message::for_job(
            MessageType::KeepAlive,
            3
        ))]
    );
    client.handle_message(
        t0 + ms(2300),
        Message::for_job(MessageType::KeepAliveAck, 3),
    );
    assert_eq!(actions(&mut client), vec![ClientAction::Progress]);
    client.handle_timeout(t0 + ms(3300));
    assert_eq!(actions(&mut client).len(), 1, "the next KeepAlive");
    client.handle_timeout(t0 + ms(4300));
    assert_eq!(
        actions(&mut client),
        vec![ClientAction::FailOver(ClientFailure::KeepAliveTimeout)]
    );
    assert_eq!(
        client.failovers(),
        1,
        "the second counts at handle_disconnected"
    );
    client.handle_disconnected(true);
    assert_eq!(client.failovers(), 2);
    // The PE's KeepAlive is answered; Reject before Accept asks for another PE; Complete ends.
    client.handle_connected(t0 + ms(4400));
    client.handle_message(t0 + ms(4400), Message::for_job(MessageType::KeepAlive, 3));
    assert_eq!(
        actions(&mut client),
        vec![ClientAction::Send(Message::for_job(
            MessageType::KeepAliveAck,
            3
        ))]
    );
    client.handle_message(t0 + ms(4500), Message::for_job(MessageType::Reject, 3));
    assert_eq!(actions(&mut client), vec![ClientAction::Rejected]);
    client.handle_disconnected(false);
    client.handle_connected(t0 + ms(4600));
    client.handle_message(t0 + ms(4600), Message::for_job(MessageType::Accept, 3));
    client.handle_message(t0 + ms(5000), Message::complete(3, 5_000));
    assert_eq!(
        actions(&mut client),
        vec![ClientAction::Progress, ClientAction::Completed]
    );
    let times = client.times();
    assert_eq!(times.startup_delay(), Some(ms(1200)), "to the first Accept");
    assert_eq!(times.processing_time(), Some(ms(3800)));
    assert_eq!(times.handling_time(), Some(ms(5000)));
    assert_eq!((client.accepts(), client.rejects()), (2, 1));
}

#[test]
fn the_client_refuses_messages_of_another_job() {
    let t0 = Instant::now();
    let mut client = JobClient::new(ClientConfig::default(), 3, 5_000, t0);
    client.handle_connected(t0);
    client.handle_message(t0, Message::for_job(MessageType::Accept, 4));
    assert_eq!(
        actions(&mut client),
        vec![ClientAction::FailOver(ClientFailure::WrongJob)]
    );
    client.handle_connected(t0);
    client.handle_message(t0, Message::for_job(MessageType::Accept, 3));
    client.handle_message(t0, Message::complete(3, 4_999));
    assert_eq!(
        actions(&mut client),
        vec![
            ClientAction::Progress,
            ClientAction::FailOver(ClientFailure::WrongJob)
        ]
    );
    assert!(!client.is_completed());
}
