//! The sans-I/O session: counts, cookies, resume, failure injection, malformed input.

use std::time::{Duration, Instant};

use fractal_protocol::cookie::Cookie;
use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::message::{AlgorithmId, Data, MAX_POINTS_PER_DATA, Parameter};
use fractal_protocol::preset::Preset;
use pool_element::session::{
    DEFAULT_MAX_WORK, Output, Session, SessionConfig, Start, TooMuchWork, decode_first,
};
use proptest::prelude::*;
use rserpool::transport::{PPID_ASAP, PPID_FGP};
use rserpool::wire::AsapMessage;

fn view(width: u32, height: u32, max_iterations: u32) -> Parameter {
    Parameter {
        width,
        height,
        max_iterations,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: -1.5,
        c1_imag: -1.1,
        c2_real: 2.3,
        c2_imag: 1.1,
        n: 2.0,
    }
}

fn reference(parameter: &Parameter) -> Vec<u32> {
    let view = View::new(parameter, KernelChoice::Scalar);
    let mut image = vec![0; (parameter.width * parameter.height) as usize];
    view.compute((0, 0), &mut image).expect("whole view");
    image
}

/// Drives a session to its end, advancing simulated time by `step` per chunk and firing
/// timers; returns every output in order.
fn drive(session: &mut Session, chunk: usize, mut now: Instant, step: Duration) -> Vec<Output> {
    let mut out = Vec::new();
    let mut guard = 0;
    while !session.is_done() {
        session.handle_timeout(now, &mut out);
        session.compute(chunk, now, &mut out);
        now += step;
        guard += 1;
        assert!(guard < 1_000_000, "session does not end");
    }
    out
}

/// Index of a position in row-major order.
fn index(parameter: &Parameter, x: u32, y: u32) -> usize {
    (y * parameter.width + x) as usize
}

/// Writes Data into `image`, counting how often each pixel was written.
fn paint(parameter: &Parameter, data: &Data, image: &mut [u32], writes: &mut [u32]) {
    let start = index(parameter, data.start_x, data.start_y);
    for (offset, &value) in data.points.iter().enumerate() {
        image[start + offset] = value;
        writes[start + offset] += 1;
    }
}

#[test]
fn whole_view_matches_the_reference_kernel() {
    let parameter = view(97, 61, 300);
    let now = Instant::now();
    let (mut session, mut outputs) =
        Session::new(Start::Compute(parameter), SessionConfig::default(), now);
    assert!(
        matches!(outputs.first(), Some(Output::Cookie(c)) if c.current_x == 0 && c.current_y == 0)
    );
    outputs.extend(drive(&mut session, 100, now, Duration::from_millis(1)));
    let mut image = vec![u32::MAX; 97 * 61];
    let mut writes = vec![0; 97 * 61];
    let data: Vec<&Data> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    let (last, body) = data.split_last().expect("some data");
    assert!(last.is_finalizer());
    for d in body {
        assert!(!d.is_finalizer());
        assert!(!d.points.is_empty() && d.points.len() <= MAX_POINTS_PER_DATA);
        paint(&parameter, d, &mut image, &mut writes);
    }
    assert_eq!(image, reference(&parameter));
    assert!(writes.iter().all(|&w| w == 1), "every pixel exactly once");
    assert_eq!(outputs.last(), Some(&Output::Finished));
    // Full messages while computing fast: only the last is partial.
    assert!(
        body[..body.len() - 1]
            .iter()
            .all(|d| d.points.len() == MAX_POINTS_PER_DATA)
    );
}

#[test]
fn unknown_algorithm_and_test_mode_give_the_test_pattern() {
    let mut parameter = view(40, 30, 50);
    parameter.algorithm = AlgorithmId(9);
    let Start::Compute(p) = decode_first(PPID_FGP, &parameter.encode()).expect("accepted") else {
        panic!("a parameter starts a computation");
    };
    for kernel in [KernelChoice::Fast, KernelChoice::TestMode] {
        let config = SessionConfig {
            kernel,
            ..SessionConfig::default()
        };
        let now = Instant::now();
        let (mut session, _) = Session::new(Start::Compute(p), config, now);
        let outputs = drive(&mut session, 324, now, Duration::ZERO);
        let mut image = vec![0; 1200];
        let mut writes = vec![0; 1200];
        for o in &outputs {
            if let Output::Data(d) = o
                && !d.is_finalizer()
            {
                paint(&p, d, &mut image, &mut writes);
            }
        }
        for y in 0..30u32 {
            for x in 0..40u32 {
                assert_eq!(image[index(&p, x, y)], (x * y) % 256);
            }
        }
    }
}

/// The end of the Data emitted before each cookie, checked against the cookie's position.
fn assert_cookies_never_ahead(parameter: &Parameter, start: (u32, u32), outputs: &[Output]) {
    let mut emitted_end = index(parameter, start.0, start.1);
    for o in outputs {
        match o {
            Output::Data(d) if !d.is_finalizer() => {
                assert_eq!(
                    index(parameter, d.start_x, d.start_y),
                    emitted_end,
                    "contiguous data"
                );
                emitted_end += d.points.len();
            }
            Output::Cookie(c) => {
                let at = index(parameter, c.current_x, c.current_y);
                assert!(
                    at <= emitted_end,
                    "cookie at {at} ahead of data end {emitted_end}"
                );
                // Our cookies are exact: they claim everything emitted.
                assert_eq!(at, emitted_end);
            }
            _ => {}
        }
    }
}

#[test]
fn cookies_follow_packets_and_time_and_never_run_ahead() {
    let parameter = view(200, 50, 100);
    let config = SessionConfig {
        cookie_max_packets: 3,
        cookie_max_time: Duration::from_millis(40),
        data_max_time: Duration::from_millis(25),
        ..SessionConfig::default()
    };
    let now = Instant::now();
    let (mut session, mut outputs) = Session::new(Start::Compute(parameter), config, now);
    // Small chunks and 10 ms per chunk: partial Data by time, cookies by time and by count.
    outputs.extend(drive(&mut session, 7, now, Duration::from_millis(10)));
    assert_cookies_never_ahead(&parameter, (0, 0), &outputs);
    let cookies = outputs
        .iter()
        .filter(|o| matches!(o, Output::Cookie(_)))
        .count();
    let data = outputs
        .iter()
        .filter(|o| matches!(o, Output::Data(_)))
        .count();
    assert!(data > 300, "partial Data every 25 ms: {data}");
    assert!(cookies >= data / 4, "{cookies} cookies for {data} Data");
    // Partial messages come from the 25 ms timer: 7-pixel chunks at 10 ms → 21 points.
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Data(d) if d.points.len() == 21))
    );
}

#[test]
fn cookie_count_rule_alone() {
    let parameter = view(324, 40, 20);
    let config = SessionConfig {
        cookie_max_packets: 10,
        cookie_max_time: Duration::from_secs(3600),
        ..SessionConfig::default()
    };
    let now = Instant::now();
    let (mut session, mut outputs) = Session::new(Start::Compute(parameter), config, now);
    outputs.extend(drive(&mut session, 324, now, Duration::ZERO));
    // 40 full Data messages: start cookie + cookies after Data 10, 20 and 30 (not after the
    // last one: the finalizer follows).
    let kinds: Vec<char> = outputs
        .iter()
        .map(|o| match o {
            Output::Data(d) if d.is_finalizer() => 'F',
            Output::Data(_) => 'D',
            Output::Cookie(_) => 'C',
            Output::Finished => '.',
            Output::FailureInjected => '!',
        })
        .collect();
    let expected: String = std::iter::once("C".to_string())
        .chain((0..4).map(|i| {
            if i < 3 {
                "DDDDDDDDDDC".to_string()
            } else {
                "DDDDDDDDDD".to_string()
            }
        }))
        .chain(std::iter::once("F.".to_string()))
        .collect();
    assert_eq!(kinds.into_iter().collect::<String>(), expected);
    assert_cookies_never_ahead(&parameter, (0, 0), &outputs);
}

#[test]
fn resume_from_a_cookie_yields_exactly_the_remaining_pixels() {
    let parameter = view(123, 77, 200);
    let expected = reference(&parameter);
    let config = SessionConfig {
        cookie_max_packets: 4,
        ..SessionConfig::default()
    };
    let now = Instant::now();
    for stop_after_cookies in [1usize, 2, 5, 7] {
        // First PE: run until the n-th cookie, then "crash" (drop everything after it).
        let (mut first, mut outputs) = Session::new(Start::Compute(parameter), config.clone(), now);
        while outputs
            .iter()
            .filter(|o| matches!(o, Output::Cookie(_)))
            .count()
            < stop_after_cookies
            && !first.is_done()
        {
            first.compute(50, now, &mut outputs);
        }
        let cookie_at = outputs
            .iter()
            .rposition(|o| matches!(o, Output::Cookie(_)))
            .expect("a cookie");
        // The first PE keeps going a little past its last cookie before it dies.
        for _ in 0..8 {
            first.compute(50, now, &mut outputs);
        }
        assert!(
            outputs[cookie_at..]
                .iter()
                .any(|o| matches!(o, Output::Data(_)))
        );
        // Data after the cookie reached the PU too (up to 323 pixels computed twice is fine
        // only beyond the cookie point).
        let mut image = vec![u32::MAX; expected.len()];
        let mut writes = vec![0u32; expected.len()];
        for o in &outputs {
            if let Output::Data(d) = o {
                paint(&parameter, d, &mut image, &mut writes);
            }
        }
        let Output::Cookie(cookie) = outputs[cookie_at].clone() else {
            unreachable!()
        };
        // The PU echoes the cookie bytes to the next PE.
        let echo = AsapMessage::CookieEcho {
            cookie: cookie.encode().to_vec(),
        }
        .to_bytes()
        .expect("encodable");
        let start = decode_first(PPID_ASAP, &echo).expect("our own cookie resumes");
        let (mut second, mut resumed) = Session::new(start, config.clone(), now);
        assert!(matches!(resumed.first(), Some(Output::Cookie(c)) if c.bitwise_eq(&cookie)));
        resumed.extend(drive(&mut second, 50, now, Duration::ZERO));
        assert_cookies_never_ahead(&parameter, (cookie.current_x, cookie.current_y), &resumed);
        let cookie_index = index(&parameter, cookie.current_x, cookie.current_y);
        let mut resumed_writes = vec![0u32; expected.len()];
        for o in &resumed {
            if let Output::Data(d) = o
                && !d.is_finalizer()
            {
                assert!(index(&parameter, d.start_x, d.start_y) >= cookie_index);
                paint(&parameter, d, &mut image, &mut resumed_writes);
            }
        }
        assert_eq!(image, expected, "no pixel missing or wrong");
        for (i, (&a, &b)) in writes.iter().zip(&resumed_writes).enumerate() {
            if i < cookie_index {
                assert_eq!(
                    (a, b),
                    (1, 0),
                    "pixel {i} before the cookie: once, by the first PE"
                );
            } else {
                assert_eq!(b, 1, "pixel {i}: once by the second PE");
                assert!(a <= 1, "pixel {i}: at most once by the first PE");
            }
        }
    }
}

#[test]
fn rsplib_cookie_at_the_end_of_a_row_resumes_at_the_next_row() {
    let parameter = view(10, 4, 50);
    let rsplib_style = Cookie {
        parameter,
        current_x: 10,
        current_y: 1,
    };
    let echo = AsapMessage::CookieEcho {
        cookie: rsplib_style.encode().to_vec(),
    }
    .to_bytes()
    .expect("encodable");
    let start = decode_first(PPID_ASAP, &echo).expect("normalised");
    let now = Instant::now();
    let (mut session, _) = Session::new(start, SessionConfig::default(), now);
    assert_eq!(session.remaining(), 20);
    let outputs = drive(&mut session, 324, now, Duration::ZERO);
    let Some(Output::Data(d)) = outputs.first() else {
        panic!("{outputs:?}")
    };
    assert_eq!((d.start_x, d.start_y, d.points.len()), (0, 2, 20));
}

#[test]
fn complete_cookie_gets_only_the_finalizer() {
    let parameter = view(10, 4, 50);
    let done = Cookie {
        parameter,
        current_x: 0,
        current_y: 4,
    };
    let (session, outputs) = Session::new(
        Start::Resume(done),
        SessionConfig::default(),
        Instant::now(),
    );
    assert!(session.is_done());
    assert_eq!(
        outputs,
        vec![Output::Data(Data::finalizer()), Output::Finished]
    );
}

#[test]
fn fail_after_sends_a_cookie_after_the_nth_data_then_stops() {
    let parameter = view(324, 20, 20);
    let config = SessionConfig {
        fail_after: Some(3),
        ..SessionConfig::default()
    };
    let now = Instant::now();
    let (mut session, mut outputs) = Session::new(Start::Compute(parameter), config, now);
    outputs.extend(drive(&mut session, 324, now, Duration::ZERO));
    let tail: Vec<_> = outputs.iter().rev().take(3).collect();
    assert!(matches!(tail[0], Output::FailureInjected));
    let Output::Cookie(cookie) = tail[1] else {
        panic!("{outputs:?}")
    };
    assert_eq!((cookie.current_x, cookie.current_y), (0, 3));
    assert!(matches!(tail[2], Output::Data(d) if d.start_y == 2));
    assert_eq!(session.data_messages(), 3);
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::Data(d) if d.is_finalizer()))
    );
}

#[test]
fn shutdown_flushes_data_and_sends_a_final_cookie() {
    let parameter = view(100, 100, 20);
    let now = Instant::now();
    let (mut session, mut outputs) =
        Session::new(Start::Compute(parameter), SessionConfig::default(), now);
    session.compute(150, now, &mut outputs);
    session.shutdown(now, &mut outputs);
    assert!(session.is_done());
    let n = outputs.len();
    let Output::Data(d) = &outputs[n - 2] else {
        panic!("{outputs:?}")
    };
    assert_eq!(d.points.len(), 150);
    let Output::Cookie(c) = &outputs[n - 1] else {
        panic!("{outputs:?}")
    };
    assert_eq!((c.current_x, c.current_y), (50, 1));
}

#[test]
fn data_is_sent_at_least_every_data_max_time() {
    let parameter = view(1000, 10, 20);
    let config = SessionConfig {
        data_max_time: Duration::from_millis(250),
        ..SessionConfig::default()
    };
    let now = Instant::now();
    let (mut session, _) = Session::new(Start::Compute(parameter), config, now);
    let mut out = Vec::new();
    // One pixel per 100 ms (a slow PE): the third chunk's timer check flushes.
    for step in 0..3u64 {
        let t = now + Duration::from_millis(100 * step);
        session.handle_timeout(t, &mut out);
        session.compute(1, t, &mut out);
    }
    assert!(out.iter().all(|o| !matches!(o, Output::Data(_))));
    session.handle_timeout(now + Duration::from_millis(250), &mut out);
    assert!(matches!(out.as_slice(), [Output::Data(d)] if d.points.len() == 3));
    assert!(session.poll_timeout() <= now + Duration::from_millis(1250));
}

#[test]
fn malformed_first_messages_are_refused() {
    let parameter = view(10, 10, 10);
    // Beyond rsplib's limits.
    let too_big = Parameter {
        width: 65_537,
        ..parameter
    };
    assert!(decode_first(PPID_FGP, &too_big.encode()).is_err());
    let too_deep = Parameter {
        max_iterations: 1_000_001,
        ..parameter
    };
    assert!(decode_first(PPID_FGP, &too_deep.encode()).is_err());
    // Truncated, wrong PPID, a Data message, garbage cookie, other ASAP message.
    assert!(decode_first(PPID_FGP, &parameter.encode()[..59]).is_err());
    assert!(decode_first(99, &parameter.encode()).is_err());
    let data = Data::new(0, 0, vec![1]).encode().expect("encodable");
    assert!(decode_first(PPID_FGP, &data).is_err());
    let bad_cookie = AsapMessage::CookieEcho {
        cookie: vec![0; 76],
    }
    .to_bytes()
    .expect("encodable");
    assert!(decode_first(PPID_ASAP, &bad_cookie).is_err());
    let cookie_not_echo = AsapMessage::Cookie {
        cookie: Cookie::start(parameter).encode().to_vec(),
    }
    .to_bytes()
    .expect("encodable");
    assert!(decode_first(PPID_ASAP, &cookie_not_echo).is_err());
}

#[test]
fn default_max_work_accepts_every_real_request_and_refuses_absurd_ones() {
    // The demo's and rsplib's pictures at rsplib's MaxIterations limit, and every built-in
    // preset at the largest size the GUI allows.
    for (width, height) in [(400, 250), (1024, 768), (8192, 4096), (8192, 8192)] {
        let start = Start::Compute(view(width, height, 1_000_000));
        assert_eq!(
            start.check_work(DEFAULT_MAX_WORK),
            Ok(()),
            "{width}x{height}"
        );
    }
    for preset in Preset::builtin() {
        let start = Start::Compute(preset.parameter(8192, 8192));
        assert_eq!(
            start.check_work(DEFAULT_MAX_WORK),
            Ok(()),
            "{}",
            preset.name
        );
    }
    let absurd = Start::Compute(view(65_536, 65_536, 1_000_000));
    assert_eq!(
        absurd.check_work(DEFAULT_MAX_WORK),
        Err(TooMuchWork {
            work: 65_536 * 65_536 * 1_000_000,
            max_work: DEFAULT_MAX_WORK
        })
    );
    // Also when it arrives as a cookie, which rsplib does not sign.
    let forged = Start::Resume(Cookie::start(view(65_536, 65_536, 1_000_000)));
    assert!(forged.check_work(DEFAULT_MAX_WORK).is_err());
}

#[test]
fn a_resumed_session_counts_only_the_pixels_left() {
    let parameter = view(100, 10, 1000);
    let mut cookie = Cookie::start(parameter);
    cookie.current_y = 9;
    cookie.current_x = 50;
    let start = Start::Resume(cookie);
    assert_eq!(start.work(), 50 * 1000);
    assert!(start.check_work(50_000).is_ok());
    assert!(start.check_work(49_999).is_err());
    assert_eq!(Start::Compute(parameter).work(), 1_000_000);
}

proptest! {
    #[test]
    fn decode_first_never_panics(ppid in prop_oneof![Just(PPID_FGP), Just(PPID_ASAP), any::<u32>()],
                                 bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_first(ppid, &bytes);
    }

    #[test]
    fn mutated_cookie_echoes_never_panic_and_resume_inside_the_view(
        width in 1u32..50, height in 1u32..50, x in any::<u32>(), y in any::<u32>(),
        flip in 0usize..96, bit in 0u8..8,
    ) {
        let cookie = Cookie { parameter: view(width, height, 10), current_x: x, current_y: y };
        let mut echo = AsapMessage::CookieEcho { cookie: cookie.encode().to_vec() }
            .to_bytes()
            .expect("encodable");
        if let Some(byte) = echo.get_mut(flip) {
            *byte ^= 1 << bit;
        }
        if let Ok(start) = decode_first(PPID_ASAP, &echo) {
            let now = Instant::now();
            let (mut session, _) = Session::new(start, SessionConfig::default(), now);
            let p = *session.parameter();
            prop_assume!(u64::from(p.width) * u64::from(p.height) <= 10_000);
            let outputs = drive(&mut session, 324, now, Duration::ZERO);
            prop_assert!(matches!(outputs.last(), Some(Output::Finished)));
        }
    }
}
