//! The `pool-element` binary: help text, argument errors, start-up line and clean SIGTERM exit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pool-element");

#[test]
fn help_lists_every_option() {
    let output = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--registrar",
        "--announce-listen",
        "--pool",
        "--policy",
        "--id",
        "--listen",
        "--max-sessions",
        "--capacity",
        "--cookie-max-packets",
        "--cookie-max-time",
        "--rereg-interval",
        "--fail-after",
        "--crash-after",
        "--test-mode",
        "--max-work",
        "--first-message-timeout",
        "--max-pending-per-source",
        "--max-pending",
        "--max-connections",
    ] {
        assert!(
            help.contains(option),
            "{option} missing from --help:\n{help}"
        );
    }
}

#[test]
fn bad_arguments_are_rejected() {
    for args in [
        &["--policy", "Nonsense"][..],
        &["--id", "0xZZ"],
        &["--max-sessions", "0"],
        &["--max-work", "0"],
        &["--first-message-timeout", "0"],
        &["--max-pending-per-source", "0"],
        &["--max-connections", "0"],
    ] {
        let output = Command::new(BIN).args(args).output().expect("runs");
        assert!(!output.status.success(), "{args:?} accepted");
    }
}

#[test]
fn starts_listening_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--registrar", "127.0.0.1:9", "--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listening = loop {
        let line = lines.next().expect("output before exit").expect("utf-8");
        if line.contains("pool element listening") {
            break line;
        }
        assert!(Instant::now() < deadline, "no listening line");
    };
    assert!(listening.contains("data=127.0.0.1:"), "{listening}");
    nix_kill(child.id(), "TERM");
    let status = child.wait().expect("exits");
    assert!(status.success(), "exit status {status:?}");
}

/// Sends a signal with kill(1) (no extra dependency for one call).
fn nix_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
