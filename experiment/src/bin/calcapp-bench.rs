//! `calcapp-bench`: how exactly the CalcApp pool element emulates its capacity, and how many
//! PEs and pool users one machine sustains. Runs the real programs (`registrar`,
//! `pool-element --service calcapp`, `calcapp-user`) found next to this binary:
//!
//! ```text
//! cargo build --release -p registrar -p pool-element -p calcapp-user -p pool-experiment --bins
//! target/release/calcapp-bench [--scales 10x100,50x1000] [--duration 20]
//! ```
//!
//! * Accuracy: fixed-size jobs, one at a time and ten sharing one PE: measured processing
//!   time (Accept to Complete, at the pool user) against size ÷ capacity share.
//! * Scale: N PEs (one process each) and M pool users (one process) at 60 % offered load:
//!   jobs completed, startup delay, how late the PEs' timers fired (a late completion is
//!   capacity lost), CPU used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use pool_experiment::process::{Proc, asap_address, spawn_until_ready, terminate_all};

#[derive(Parser, Debug)]
#[command(name = "calcapp-bench", about = "CalcApp emulation accuracy and scale")]
struct Cli {
    /// Scale points, PEsxPUs, comma-separated.
    #[arg(long, default_value = "10x100,25x500,50x1000")]
    scales: String,
    /// Seconds of jobs per scale point.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Job sizes of the scale runs (calculations, at 1e6 per second and PE).
    #[arg(long, default_value = "exp:1e6")]
    job_size: String,
    /// Skip the accuracy runs.
    #[arg(long)]
    no_accuracy: bool,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary directory")?.join(name);
    ensure!(
        path.is_file(),
        "{} not found: cargo build --release -p registrar -p pool-element -p calcapp-user -p pool-experiment --bins",
        path.display()
    );
    Ok(path)
}

/// Starts the workspace program `program` until it logs `ready`.
fn spawn(program: &str, args: &[String], ready: &str) -> Result<(Proc, String)> {
    spawn_until_ready(&sibling(program)?, args, ready)
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks: USER_HZ, 100 on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

struct Pool {
    _registrar: Proc,
    registrar_pid: u32,
    address: String,
    pes: Vec<Proc>,
    stats: Vec<PathBuf>,
}

fn start_pool(dir: &Path, pes: usize, pe_args: &[&str]) -> Result<Pool> {
    let (registrar, ready) = spawn(
        "registrar",
        &["--asap", "127.0.0.1:0", "--announce", "off"].map(String::from),
        "registrar ready",
    )?;
    let address = asap_address(&ready)?;
    let registrar_pid = registrar.0.id();
    let mut started = Vec::new();
    let mut stats = Vec::new();
    for n in 0..pes {
        let path = dir.join(format!("pe{n}.jsonl"));
        let mut args: Vec<String> = ["--service", "calcapp", "--registrar", &address, "--stats"]
            .map(String::from)
            .to_vec();
        args.push(path.to_string_lossy().into_owned());
        args.extend(pe_args.iter().map(|a| a.to_string()));
        let (pe, _) = spawn("pool-element", &args, "pool element registered")?;
        started.push(pe);
        stats.push(path);
    }
    Ok(Pool {
        _registrar: registrar,
        registrar_pid,
        address,
        pes: started,
        stats,
    })
}

impl Pool {
    /// Stops the PEs with SIGTERM (their last statistics line is written then).
    fn stop(&mut self) -> Result<()> {
        ensure!(
            terminate_all(&mut self.pes, Duration::from_secs(20))?,
            "a PE did not stop"
        );
        Ok(())
    }

    fn cpu(&self) -> Duration {
        std::iter::once(self.registrar_pid)
            .chain(self.pes.iter().map(|pe| pe.0.id()))
            .filter_map(cpu_time)
            .sum()
    }
}

/// Runs calcapp-user to the end, sampling its CPU time; returns (CPU, its summary JSON).
fn run_users(args: &[String]) -> Result<(Duration, serde_json::Value)> {
    let mut child = Command::new(sibling("calcapp-user")?)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let mut cpu = Duration::ZERO;
    while child.try_wait()?.is_none() {
        cpu = cpu_time(pid).unwrap_or(cpu);
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok((
        cpu,
        serde_json::from_str(&text).context("calcapp-user summary")?,
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Measured ÷ expected processing times of the jobs in `csv`.
fn processing_ratios(csv: &Path, expected: f64) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(csv)?;
    let mut ratios: Vec<f64> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').nth(7)?.parse::<f64>().ok())
        .map(|time| time / expected)
        .collect();
    ratios.sort_by(f64::total_cmp);
    Ok(ratios)
}

fn accuracy(dir: &Path, pus: u32, expected: f64) -> Result<()> {
    let mut pool = start_pool(dir, 1, &["--max-jobs", "100"])?;
    let csv = dir.join(format!("accuracy-{pus}.csv"));
    // All pool users start their jobs together (fixed interval), so each job shares the PE
    // with the others for its whole life.
    let args: Vec<String> = [
        "--registrar",
        &pool.address,
        "--pus",
        &pus.to_string(),
        "--job-size",
        "fixed:2e5",
        "--job-interval",
        &format!("fixed:{}", expected + 0.3),
        "--runtime",
        "8",
        "--csv",
        csv.to_str().context("UTF-8")?,
    ]
    .map(String::from)
    .to_vec();
    run_users(&args)?;
    pool.stop()?;
    let ratios = processing_ratios(&csv, expected)?;
    println!(
        "{pus:>3} job(s) at once, {:>4} jobs: expected {expected:.3} s; measured / expected: min {:.4}  median {:.4}  p99 {:.4}  max {:.4}",
        ratios.len(),
        percentile(&ratios, 0.0),
        percentile(&ratios, 0.5),
        percentile(&ratios, 0.99),
        percentile(&ratios, 1.0),
    );
    Ok(())
}

fn scale(dir: &Path, pes: usize, pus: usize, duration: f64, job_size: &str) -> Result<()> {
    let mut pool = start_pool(dir, pes, &["--max-jobs", "10"])?;
    let cpu_before = pool.cpu();
    let started = Instant::now();
    let args: Vec<String> = [
        "--registrar",
        &pool.address,
        "--pus",
        &pus.to_string(),
        "--pes",
        &pes.to_string(),
        "--job-size",
        job_size,
        "--target-utilization",
        "0.6",
        "--runtime",
        &duration.to_string(),
        "--drain-timeout",
        "60",
    ]
    .map(String::from)
    .to_vec();
    let (user_cpu, summary) = run_users(&args)?;
    let pool_cpu = pool.cpu() - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    pool.stop()?;
    let (mut timers, mut late, mut late_sum, mut late_max) = (0.0, 0.0, 0.0, 0.0f64);
    for path in &pool.stats {
        for line in std::fs::read_to_string(path)?.lines() {
            let value: serde_json::Value = serde_json::from_str(line)?;
            if value["event"] == "life" {
                let count = value["timers"].as_f64().unwrap_or(0.0);
                timers += count;
                late += value["timers_late_5ms"].as_f64().unwrap_or(0.0);
                late_sum += value["timer_late_mean"].as_f64().unwrap_or(0.0) * count;
                late_max = late_max.max(value["timer_late_max"].as_f64().unwrap_or(0.0));
            }
        }
    }
    let number = |key: &str| summary[key].as_f64().unwrap_or(f64::NAN);
    println!(
        "{pes:>4} {pus:>6} {:>8.0} {:>9.0} {:>10.0} {:>10.2} {:>10.3} {:>9.1} {:>8.2} {:>9.1} {:>6.2}",
        number("jobs_queued"),
        number("jobs_completed"),
        number("jobs_incomplete"),
        number("mean_startup_delay") * 1e3,
        late_sum / timers.max(1.0) * 1e3,
        late_max * 1e3,
        100.0 * late / timers.max(1.0),
        number("handling_speed_percent"),
        (pool_cpu + user_cpu).as_secs_f64() / wall,
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let dir = tempfile_dir()?;
    if !cli.no_accuracy {
        println!("== emulated capacity: fixed jobs of 2e5 calculations on one PE of 1e6/s");
        accuracy(&dir, 1, 0.2)?;
        accuracy(&dir, 10, 2.0)?;
    }
    println!(
        "== scale: 60 % offered load, jobs {} at 1e6/s per PE, {} s of jobs",
        cli.job_size, cli.duration
    );
    println!(
        "{:>4} {:>6} {:>8} {:>9} {:>10} {:>10} {:>10} {:>9} {:>8} {:>9} {:>6}",
        "PEs",
        "PUs",
        "jobs",
        "completed",
        "incomplete",
        "startup_ms",
        "late_ms",
        "max_ms",
        "late>5%",
        "speed_%",
        "cores"
    );
    for point in cli.scales.split(',') {
        let (pes, pus) = point
            .split_once('x')
            .with_context(|| format!("scale `{point}`: PEsxPUs"))?;
        let (pes, pus): (usize, usize) = (pes.trim().parse()?, pus.trim().parse()?);
        if pes == 0 || pus == 0 {
            bail!("scale `{point}`: at least one PE and one PU");
        }
        let point_dir = dir.join(format!("{pes}x{pus}"));
        std::fs::create_dir_all(&point_dir)?;
        scale(&point_dir, pes, pus, cli.duration, &cli.job_size)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("calcapp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
