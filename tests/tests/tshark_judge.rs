//! tshark as the outside judge of our bytes: every ASAP and ENRP message type and FGP message,
//! encoded by our codecs, sent through the real framed-TCP transport over loopback, decoded by
//! Wireshark's own ASAP/ENRP/FGP dissectors behind our Lua shim. Zero malformed packets, and
//! the field values tshark reads equal the values we put in.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use e2e::tshark::{DecodedCapture, capture_and_decode, field_values};
use fractal_protocol::calcapp::{self, JobCookie, MessageType, PPID_CALCAPP};
use fractal_protocol::cookie::Cookie;
use fractal_protocol::message::{AlgorithmId, Data, Parameter};
use rserpool::transport::{PPID_ASAP, PPID_ENRP, PPID_FGP};
use rserpool::wire::enrp::EnrpBody;
use rserpool::wire::examples::{asap_examples, enrp_examples};
use rserpool::wire::{AsapMessage, EnrpMessage, OperationError, Policy, PoolElement, PoolHandle};

fn hex_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Expected values per tshark field, as multisets (order inside one message follows
/// Wireshark's tree walk, which need not be ours).
#[derive(Default)]
struct Expected {
    fields: BTreeMap<String, Vec<String>>,
}

impl Expected {
    fn add(&mut self, field: impl Into<String>, value: String) {
        self.fields.entry(field.into()).or_default().push(value);
    }

    fn pool_handle(&mut self, prefix: Prefix, handle: &PoolHandle) {
        self.add(
            prefix.f("pool_handle_pool_handle"),
            hex_colons(handle.as_bytes()),
        );
    }

    fn pool_element(&mut self, prefix: Prefix, pe: &PoolElement) {
        self.add(prefix.f("pool_element_pe_identifier"), pe.id.to_string());
        self.add(
            prefix.f("pool_element_home_enrp_server_identifier"),
            format!("0x{:08x}", pe.home_registrar),
        );
        self.add(
            prefix.f("pool_element_registration_life"),
            pe.registration_life_ms.to_string(),
        );
        self.add(
            prefix.f("pool_member_selection_policy_type"),
            format!("0x{:08x}", pe.policy.policy_type()),
        );
    }

    fn error(&mut self, prefix: Prefix, error: &OperationError) {
        for cause in &error.causes {
            self.add(prefix.f("cause_code"), format!("0x{:04x}", cause.code.0));
        }
    }

    /// Checks every field against the capture; returns how many values were compared.
    fn check(&self, decoded: &DecodedCapture) -> usize {
        let mut compared = 0;
        for (field, expected) in &self.fields {
            let mut got = field_values(&decoded.packets, field);
            let mut want = expected.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "tshark's {field} differs from what we sent");
            compared += want.len();
        }
        compared
    }
}

#[derive(Clone, Copy)]
enum Prefix {
    Asap,
    Enrp,
}

impl Prefix {
    /// The field's full name under this protocol's dissector.
    fn f(self, name: &str) -> String {
        match self {
            Prefix::Asap => format!("asap.{name}"),
            Prefix::Enrp => format!("enrp.{name}"),
        }
    }
}

fn expect_asap(m: &AsapMessage, e: &mut Expected) {
    let p = Prefix::Asap;
    e.add("asap.message_type", m.message_type().to_string());
    match m {
        AsapMessage::Registration {
            pool_handle,
            pool_element,
        } => {
            e.pool_handle(p, pool_handle);
            e.pool_element(p, pool_element);
        }
        AsapMessage::Deregistration { pool_handle, pe_id }
        | AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
        | AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
            e.pool_handle(p, pool_handle);
            e.add("asap.pe_identifier", pe_id.to_string());
        }
        AsapMessage::RegistrationResponse {
            pool_handle,
            pe_id,
            error,
            ..
        }
        | AsapMessage::DeregistrationResponse {
            pool_handle,
            pe_id,
            error,
        } => {
            e.pool_handle(p, pool_handle);
            e.add("asap.pe_identifier", pe_id.to_string());
            if let Some(error) = error {
                e.error(p, error);
            }
        }
        AsapMessage::HandleResolution {
            pool_handle, items, ..
        } => {
            e.pool_handle(p, pool_handle);
            if let Some(items) = items {
                e.add("asap.hropt_items", items.to_string());
            }
        }
        AsapMessage::HandleResolutionResponse {
            pool_handle,
            policy,
            pool_elements,
            error,
            ..
        } => {
            expect_pool_list(e, pool_handle, policy.as_ref(), pool_elements);
            if let Some(error) = error {
                e.error(p, error);
            }
        }
        AsapMessage::BusinessCard {
            pool_handle,
            policy,
            pool_elements,
        } => expect_pool_list(e, pool_handle, policy.as_ref(), pool_elements),
        AsapMessage::EndpointKeepAlive {
            server_id,
            pool_handle,
            pe_id,
            ..
        } => {
            e.add("asap.server_identifier", format!("0x{server_id:08x}"));
            e.pool_handle(p, pool_handle);
            if let Some(pe_id) = pe_id {
                e.add("asap.pe_identifier", pe_id.to_string());
            }
        }
        AsapMessage::ServerAnnounce { server_id, .. } => {
            e.add("asap.server_identifier", format!("0x{server_id:08x}"));
        }
        AsapMessage::Cookie { cookie } | AsapMessage::CookieEcho { cookie } => {
            e.add("asap.cookie", hex_colons(cookie));
        }
        AsapMessage::Error { error } => e.error(p, error),
    }
}

fn expect_pool_list(
    e: &mut Expected,
    pool_handle: &PoolHandle,
    policy: Option<&Policy>,
    pool_elements: &[PoolElement],
) {
    e.pool_handle(Prefix::Asap, pool_handle);
    if let Some(policy) = policy {
        e.add(
            "asap.pool_member_selection_policy_type",
            format!("0x{:08x}", policy.policy_type()),
        );
    }
    for pe in pool_elements {
        e.pool_element(Prefix::Asap, pe);
    }
}

fn expect_enrp(m: &EnrpMessage, e: &mut Expected) {
    let p = Prefix::Enrp;
    e.add("enrp.message_type", m.body.message_type().to_string());
    e.add("enrp.sender_servers_id", format!("0x{:08x}", m.sender_id));
    e.add(
        "enrp.receiver_servers_id",
        format!("0x{:08x}", m.receiver_id),
    );
    match &m.body {
        EnrpBody::Presence { server_info, .. } => {
            if let Some(info) = server_info {
                e.add(
                    "enrp.server_information_server_identifier",
                    format!("0x{:08x}", info.server_id),
                );
            }
        }
        EnrpBody::HandleTableResponse { pools, .. } => {
            for pool in pools {
                e.pool_handle(p, &pool.pool_handle);
                for pe in &pool.pool_elements {
                    e.pool_element(p, pe);
                }
            }
        }
        EnrpBody::HandleUpdate {
            pool_handle,
            pool_element,
            ..
        } => {
            e.pool_handle(p, pool_handle);
            e.pool_element(p, pool_element);
        }
        EnrpBody::ListResponse { servers, .. } => {
            for info in servers {
                e.add(
                    "enrp.server_information_server_identifier",
                    format!("0x{:08x}", info.server_id),
                );
            }
        }
        EnrpBody::InitTakeover { target_id }
        | EnrpBody::InitTakeoverAck { target_id }
        | EnrpBody::TakeoverServer { target_id } => {
            e.add("enrp.target_servers_id", format!("0x{target_id:08x}"));
        }
        EnrpBody::Error { error } => e.error(p, error),
        EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
    }
}

/// Whether a message's error causes carry nested TLVs or messages, which Wireshark dissects
/// too (their fields would count twice); those messages are judged on cleanliness and type.
fn has_nested_error_info(error: Option<&OperationError>) -> bool {
    error.is_some_and(|e| e.causes.iter().any(|c| !c.info.is_empty()))
}

fn asap_error(m: &AsapMessage) -> Option<&OperationError> {
    match m {
        AsapMessage::RegistrationResponse { error, .. }
        | AsapMessage::DeregistrationResponse { error, .. }
        | AsapMessage::HandleResolutionResponse { error, .. } => error.as_ref(),
        AsapMessage::Error { error } => Some(error),
        _ => None,
    }
}

fn enrp_error(m: &EnrpMessage) -> Option<&OperationError> {
    match &m.body {
        EnrpBody::Error { error } => Some(error),
        _ => None,
    }
}

fn is_subsequence(needle: &[String], haystack: &[String]) -> bool {
    let mut rest = haystack.iter();
    needle.iter().all(|n| rest.any(|h| h == n))
}

#[tokio::test]
async fn every_asap_and_enrp_message_decodes_as_sent() -> anyhow::Result<()> {
    let asap = asap_examples();
    let enrp = enrp_examples();
    // Every message type of both protocols is present.
    let mut asap_types: Vec<u8> = asap.iter().map(AsapMessage::message_type).collect();
    asap_types.sort();
    asap_types.dedup();
    assert_eq!(asap_types, (0x01..=0x0e).collect::<Vec<u8>>());
    let mut enrp_types: Vec<u8> = enrp.iter().map(|m| m.body.message_type()).collect();
    enrp_types.sort();
    enrp_types.dedup();
    assert_eq!(enrp_types, (0x01..=0x0a).collect::<Vec<u8>>());

    let mut frames = Vec::new();
    for m in &asap {
        frames.push((PPID_ASAP, m.to_bytes()?));
    }
    for m in &enrp {
        frames.push((PPID_ENRP, m.to_bytes()?));
    }
    let decoded = capture_and_decode(&frames).await?;
    decoded.assert_clean()?;
    // Each frame decoded once, in order, by the dissector its PPID names.
    let asap_decoded = field_values(&decoded.packets, "asap.message_type");
    let enrp_decoded = field_values(&decoded.packets, "enrp.message_type");
    let asap_sent: Vec<String> = asap.iter().map(|m| m.message_type().to_string()).collect();
    let enrp_sent: Vec<String> = enrp
        .iter()
        .map(|m| m.body.message_type().to_string())
        .collect();
    // Nested messages in error causes add to these lists, so ours must appear in order as a
    // subsequence; exact counts are checked on the nested-free capture below.
    assert!(
        is_subsequence(&asap_sent, &asap_decoded),
        "{asap_decoded:?}"
    );
    assert!(
        is_subsequence(&enrp_sent, &enrp_decoded),
        "{enrp_decoded:?}"
    );
    assert_eq!(
        field_values(&decoded.packets, "rserpool_tcp.ppid").len(),
        frames.len()
    );

    // Field values on the messages without nested error information.
    let mut expected = Expected::default();
    let mut plain = Vec::new();
    for m in asap
        .iter()
        .filter(|m| !has_nested_error_info(asap_error(m)))
    {
        expect_asap(m, &mut expected);
        plain.push((PPID_ASAP, m.to_bytes()?));
    }
    for m in enrp
        .iter()
        .filter(|m| !has_nested_error_info(enrp_error(m)))
    {
        expect_enrp(m, &mut expected);
        plain.push((PPID_ENRP, m.to_bytes()?));
    }
    assert!(
        plain.len() * 4 >= frames.len() * 3,
        "most examples are judged field by field"
    );
    let decoded = capture_and_decode(&plain).await?;
    decoded.assert_clean()?;
    let compared = expected.check(&decoded);
    eprintln!(
        "{compared} field values compared over {} fields",
        expected.fields.len()
    );
    assert!(compared > 200, "only {compared} values compared");
    Ok(())
}

#[tokio::test]
async fn fgp_messages_and_cookies_decode_as_sent() -> anyhow::Result<()> {
    let parameter = Parameter {
        width: 1024,
        height: 768,
        max_iterations: 1000,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: -2.25,
        c1_imag: 1.25,
        c2_real: 0.75,
        c2_imag: -1.25,
        n: 2.0,
    };
    let mut frames = vec![(PPID_FGP, parameter.encode().to_vec())];
    let points: Vec<u32> = (0..324).map(|i| i * 3 % 1001).collect();
    let runs = [
        (0u32, 0u32, 324usize),
        (324, 0, 324),
        (648, 0, 1),
        (0, 1, 17),
    ];
    for (x, y, n) in runs {
        frames.push((PPID_FGP, Data::new(x, y, points[..n].to_vec()).encode()?));
    }
    frames.push((PPID_FGP, Data::finalizer().encode()?));
    let mut cookie = Cookie::start(parameter);
    cookie.current_x = 649;
    let cookie_bytes = cookie.encode().to_vec();
    frames.push((
        PPID_ASAP,
        AsapMessage::Cookie {
            cookie: cookie_bytes.clone(),
        }
        .to_bytes()?,
    ));

    let decoded = capture_and_decode(&frames).await?;
    decoded.assert_clean()?;
    let packets = &decoded.packets;
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_width"),
        ["1024"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_height"),
        ["768"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_maxiterations"),
        ["1000"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_c1real"),
        ["-2.25"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.parameter_c2imag"),
        ["-1.25"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.data_points"),
        ["324", "324", "1", "17", "0"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.data_start_x"),
        ["0", "324", "648", "0", "4294967295"]
    );
    assert_eq!(
        field_values(packets, "fractalgeneratorprotocol.data_start_y"),
        ["0", "0", "0", "1", "4294967295"]
    );
    assert_eq!(
        field_values(packets, "asap.cookie"),
        [hex_colons(&cookie_bytes)]
    );
    Ok(())
}

/// Three real registrars (127.0.33.1-3, ENRP on port 9901, fast timers) captured while they
/// find each other, replicate two PEs, forget one that deregisters, and take over the other
/// when its registrar is killed: every ENRP message type they send (0x01-0x09; they never need
/// an ERROR) decodes with Wireshark's own ENRP dissector, nothing malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrp_between_live_registrars_decodes_as_wireshark_expects() -> anyhow::Result<()> {
    use e2e::{READY_TIMEOUT, start_pool_element};
    use nix::sys::signal::Signal;
    let asap = |r: u8| e2e::enrp_registrar_asap(33, r).to_string();
    let traffic = async {
        let mut registrars = Vec::new();
        for r in 1..=3u8 {
            let fast = [
                "--peer-heartbeat-cycle",
                "300",
                "--peer-max-time-last-heard",
                "500",
                "--peer-max-time-no-response",
                "500",
                "--takeover-expiry",
                "1000",
            ]
            .map(String::from);
            let peers: Vec<u8> = (1..=3u8).filter(|&p| p != r).collect();
            let proc = e2e::start_enrp_registrar(33, r, &peers, &fast)?;
            registrars.push(proc);
        }
        let home = asap(1).parse()?;
        let (mut leaving, _) = start_pool_element(home, "0xd1", &[])?;
        let (_staying, _) = start_pool_element(home, "0xd2", &[])?;
        for other in 2..=3u8 {
            let deadline = std::time::Instant::now() + READY_TIMEOUT;
            while e2e::listed_pes(asap(other).parse()?, "FractalGeneratorPool")
                .await
                .unwrap_or_default()
                != [0xd1, 0xd2]
            {
                anyhow::ensure!(std::time::Instant::now() < deadline, "not replicated");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        leaving.signal(Signal::SIGTERM)?;
        leaving.wait_exit(READY_TIMEOUT)?;
        registrars[1].log.wait_for(READY_TIMEOUT, |l| {
            l.contains("pe removed") && l.contains("0x000000d1")
        })?;
        registrars[0].signal(Signal::SIGKILL)?;
        for other in &registrars[1..] {
            other.log.wait_for(READY_TIMEOUT, |l| {
                l.contains("TakeoverWon") || l.contains("TakenOver")
            })?;
        }
        anyhow::Ok(())
    };
    let decoded = e2e::tshark::capture_live(9901, traffic).await?;
    decoded.assert_clean()?;
    // The capture's UDP probes ("capture probe") reach Wireshark's ENRP dissector on UDP 9901
    // too, as type 0x63: not ours.
    let mut types: Vec<u8> = field_values(&decoded.packets, "enrp.message_type")
        .iter()
        .filter_map(|t| t.parse().ok())
        .filter(|&t| t != b'c')
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(types, (0x01..=0x09).collect::<Vec<u8>>(), "{types:?}");
    Ok(())
}

/// Every CalcApp message type (Abort too, which nobody sends) and a CalcApp cookie in an ASAP
/// Cookie and Cookie Echo decode with Wireshark's CalcApp and ASAP dissectors, field by field.
#[tokio::test]
async fn calcapp_messages_and_cookies_decode_as_sent() -> anyhow::Result<()> {
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for (n, kind) in MessageType::ALL.into_iter().enumerate() {
        let message = calcapp::Message {
            kind,
            job_id: 0x0100_0000 + n as u32,
            job_size: 10_000_000_000 + n as u64,
            completed: 123_456_789 * n as u64,
        };
        frames.push((PPID_CALCAPP, message.encode().to_vec()));
        expected.push(message);
    }
    let cookie = JobCookie {
        job_id: 42,
        job_size: 10_000_000,
        completed: 4_000_000,
    }
    .encode()
    .to_vec();
    frames.push((
        PPID_ASAP,
        AsapMessage::Cookie {
            cookie: cookie.clone(),
        }
        .to_bytes()?,
    ));
    frames.push((
        PPID_ASAP,
        AsapMessage::CookieEcho {
            cookie: cookie.clone(),
        }
        .to_bytes()?,
    ));

    let decoded = capture_and_decode(&frames).await?;
    decoded.assert_clean()?;
    let packets = &decoded.packets;
    let column = |field: &str, value: fn(&calcapp::Message) -> String| {
        assert_eq!(
            field_values(packets, &format!("calcappprotocol.{field}")),
            expected.iter().map(value).collect::<Vec<_>>(),
            "{field}"
        );
    };
    column("message_type", |m| (m.kind as u8).to_string());
    column("message_flags", |_| "0".into());
    column("message_length", |_| "24".into());
    column("message_jobid", |m| m.job_id.to_string());
    column("message_jobsize", |m| m.job_size.to_string());
    column("message_completed", |m| m.completed.to_string());
    assert_eq!(field_values(packets, "asap.message_type"), ["11", "12"]);
    assert_eq!(
        field_values(packets, "asap.cookie"),
        [hex_colons(&cookie), hex_colons(&cookie)]
    );
    Ok(())
}

/// A real CalcApp PE and two pool users of `calcapp-user`, captured on the PE's port: what
/// the programs send (Request, Accept, Reject, KeepAlive and KeepAliveAck both ways, Complete,
/// ASAP Cookies) decodes with Wireshark's CalcApp dissector, nothing malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calcapp_between_live_programs_decodes_as_wireshark_expects() -> anyhow::Result<()> {
    use e2e::{Proc, READY_TIMEOUT, bin, field};
    const PE_PORT: u16 = 34034;
    let traffic = async {
        let registrar = Proc::spawn(
            "registrar",
            bin("registrar"),
            &["--asap", "127.0.0.1:0", "--announce", "off"].map(String::from),
        )?;
        let ready = registrar
            .log
            .wait_for_text("registrar ready", READY_TIMEOUT)?;
        let address = field(&ready, "asap").context("asap=")?;
        let pe_args = [
            "--service",
            "calcapp",
            "--registrar",
            &address,
            "--listen",
            "127.0.0.1:34034",
            "--max-jobs",
            "1",
            "--keep-alive-interval",
            "300",
            "--keep-alive-timeout",
            "1000",
            "--cookie-max-calculations",
            "250000",
        ]
        .map(String::from);
        let mut pe = Proc::spawn("pe", bin("pool-element"), &pe_args)?;
        pe.log
            .wait_for_text("pool element registered", READY_TIMEOUT)?;
        // Two pool users, one job each of 1 s at the same moment: one is rejected (max 1 job)
        // until the other completes.
        let user_args = [
            "--registrar",
            &address,
            "--pus",
            "2",
            "--job-size",
            "fixed:1e6",
            "--job-interval",
            "fixed:0.3",
            "--runtime",
            "0.4",
            "--drain-timeout",
            "60",
            "--keep-alive-interval",
            "300",
            "--keep-alive-timeout",
            "1000",
        ]
        .map(String::from);
        let mut users = Proc::spawn("calcapp-user", bin("calcapp-user"), &user_args)?;
        let status = users.wait_exit(Duration::from_secs(90))?;
        anyhow::ensure!(
            status.success(),
            "calcapp-user failed: {:?}",
            users.log.lines()
        );
        pe.signal(nix::sys::signal::Signal::SIGTERM)?;
        pe.wait_exit(READY_TIMEOUT)?;
        anyhow::Ok(())
    };
    let decoded = e2e::tshark::capture_live(PE_PORT, traffic).await?;
    decoded.assert_clean()?;
    let mut types: Vec<u8> = field_values(&decoded.packets, "calcappprotocol.message_type")
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    let requests = types.iter().filter(|&&t| t == 1).count();
    types.sort();
    types.dedup();
    // Everything but Abort, which neither side sends (as rsplib).
    assert_eq!(types, vec![1, 2, 3, 5, 6, 7], "{types:?}");
    assert!(requests >= 3, "two jobs, one asked again after its Reject");
    assert_eq!(
        field_values(&decoded.packets, "calcappprotocol.message_completed")
            .iter()
            .filter(|c| *c == "1000000")
            .count(),
        2,
        "two Completes of 1e6 calculations"
    );
    assert!(
        !field_values(&decoded.packets, "asap.cookie").is_empty(),
        "cookies on the wire"
    );
    Ok(())
}
