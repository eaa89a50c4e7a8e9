//! Smoke test of the `registrar` program: help, argument checks, readiness line, SIGTERM.
//! (Also makes `cargo nextest run --workspace` build the binary the e2e tests start.)

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRAR: &str = env!("CARGO_BIN_EXE_registrar");

#[test]
fn help_lists_every_option_with_its_default() {
    let out = Command::new(REGISTRAR)
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--asap",
        "--announce ",
        "--announce-interval",
        "--keepalive-interval",
        "--keepalive-timeout",
        "--max-bad-pe-reports",
        "--max-hr-items",
        "--id",
    ] {
        assert!(
            help.contains(option),
            "{option} missing from --help:\n{help}"
        );
    }
    assert!(help.contains("0.0.0.0:3863") && help.contains("239.0.0.50:3863"));
}

#[test]
fn bad_arguments_are_refused() {
    for args in [
        &["--id", "0"][..],
        &["--id", "0xzz"],
        &["--announce", "nowhere"],
        &["--keepalive-interval", "0"],
    ] {
        let out = Command::new(REGISTRAR).args(args).output().expect("runs");
        assert!(!out.status.success(), "{args:?} accepted");
    }
}

#[test]
fn starts_reports_ready_and_stops_on_sigterm() {
    let stats = std::env::temp_dir().join(format!("registrar-stats-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&stats);
    let mut child = Command::new(REGISTRAR)
        .arg("--stats")
        .arg(&stats)
        .args([
            "--asap",
            "127.0.0.1:0",
            "--announce",
            "off",
            "--id",
            "0x00abcdef",
        ])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("registrar ready"))
        .expect("ready line");
    assert!(ready.contains("id=0x00abcdef"), "{ready}");
    assert!(ready.contains("announce=off"), "{ready}");
    assert!(ready.contains("asap=127.0.0.1:"), "{ready}");
    assert!(
        !ready.contains("asap=127.0.0.1:0 "),
        "the bound port is reported: {ready}"
    );
    // One Handle Resolution for an unknown pool, framed (PPID 11), and its answer read back.
    let asap = ready
        .split_whitespace()
        .find_map(|field| field.strip_prefix("asap="))
        .expect("asap address");
    let mut stream = std::net::TcpStream::connect(asap).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let resolution = [0x05, 0, 0, 12, 0x00, 0x09, 0, 8, b'n', b'o', b'n', b'e'];
    let mut frame = vec![0, 0, 0, 11, 0, 0, 0, resolution.len() as u8];
    frame.extend_from_slice(&resolution);
    stream.write_all(&frame).expect("sent");
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).expect("an answer");
    assert_eq!(header[..4], [0, 0, 0, 11], "an ASAP answer");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signalled");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        assert!(Instant::now() < deadline, "registrar did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        lines
            .map_while(Result::ok)
            .any(|l| l.contains("registrar stopped"))
    );
    let written = std::fs::read_to_string(&stats).expect("--stats written at exit");
    let _ = std::fs::remove_file(&stats);
    assert!(
        written.contains("\"asap_messages_received\":1,"),
        "{written}"
    );
    assert!(written.contains("\"asap_messages_sent\":1,"), "{written}");
    assert!(written.contains("\"handle_resolutions\":1,"), "{written}");
    assert!(written.contains("\"uptime\":"), "{written}");
}
