//! The fractal client against an in-process fake registrar and fake pool elements (built from
//! the wire codecs and the reference kernel): exact pictures with one and many sessions, and
//! failovers that lose nothing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Behaviour, FakePe, FakeRegistrar, Hostile, POOL};
use fractal_protocol::kernel;
use fractal_protocol::message::{AlgorithmId, MAX_POINTS_PER_DATA, Parameter};
use fractal_protocol::tiling;
use pool_user_gui::client::events::{ClientEvent, FailureReason};
use pool_user_gui::client::{ClientConfig, FractalClient, ImageRequest, ImageResult};
use rserpool::pu::PoolUserConfig;
use rserpool::wire::PeId;
use tokio::sync::mpsc;

fn view(width: u32, height: u32, max_iterations: u32) -> Parameter {
    Parameter {
        width,
        height,
        max_iterations,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: -1.6,
        c1_imag: 1.1,
        c2_real: 0.7,
        c2_imag: -1.1,
        n: 2.0,
    }
}

fn client(
    registrar: &FakeRegistrar,
    session_timeout: Duration,
) -> (FractalClient, mpsc::UnboundedReceiver<ClientEvent>) {
    client_with(registrar, session_timeout, true)
}

fn client_with(
    registrar: &FakeRegistrar,
    session_timeout: Duration,
    pixel_events: bool,
) -> (FractalClient, mpsc::UnboundedReceiver<ClientEvent>) {
    let pool_user = PoolUserConfig {
        registrars: vec![registrar.address],
        announce: None,
        ..PoolUserConfig::default()
    }
    .with_session_timeout(session_timeout);
    FractalClient::start(ClientConfig {
        pool: POOL.into(),
        pool_user,
        pixel_events,
    })
    .expect("client starts")
}

/// The picture as the pool must deliver it: each tile computed locally from its own Parameter
/// (equal to the untiled picture within the tiling guarantee; bit for bit with one tile).
fn expected_picture(view: &Parameter, sessions: usize) -> Vec<u32> {
    let mut picture = vec![0u32; (view.width * view.height) as usize];
    for tile in tiling::split(view, sessions) {
        let values = kernel::compute_image(&tile.parameter);
        for (index, value) in values.into_iter().enumerate() {
            let x = tile.x + index as u32 % tile.width;
            let y = tile.y + index as u32 / tile.width;
            picture[(y * view.width + x) as usize] = value;
        }
    }
    picture
}

async fn compute(client: &FractalClient, view: Parameter, sessions: usize) -> ImageResult {
    compute_request(
        client,
        ImageRequest::new(view, sessions, "test").static_split(),
    )
    .await
}

async fn compute_request(client: &FractalClient, request: ImageRequest) -> ImageResult {
    tokio::time::timeout(Duration::from_secs(60), client.compute_image(request))
        .await
        .expect("image finishes in time")
        .expect("image computed")
}

fn drain(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> Vec<ClientEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_gives_the_exact_untiled_picture() {
    let registrar = FakeRegistrar::start().await;
    let pe = FakePe::start(0x11, Behaviour::default()).await;
    registrar.add(&pe);
    let (client, mut events) = client(&registrar, Duration::from_secs(2));
    let view = view(83, 47, 300);
    let result = compute(&client, view, 1).await;
    assert_eq!(result.assembly.iterations, kernel::compute_image(&view));
    assert_eq!(result.assembly.received_pixels(), 83 * 47);
    assert_eq!(result.stats.failovers, 0);
    assert_eq!(result.stats.pes_used, 1);
    assert_eq!(result.stats.pixels, 83 * 47);
    assert_eq!(result.stats.iterations, result.assembly.total_iterations());
    let events = drain(&mut events);
    assert!(matches!(
        events.first(),
        Some(ClientEvent::ImageStarted { .. })
    ));
    assert!(matches!(
        events.last(),
        Some(ClientEvent::ImageCompleted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cookie_comes_after_the_data_it_covers() {
    let registrar = FakeRegistrar::start().await;
    let pe = FakePe::start(
        0x15,
        Behaviour {
            cookie_every: 2,
            ..Behaviour::default()
        },
    )
    .await;
    registrar.add(&pe);
    let view = view(300, 200, 100);
    let expected = expected_picture(&view, 3);
    for pixel_events in [true, false] {
        let (client, mut events) = client_with(&registrar, Duration::from_secs(2), pixel_events);
        let result = compute(&client, view, 3).await;
        assert_eq!(result.assembly.iterations, expected);
        // Without failovers every pixel arrives once: a session's points so far are its
        // progress.
        let mut received = [0u64; 3];
        let mut cookies = 0;
        for event in drain(&mut events) {
            let (tile, first, count) = match event {
                ClientEvent::TileData {
                    tile,
                    first,
                    iterations,
                    ..
                } => {
                    assert!(pixel_events, "values only when asked for");
                    let unit = tiling::split(&view, 3)[tile];
                    let values = kernel::compute_image(&unit.parameter);
                    let at = first as usize;
                    assert_eq!(iterations, values[at..at + iterations.len()]);
                    (tile, first, iterations.len() as u64)
                }
                ClientEvent::TileProgress {
                    tile, first, count, ..
                } => {
                    assert!(!pixel_events, "counts only when values are not asked for");
                    (tile, first, count)
                }
                ClientEvent::CookieStored { tile, position, .. } => {
                    cookies += 1;
                    assert!(
                        position <= received[tile],
                        "cookie at {position} before the data up to it ({})",
                        received[tile]
                    );
                    continue;
                }
                _ => continue,
            };
            assert_eq!(first, received[tile], "in order, without gaps");
            assert!(count <= 32 * MAX_POINTS_PER_DATA as u64);
            received[tile] += count;
        }
        assert!(cookies > 0, "the latest cookie of each burst is passed on");
        assert_eq!(received.iter().sum::<u64>(), 300 * 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_give_the_tiled_picture_over_several_pes() {
    let registrar = FakeRegistrar::start().await;
    let a = FakePe::start(0x21, Behaviour::default()).await;
    let b = FakePe::start(0x22, Behaviour::default()).await;
    registrar.add(&a);
    registrar.add(&b);
    let (client, _events) = client(&registrar, Duration::from_secs(2));
    let view = view(131, 77, 200);
    let result = compute(&client, view, 9).await;
    assert_eq!(result.assembly.iterations, expected_picture(&view, 9));
    assert_eq!(result.stats.sessions, 9);
    assert_eq!(result.stats.pes_used, 2, "round robin spreads the sessions");
    assert_eq!(result.stats.failovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pes_lose_nothing() {
    let registrar = FakeRegistrar::start().await;
    let cookie_every = 3;
    let pace = Duration::from_millis(2);
    let crash = |after| Behaviour {
        cookie_every,
        crash_after: Some(after),
        pace,
        ..Behaviour::default()
    };
    let pes = [
        FakePe::start(0x31, crash(7)).await,
        FakePe::start(0x32, crash(20)).await,
        FakePe::start(
            0x33,
            Behaviour {
                cookie_every,
                pace,
                ..Behaviour::default()
            },
        )
        .await,
    ];
    for pe in &pes {
        registrar.add(pe);
    }
    let (client, mut events) = client(&registrar, Duration::from_secs(2));
    let view = view(200, 150, 250);
    let result = compute(&client, view, 4).await;
    assert_eq!(result.assembly.iterations, expected_picture(&view, 4));
    let stats = &result.stats;
    assert!(stats.failovers >= 2, "{stats:?}");
    // Each failover recomputes at most what came after the last cookie.
    let interval = cookie_every * MAX_POINTS_PER_DATA as u64;
    assert!(
        stats.recomputed_pixels <= stats.failovers * interval,
        "{stats:?}"
    );
    assert!(registrar.reports_of(0x31) >= 1);
    assert!(registrar.reports_of(0x32) >= 1);
    assert_eq!(registrar.reports_of(0x33), 0);
    let events = drain(&mut events);
    let started = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::FailoverStarted { .. }))
        .count() as u64;
    let completed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::FailoverCompleted(failover) => Some(failover.recomputed_pixels),
            _ => None,
        })
        .collect();
    assert_eq!(started, stats.failovers);
    assert!(!completed.is_empty());
    assert!(completed.iter().all(|&r| r <= interval), "{completed:?}");
    assert_eq!(completed.iter().sum::<u64>(), stats.recomputed_pixels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_after_on_every_pe_gives_deterministic_failovers_without_lost_work() {
    let registrar = FakeRegistrar::start().await;
    let behaviour = Behaviour {
        cookie_every: 2,
        fail_after: Some(3),
        ..Behaviour::default()
    };
    let a = FakePe::start(0x41, behaviour).await;
    let b = FakePe::start(0x42, behaviour).await;
    registrar.add(&a);
    registrar.add(&b);
    let (client, _events) = client(&registrar, Duration::from_secs(2));
    // One tile of 64x81 = 5184 pixels = exactly 16 Data messages: the PEs close after
    // messages 3, 6, 9, 12, 15 (five failovers), and message 16 plus the finalizer complete it.
    let view = view(64, 81, 100);
    let result = compute(&client, view, 1).await;
    assert_eq!(result.assembly.iterations, kernel::compute_image(&view));
    assert_eq!(result.stats.failovers, 5);
    assert_eq!(result.stats.recomputed_pixels, 0);
    assert_eq!(result.stats.restarts_from_scratch, 0);
    assert_eq!(result.stats.pes_used, 2);
    // Graceful closes after a cookie: the PEs are alive, nobody is reported.
    assert_eq!(registrar.reports_of(0x41) + registrar.reports_of(0x42), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_with_pixels_missing_resumes_where_the_pixels_received_end() {
    let registrar = FakeRegistrar::start().await;
    // Each PE leaves out its second Data message once in its life (no cookies: one after it
    // would be refused first, see `a_cookie_ahead_of_the_pixels_is_refused`).
    let behaviour = Behaviour {
        skip_data: Some(2),
        ..Behaviour::default()
    };
    let a = FakePe::start(0x45, behaviour).await;
    let b = FakePe::start(0x46, behaviour).await;
    registrar.add(&a);
    registrar.add(&b);
    let mut pool_user = PoolUserConfig {
        registrars: vec![registrar.address],
        announce: None,
        ..PoolUserConfig::default()
    };
    // Both PEs may fail once; the tile need not wait the default 10 s for either again.
    pool_user.session.avoid_failed_for = Duration::from_millis(50);
    let (client, mut events) = FractalClient::start(ClientConfig {
        pool: POOL.into(),
        pool_user,
        pixel_events: true,
    })
    .expect("client starts");
    // One tile of 16 Data messages (see above).
    let view = view(64, 81, 100);
    let result = compute(&client, view, 1).await;
    assert_eq!(result.assembly.iterations, kernel::compute_image(&view));
    let events = drain(&mut events);
    let missing = format!("finalizer with {MAX_POINTS_PER_DATA} of 5184 pixels missing");
    let refusals = events
        .iter()
        .filter(|e| {
            matches!(e, ClientEvent::FailoverStarted {
                reason: FailureReason::ProtocolError(detail), ..
            } if *detail == missing)
        })
        .count() as u64;
    assert!(refusals >= 1, "{events:?}");
    assert_eq!(refusals, result.stats.failovers);
    // A PE that skipped pixels has untrustworthy cookies: the next one resumes where the
    // pixels received end, at the gap (the first Data message arrived).
    let resumed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::FailoverCompleted(failover) => Some(failover.resumed_at),
            _ => None,
        })
        .collect();
    assert!(!resumed.is_empty());
    assert!(
        resumed.iter().all(|&at| at == MAX_POINTS_PER_DATA as u64),
        "{resumed:?}"
    );
}

// Real time: rserpool's PU driver measures the session timeout with std::time::Instant over
// real sockets; tokio's paused clock cannot drive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_pe_is_detected_reported_and_not_chosen_again() {
    let registrar = FakeRegistrar::start().await;
    let session_timeout = Duration::from_millis(400);
    let hanging = FakePe::start(
        0x51,
        Behaviour {
            cookie_every: 1,
            hang_after: Some(2),
            pace: Duration::from_millis(5),
            ..Behaviour::default()
        },
    )
    .await;
    let healthy = FakePe::start(
        0x52,
        Behaviour {
            cookie_every: 1,
            pace: Duration::from_millis(5),
            ..Behaviour::default()
        },
    )
    .await;
    registrar.add(&hanging);
    registrar.add(&healthy);
    let (client, mut events) = client(&registrar, session_timeout);
    let view = view(120, 90, 150);
    let result = compute(&client, view, 4).await;
    assert_eq!(result.assembly.iterations, expected_picture(&view, 4));
    let events = drain(&mut events);
    let silence: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::FailoverStarted {
                pe,
                reason: FailureReason::DataSilence,
                silent_for,
                ..
            } => Some((pe.id, *silent_for)),
            _ => None,
        })
        .collect();
    assert!(!silence.is_empty(), "the hang was detected");
    for (pe, silent_for) in &silence {
        assert_eq!(*pe, PeId(0x51));
        // Detected at the session timeout (plus scheduling slack), not seconds later.
        assert!(*silent_for >= session_timeout && *silent_for < session_timeout * 3);
    }
    assert_eq!(registrar.reports_of(0x51), silence.len());
    // After the first detection, no session connects to the hung PE again although the
    // registrar still lists it.
    let first_detection = events
        .iter()
        .position(|e| matches!(e, ClientEvent::FailoverStarted { .. }))
        .expect("a failover");
    assert!(
        !events[first_detection..]
            .iter()
            .any(|e| matches!(e, ClientEvent::SessionConnected { pe, .. } if pe.id == PeId(0x51)))
    );
    assert!(hanging.data_sent.load(Ordering::SeqCst) >= 2);
}

// Real time: the retries go to a fake registrar over a real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pool_is_waited_for() {
    let registrar = FakeRegistrar::start().await;
    let (client, mut events) = client(&registrar, Duration::from_secs(2));
    let view = view(40, 30, 100);
    let request = ImageRequest::new(view, 2, "test").static_split();
    let image = client.compute_image(request);
    tokio::pin!(image);
    // Several retries while the pool is empty.
    let mut empty_reports = 0;
    while empty_reports < 6 {
        tokio::select! {
            _ = &mut image => panic!("finished without a pool element"),
            event = events.recv() => {
                if matches!(event, Some(ClientEvent::PoolEmpty { .. })) {
                    empty_reports += 1;
                }
            }
        }
    }
    let pe = FakePe::start(0x61, Behaviour::default()).await;
    registrar.add(&pe);
    let result = tokio::time::timeout(Duration::from_secs(30), image)
        .await
        .expect("finishes once a PE is there")
        .expect("image computed");
    assert_eq!(result.assembly.iterations, expected_picture(&view, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pes_refuse_without_being_reported() {
    let registrar = FakeRegistrar::start().await;
    let behaviour = Behaviour {
        max_sessions: Some(1),
        pace: Duration::from_millis(1),
        ..Behaviour::default()
    };
    let a = FakePe::start(0x71, behaviour).await;
    let b = FakePe::start(0x72, behaviour).await;
    registrar.add(&a);
    registrar.add(&b);
    let (client, _events) = client(&registrar, Duration::from_secs(2));
    let view = view(90, 60, 100);
    let result = compute(&client, view, 6).await;
    assert_eq!(result.assembly.iterations, expected_picture(&view, 6));
    assert_eq!(registrar.reports_of(0x71) + registrar.reports_of(0x72), 0);
    assert_eq!(result.stats.failovers, 0);
    // Six sessions on two PEs that take one each: there were refusals.
    assert!(a.refused.load(Ordering::SeqCst) + b.refused.load(Ordering::SeqCst) > 0);
}

/// One tile that starts on a PE turning `hostile` after two Data messages, with an honest PE
/// added once it did: the picture completes, exact, in bounded time, and the hostile PE is
/// reported.
async fn hostile_pe_is_left_for_an_honest_one(hostile: Hostile) -> Vec<ClientEvent> {
    let registrar = FakeRegistrar::start().await;
    let session_timeout = Duration::from_millis(400);
    let bad = FakePe::start(
        0x81,
        Behaviour {
            cookie_every: 1,
            pace: Duration::from_millis(5),
            hostile: Some((hostile, 2)),
            ..Behaviour::default()
        },
    )
    .await;
    registrar.add(&bad);
    let (client, mut events) = client(&registrar, session_timeout);
    let view = view(64, 81, 100);
    let request = ImageRequest::new(view, 1, "test").static_split();
    let image = client.compute_image(request);
    tokio::pin!(image);
    let started = tokio::time::Instant::now();
    tokio::select! {
        _ = &mut image => panic!("{hostile:?}: finished on the hostile PE alone"),
        () = async {
            while bad.data_sent.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => {}
    }
    let good = FakePe::start(0x82, Behaviour::default()).await;
    registrar.add(&good);
    let result = tokio::time::timeout(Duration::from_secs(10), image)
        .await
        .unwrap_or_else(|_| panic!("{hostile:?}: stuck"))
        .expect("image computed");
    // A session timeout or two, not for ever.
    assert!(started.elapsed() < Duration::from_secs(5), "{hostile:?}");
    assert_eq!(
        result.assembly.iterations,
        kernel::compute_image(&view),
        "{hostile:?}"
    );
    assert!(registrar.reports_of(0x81) >= 1, "{hostile:?}");
    assert_eq!(registrar.reports_of(0x82), 0, "{hostile:?}");
    let events = drain(&mut events);
    assert!(
        events.iter().all(|e| !matches!(
            e,
            ClientEvent::FailoverStarted { pe, .. } if pe.id == PeId(0x82)
        )),
        "{hostile:?}: {events:?}"
    );
    events
}

fn failover_reasons(events: &[ClientEvent]) -> Vec<FailureReason> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::FailoverStarted { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_data_is_no_progress() {
    let events = hostile_pe_is_left_for_an_honest_one(Hostile::RepeatData).await;
    assert_eq!(failover_reasons(&events), vec![FailureReason::DataSilence]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_is_no_progress() {
    let events = hostile_pe_is_left_for_an_honest_one(Hostile::EmptyData).await;
    assert_eq!(failover_reasons(&events), vec![FailureReason::DataSilence]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_and_error_spam_is_no_progress() {
    let events = hostile_pe_is_left_for_an_honest_one(Hostile::CookieSpam).await;
    assert_eq!(failover_reasons(&events), vec![FailureReason::DataSilence]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_ahead_of_the_pixels_is_refused() {
    let events = hostile_pe_is_left_for_an_honest_one(Hostile::CookieAhead).await;
    // Refused at once (no session timeout), and the honest PE resumed where the pixels held
    // end: two Data messages, not the "finished" cookie.
    let reasons = failover_reasons(&events);
    assert!(
        matches!(reasons.as_slice(), [FailureReason::ProtocolError(detail)]
            if detail.starts_with("cookie at pixel 5184 ahead of the")),
        "{reasons:?}"
    );
    let resumed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::FailoverCompleted(failover) => Some(failover.resumed_at),
            _ => None,
        })
        .collect();
    assert_eq!(resumed, vec![2 * MAX_POINTS_PER_DATA as u64]);
}
