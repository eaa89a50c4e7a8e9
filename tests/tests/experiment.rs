//! `pool-experiment` end to end (issue 19): the `smoke` scenario runs a registrar, three
//! failing CalcApp PEs and twelve pool users per point as real processes, and writes its CSV
//! and plot.

use std::process::Command;

use anyhow::{Context, Result};
use e2e::bin;

#[test]
fn a_short_scenario_runs_real_processes_and_writes_its_csv_and_plot() -> Result<()> {
    let out = tempfile::tempdir()?;
    let status = Command::new(bin("pool-experiment"))
        .args([
            "run",
            "smoke",
            "--quick",
            "--runtime",
            "6",
            "--time-scale",
            "10",
            "--out",
        ])
        .arg(out.path())
        .arg("--bin-dir")
        .arg(e2e::bin_dir())
        .env("RUST_LOG", "warn")
        .status()
        .context("running pool-experiment")?;
    assert!(status.success(), "pool-experiment failed: {status}");
    let csv = std::fs::read_to_string(out.path().join("smoke.csv"))?;
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 1 + 2, "a header and one row per policy: {csv}");
    let column = |name: &str| rows[0].iter().position(|c| *c == name).expect(name);
    let (speed, incomplete) = (column("handling_speed"), column("jobs_incomplete"));
    let (messages, goodput) = (column("registrar_messages"), column("goodput_ratio"));
    for (row, policy) in rows[1..].iter().zip(["LU", "RAND"]) {
        assert_eq!(row[0], policy);
        let handling_speed: f64 = row[speed].parse()?;
        assert!(
            handling_speed > 5.0 && handling_speed <= 110.0,
            "{policy}: handling speed {handling_speed} % of capacity"
        );
        assert_eq!(row[incomplete], "0", "{policy}: every job completed");
        // Registrations, resolutions, keep-alives: the registrar counted its messages.
        let registrar_messages: f64 = row[messages].parse()?;
        assert!(
            registrar_messages > 1.0,
            "{policy}: {registrar_messages} registrar messages/s"
        );
        let goodput_ratio: f64 = row[goodput].parse()?;
        assert!(
            goodput_ratio > 50.0 && goodput_ratio <= 100.0,
            "{policy}: goodput ratio {goodput_ratio} %"
        );
    }
    let svg = std::fs::read_to_string(out.path().join("smoke.svg"))?;
    assert!(svg.starts_with("<svg") && svg.contains("LU") && svg.contains("RAND"));
    Ok(())
}
