//! Pool user benchmark (issue 5): failover latency from SIGKILL of the serving PE to the first
//! Data from the new PE, and the pool's overhead for one picture against the fast kernel with
//! two threads in one process.
//!
//! `cargo run --release -p pool-user-gui --no-default-features --bin pool-bench -- [--kills 25]`
//! (builds `pool-user` too; the registrar and PEs run as `pool-user registrar|pool-element`
//! child processes so that they can really be killed).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fractal_protocol::kernel;
use fractal_protocol::message::Parameter;
use fractal_protocol::preset::Preset;
use pool_user_gui::client::events::ClientEvent;
use pool_user_gui::client::{ClientConfig, FractalClient, ImageRequest};
use rserpool::pu::PoolUserConfig;
use std::io::{BufRead, BufReader};

#[derive(Parser, Debug)]
struct Args {
    /// PE kills to measure failover latency over (0 skips that part).
    #[arg(long, default_value_t = 25)]
    kills: usize,
    /// Repetitions of each end-to-end picture, local and pooled (medians are reported).
    #[arg(long, default_value_t = 9)]
    repeat: usize,
    /// Session counts to measure the end-to-end picture with.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    sessions: Vec<usize>,
    /// The `pool-user` binary [default: next to this one].
    #[arg(long)]
    pool_user: Option<PathBuf>,
}

/// A child process killed when dropped.
struct Spawned {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    fn spawn(program: &PathBuf, args: &[String]) -> Result<Spawned> {
        let mut child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Spawned { child, lines })
    }

    fn wait_for(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("waiting for {needle:?}"))?;
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    let pattern = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&pattern))
        .map(str::to_string)
}

struct Pool {
    program: PathBuf,
    registrar: String,
    _registrar_proc: Spawned,
    pes: Vec<(u32, Spawned)>,
    next_id: u32,
}

impl Pool {
    fn start(program: PathBuf) -> Result<Pool> {
        let args: Vec<String> = ["registrar", "--asap", "127.0.0.1:0", "--announce", "off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let registrar_proc = Spawned::spawn(&program, &args)?;
        let ready = registrar_proc.wait_for("registrar ready")?;
        let registrar = field(&ready, "asap").context("asap=")?;
        Ok(Pool {
            program,
            registrar,
            _registrar_proc: registrar_proc,
            pes: Vec::new(),
            next_id: 0x100,
        })
    }

    fn add_pe(&mut self, extra: &[&str]) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let mut args: Vec<String> = vec![
            "pool-element".into(),
            "--registrar".into(),
            self.registrar.clone(),
            "--id".into(),
            id.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let pe = Spawned::spawn(&self.program, &args)?;
        pe.wait_for("pool element registered")?;
        self.pes.push((id, pe));
        Ok(id)
    }

    fn kill(&mut self, id: u32) -> Result<Instant> {
        let index = self
            .pes
            .iter()
            .position(|(pe, _)| *pe == id)
            .context("no such PE")?;
        let (_, mut pe) = self.pes.remove(index);
        let pid = nix::unistd::Pid::from_raw(pe.child.id() as i32);
        let at = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
        let _ = pe.child.wait();
        Ok(at)
    }

    fn client(
        &self,
    ) -> Result<(
        FractalClient,
        tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
    )> {
        let pool_user = PoolUserConfig {
            registrars: vec![self.registrar.parse()?],
            announce: None,
            ..PoolUserConfig::default()
        };
        // As the headless pool user: no front end draws the pixels.
        FractalClient::start(ClientConfig {
            pool_user,
            pixel_events: false,
            ..ClientConfig::default()
        })
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit(')').next() else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Idle time of the whole machine so far (all CPUs, from `/proc/stat`).
fn machine_idle() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    // "cpu user nice system idle iowait ...", in USER_HZ (100) ticks.
    let ticks: u64 = stat
        .lines()
        .next()
        .into_iter()
        .flat_map(|line| line.split_whitespace().skip(4).take(2))
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn failover_latency(program: PathBuf, kills: usize) -> Result<Vec<Duration>> {
    let mut pool = Pool::start(program)?;
    // Slow PEs so that one picture outlasts every kill.
    let slow = ["--capacity", "20000000"];
    pool.add_pe(&slow)?;
    pool.add_pe(&slow)?;
    let (client, mut events) = pool.client()?;
    let client = Arc::new(client);
    let preset = Preset::by_name("full-set").context("preset")?;
    let mut view = preset.parameter(3000, 3000);
    view.max_iterations = 1000;
    let runner = client.clone();
    let image = tokio::spawn(async move {
        runner
            .compute_image(ImageRequest {
                view,
                sessions: 1,
                preset: preset.name,
            })
            .await
    });
    let mut latencies = Vec::new();
    let mut serving: Option<u32> = None;
    while latencies.len() < kills {
        // Let the serving PE deliver for a while.
        let settle = Instant::now() + Duration::from_millis(150);
        while serving.is_none() || Instant::now() < settle {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(ClientEvent::TileProgress { pe_id, .. })) => serving = Some(pe_id),
                Ok(Some(_)) => {}
                _ => bail!("no data from the pool"),
            }
        }
        let victim = serving.take().context("serving PE")?;
        let killed_at = pool.kill(victim)?;
        let latency = loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(ClientEvent::TileProgress { pe_id, .. })) if pe_id != victim => {
                    serving = Some(pe_id);
                    break killed_at.elapsed();
                }
                Ok(Some(ClientEvent::ImageCompleted { .. })) => bail!("picture too short"),
                Ok(Some(_)) => {}
                _ => bail!("no failover"),
            }
        };
        latencies.push(latency);
        // Keep two PEs in the pool.
        pool.add_pe(&slow)?;
    }
    image.abort();
    Ok(latencies)
}

/// Median of some durations (sorted in place).
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Time of one picture computed locally by the fast kernel on two threads.
async fn local_picture(view: Parameter) -> Result<(Duration, Vec<u32>)> {
    // Off the runtime's thread, as the pool's PEs are.
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let image = kernel::compute_image_parallel(&view, 2);
        (start.elapsed(), image)
    })
    .await
    .context("local computation")
}

async fn overhead(program: PathBuf, sessions: &[usize], repeat: usize) -> Result<()> {
    let preset = Preset::by_name("full-set").context("preset")?;
    let mut view = preset.parameter(1024, 768);
    view.max_iterations = 1000;
    let (_, reference) = local_picture(view).await?;
    let mut pool = Pool::start(program)?;
    pool.add_pe(&["--max-sessions", "8"])?;
    pool.add_pe(&["--max-sessions", "8"])?;
    let (client, mut events) = pool.client()?;
    // Consumed as a front end would, so that they do not pile up in memory.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    println!(
        "1024x768 at 1000 iterations, {repeat} runs each, local and pool runs alternating \
         (the machine's speed drifts):"
    );
    for &count in sessions {
        let pids: Vec<u32> = std::iter::once(pool._registrar_proc.child.id())
            .chain(pool.pes.iter().map(|(_, pe)| pe.child.id()))
            .chain(std::iter::once(std::process::id()))
            .collect();
        let mut cpu_used = vec![Duration::ZERO; pids.len()];
        let mut idle = [Duration::ZERO; 2];
        let mut local_times = Vec::new();
        let mut pool_times = Vec::new();
        for _ in 0..repeat {
            let idle_before = machine_idle();
            let (local_time, _) = local_picture(view).await?;
            local_times.push(local_time);
            idle[0] += machine_idle().saturating_sub(idle_before);
            let idle_before = machine_idle();
            let cpu_before: Vec<Duration> = pids.iter().map(|&pid| cpu_time(pid)).collect();
            let result = client
                .compute_image(ImageRequest {
                    view,
                    sessions: count,
                    preset: preset.name.clone(),
                })
                .await?;
            for ((used, &pid), before) in cpu_used.iter_mut().zip(&pids).zip(&cpu_before) {
                *used += cpu_time(pid).saturating_sub(*before);
            }
            idle[1] += machine_idle().saturating_sub(idle_before);
            if count == 1 && result.assembly.iterations != reference {
                bail!("pool picture differs from the local one");
            }
            pool_times.push(Duration::from_secs_f64(result.stats.wall_time_s));
            client.recycle(result.assembly);
        }
        // Each pool picture against the local one computed just before it: the machine's speed
        // drifts by tens of percent over minutes, but little within one pair.
        let mut pair_ratios: Vec<f64> = pool_times
            .iter()
            .zip(&local_times)
            .map(|(pool, local)| pool.as_secs_f64() / local.as_secs_f64())
            .collect();
        pair_ratios.sort_by(f64::total_cmp);
        let pair_ratio = pair_ratios
            .get(pair_ratios.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        let local_median = median(&mut local_times);
        let pool_median = median(&mut pool_times);
        let ratio = pool_median.as_secs_f64() / local_median.as_secs_f64();
        println!(
            "  {count:>2} sessions: pool (registrar + 2 PEs + PU) median {:.1} ms, local fast \
             kernel 2 threads median {:.1} ms, ratio of medians {ratio:.3}; median of pair \
             ratios {pair_ratio:.3} (overhead {:+.1} %)",
            pool_median.as_secs_f64() * 1e3,
            local_median.as_secs_f64() * 1e3,
            (pair_ratio - 1.0) * 100.0
        );
        let cpu: Vec<String> = cpu_used
            .iter()
            .map(|used| format!("{:.0}", used.as_secs_f64() * 1e3 / repeat as f64))
            .collect();
        let per_picture = |d: Duration| d.as_secs_f64() * 1e3 / repeat as f64;
        println!(
            "      CPU ms per pool picture: PEs {}, PU {}, registrar {}; machine idle ms per \
             picture: pool {:.0}, local {:.0}",
            cpu[1..cpu.len() - 1].join(" + "),
            cpu[cpu.len() - 1],
            cpu[0],
            per_picture(idle[1]),
            per_picture(idle[0]),
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // The in-process pool user runs as `pool-user` does.
    rserpool::process::retain_freed_memory();
    let args = Args::parse();
    let program = match args.pool_user {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("pool-user"),
    };
    if !program.is_file() {
        bail!("{} not found (build pool-user first)", program.display());
    }
    if args.kills > 0 {
        let mut latencies = failover_latency(program.clone(), args.kills).await?;
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if let (Some(&min), Some(&max)) = (latencies.first(), latencies.last()) {
            println!(
                "failover latency over {} SIGKILLs (kill -> first Data from the new PE): p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms",
                latencies.len(),
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 99.0)),
                ms(min),
                ms(max),
            );
        }
    }
    overhead(program, &args.sessions, args.repeat).await
}
