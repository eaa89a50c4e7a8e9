//! The `calcapp-user` command line refuses what it cannot run. (Being an integration test of
//! this package, it also has cargo build the program for the end-to-end tests.)

use std::process::Command;

fn calcapp_user(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_calcapp-user"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn bad_workloads_are_refused_with_a_message() {
    for (args, needle) in [
        (&["--job-size", "gauss:3"][..], "unknown distribution"),
        (&["--job-size", "exp:-1"][..], "at least 0"),
        (
            &["--target-utilization", "0", "--registrar", "127.0.0.1:9"][..],
            "must be positive",
        ),
        (
            &["--runtime", "0", "--registrar", "127.0.0.1:9"][..],
            "--runtime",
        ),
    ] {
        let output = calcapp_user(args);
        assert!(!output.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
