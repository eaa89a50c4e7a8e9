//! Cross-role behaviour in simulated time: registrars, pool elements and pool users wired
//! together by `rserpool::sim`, no sockets, no sleeps. Each test reads as a story: who
//! registers, who is served, what fails, what the others notice.

use std::time::Duration;

use rserpool::pe::Event as PeEvent;
use rserpool::pu::session::{FailureKind, SessionConfig, SessionEvent};
use rserpool::registrar::keepalive::KeepAliveConfig;
use rserpool::registrar::reports::{Ignored, ReportConfig};
use rserpool::registrar::{RegistrarConfig, RegistrarEvent, RemovalReason};
use rserpool::sim::{Hostility, Node, PeSpec, PuSpec, Record, Sim, SimConfig, Verdict};
use rserpool::transport::AssociationError;
use rserpool::wire::{AsapMessage, CauseCode, PoolHandle};

const POOL: &str = "SimPool";
/// A job's items (one per 10 ms on a PE: a second of work).
const ITEMS: u32 = 100;
/// A cookie every this many items.
const COOKIE_EVERY: u32 = 10;

fn sim_with(registrar: RegistrarConfig, pes: usize) -> Sim {
    let mut sim = Sim::new(SimConfig::default());
    sim.add_registrar(registrar);
    for _ in 0..pes {
        sim.add_pe(PeSpec::new(POOL));
    }
    sim.run_until_or_panic(Duration::from_secs(1), "PEs registered", |sim| {
        (0..pes).all(|pe| sim.lists(0, pe))
    });
    sim
}

fn sim(pes: usize) -> Sim {
    sim_with(RegistrarConfig::default(), pes)
}

fn items_received(sim: &Sim, pu: usize, session: usize) -> usize {
    sim.job(pu, session)
        .received
        .iter()
        .filter(|&&count| count > 0)
        .count()
}

/// The PE serving a session now (by data address order: PE n is 10.1.0.n+1).
fn serving_pe(sim: &Sim, pu: usize, session: usize) -> usize {
    let connected = sim
        .job(pu, session)
        .events_where(|e| matches!(e, SessionEvent::Connected { .. }));
    let Some(SessionEvent::Connected { pe, .. }) = connected.last() else {
        panic!("session {pu}/{session} never connected\n{}", sim.dump());
    };
    (0..8)
        .find(|&index| sim.pe_id(index) == pe.id)
        .expect("a PE of the simulation")
}

fn removal(sim: &Sim, pe: usize) -> Option<(std::time::Instant, RemovalReason)> {
    let id = sim.pe_id(pe);
    sim.registrar_events(0)
        .into_iter()
        .find_map(|(at, event)| match event {
            RegistrarEvent::Removed { pe, reason, .. } if pe == id => Some((at, reason)),
            _ => None,
        })
}

fn finish(sim: &mut Sim, pu: usize, session: usize) {
    sim.run_until_or_panic(Duration::from_secs(30), "job finished", |sim| {
        sim.job(pu, session).finished_at.is_some()
    });
    assert!(sim.job(pu, session).is_complete());
}

#[test]
fn registered_pes_serve_a_job_without_failover() {
    let mut sim = sim(3);
    let pu = sim.add_pu(PuSpec::new(POOL));
    let session = sim.start_job(pu, ITEMS);
    finish(&mut sim, pu, session);
    let job = sim.job(pu, session);
    assert_eq!(job.duplicates(), 0);
    assert!(
        job.events_where(|e| matches!(e, SessionEvent::FailoverStarted { .. }))
            .is_empty()
    );
    assert_eq!(sim.registrar(0).handlespace().pool_element_count(), 3);
}

#[test]
fn a_killed_pe_is_reported_and_the_job_resumes_from_its_last_cookie() {
    let mut sim = sim(2);
    let pu = sim.add_pu(PuSpec::new(POOL));
    let session = sim.start_job(pu, ITEMS);
    sim.run_until_or_panic(Duration::from_secs(5), "35 items", |sim| {
        items_received(sim, pu, session) >= 35
    });
    let victim = serving_pe(&sim, pu, session);
    sim.kill(Node::Pe(victim));
    finish(&mut sim, pu, session);

    let job = sim.job(pu, session);
    let started = job.events_where(|e| matches!(e, SessionEvent::FailoverStarted { .. }));
    assert!(
        matches!(
            started.as_slice(),
            [SessionEvent::FailoverStarted {
                reason: FailureKind::ConnectionLost(_),
                have_cookie: true,
                ..
            }]
        ),
        "{started:?}"
    );
    let reported = job.events_where(|e| matches!(e, SessionEvent::UnreachableReported { .. }));
    assert_eq!(reported.len(), 1);
    let completed =
        job.events_where(|e| matches!(e, SessionEvent::FailoverCompleted { resumed: true, .. }));
    assert_eq!(completed.len(), 1);
    // Only what came after the last cookie is sent again.
    assert!(
        job.duplicates() < COOKIE_EVERY,
        "{} items twice",
        job.duplicates()
    );
    assert_ne!(serving_pe(&sim, pu, session), victim);
    // The registrar saw the PE's association reset and removed it at once.
    assert_eq!(
        removal(&sim, victim).map(|(_, reason)| reason),
        Some(RemovalReason::AssociationClosed)
    );
}

#[test]
fn a_hung_pe_is_left_after_the_session_timeout_and_removed_by_keep_alives() {
    let keepalive = KeepAliveConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };
    let mut sim = sim_with(
        RegistrarConfig {
            keepalive,
            ..RegistrarConfig::default()
        },
        2,
    );
    let pu = sim.add_pu(PuSpec::new(POOL));
    let session = sim.start_job(pu, ITEMS);
    sim.run_until_or_panic(Duration::from_secs(5), "20 items", |sim| {
        items_received(sim, pu, session) >= 20
    });
    let victim = serving_pe(&sim, pu, session);
    let hung_at = sim.now();
    sim.hang(Node::Pe(victim));
    finish(&mut sim, pu, session);

    let job = sim.job(pu, session);
    let started: Vec<_> = job
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            SessionEvent::FailoverStarted {
                reason, silent_for, ..
            } => Some((*at, reason.clone(), *silent_for)),
            _ => None,
        })
        .collect();
    let [(detected_at, FailureKind::DataSilence, silent_for)] = started.as_slice() else {
        panic!("{started:?}");
    };
    let timeout = SessionConfig::default().session_timeout;
    assert!(
        *silent_for >= timeout && *detected_at - hung_at <= timeout + Duration::from_millis(20)
    );
    assert!(job.duplicates() < COOKIE_EVERY);

    // The registrar finds out by itself: one keep-alive interval (±12.5 %) and its timeout.
    sim.run_until_or_panic(Duration::from_secs(5), "hung PE removed", |sim| {
        removal(sim, victim).is_some()
    });
    let (removed_at, reason) = removal(&sim, victim).expect("removed");
    assert_eq!(reason, RemovalReason::KeepAliveTimeout);
    assert!(removed_at - hung_at <= Duration::from_millis(2_250) + Duration::from_millis(50));
}

/// Three pool users' sessions on one PE that hangs; keep-alives are too slow to matter.
fn three_users_on_a_hanging_pe(users: usize) -> (Sim, usize, Vec<(usize, usize)>) {
    let mut sim = sim_with(
        RegistrarConfig {
            keepalive: KeepAliveConfig {
                interval: Duration::from_secs(600),
                timeout: Duration::from_secs(600),
            },
            ..RegistrarConfig::default()
        },
        1,
    );
    let jobs: Vec<(usize, usize)> = (0..users)
        .map(|_| {
            let pu = sim.add_pu(PuSpec::new(POOL));
            (pu, sim.start_job(pu, ITEMS))
        })
        .collect();
    sim.run_until_or_panic(Duration::from_secs(5), "every job under way", |sim| {
        jobs.iter().all(|&(pu, s)| items_received(sim, pu, s) >= 10)
    });
    let spare = sim.add_pe(PeSpec::new(POOL));
    sim.run_until_or_panic(Duration::from_secs(1), "spare PE registered", |sim| {
        sim.lists(0, spare)
    });
    sim.hang(Node::Pe(0));
    for &(pu, session) in &jobs {
        finish(&mut sim, pu, session);
    }
    (sim, spare, jobs)
}

#[test]
fn max_bad_pe_report_distinct_pool_users_have_a_hung_pe_probed_and_removed() {
    let (mut sim, spare, jobs) = three_users_on_a_hanging_pe(3);
    sim.run_until_or_panic(Duration::from_secs(2), "the probe fails", |sim| {
        removal(sim, 0).is_some()
    });
    let (removed_at, reason) = removal(&sim, 0).expect("the hung PE was removed");
    assert_eq!(reason, RemovalReason::UnreachableReports);
    let probed_at = sim
        .registrar_events(0)
        .into_iter()
        .find_map(|(at, e)| matches!(e, RegistrarEvent::ProbeStarted { .. }).then_some(at))
        .expect("a probe before the removal");
    assert_eq!(
        removed_at - probed_at,
        ReportConfig::default().probe_timeout
    );
    let reports: Vec<usize> = sim
        .registrar_events(0)
        .into_iter()
        .filter_map(|(_, e)| match e {
            RegistrarEvent::UnreachableReport { count, .. } => Some(count),
            _ => None,
        })
        .collect();
    assert_eq!(reports, [1, 2, 3]);
    for (pu, session) in jobs {
        assert_eq!(serving_pe(&sim, pu, session), spare);
    }
}

#[test]
fn fewer_reporters_than_max_bad_pe_report_leave_the_pe_listed() {
    let (sim, _, _) = three_users_on_a_hanging_pe(2);
    assert_eq!(removal(&sim, 0), None, "{}", sim.dump());
    assert!(sim.lists(0, 0));
}

/// A registrar that probes at two reports, one PE, and pool users that each had a job on it
/// (so the registrar handed them the PE).
fn served_users(users: usize) -> (Sim, Vec<usize>) {
    let mut sim = sim_with(
        RegistrarConfig {
            max_bad_pe_reports: 2,
            ..RegistrarConfig::default()
        },
        1,
    );
    let pus: Vec<usize> = (0..users)
        .map(|_| {
            let pu = sim.add_pu(PuSpec::new(POOL));
            let session = sim.start_job(pu, 5);
            finish(&mut sim, pu, session);
            pu
        })
        .collect();
    (sim, pus)
}

fn report_counts(sim: &Sim) -> Vec<usize> {
    sim.registrar_events(0)
        .into_iter()
        .filter_map(|(_, e)| match e {
            RegistrarEvent::UnreachableReport { count, .. } => Some(count),
            _ => None,
        })
        .collect()
}

#[test]
fn false_reports_against_a_live_pe_end_in_a_probe_it_answers() {
    let (mut sim, pus) = served_users(2);
    for _ in 0..3 {
        sim.report_unreachable(pus[0], 0);
    }
    sim.run_for(Duration::from_millis(100));
    // One pool user saying it again and again counts once.
    assert_eq!(report_counts(&sim), [1, 1, 1]);
    sim.report_unreachable(pus[1], 0);
    sim.run_for(Duration::from_secs(2));
    let events: Vec<RegistrarEvent> = sim
        .registrar_events(0)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RegistrarEvent::ProbeStarted { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RegistrarEvent::ProbeAnswered { .. }))
    );
    assert_eq!(removal(&sim, 0), None, "{}", sim.dump());
    assert!(sim.lists(0, 0));
    // Disproved reporters are not believed about that PE for a while: no second probe.
    sim.report_unreachable(pus[0], 0);
    sim.report_unreachable(pus[1], 0);
    sim.run_for(Duration::from_secs(2));
    let events: Vec<RegistrarEvent> = sim
        .registrar_events(0)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let probes = events
        .iter()
        .filter(|e| matches!(e, RegistrarEvent::ProbeStarted { .. }))
        .count();
    let disbelieved = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                RegistrarEvent::ReportIgnored {
                    why: Ignored::Disproved,
                    ..
                }
            )
        })
        .count();
    assert_eq!((probes, disbelieved), (1, 2));
}

#[test]
fn reports_count_only_from_users_handed_the_pe_and_leave_with_them() {
    let (mut sim, pus) = served_users(2);
    let stranger = sim.add_pu(PuSpec::new(POOL));
    sim.report_unreachable(stranger, 0);
    sim.run_for(Duration::from_millis(100));
    assert!(sim.registrar_events(0).iter().any(|(_, e)| matches!(
        e,
        RegistrarEvent::ReportIgnored {
            why: Ignored::NotHandedOut,
            ..
        }
    )));
    sim.report_unreachable(pus[0], 0);
    sim.run_for(Duration::from_millis(100));
    // The reporter goes away (its process dies): its report goes with it.
    sim.kill(Node::Pu(pus[0]));
    sim.run_for(Duration::from_millis(100));
    sim.report_unreachable(pus[1], 0);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(report_counts(&sim), [1, 1]);
    assert!(
        !sim.registrar_events(0)
            .iter()
            .any(|(_, e)| matches!(e, RegistrarEvent::ProbeStarted { .. }))
    );
    assert!(sim.lists(0, 0));
}

#[test]
fn a_live_pe_id_cannot_be_registered_from_another_association() {
    let mut sim = sim(1);
    let victim = sim.pe_id(0);
    let thief = sim.add_pe(PeSpec {
        pe_id: Some(victim),
        ..PeSpec::new(POOL)
    });
    sim.run_for(Duration::from_millis(500));
    let rejected = sim.records().iter().any(|(_, record)| {
        matches!(
            record,
            Record::Pe(pe, PeEvent::Rejected { cause: Some(cause), .. })
                if *pe == thief && *cause == CauseCode::NON_UNIQUE_PE_IDENTIFIER
        )
    });
    assert!(rejected, "{}", sim.dump());
    // Lookups still name the victim's address, and the thief's leaving removes nothing.
    let entry = sim
        .registrar(0)
        .handlespace()
        .get(&PoolHandle::new(POOL.as_bytes()).expect("handle"), victim)
        .expect("listed");
    assert_eq!(entry.element().user_transport, sim.pe_user_transport(0));
    sim.kill(Node::Pe(thief));
    sim.run_for(Duration::from_millis(100));
    assert!(sim.lists(0, 0));
}

#[test]
fn a_graceful_shutdown_hands_the_job_over_without_a_report() {
    let mut sim = sim(2);
    let pu = sim.add_pu(PuSpec::new(POOL));
    let session = sim.start_job(pu, ITEMS);
    sim.run_until_or_panic(Duration::from_secs(5), "43 items", |sim| {
        items_received(sim, pu, session) >= 43
    });
    let leaving = serving_pe(&sim, pu, session);
    sim.shutdown_pe(leaving);
    finish(&mut sim, pu, session);
    let job = sim.job(pu, session);
    assert!(
        job.events_where(|e| matches!(e, SessionEvent::UnreachableReported { .. }))
            .is_empty()
    );
    let started = job.events_where(|e| matches!(e, SessionEvent::FailoverStarted { .. }));
    assert!(matches!(
        started.as_slice(),
        [SessionEvent::FailoverStarted { reason: FailureKind::ConnectionLost(detail), .. }]
            if detail == &AssociationError::ClosedByPeer.to_string()
    ));
    // The final cookie names exactly what was sent: nothing is sent twice.
    assert_eq!(job.duplicates(), 0);
    assert_eq!(
        removal(&sim, leaving).map(|(_, reason)| reason),
        Some(RemovalReason::Deregistered)
    );
}

#[test]
fn a_full_pe_refuses_and_the_job_waits_for_room() {
    let mut sim = Sim::new(SimConfig::default());
    sim.add_registrar(RegistrarConfig::default());
    sim.add_pe(PeSpec {
        max_sessions: 1,
        ..PeSpec::new(POOL)
    });
    sim.run_until_or_panic(Duration::from_secs(1), "registered", |sim| sim.lists(0, 0));
    let first = sim.add_pu(PuSpec::new(POOL));
    let second = sim.add_pu(PuSpec::new(POOL));
    let a = sim.start_job(first, ITEMS);
    sim.run_until_or_panic(Duration::from_secs(1), "first job under way", |sim| {
        items_received(sim, first, a) > 0
    });
    let b = sim.start_job(second, ITEMS);
    finish(&mut sim, first, a);
    finish(&mut sim, second, b);
    let job = sim.job(second, b);
    assert!(
        !job.events_where(|e| matches!(e, SessionEvent::Refused { .. }))
            .is_empty()
    );
    // A refusal is no failure: nobody reports the PE, and it stays in the pool.
    assert!(
        job.events_where(|e| matches!(e, SessionEvent::UnreachableReported { .. }))
            .is_empty()
    );
    assert!(sim.lists(0, 0));
}

#[test]
fn a_job_waits_for_an_empty_pool_to_fill() {
    let mut sim = sim(0);
    let pu = sim.add_pu(PuSpec::new(POOL));
    let session = sim.start_job(pu, 10);
    sim.run_for(Duration::from_secs(2));
    let empties = sim
        .job(pu, session)
        .events_where(|e| matches!(e, SessionEvent::PoolEmpty { .. }))
        .len();
    // Capped exponential backoff: 10 ms doubling to 1 s, not a busy loop.
    assert!(
        (4..=12).contains(&empties),
        "{empties} empty answers in 2 s"
    );
    sim.add_pe(PeSpec::new(POOL));
    finish(&mut sim, pu, session);
}

#[test]
fn a_pe_whose_registrar_dies_registers_with_the_next() {
    let mut sim = Sim::new(SimConfig::default());
    sim.add_registrar(RegistrarConfig::default());
    sim.add_registrar(RegistrarConfig {
        id: 2,
        ..RegistrarConfig::default()
    });
    let pe = sim.add_pe(PeSpec {
        registrars: vec![0, 1],
        ..PeSpec::new(POOL)
    });
    sim.run_until_or_panic(Duration::from_secs(1), "registered at 0", |sim| {
        sim.registered_with(pe) == Some(0)
    });
    sim.kill(Node::Registrar(0));
    sim.run_until_or_panic(Duration::from_secs(2), "registered at 1", |sim| {
        sim.registered_with(pe) == Some(1) && sim.lists(1, pe)
    });
}

#[test]
fn a_lost_registration_response_is_retried_after_the_response_timeout() {
    let mut sim = Sim::new(SimConfig::default());
    sim.add_registrar(RegistrarConfig::default());
    let mut dropped = 0;
    sim.set_filter(move |envelope| match envelope.asap() {
        Some(AsapMessage::RegistrationResponse { .. }) if dropped == 0 => {
            dropped += 1;
            Verdict::Drop
        }
        _ => Verdict::Deliver,
    });
    let start = sim.now();
    let pe = sim.add_pe(PeSpec::new(POOL));
    sim.run_until_or_panic(Duration::from_secs(10), "registered", |sim| {
        sim.registered_with(pe).is_some()
    });
    let waited = sim.now() - start;
    assert!(
        waited >= rserpool::pe::DEFAULT_RESPONSE_TIMEOUT,
        "{waited:?}"
    );
    assert!(
        waited < rserpool::pe::DEFAULT_RESPONSE_TIMEOUT * 2,
        "{waited:?}"
    );
}

#[test]
fn a_pool_user_whose_registrar_hangs_asks_the_next() {
    let mut sim = Sim::new(SimConfig::default());
    sim.add_registrar(RegistrarConfig::default());
    sim.add_registrar(RegistrarConfig {
        id: 2,
        ..RegistrarConfig::default()
    });
    // Without ENRP each registrar knows only its own PEs.
    sim.add_pe(PeSpec::new(POOL));
    let second = sim.add_pe(PeSpec {
        registrars: vec![1],
        ..PeSpec::new(POOL)
    });
    sim.run_until_or_panic(Duration::from_secs(1), "registered", |sim| {
        sim.lists(0, 0) && sim.lists(1, second)
    });
    sim.hang(Node::Registrar(0));
    let pu = sim.add_pu(PuSpec {
        registrars: vec![0, 1],
        ..PuSpec::new(POOL)
    });
    let session = sim.start_job(pu, 20);
    finish(&mut sim, pu, session);
    assert_eq!(serving_pe(&sim, pu, session), second);
}

#[test]
fn the_same_seed_tells_the_same_story() {
    let story = || {
        let mut sim = sim(3);
        let pu = sim.add_pu(PuSpec::new(POOL));
        let session = sim.start_job(pu, ITEMS);
        sim.run_for(Duration::from_millis(300));
        let victim = serving_pe(&sim, pu, session);
        sim.kill(Node::Pe(victim));
        finish(&mut sim, pu, session);
        sim.dump()
    };
    assert_eq!(story(), story());
}

/// A job that starts on a hostile PE (the only one registered), with an honest one added
/// right after.
fn job_on_a_hostile_pe(hostility: Hostility) -> (Sim, usize, usize) {
    let mut sim = Sim::new(SimConfig::default());
    sim.add_registrar(RegistrarConfig::default());
    sim.add_pe(PeSpec {
        hostile: Some(hostility),
        ..PeSpec::new(POOL)
    });
    sim.run_until_or_panic(Duration::from_secs(1), "hostile PE registered", |sim| {
        sim.lists(0, 0)
    });
    let pu = sim.add_pu(PuSpec::new(POOL));
    let session = sim.start_job(pu, ITEMS);
    sim.run_until_or_panic(Duration::from_secs(1), "on the hostile PE", |sim| {
        !sim.job(pu, session)
            .events_where(|e| matches!(e, SessionEvent::Connected { .. }))
            .is_empty()
    });
    sim.add_pe(PeSpec::new(POOL));
    (sim, pu, session)
}

#[test]
fn a_pe_that_sends_nothing_new_is_left_though_it_keeps_sending() {
    let timeout = SessionConfig::default().session_timeout;
    for hostility in [
        Hostility::RepeatData,
        Hostility::EmptyData,
        Hostility::CookieSpam,
    ] {
        let (mut sim, pu, session) = job_on_a_hostile_pe(hostility);
        let started = sim.now();
        finish(&mut sim, pu, session);
        let job = sim.job(pu, session);
        // One session timeout on the hostile PE, then a second of work on the honest one.
        let took = job.finished_at.expect("finished") - started;
        assert!(
            took <= timeout + Duration::from_millis(1_200),
            "{hostility:?}: {took:?}"
        );
        let failovers = job.events_where(|e| matches!(e, SessionEvent::FailoverStarted { .. }));
        assert!(
            matches!(
                failovers.as_slice(),
                [SessionEvent::FailoverStarted {
                    reason: FailureKind::DataSilence,
                    cookies_dropped: false,
                    pe,
                    ..
                }] if pe.id == sim.pe_id(0)
            ),
            "{hostility:?}: {failovers:?}"
        );
        let reported = job.events_where(
            |e| matches!(e, SessionEvent::UnreachableReported { pe_id } if *pe_id == sim.pe_id(0)),
        );
        assert_eq!(reported.len(), 1, "{hostility:?}");
        assert_eq!(serving_pe(&sim, pu, session), 1, "{hostility:?}");
    }
}

#[test]
fn a_cookie_ahead_of_the_work_bounces_a_job_a_bounded_number_of_times() {
    // The counting application trusts cookies: an honest PE resuming from "all done" has
    // nothing to send and is left too. After `max_stalled_failovers` such failovers the
    // session drops the cookies and the job starts again.
    let (mut sim, pu, session) = job_on_a_hostile_pe(Hostility::CookieAhead);
    finish(&mut sim, pu, session);
    let job = sim.job(pu, session);
    let failovers: Vec<bool> = job
        .events_where(|e| matches!(e, SessionEvent::FailoverStarted { .. }))
        .into_iter()
        .map(|e| match e {
            SessionEvent::FailoverStarted {
                cookies_dropped, ..
            } => *cookies_dropped,
            _ => unreachable!(),
        })
        .collect();
    let max = SessionConfig::default().max_stalled_failovers as usize;
    assert_eq!(failovers.len(), max, "{failovers:?}\n{}", sim.dump());
    assert!(failovers[..max - 1].iter().all(|&dropped| !dropped));
    assert!(failovers[max - 1]);
    // The job started again from the first message and finished on the honest PE.
    assert_eq!(serving_pe(&sim, pu, session), 1);
    assert!(
        !job.events_where(|e| matches!(e, SessionEvent::Connected { resumed: false, .. }))
            .is_empty()
    );
}
