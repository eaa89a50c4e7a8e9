//! Runs one point of a sweep with real processes: a registrar, the PEs
//! (`pool-element --service calcapp`, one process each) and the pool users (`calcapp-user`),
//! every time divided by the time scale.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{asap_address, spawn_until_ready, terminate_all};
use crate::scenario::Setup;

/// How a point is run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Every time (request handling, keep-alives, MTBF, delay) is divided by this, and the
    /// capacity multiplied: the ratios stay the paper's.
    pub time_scale: f64,
    /// Seconds of new requests (wall clock), then the last ones drain.
    pub runtime: f64,
    /// Where `registrar`, `pool-element` and `calcapp-user` are.
    pub bin_dir: PathBuf,
    pub seed: u64,
}

/// What one run of a point measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunResult {
    /// Handling speed in % of a PE's capacity.
    pub handling_speed: f64,
    pub utilization: f64,
    pub goodput: f64,
    pub failovers: f64,
    pub lost_calculations: f64,
    pub jobs_completed: f64,
    pub jobs_incomplete: f64,
    /// ASAP messages the registrar received and sent per second of its life (fig. 8).
    pub registrar_messages: f64,
    /// Mean calculations lost per job left behind by an unclean failure.
    pub lost_per_job: f64,
    /// Jobs a PE held when it failed uncleanly, on average.
    pub jobs_per_failure: f64,
    /// Share of the calculations the PEs performed that no cookie saved: 1 − lost ÷ performed.
    pub goodput_ratio: f64,
    /// The same predicted by equation (1) (see [`goodput_ratio_eq1`]).
    pub goodput_ratio_eq1: f64,
}

/// Equation (1) as we apply it: an unclean failure costs each of the `jobs_per_failure` jobs
/// of the PE half a cookie interval on average, and a PE performs `utilization` × capacity ×
/// MTBF calculations between failures, so
/// goodput ratio = 1 − (1 − P(clean)) × jobs per failure × CookieMaxCalcs/2
///                     ÷ (utilisation × capacity × MTBF).
/// NaN for PEs that never fail or an unknown utilisation.
pub fn goodput_ratio_eq1(setup: &Setup, utilization: f64, jobs_per_failure: f64) -> f64 {
    let Some(mtbf) = setup.mtbf else {
        return f64::NAN;
    };
    let calculations_between_failures = utilization * setup.capacity * mtbf * setup.request_time();
    let cookie_max_calculations = (setup.cookie_fraction * setup.job_size).max(1.0);
    let lost_per_failure =
        (1.0 - setup.clean_shutdown_probability) * jobs_per_failure * cookie_max_calculations / 2.0;
    1.0 - lost_per_failure / calculations_between_failures
}

/// Milliseconds of `seconds` of paper time, scaled; at least 1.
fn scaled_ms(seconds: f64, scale: f64) -> String {
    ((seconds / scale * 1000.0).round().max(1.0) as u64).to_string()
}

/// The registrar's arguments (its ASAP address is chosen by the system).
pub fn registrar_args(setup: &Setup, scale: f64, stats: &Path) -> Vec<String> {
    let keep_alive = scaled_ms(setup.endpoint_keep_alive, scale);
    let mut args: Vec<String> = ["--asap", "127.0.0.1:0", "--announce", "off"]
        .map(String::from)
        .to_vec();
    args.extend([
        "--keepalive-interval".into(),
        keep_alive.clone(),
        "--keepalive-timeout".into(),
        keep_alive,
        "--max-bad-pe-reports".into(),
        setup.max_bad_pe_reports.to_string(),
        "--network-delay".into(),
        delay_ms(setup, scale),
        "--stats".into(),
        stats.to_string_lossy().into_owned(),
    ]);
    args
}

fn delay_ms(setup: &Setup, scale: f64) -> String {
    ((setup.network_delay / scale * 1000.0).round() as u64).to_string()
}

/// A PE's arguments.
pub fn pe_args(setup: &Setup, scale: f64, registrar: &str, stats: &Path) -> Vec<String> {
    let session_keep_alive = scaled_ms(setup.session_keep_alive, scale);
    let mut args: Vec<String> = vec![
        "--service".into(),
        "calcapp".into(),
        "--registrar".into(),
        registrar.into(),
        "--policy".into(),
        setup.policy.rsplib_name().into(),
        "--capacity".into(),
        format!("{}", setup.capacity * scale),
        "--keep-alive-interval".into(),
        session_keep_alive.clone(),
        "--keep-alive-timeout".into(),
        session_keep_alive,
        "--cookie-max-calculations".into(),
        format!("{}", (setup.cookie_fraction * setup.job_size).max(1.0)),
        // Cookies by calculations only, as the paper's cookie interval.
        "--cookie-max-time".into(),
        scaled_ms(1e6, scale),
        "--rereg-interval".into(),
        // rsplib's re-registration interval here, 5 s, scaled (at least the PE's 10 ms).
        ((5000.0 / scale).round().max(10.0) as u64).to_string(),
        "--network-delay".into(),
        delay_ms(setup, scale),
        "--stats".into(),
        stats.to_string_lossy().into_owned(),
    ];
    if let Some(mtbf) = setup.mtbf {
        args.extend([
            "--mtbf".into(),
            format!("{}", mtbf * setup.request_time() / scale),
            "--clean-shutdown-probability".into(),
            setup.clean_shutdown_probability.to_string(),
            // The paper's failures are silent: only keep-alives find them.
            "--unclean".into(),
            "hang".into(),
        ]);
    }
    args
}

/// The pool users' arguments.
pub fn user_args(
    setup: &Setup,
    config: &RunConfig,
    registrar: &str,
    pe_stats: &[PathBuf],
    summary: &Path,
) -> Vec<String> {
    let scale = config.time_scale;
    let session_keep_alive = scaled_ms(setup.session_keep_alive, scale);
    let mut args: Vec<String> = vec![
        "--registrar".into(),
        registrar.into(),
        "--pus".into(),
        setup.pus.to_string(),
        "--pes".into(),
        setup.pes.to_string(),
        "--pe-capacity".into(),
        format!("{}", setup.capacity * scale),
        "--job-size".into(),
        format!("exp:{}", setup.job_size),
        "--target-utilization".into(),
        setup.utilization.to_string(),
        "--keep-alive-interval".into(),
        session_keep_alive.clone(),
        "--keep-alive-timeout".into(),
        session_keep_alive,
        "--runtime".into(),
        config.runtime.to_string(),
        "--drain-timeout".into(),
        format!("{}", (20.0 * setup.request_time() / scale).max(10.0)),
        "--network-delay".into(),
        delay_ms(setup, scale),
        "--seed".into(),
        config.seed.to_string(),
        "--summary".into(),
        summary.to_string_lossy().into_owned(),
    ];
    if !pe_stats.is_empty() {
        args.push("--pe-stats".into());
        args.extend(pe_stats.iter().map(|p| p.to_string_lossy().into_owned()));
    }
    args
}

/// Runs `setup` once in `dir`.
pub fn run_point(setup: &Setup, config: &RunConfig, dir: &Path) -> Result<RunResult> {
    std::fs::create_dir_all(dir)?;
    let scale = config.time_scale;
    let registrar_stats = dir.join("registrar.json");
    let _ = std::fs::remove_file(&registrar_stats);
    let (registrar, ready) = spawn_until_ready(
        &config.bin_dir.join("registrar"),
        &registrar_args(setup, scale, &registrar_stats),
        "registrar ready",
    )?;
    let address = asap_address(&ready)?;
    let mut pes = Vec::new();
    let mut stats = Vec::new();
    for n in 0..setup.pes {
        let path = dir.join(format!("pe{n}.jsonl"));
        let _ = std::fs::remove_file(&path);
        let (pe, _) = spawn_until_ready(
            &config.bin_dir.join("pool-element"),
            &pe_args(setup, scale, &address, &path),
            "pool element registered",
        )?;
        pes.push(pe);
        stats.push(path);
    }
    let summary_path = dir.join("summary.json");
    let users = Command::new(config.bin_dir.join("calcapp-user"))
        .args(user_args(setup, config, &address, &[], &summary_path))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running calcapp-user")?;
    if !users.success() {
        bail!("calcapp-user failed: {users}");
    }
    // SIGTERM: each PE writes its last life's statistics.
    terminate_all(&mut pes, Duration::from_secs(10))?;
    // Then the registrar, which writes its message counts.
    terminate_all(&mut [registrar], Duration::from_secs(10))?;
    let registrar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&registrar_stats).context("the registrar's --stats file")?,
    )?;
    let registrar_number = |key: &str| registrar[key].as_f64().unwrap_or(f64::NAN);
    let registrar_messages = (registrar_number("asap_messages_received")
        + registrar_number("asap_messages_sent"))
        / registrar_number("uptime");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path)?)?;
    let pe = calcapp_user::read_pe_stats(&stats, setup.capacity * scale)?;
    // No life ended: no utilisation to report (rather than 0 %).
    let utilization = if pe.lives == 0 {
        f64::NAN
    } else {
        pe.utilization
    };
    let number = |key: &str| summary[key].as_f64().unwrap_or(f64::NAN);
    let (lost_per_job, jobs_per_failure) = if pe.unclean_failures == 0 {
        (f64::NAN, f64::NAN)
    } else {
        (
            if pe.unclean_jobs_left == 0 {
                f64::NAN
            } else {
                pe.lost_per_unclean_job
            },
            pe.unclean_jobs_left as f64 / pe.unclean_failures as f64,
        )
    };
    let goodput_ratio = if pe.used_calculations > 0.0 {
        1.0 - pe.lost_calculations / pe.used_calculations
    } else {
        f64::NAN
    };
    Ok(RunResult {
        handling_speed: number("handling_speed_percent"),
        utilization,
        goodput: number("goodput"),
        failovers: number("failovers"),
        lost_calculations: pe.lost_calculations,
        jobs_completed: number("jobs_completed"),
        jobs_incomplete: number("jobs_incomplete"),
        registrar_messages,
        lost_per_job,
        jobs_per_failure,
        goodput_ratio,
        goodput_ratio_eq1: goodput_ratio_eq1(setup, utilization, jobs_per_failure),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Policy;

    fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} missing"));
        &args[at + 1]
    }

    #[test]
    fn times_shrink_and_capacity_grows_by_the_scale_ratios_kept() {
        let setup = Setup {
            policy: Policy::LeastUsed,
            mtbf: Some(20.0),
            clean_shutdown_probability: 0.5,
            ..Setup::default()
        };
        let pe = pe_args(&setup, 10.0, "127.0.0.1:1", Path::new("s.jsonl"));
        assert_eq!(value_after(&pe, "--policy"), "LeastUsed");
        assert_eq!(value_after(&pe, "--capacity"), "10000000");
        // Session keep-alive 1 s / 10.
        assert_eq!(value_after(&pe, "--keep-alive-interval"), "100");
        // 10 % of 10^7 calculations, unscaled: calculations are not time.
        assert_eq!(value_after(&pe, "--cookie-max-calculations"), "1000000");
        // 20 request times of 10 s, / 10.
        assert_eq!(value_after(&pe, "--mtbf"), "20");
        assert_eq!(value_after(&pe, "--unclean"), "hang");
        assert_eq!(value_after(&pe, "--network-delay"), "1");
        let registrar = registrar_args(&setup, 10.0, Path::new("r.json"));
        assert_eq!(value_after(&registrar, "--keepalive-interval"), "500");
        assert_eq!(value_after(&registrar, "--max-bad-pe-reports"), "3");
        let config = RunConfig {
            time_scale: 10.0,
            runtime: 30.0,
            bin_dir: PathBuf::new(),
            seed: 1,
        };
        let users = user_args(&setup, &config, "127.0.0.1:1", &[], Path::new("x.json"));
        assert_eq!(value_after(&users, "--pe-capacity"), "10000000");
        assert_eq!(value_after(&users, "--job-size"), "exp:10000000");
        assert_eq!(value_after(&users, "--target-utilization"), "0.6");
        assert_eq!(value_after(&users, "--keep-alive-timeout"), "100");
    }

    #[test]
    fn equation_1_charges_half_a_cookie_per_job_and_unclean_failure() {
        let setup = Setup {
            mtbf: Some(10.0),
            clean_shutdown_probability: 0.0,
            ..Setup::default()
        };
        // Between failures a PE at 60 % performs 0.6 × 10^6 × 10 × 10 s = 6 × 10^7 calculations;
        // two jobs lose 10^6 / 2 each: 1/60 lost.
        let ratio = goodput_ratio_eq1(&setup, 0.6, 2.0);
        assert!((ratio - (1.0 - 1.0 / 60.0)).abs() < 1e-12, "{ratio}");
        // Half the failures clean: half the loss.
        let half_clean = Setup {
            clean_shutdown_probability: 0.5,
            ..setup.clone()
        };
        let ratio = goodput_ratio_eq1(&half_clean, 0.6, 2.0);
        assert!((ratio - (1.0 - 1.0 / 120.0)).abs() < 1e-12, "{ratio}");
        assert!(goodput_ratio_eq1(&Setup::default(), 0.6, 2.0).is_nan());
    }

    #[test]
    fn pes_that_never_fail_get_no_churn_options() {
        let pe = pe_args(&Setup::default(), 10.0, "127.0.0.1:1", Path::new("s.jsonl"));
        assert!(!pe.iter().any(|a| a == "--mtbf"));
    }
}
