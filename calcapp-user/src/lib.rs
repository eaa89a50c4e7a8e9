//! A workload of CalcApp pool users in one process: rsplib's `calcappclient`, N times, as the
//! seed paper's application model.
//!
//! Each pool user issues jobs with exponential (or fixed) sizes and times between them, and
//! serves them one at a time from its queue, over rserpool's session layer (handle resolution
//! at a registrar for every job, whose first choice is taken: the pool users do not
//! coordinate; failover with the PEs' cookies) and the sans-I/O CalcApp job client (session
//! keep-alives). Per job it records the queuing, startup and processing delays and the
//! handling speed (size ÷ handling time); the run writes a CSV of jobs and a JSON summary.
//!
//! `--target-utilization` derives the time between jobs from the paper's formula; the pool's
//! capacity comes from `--pes` × `--pe-capacity`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fractal_protocol::calcapp::workload::{Distribution, request_interval};
use fractal_protocol::calcapp::{
    ClientAction, ClientConfig, DEFAULT_POOL_HANDLE, JobClient, Message, PPID_CALCAPP,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rserpool::pu::{FailureKind, PoolUser, PoolUserConfig, SessionConfig, SessionEvent};
use rserpool::transport::{AssociationConfig, Frame};
use rserpool::wire::PoolHandle;
use serde::Serialize;
use tokio::sync::mpsc;

/// Command line of `calcapp-user`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "calcapp-user",
    about = "Many CalcApp pool users in one process (rsplib's calcappclient model)"
)]
pub struct Cli {
    /// Registrar ASAP address (repeatable); none: listen for Server Announces.
    #[arg(long = "registrar", value_name = "ADDR:PORT")]
    pub registrars: Vec<SocketAddr>,
    /// Pool handle of the CalcApp service.
    #[arg(long, default_value = DEFAULT_POOL_HANDLE)]
    pub pool: String,
    /// Pool users in this process.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pus: u32,
    /// Job size in calculations: `exp:MEAN` (default kind), `fixed:MEAN` (rsplib: 5e6,
    /// exponential).
    #[arg(long, value_name = "DIST", default_value = "exp:5e6")]
    pub job_size: Distribution,
    /// Time between one pool user's jobs in seconds, `exp:MEAN` or `fixed:MEAN` (rsplib:
    /// 15 s, exponential). Ignored with --target-utilization.
    #[arg(long, value_name = "DIST", default_value = "exp:15")]
    pub job_interval: Distribution,
    /// Load the pool to this share of its capacity: the mean time between jobs is
    /// pus × mean size ÷ (utilisation × pes × pe-capacity), exponential.
    #[arg(long, value_name = "FRACTION")]
    pub target_utilization: Option<f64>,
    /// PEs in the pool (for --target-utilization and the handling speed in % of capacity).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub pes: u32,
    /// Capacity of an average PE, calculations per second.
    #[arg(long, value_name = "CALCS_PER_S", default_value_t = 1e6)]
    pub pe_capacity: f64,
    /// A KeepAlive to the PE this long after its Accept or last KeepAliveAck, in
    /// milliseconds (the paper's session keep-alive interval).
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_interval: u64,
    /// No KeepAliveAck (or no answer to a Request) within this many milliseconds: fail
    /// over to another PE.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_timeout: u64,
    /// Issue jobs for this many seconds; then finish the jobs queued and running.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub runtime: f64,
    /// Most seconds to wait for the last jobs after --runtime; the rest count as incomplete.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    pub drain_timeout: f64,
    /// Delay every received message by this many milliseconds (emulated network delay).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub network_delay: u64,
    /// One CSV line per job.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// The run's summary as JSON.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// PE statistics files (`pool-element --stats`) to add to the summary: utilisation and
    /// lost calculations.
    #[arg(long = "pe-stats", value_name = "FILE", num_args = 1..)]
    pub pe_stats: Vec<PathBuf>,
    /// Random seed of the workload [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// One job as it ended.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub pu: u32,
    pub job: u32,
    pub size: u64,
    /// Seconds since the start of the run.
    pub queued_at: f64,
    /// Jobs waiting before this one when it was queued.
    pub queue_length: usize,
    pub queuing_delay: Option<f64>,
    pub startup_delay: Option<f64>,
    pub processing_time: Option<f64>,
    pub handling_time: Option<f64>,
    /// Calculations per second: size ÷ handling time.
    pub handling_speed: Option<f64>,
    pub accepts: u32,
    pub rejects: u32,
    pub failovers: u32,
    pub completed: bool,
}

/// The run's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub pus: u32,
    pub pes: u32,
    pub pe_capacity: f64,
    /// Mean time between one pool user's jobs, seconds.
    pub job_interval: f64,
    pub mean_job_size: f64,
    /// What the workload offers: pus × size ÷ interval ÷ (pes × capacity).
    pub offered_utilization: f64,
    pub runtime: f64,
    pub jobs_queued: u64,
    pub jobs_completed: u64,
    pub jobs_incomplete: u64,
    /// Σ size ÷ Σ handling time of completed jobs (rsplib's "Average Handling Speed").
    pub handling_speed: f64,
    /// The same in % of an average PE's capacity (the paper's metric).
    pub handling_speed_percent: f64,
    /// Mean of the jobs' handling speeds, %.
    pub mean_job_handling_speed_percent: f64,
    pub mean_queuing_delay: f64,
    pub mean_startup_delay: f64,
    pub mean_processing_time: f64,
    pub failovers: u64,
    pub rejects: u64,
    /// Calculations of the completed jobs per second of run, ÷ pool capacity.
    pub goodput: f64,
    /// From the PE statistics files, when given.
    pub pe: Option<PeSummary>,
}

/// What the PEs' statistics files say.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeSummary {
    pub lives: u64,
    pub unclean_failures: u64,
    pub clean_shutdowns: u64,
    pub used_calculations: f64,
    /// Used calculations ÷ (PE uptime × capacity).
    pub utilization: f64,
    /// Work done but saved by no cookie, in jobs that did not complete there.
    pub lost_calculations: f64,
    /// Lost calculations per job left behind by an unclean failure.
    pub lost_per_unclean_job: f64,
    /// Jobs left behind by unclean failures.
    pub unclean_jobs_left: u64,
    pub completes: u64,
    /// Jobs completed by more than one PE (never, if all is well).
    pub completed_twice: u64,
}

/// What the pool users share.
struct Shared {
    pool_user: PoolUser,
    pool: PoolHandle,
    client: ClientConfig,
    run_start: Instant,
    next_job: AtomicU32,
    records: mpsc::UnboundedSender<JobRecord>,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    queued: u64,
    completed: u64,
    running: u64,
    failovers: u64,
}

/// Runs the workload and writes its results.
pub async fn run(cli: Cli) -> Result<()> {
    let pool = PoolHandle::new(cli.pool.as_bytes())
        .map_err(|e| anyhow::anyhow!("--pool {:?}: {e}", cli.pool))?;
    let capacity = f64::from(cli.pes) * cli.pe_capacity;
    let job_interval = match cli.target_utilization {
        Some(utilization) => {
            let mean =
                request_interval(cli.pus as usize, cli.job_size.mean(), utilization, capacity)
                    .context("--target-utilization, --pes and --pe-capacity must be positive")?;
            Distribution::Exponential(mean)
        }
        None => cli.job_interval,
    };
    if !(cli.runtime.is_finite() && cli.runtime > 0.0 && cli.drain_timeout >= 0.0) {
        bail!("--runtime must be positive and --drain-timeout at least 0");
    }
    let delay = Duration::from_millis(cli.network_delay);
    let client = ClientConfig {
        keep_alive_interval: Duration::from_millis(cli.keep_alive_interval),
        keep_alive_timeout: Duration::from_millis(cli.keep_alive_timeout),
    };
    // As rsplib's calcappclient (a process per pool user, no cache): every job asks the
    // registrar, which chooses by the pool's policy, and the pool users share nothing.
    let mut config = PoolUserConfig {
        registrars: cli.registrars.clone(),
        stale_cache: Duration::ZERO,
        registrars_choice: true,
        ..PoolUserConfig::default()
    };
    config.registrar_association.receive_delay = delay;
    // The CalcApp keep-alives find failed PEs; the session's own silence timer is only a
    // backstop behind them.
    let backstop = client.keep_alive_interval + client.keep_alive_timeout * 2;
    config.session = SessionConfig {
        session_timeout: backstop,
        ..SessionConfig::default()
    };
    config.pe_association = AssociationConfig {
        receive_delay: delay,
        ..config.pe_association
    };
    let offered = f64::from(cli.pus) * cli.job_size.mean() / job_interval.mean() / capacity;
    tracing::info!(
        pus = cli.pus, job_size = ?cli.job_size, job_interval = ?job_interval,
        offered_utilization = offered, "CalcApp workload"
    );
    let (records_tx, mut records_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        pool_user: PoolUser::start(config),
        pool,
        client,
        run_start: Instant::now(),
        next_job: AtomicU32::new(1),
        records: records_tx,
        progress: Mutex::new(Progress::default()),
    });
    let issue_until = shared.run_start + Duration::from_secs_f64(cli.runtime);
    let give_up_at = issue_until + Duration::from_secs_f64(cli.drain_timeout);
    let mut seeds = match cli.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_rng(&mut rand::rng()),
    };
    let mut users = tokio::task::JoinSet::new();
    for pu in 0..cli.pus {
        let rng = StdRng::from_rng(&mut seeds);
        let shared = shared.clone();
        let sizes = cli.job_size;
        users.spawn(pool_user(pu, shared, rng, sizes, job_interval, issue_until));
    }
    let bar = progress_bar();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let deadline = tokio::time::sleep_until(give_up_at.into());
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = users.join_next() => match joined {
                Some(Ok(())) => {}
                Some(Err(error)) => bail!("a pool user failed: {error}"),
                None => break,
            },
            _ = ticker.tick() => bar.set_message(progress_line(&shared)),
            () = &mut deadline => {
                tracing::warn!(running = users.len(), "drain timeout: jobs still running count as incomplete");
                users.shutdown().await;
                break;
            }
        }
    }
    bar.finish_and_clear();
    let run_time = shared.run_start.elapsed().as_secs_f64();
    drop(shared);
    let mut records = Vec::new();
    while let Ok(record) = records_rx.try_recv() {
        records.push(record);
    }
    records.sort_by_key(|record| record.job);
    let mut summary = summarize(&cli, job_interval, offered, run_time, &records);
    if !cli.pe_stats.is_empty() {
        summary.pe = Some(read_pe_stats(&cli.pe_stats, cli.pe_capacity)?);
    }
    if let Some(path) = &cli.csv {
        write_csv(path, &records).with_context(|| format!("writing {}", path.display()))?;
    }
    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &cli.summary {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn progress_line(shared: &Shared) -> String {
    let progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
    format!(
        "jobs: {} queued, {} running, {} completed; {} failovers",
        progress.queued, progress.running, progress.completed, progress.failovers
    )
}

/// One pool user: a queue of jobs arriving at random, served one at a time.
async fn pool_user(
    pu: u32,
    shared: Arc<Shared>,
    mut rng: StdRng,
    sizes: Distribution,
    interval: Distribution,
    issue_until: Instant,
) {
    let mut queue: VecDeque<(u64, Instant, usize)> = VecDeque::new();
    let mut next_arrival = shared.run_start + seconds(interval.sample(&mut rng));
    loop {
        // Arrivals are drawn ahead and stamped with their own time, even when noticed late
        // (while a job ran).
        let now = Instant::now();
        while next_arrival <= now && next_arrival < issue_until {
            let size = sizes.sample(&mut rng).round() as u64;
            queue.push_back((size, next_arrival, queue.len()));
            lock(&shared.progress).queued += 1;
            next_arrival += seconds(interval.sample(&mut rng));
        }
        match queue.pop_front() {
            Some((size, queued_at, queue_length)) => {
                let record = run_job(pu, &shared, size, queued_at, queue_length).await;
                let _ = shared.records.send(record);
            }
            None if next_arrival >= issue_until => return,
            None => tokio::time::sleep_until(next_arrival.into()).await,
        }
    }
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.0, 1e9))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one job until it completes; the record of a job cut short (drain timeout) is
/// written by its drop guard.
async fn run_job(
    pu: u32,
    shared: &Shared,
    size: u64,
    queued_at: Instant,
    queue_length: usize,
) -> JobRecord {
    let job_id = shared.next_job.fetch_add(1, Ordering::Relaxed);
    let mut guard = JobGuard {
        shared,
        pu,
        queue_length,
        client: JobClient::new(shared.client.clone(), job_id, size, queued_at),
        done: false,
    };
    guard.client.start(Instant::now());
    lock(&shared.progress).running += 1;
    let request = Frame::new(PPID_CALCAPP, guard.client.request().encode().to_vec());
    let mut session = shared.pool_user.session(shared.pool.clone(), request);
    loop {
        let event = session.next_event_until(guard.client.poll_timeout()).await;
        let now = Instant::now();
        match event {
            None => guard.client.handle_timeout(now),
            Some(SessionEvent::Connected { .. }) => guard.client.handle_connected(now),
            Some(SessionEvent::Data { frame, .. }) if frame.ppid == PPID_CALCAPP => {
                match Message::decode(&frame.payload) {
                    Ok(message) => guard.client.handle_message(now, message),
                    Err(error) => session.fail(FailureKind::ProtocolError(error.to_string())),
                }
            }
            Some(SessionEvent::CookieStored { .. }) => guard.client.handle_cookie(now),
            Some(SessionEvent::FailoverStarted { pe, reason, .. }) => {
                tracing::debug!(job = job_id, pe = %pe.id, ?reason, "failover");
                guard.client.handle_disconnected(true);
                lock(&shared.progress).failovers += 1;
            }
            Some(SessionEvent::Refused { .. }) => guard.client.handle_disconnected(false),
            Some(SessionEvent::PoolEmpty { retry_in, detail }) => {
                tracing::debug!(job = job_id, ?retry_in, ?detail, "no pool element");
            }
            Some(SessionEvent::Finished) => break,
            Some(_) => {}
        }
        while let Some(action) = guard.client.poll_action() {
            match action {
                ClientAction::Send(message) => {
                    session
                        .send(Frame::new(PPID_CALCAPP, message.encode().to_vec()))
                        .await;
                }
                ClientAction::Progress => session.progress(),
                ClientAction::FailOver(failure) => {
                    tracing::debug!(
                        job = job_id,
                        failure = failure.as_str(),
                        "pool element failed"
                    );
                    session.fail(FailureKind::DataSilence);
                }
                ClientAction::Rejected => session.reject(),
                ClientAction::Completed => session.finish(),
            }
        }
        if guard.client.is_completed() {
            session.finish();
            break;
        }
    }
    guard.done = true;
    guard.record()
}

/// Counts a job as running until it ends, however it ends.
struct JobGuard<'a> {
    shared: &'a Shared,
    pu: u32,
    queue_length: usize,
    client: JobClient,
    done: bool,
}

impl JobGuard<'_> {
    fn record(&self) -> JobRecord {
        let times = self.client.times();
        let secs = |duration: Option<Duration>| duration.map(|d| d.as_secs_f64());
        let handling_time = secs(times.handling_time());
        JobRecord {
            pu: self.pu,
            job: self.client.job_id(),
            size: self.client.size(),
            queued_at: times
                .queued
                .saturating_duration_since(self.shared.run_start)
                .as_secs_f64(),
            queue_length: self.queue_length,
            queuing_delay: secs(times.queuing_delay()),
            startup_delay: secs(times.startup_delay()),
            processing_time: secs(times.processing_time()),
            handling_time,
            handling_speed: handling_time
                .filter(|time| *time > 0.0)
                .map(|time| self.client.size() as f64 / time),
            accepts: self.client.accepts(),
            rejects: self.client.rejects(),
            failovers: self.client.failovers(),
            completed: self.client.is_completed(),
        }
    }
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let mut progress = lock(&self.shared.progress);
        progress.running = progress.running.saturating_sub(1);
        if self.client.is_completed() {
            progress.completed += 1;
        }
        drop(progress);
        if !self.done {
            // Cut short by the drain timeout.
            let _ = self.shared.records.send(self.record());
        }
    }
}

fn summarize(
    cli: &Cli,
    interval: Distribution,
    offered: f64,
    run_time: f64,
    records: &[JobRecord],
) -> Summary {
    let completed: Vec<&JobRecord> = records.iter().filter(|r| r.completed).collect();
    let total_size: f64 = completed.iter().map(|r| r.size as f64).sum();
    let total_handling: f64 = completed.iter().filter_map(|r| r.handling_time).sum();
    let mean = |values: Vec<f64>| {
        if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    };
    let handling_speed = if total_handling > 0.0 {
        total_size / total_handling
    } else {
        0.0
    };
    let capacity = f64::from(cli.pes) * cli.pe_capacity;
    Summary {
        pus: cli.pus,
        pes: cli.pes,
        pe_capacity: cli.pe_capacity,
        job_interval: interval.mean(),
        mean_job_size: cli.job_size.mean(),
        offered_utilization: offered,
        runtime: run_time,
        jobs_queued: records.len() as u64,
        jobs_completed: completed.len() as u64,
        jobs_incomplete: (records.len() - completed.len()) as u64,
        handling_speed,
        handling_speed_percent: 100.0 * handling_speed / cli.pe_capacity,
        mean_job_handling_speed_percent: 100.0
            * mean(completed.iter().filter_map(|r| r.handling_speed).collect())
            / cli.pe_capacity,
        mean_queuing_delay: mean(completed.iter().filter_map(|r| r.queuing_delay).collect()),
        mean_startup_delay: mean(completed.iter().filter_map(|r| r.startup_delay).collect()),
        mean_processing_time: mean(completed.iter().filter_map(|r| r.processing_time).collect()),
        failovers: records.iter().map(|r| u64::from(r.failovers)).sum(),
        rejects: records.iter().map(|r| u64::from(r.rejects)).sum(),
        goodput: if run_time > 0.0 {
            total_size / run_time / capacity
        } else {
            0.0
        },
        pe: None,
    }
}

fn write_csv(path: &PathBuf, records: &[JobRecord]) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(
        out,
        "pu,job,size,queued_at,queue_length,queuing_delay,startup_delay,processing_time,handling_time,handling_speed,accepts,rejects,failovers,completed"
    )?;
    let field = |value: Option<f64>| value.map_or(String::new(), |v| format!("{v:.6}"));
    for r in records {
        writeln!(
            out,
            "{},{},{},{:.6},{},{},{},{},{},{},{},{},{},{}",
            r.pu,
            r.job,
            r.size,
            r.queued_at,
            r.queue_length,
            field(r.queuing_delay),
            field(r.startup_delay),
            field(r.processing_time),
            field(r.handling_time),
            field(r.handling_speed),
            r.accepts,
            r.rejects,
            r.failovers,
            r.completed
        )?;
    }
    out.flush()
}

/// Reads `pool-element --stats` files (JSON lines).
pub fn read_pe_stats(paths: &[PathBuf], capacity: f64) -> Result<PeSummary> {
    let mut summary = PeSummary::default();
    let mut uptime = 0.0;
    let mut unclean_jobs = 0u64;
    let mut unclean_lost = 0.0;
    let mut completes = std::collections::HashMap::<u64, u32>::new();
    for path in paths {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::new(file).lines() {
            let line = line?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let number = |key: &str| {
                value
                    .get(key)
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(0.0)
            };
            let flag = |key: &str| {
                value
                    .get(key)
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false)
            };
            match value.get("event").and_then(serde_json::Value::as_str) {
                Some("life") => {
                    summary.lives += 1;
                    uptime += number("uptime");
                    summary.used_calculations += number("used_calculations");
                    if flag("failure") {
                        if flag("clean") {
                            summary.clean_shutdowns += 1;
                        } else {
                            summary.unclean_failures += 1;
                        }
                    }
                }
                Some("left") => {
                    summary.lost_calculations += number("lost");
                    if !flag("clean") {
                        unclean_jobs += 1;
                        unclean_lost += number("lost");
                    }
                }
                Some("complete") => {
                    summary.completes += 1;
                    *completes.entry(number("job") as u64).or_default() += 1;
                }
                _ => {}
            }
        }
    }
    summary.unclean_jobs_left = unclean_jobs;
    summary.completed_twice = completes.values().filter(|count| **count > 1).count() as u64;
    if uptime > 0.0 {
        summary.utilization = summary.used_calculations / (uptime * capacity);
    }
    if unclean_jobs > 0 {
        summary.lost_per_unclean_job = unclean_lost / unclean_jobs as f64;
    }
    Ok(summary)
}
