//! Pool user benchmark.
//!
//! * By default (issue 5): failover latency from SIGKILL of the serving PE to the first Data
//!   from the new PE, and the pool's overhead for one picture against the fast kernel with two
//!   threads in one process.
//! * `--efficiency` (issue 14): heterogeneous pools. For pool shapes × policies × the static
//!   one-tile-per-session split (rsplib's way) and work units with tail takeovers: efficiency
//!   = (iterations ÷ Σ capacity) ÷ wall time, and each PE's share of the iterations against its
//!   share of the capacity.
//!
//! `cargo build --release -p pool-user-gui --bins && ./target/release/pool-bench [--kills 25]`
//! (the registrar and PEs run as `pool-user registrar|pool-element` child processes so that
//! they can really be killed).

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
    /// Pictures as rsplib computes them: one tile per session, no tail takeovers (else the
    /// default work units and tail takeovers).
    #[arg(long)]
    static_split: bool,
    /// Measure heterogeneous pools instead (see the module docs and the options below).
    #[arg(long)]
    efficiency: bool,
    /// --efficiency: pool shapes, from `demo` (60, 30, 15, 8 M iterations/s), `one-fast` (one
    /// PE of 64 M among seven of 8 M), `equal` (four of 30 M).
    #[arg(long, value_delimiter = ',', default_value = "demo,one-fast,equal")]
    shapes: Vec<String>,
    /// --efficiency: PE policies (rsplib names; weights and degradations come from the
    /// capacities).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "RoundRobin,Random,LeastUsed,LeastUsedDegradation,WeightedRoundRobin,WeightedRandom,PriorityLeastUsed"
    )]
    policies: Vec<String>,
    /// --efficiency: presets, each picture once per repetition.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full-set,seahorse-valley,elephant-valley"
    )]
    presets: Vec<String>,
    /// --efficiency: picture size (default: the window's picture at the window's default
    /// size, 1400x860).
    #[arg(long, default_value_t = 728)]
    width: u32,
    #[arg(long, default_value_t = 771)]
    height: u32,
    /// --efficiency: sessions at once (default: the window's).
    #[arg(long, default_value_t = 16)]
    efficiency_sessions: usize,
    /// --efficiency: which splits to measure: `units` (work units with tail takeovers) and
    /// `static` (one tile per session, rsplib's way).
    #[arg(long, value_delimiter = ',', default_value = "units,static")]
    splits: Vec<String>,
    /// --efficiency: print every picture's figures too.
    #[arg(long)]
    verbose: bool,
    /// --efficiency: the PEs' --max-sessions.
    #[arg(long, default_value_t = 4)]
    max_sessions: u32,
    /// Work units per session (default: the pool user's default).
    #[arg(long)]
    units_per_session: Option<usize>,
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

/// CPU time a child process's threads have used so far, in nanoseconds from
/// `/proc/PID/task/*/schedstat`: (computing threads `fgp-compute-*`, all others). Threads that
/// ended are not counted (a PE's threads live as long as it does).
fn thread_cpu(pid: u32) -> (Duration, Duration) {
    let mut compute = Duration::ZERO;
    let mut other = Duration::ZERO;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (compute, other);
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Some(on_cpu) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        if name.starts_with("fgp-compute") {
            compute += Duration::from_nanos(on_cpu);
        } else {
            other += Duration::from_nanos(on_cpu);
        }
    }
    (compute, other)
}

/// CPU time (user + system) this process has used so far, ended threads included, and its
/// page faults that needed no I/O (fresh pages among them).
fn own_cpu() -> (Duration, u64) {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (
        time(usage.ru_utime) + time(usage.ru_stime),
        usage.ru_minflt as u64,
    )
}

/// CPU time used by the parts of the pool, and by the local pictures.
#[derive(Default)]
struct CpuTally {
    pe_compute: Duration,
    pe_protocol: Duration,
    pu: Duration,
    registrar: Duration,
    local: Duration,
    pu_faults: u64,
    local_faults: u64,
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
            .compute_image(ImageRequest::new(view, 1, preset.name))
            .await
    });
    let mut latencies = Vec::new();
    let mut serving: Option<rserpool::wire::PeId> = None;
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
        let killed_at = pool.kill(victim.0)?;
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

/// The request of one measured picture: rsplib's static split, or work units with tail
/// takeovers (`units_per_session`, else the pool user's default).
fn request(
    view: Parameter,
    sessions: usize,
    preset: &str,
    static_split: bool,
    units_per_session: Option<usize>,
) -> ImageRequest {
    let request = ImageRequest::new(view, sessions, preset);
    if static_split {
        return request.static_split();
    }
    ImageRequest {
        units: units_per_session.map(|per_session| per_session * sessions),
        ..request
    }
}

async fn overhead(
    program: PathBuf,
    sessions: &[usize],
    repeat: usize,
    static_split: bool,
    units_per_session: Option<usize>,
) -> Result<()> {
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
        let registrar_pid = pool._registrar_proc.child.id();
        let pe_pids: Vec<u32> = pool.pes.iter().map(|(_, pe)| pe.child.id()).collect();
        let mut cpu = CpuTally::default();
        let mut idle = [Duration::ZERO; 2];
        let mut local_times = Vec::new();
        let mut pool_times = Vec::new();
        for _ in 0..repeat {
            let idle_before = machine_idle();
            let own_before = own_cpu();
            let (local_time, _) = local_picture(view).await?;
            local_times.push(local_time);
            let own_after = own_cpu();
            cpu.local += own_after.0.saturating_sub(own_before.0);
            cpu.local_faults += own_after.1.saturating_sub(own_before.1);
            idle[0] += machine_idle().saturating_sub(idle_before);
            let idle_before = machine_idle();
            let registrar_before = thread_cpu(registrar_pid);
            let pes_before: Vec<_> = pe_pids.iter().map(|&pid| thread_cpu(pid)).collect();
            // Sampled last before the picture and first after it: reading `/proc` costs this
            // process CPU time too.
            let own_before = own_cpu();
            let result = client
                .compute_image(request(
                    view,
                    count,
                    &preset.name,
                    static_split,
                    units_per_session,
                ))
                .await?;
            let own_after = own_cpu();
            cpu.pu += own_after.0.saturating_sub(own_before.0);
            cpu.pu_faults += own_after.1.saturating_sub(own_before.1);
            let registrar_after = thread_cpu(registrar_pid);
            cpu.registrar += (registrar_after.0 + registrar_after.1)
                .saturating_sub(registrar_before.0 + registrar_before.1);
            for (&pid, before) in pe_pids.iter().zip(&pes_before) {
                let after = thread_cpu(pid);
                cpu.pe_compute += after.0.saturating_sub(before.0);
                cpu.pe_protocol += after.1.saturating_sub(before.1);
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
        let per_picture = |d: Duration| d.as_secs_f64() * 1e3 / repeat as f64;
        let pool_cpu = cpu.pe_compute + cpu.pe_protocol + cpu.pu + cpu.registrar;
        println!(
            "      CPU ms per picture: pool {:.1} (PE computing threads {:.1}, PE protocol \
             threads {:.1}, PU {:.1}, registrar {:.1}), local {:.1}; machine idle ms per \
             picture: pool {:.1}, local {:.1}; page faults per picture: PU {}, local {}",
            per_picture(pool_cpu),
            per_picture(cpu.pe_compute),
            per_picture(cpu.pe_protocol),
            per_picture(cpu.pu),
            per_picture(cpu.registrar),
            per_picture(cpu.local),
            per_picture(idle[1]),
            per_picture(idle[0]),
            cpu.pu_faults / repeat as u64,
            cpu.local_faults / repeat as u64,
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // The in-process pool user runs as `pool-user` does.
    program_setup::allocator::retain_freed_memory();
    let args = Args::parse();
    let program = match args.pool_user.clone() {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("pool-user"),
    };
    if !program.is_file() {
        bail!("{} not found (build pool-user first)", program.display());
    }
    if args.efficiency {
        return efficiency(program, &args).await;
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
    overhead(
        program,
        &args.sessions,
        args.repeat,
        args.static_split,
        args.units_per_session,
    )
    .await
}

/// The capacities (iterations per second) of a named pool shape.
fn shape_capacities(shape: &str) -> Result<Vec<u64>> {
    const M: u64 = 1_000_000;
    Ok(match shape {
        "demo" => vec![60 * M, 30 * M, 15 * M, 8 * M],
        "one-fast" => std::iter::once(64 * M)
            .chain(std::iter::repeat_n(8 * M, 7))
            .collect(),
        "equal" => vec![30 * M; 4],
        other => bail!("unknown pool shape {other:?} (demo, one-fast, equal)"),
    })
}

/// One picture's figures in a heterogeneous pool.
struct Measured {
    efficiency: f64,
    /// Largest |share of iterations ÷ share of capacity − 1| over the PEs.
    worst_share: f64,
    wall_s: f64,
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `--efficiency`: every shape × policy × split, `--repeat` times over `--presets`.
async fn efficiency(program: PathBuf, args: &Args) -> Result<()> {
    let presets = args
        .presets
        .iter()
        .map(|name| Preset::by_name(name).with_context(|| format!("preset {name:?}")))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "heterogeneous pools: {}x{}, {} sessions, presets {}, {} repetitions; efficiency = \
         (iterations / sum of capacities) / wall time; share = a PE's share of the iterations \
         against its share of the capacity",
        args.width,
        args.height,
        args.efficiency_sessions,
        args.presets.join(","),
        args.repeat
    );
    println!(
        "{:<9} {:<21} {:<7} {:>7} {:>7} {:>7} {:>10} {:>9}",
        "shape", "policy", "split", "median", "min", "max", "worst PE", "median s"
    );
    for shape in &args.shapes {
        let capacities = shape_capacities(shape)?;
        let total: u64 = capacities.iter().sum();
        for policy in &args.policies {
            let mut pool = Pool::start(program.clone())?;
            let mut capacity_of = std::collections::HashMap::new();
            let max_sessions = args.max_sessions.to_string();
            for &capacity in &capacities {
                let capacity_text = capacity.to_string();
                let id = pool.add_pe(&[
                    "--policy",
                    policy,
                    "--capacity",
                    &capacity_text,
                    "--max-sessions",
                    &max_sessions,
                ])?;
                capacity_of.insert(id, capacity);
            }
            let (client, mut events) = pool.client()?;
            // Nobody reads the events: they are dropped as they come.
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            let mut results: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..args.repeat {
                for preset in &presets {
                    let view = preset.parameter(args.width, args.height);
                    // Alternating, so that both splits see the same drift of the machine.
                    for (split, static_split) in [false, true].into_iter().enumerate() {
                        let name = if static_split { "static" } else { "units" };
                        if !args.splits.iter().any(|wanted| wanted == name) {
                            continue;
                        }
                        let request = request(
                            view,
                            args.efficiency_sessions,
                            &preset.name,
                            static_split,
                            args.units_per_session,
                        );
                        let result = client.compute_image(request).await?;
                        let stats = &result.stats;
                        let iterations: u64 = stats.pes.iter().map(|pe| pe.iterations).sum();
                        let worst_share = capacity_of
                            .iter()
                            .map(|(id, &capacity)| {
                                let done = stats
                                    .pes
                                    .iter()
                                    .find(|pe| pe.pe_id == *id)
                                    .map_or(0, |pe| pe.iterations);
                                let share = done as f64 / iterations.max(1) as f64;
                                (share / (capacity as f64 / total as f64) - 1.0).abs()
                            })
                            .fold(0.0, f64::max);
                        if args.verbose {
                            println!(
                                "  {shape} {policy} {name} {}: efficiency {:.3}, worst PE {:.0} %, \
                                 {:.3} s, {} tails",
                                preset.name,
                                stats.iterations as f64 / total as f64 / stats.wall_time_s,
                                100.0 * worst_share,
                                stats.wall_time_s,
                                stats.tail_takeovers
                            );
                        }
                        results[split].push(Measured {
                            efficiency: stats.iterations as f64 / total as f64 / stats.wall_time_s,
                            worst_share,
                            wall_s: stats.wall_time_s,
                        });
                        client.recycle(result.assembly);
                    }
                }
            }
            for (split, name) in [(1, "static"), (0, "units")] {
                let measured = &results[split];
                if measured.is_empty() {
                    continue;
                }
                let mut efficiencies: Vec<f64> = measured.iter().map(|m| m.efficiency).collect();
                let mut shares: Vec<f64> = measured.iter().map(|m| m.worst_share).collect();
                let mut walls: Vec<f64> = measured.iter().map(|m| m.wall_s).collect();
                let min = efficiencies.iter().copied().fold(f64::INFINITY, f64::min);
                let max = efficiencies.iter().copied().fold(0.0, f64::max);
                println!(
                    "{:<9} {:<21} {:<7} {:>7.3} {:>7.3} {:>7.3} {:>9.0}% {:>9.3}",
                    shape,
                    policy,
                    name,
                    median_of(&mut efficiencies),
                    min,
                    max,
                    100.0 * median_of(&mut shares),
                    median_of(&mut walls),
                );
            }
        }
    }
    println!(
        "worst PE: the median over pictures of the largest deviation of a PE's share of the \
         iterations from its share of the capacity"
    );
    Ok(())
}
