//! Load benchmark of the registrar, modelled on rsplib's testregistrator (many PEs register)
//! and hrestest (handle resolutions as fast as possible), over loopback ASAP associations.
//!
//! By default it starts the real `registrar` program found next to this binary and measures
//! that process; `--in-process` runs the registrar inside this process instead (its memory
//! figure then includes the benchmark's own clients), `--registrar ADDR` uses a running one
//! (memory via `--registrar-pid`).
//!
//! Figures: time to register `--pes` PEs in `--pools` pools, sustained handle resolutions per
//! second with `--items` items from `--clients` connections (each keeping `--depth` requests in
//! flight) and their latency under that load, latency of lone requests (one at a time), and
//! resident memory per registered PE (RSS growth of the registrar process).

mod enrp;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rserpool::registrar::RegistrarConfig;
use rserpool::registrar::driver::{self, DriverConfig};
use rserpool::transport::{self, Association, AssociationConfig, AssociationSender, PPID_ASAP};
use rserpool::wire::{AsapMessage, PeId, Policy, PoolElement, PoolHandle, TransportAddress};
use tokio::sync::Semaphore;

/// Registrar load benchmark (registrations, handle resolutions, latency, memory).
#[derive(Debug, Parser)]
#[command(name = "registrar-bench", version)]
struct Args {
    /// Use the registrar at this ASAP address instead of starting one
    #[arg(long)]
    registrar: Option<SocketAddr>,
    /// Process id of the `--registrar` (for the memory figure) [default: none, no figure]
    #[arg(long)]
    registrar_pid: Option<u32>,
    /// Run the registrar inside this process instead of starting the `registrar` program
    #[arg(long, conflicts_with = "registrar")]
    in_process: bool,
    /// PEs to register
    #[arg(long, default_value_t = 10_000)]
    pes: u32,
    /// Pools the PEs are spread over
    #[arg(long, default_value_t = 100)]
    pools: u32,
    /// Associations the PEs register over (like several PE processes)
    #[arg(long, default_value_t = 10)]
    registration_connections: u32,
    /// Pool policy of every PE (rsplib grammar, e.g. RoundRobin, LeastUsed:5, WeightedRandom:3)
    #[arg(long, default_value = "RoundRobin")]
    policy: String,
    /// Client connections sending handle resolutions
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Handle resolutions each client keeps in flight
    #[arg(long, default_value_t = 16)]
    depth: u32,
    /// PEs asked for per handle resolution
    #[arg(long, default_value_t = 3)]
    items: u32,
    /// Duration of the sustained resolution phase in ms
    #[arg(long, default_value_t = 5_000)]
    duration_ms: u64,
    /// Lone (one at a time) resolutions for the unloaded latency figure
    #[arg(long, default_value_t = 20_000)]
    lone_requests: u32,
    /// Instead: this many registrars (in this process) keeping one handlespace with ENRP;
    /// prints replication, catch-up and takeover times and ENRP traffic at rest
    #[arg(long, value_name = "N", conflicts_with_all = ["registrar", "in_process"])]
    enrp_registrars: Option<u32>,
}

fn handle(pool: u32) -> PoolHandle {
    PoolHandle::new(format!("BenchPool-{pool:03}").into_bytes()).unwrap_or_else(|_| {
        // Short ASCII handles are always valid; keep the benchmark panic-free anyway.
        PoolHandle::new(b"BenchPool".to_vec()).expect("valid handle")
    })
}

fn resident_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) a process has used, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Where the registrar runs.
enum Target {
    Child(ChildRegistrar),
    InProcess(driver::RunningRegistrar),
    External,
}

async fn start_target(args: &Args) -> Result<(Target, SocketAddr, Option<u32>, &'static str)> {
    if let Some(addr) = args.registrar {
        return Ok((
            Target::External,
            addr,
            args.registrar_pid,
            "external registrar",
        ));
    }
    // The bench registers many PEs per association (like a gateway), beyond the default cap.
    let per_association = args
        .pes
        .div_ceil(args.registration_connections.max(1))
        .max(1024);
    if args.in_process {
        let mut registrar = RegistrarConfig::default();
        registrar.handlespace.max_pool_elements_per_association = per_association as usize;
        let registrar = driver::start(DriverConfig {
            asap: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            announce: None,
            registrar,
            association: AssociationConfig::default(),
            max_associations: driver::DEFAULT_MAX_ASSOCIATIONS,
            enrp: None,
        })
        .await?;
        let addr = registrar.local_addr();
        return Ok((
            Target::InProcess(registrar),
            addr,
            None,
            "in-process registrar (RSS includes the benchmark clients)",
        ));
    }
    let exe = std::env::current_exe()?;
    let program: PathBuf = exe
        .parent()
        .context("benchmark binary has a directory")?
        .join("registrar");
    let mut child = Command::new(&program)
        .args(["--asap", "127.0.0.1:0", "--announce", "off"])
        .args(["--max-pes-per-association", &per_association.to_string()])
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("REGISTRAR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with the benchmark)",
                program.display()
            )
        })?;
    let stderr = child.stderr.take().context("registrar stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // Keep draining the log so the registrar never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("registrar ready")
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(line);
            }
        }
    });
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .context("registrar ready line")?;
    let addr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("asap="))
        .context("asap= field")?
        .parse()?;
    let pid = child.id();
    Ok((
        Target::Child(ChildRegistrar(child)),
        addr,
        Some(pid),
        "registrar program, separate process",
    ))
}

async fn connect(addr: SocketAddr) -> Result<Association> {
    Ok(transport::connect(addr, AssociationConfig::default()).await?)
}

/// Answers the registrar's Endpoint Keep-Alives on a registration association forever.
async fn answer_keepalives(
    sender: AssociationSender,
    mut receiver: transport::AssociationReceiver,
) {
    while let Ok(frame) = receiver.recv().await {
        if let Ok(decoded) = AsapMessage::decode(&frame.payload)
            && let AsapMessage::EndpointKeepAlive {
                pool_handle,
                pe_id: Some(pe_id),
                ..
            } = decoded.message
            && let Ok(ack) = (AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }).to_bytes()
            && sender.send(PPID_ASAP, ack).await.is_err()
        {
            return;
        }
    }
}

/// Registers `args.pes` PEs in `args.pools` pools at `addr` over `args.registration_connections`
/// associations, which then answer keep-alives for ever (their tasks are returned). Returns how
/// many were granted and how long it took.
async fn register_pes(
    addr: SocketAddr,
    args: &Args,
    policy: Policy,
) -> Result<(u32, Duration, Vec<tokio::task::JoinHandle<()>>)> {
    let mut associations = Vec::new();
    for _ in 0..args.registration_connections {
        associations.push(connect(addr).await?);
    }
    let bar = ProgressBar::new(u64::from(args.pes)).with_style(
        ProgressStyle::with_template("{msg:>14} {bar:40} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("registering");
    let started = Instant::now();
    let per_connection = args.pes.div_ceil(args.registration_connections);
    let mut tasks = Vec::new();
    for (c, mut association) in associations.into_iter().enumerate() {
        let first = c as u32 * per_connection;
        let last = (first + per_connection).min(args.pes);
        let pools = args.pools;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let count = last.saturating_sub(first);
            for i in first..last {
                let message = AsapMessage::Registration {
                    pool_handle: handle(i % pools),
                    pool_element: PoolElement {
                        id: PeId(i + 1),
                        home_registrar: 0,
                        registration_life_ms: 300_000,
                        user_transport: TransportAddress::Tcp {
                            port: 10_000 + (i % 50_000) as u16,
                            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        },
                        policy,
                        asap_transport: None,
                    },
                };
                association.send(PPID_ASAP, message.to_bytes()?).await?;
            }
            let (mut granted, mut answered) = (0u32, 0u32);
            // Keep-alives come in between once registering takes longer than their interval.
            while answered < count {
                let frame = association.recv().await?;
                if let Ok(decoded) = AsapMessage::decode(&frame.payload)
                    && let AsapMessage::RegistrationResponse { rejected, .. } = decoded.message
                {
                    answered += 1;
                    if !rejected {
                        granted += 1;
                    }
                    bar.inc(1);
                }
            }
            anyhow::Ok((association, granted))
        }));
    }
    let mut granted = 0;
    let mut keepalive_tasks = Vec::new();
    for task in tasks {
        let (association, ok) = task.await??;
        granted += ok;
        let (sender, receiver) = association.split();
        keepalive_tasks.push(tokio::spawn(answer_keepalives(sender, receiver)));
    }
    let registration_time = started.elapsed();
    bar.finish_and_clear();
    Ok((granted, registration_time, keepalive_tasks))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn resolution_request(pool: u32, items: u32) -> Result<Vec<u8>> {
    Ok(AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: handle(pool),
        items: Some(items),
    }
    .to_bytes()?)
}

/// Checks an answer: a positive Handle Resolution Response with `expected` PEs.
fn answer_ok(payload: &[u8], expected: usize) -> bool {
    matches!(
        AsapMessage::decode(payload).map(|d| d.message),
        Ok(AsapMessage::HandleResolutionResponse { pool_elements, error: None, .. })
            if pool_elements.len() == expected
    )
}

struct ClientResult {
    answered: u64,
    bad: u64,
    latencies: Vec<Duration>,
}

/// What one resolution client does.
#[derive(Clone, Copy)]
struct ClientSpec {
    addr: SocketAddr,
    client: u32,
    pools: u32,
    items: u32,
    depth: u32,
    /// PEs each answer must list.
    expected: usize,
}

/// One pipelining client: keeps `depth` requests in flight until `stop`.
async fn resolution_client(
    spec: ClientSpec,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Result<ClientResult> {
    let ClientSpec {
        addr,
        client,
        pools: args_pools,
        items,
        depth,
        expected,
    } = spec;
    let (sender, mut receiver) = connect(addr).await?.split();
    let window = Arc::new(Semaphore::new(depth as usize));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::<Instant>::new()));
    let requests: Vec<Vec<u8>> = (0..args_pools)
        .map(|p| resolution_request(p, items))
        .collect::<Result<_>>()?;
    let writer = {
        let window = window.clone();
        let sent_at = sent_at.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut pool = client.wrapping_mul(7919) % args_pools.max(1);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                let request = requests[pool as usize].clone();
                pool = (pool + 1) % args_pools.max(1);
                sent_at
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .push_back(Instant::now());
                sender.send(PPID_ASAP, request).await?;
                sent += 1;
            }
            anyhow::Ok((sender, sent))
        })
    };
    let mut result = ClientResult {
        answered: 0,
        bad: 0,
        latencies: Vec::with_capacity(1 << 20),
    };
    loop {
        let frame = tokio::select! {
            frame = receiver.recv() => frame?,
            () = tokio::time::sleep(Duration::from_millis(200)), if stop.load(Ordering::Relaxed) => break,
        };
        let Some(start) = sent_at
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .pop_front()
        else {
            bail!("answer without a request");
        };
        result.latencies.push(start.elapsed());
        if answer_ok(&frame.payload, expected) {
            result.answered += 1;
        } else {
            result.bad += 1;
        }
        progress.fetch_add(1, Ordering::Relaxed);
        window.add_permits(1);
        if stop.load(Ordering::Relaxed)
            && sent_at
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .is_empty()
        {
            break;
        }
    }
    window.close();
    let _ = writer.await;
    Ok(result)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.pools == 0 || args.pes < args.pools || args.registration_connections == 0 {
        bail!("need at least one PE per pool and one registration connection");
    }
    let policy = Policy::from_str(&args.policy).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    if let Some(count) = args.enrp_registrars {
        return enrp::run(&args, policy, count).await;
    }
    let (target, addr, pid, what) = start_target(&args).await?;
    println!("registrar-bench: {what} at {addr}");

    // Phase 1: registrations.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = resident_kib(pid);
    let (granted, registration_time, keepalive_tasks) = register_pes(addr, &args, policy).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = resident_kib(pid);
    if granted != args.pes {
        bail!("only {granted} of {} registrations granted", args.pes);
    }

    // Phase 2: sustained resolutions from several pipelining clients.
    let expected = (args.pes / args.pools).min(args.items) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let spinner = ProgressBar::new_spinner();
    let mut clients = Vec::new();
    let cpu_before = cpu_time(pid);
    let load_started = Instant::now();
    for client in 0..args.clients {
        let spec = ClientSpec {
            addr,
            client,
            pools: args.pools,
            items: args.items,
            depth: args.depth,
            expected,
        };
        clients.push(tokio::spawn(resolution_client(
            spec,
            stop.clone(),
            progress.clone(),
        )));
    }
    let duration = Duration::from_millis(args.duration_ms);
    while load_started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = progress.load(Ordering::Relaxed);
        spinner.set_message(format!(
            "resolving: {done} answers, {:.0}/s",
            done as f64 / load_started.elapsed().as_secs_f64()
        ));
        spinner.tick();
    }
    let measured = load_started.elapsed();
    let answered_at_stop = progress.load(Ordering::Relaxed);
    let cpu_used = cpu_time(pid)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    stop.store(true, Ordering::Relaxed);
    spinner.finish_and_clear();
    let mut latencies = Vec::new();
    let mut bad = 0;
    let mut answered = 0;
    for client in clients {
        let result = client.await??;
        latencies.extend(result.latencies);
        bad += result.bad;
        answered += result.answered;
    }
    latencies.sort_unstable();

    // Phase 3: lone requests, one at a time on one association.
    let mut lone = connect(addr).await?;
    let mut lone_latencies = Vec::with_capacity(args.lone_requests as usize);
    let mut lone_bad = 0;
    for i in 0..args.lone_requests {
        let request = resolution_request(i % args.pools, args.items)?;
        let start = Instant::now();
        lone.send(PPID_ASAP, request).await?;
        let frame = lone.recv().await?;
        lone_latencies.push(start.elapsed());
        if !answer_ok(&frame.payload, expected) {
            lone_bad += 1;
        }
    }
    lone_latencies.sort_unstable();

    let rate = answered_at_stop as f64 / measured.as_secs_f64();
    println!(
        "registrations: {} PEs in {} pools over {} associations: {:.3} s ({:.0}/s)",
        args.pes,
        args.pools,
        args.registration_connections,
        registration_time.as_secs_f64(),
        f64::from(args.pes) / registration_time.as_secs_f64()
    );
    println!(
        "handle resolutions ({} items, policy {}): {} clients x {} in flight: {:.0}/s over {:.1} s ({} answers, {} bad)",
        args.items,
        args.policy,
        args.clients,
        args.depth,
        rate,
        measured.as_secs_f64(),
        answered,
        bad
    );
    if let Some(cpu) = cpu_used.filter(|_| answered_at_stop > 0) {
        let per_request = cpu.as_secs_f64() / answered_at_stop as f64;
        println!(
            "  registrar CPU: {:.2} s for {answered_at_stop} answers = {:.1} us each (one core could answer {:.0}/s)",
            cpu.as_secs_f64(),
            per_request * 1e6,
            1.0 / per_request
        );
    }
    println!(
        "  latency under that load: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        percentile(&latencies, 50.0).as_secs_f64() * 1e6,
        percentile(&latencies, 99.0).as_secs_f64() * 1e6,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e6
    );
    println!(
        "  lone requests ({}, one at a time): p50 {:.1} us, p99 {:.1} us ({} bad)",
        args.lone_requests,
        percentile(&lone_latencies, 50.0).as_secs_f64() * 1e6,
        percentile(&lone_latencies, 99.0).as_secs_f64() * 1e6,
        lone_bad
    );
    match (rss_before, rss_after) {
        (Some(before), Some(after)) => println!(
            "resident memory: {before} KiB before, {after} KiB after registering: {:.0} bytes per PE ({what})",
            (after.saturating_sub(before) * 1024) as f64 / f64::from(args.pes)
        ),
        _ => println!("resident memory: not measured (no registrar pid)"),
    }

    for task in keepalive_tasks {
        task.abort();
    }
    match target {
        Target::Child(mut child) => {
            let _ = nix_terminate(&mut child.0);
        }
        Target::InProcess(registrar) => registrar.shutdown().await,
        Target::External => {}
    }
    Ok(())
}

/// The registrar program started by the benchmark: killed if the benchmark ends early (an
/// error, a panic), so that no registrar outlives it.
struct ChildRegistrar(Child);

impl Drop for ChildRegistrar {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Stops the child registrar with SIGTERM (clean shutdown), SIGKILL if it lingers.
fn nix_terminate(child: &mut Child) -> Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}
