//! `pool-user --headless` as a program, against the in-process fake registrar and PE.

mod common;

use std::process::Command;

use common::{Behaviour, FakePe, FakeRegistrar};
use fractal_protocol::kernel;
use fractal_protocol::preset::Preset;

const BIN: &str = env!("CARGO_BIN_EXE_pool-user");

#[test]
fn help_lists_the_headless_options() {
    let output = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--headless",
        "--registrar",
        "--pool",
        "--width",
        "--height",
        "--sessions",
        "--preset",
        "--images",
        "--out",
        "--iterations-out",
        "--stats-json",
        "--session-timeout",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
}

#[test]
fn unknown_preset_is_an_error() {
    let output = Command::new(BIN)
        .args([
            "--headless",
            "--registrar",
            "127.0.0.1:9",
            "--preset",
            "nope",
        ])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no built-in preset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_writes_exact_iterations_png_and_stats() {
    let registrar = FakeRegistrar::start().await;
    let pe = FakePe::start(
        0x99,
        Behaviour {
            cookie_every: 2,
            fail_after: Some(5),
            ..Behaviour::default()
        },
    )
    .await;
    let other = FakePe::start(
        0x98,
        Behaviour {
            cookie_every: 2,
            ..Behaviour::default()
        },
    )
    .await;
    registrar.add(&pe);
    registrar.add(&other);
    let dir = tempfile::tempdir().expect("temp dir");
    let iterations = dir.path().join("it.bin");
    let png = dir.path().join("out.png");
    let stats = dir.path().join("stats.json");
    let preset = Preset::builtin()
        .into_iter()
        .next()
        .expect("a built-in preset");
    let (width, height) = (120u32, 80u32);
    let mut command = Command::new(BIN);
    command
        .args(["--headless", "--registrar", &registrar.address.to_string()])
        .args([
            "--width",
            &width.to_string(),
            "--height",
            &height.to_string(),
        ])
        .args([
            "--sessions",
            "1",
            "--preset",
            &preset.name,
            "--max-iterations",
            "200",
        ])
        .arg("--iterations-out")
        .arg(&iterations)
        .arg("--out")
        .arg(&png)
        .arg("--stats-json")
        .arg(&stats)
        .env("NO_COLOR", "1");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("image completed"), "{stderr}");

    let mut view = preset.parameter(width, height);
    view.max_iterations = 200;
    let expected: Vec<u8> = kernel::compute_image(&view)
        .into_iter()
        .flat_map(u32::to_le_bytes)
        .collect();
    assert_eq!(
        std::fs::read(&iterations).expect("iterations file"),
        expected
    );

    let picture = image::open(&png).expect("png").to_rgb8();
    assert_eq!(picture.dimensions(), (width, height));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("stats file")).expect("json");
    let first = &json[0];
    assert_eq!(first["pixels"], u64::from(width * height));
    // 9600 pixels = 30 Data messages; the failing PE gives up after 5 of them each time.
    assert!(
        first["failovers"].as_u64().expect("failovers") >= 1,
        "{json}"
    );
    assert_eq!(first["recomputed_pixels"], 0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("failovers"), "summary printed: {stdout}");
}
