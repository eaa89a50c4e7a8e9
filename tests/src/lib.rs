//! End-to-end test harness: starts the real `registrar`, `pool-element` and `pool-user`
//! programs as child processes on loopback, waits on their readiness lines (never on fixed
//! sleeps), and kills them when the test ends, pass or fail.
//!
//! Readiness convention shared by all programs: they log to stderr through `tracing` (no
//! colours when stderr is not a terminal) and announce each milestone with a stable message
//! followed by `key=value` fields, e.g. `registrar ready asap=127.0.0.1:41234 id=0x1234abcd`.
//!
//! [`fake_registrar::FakeRegistrar`] stands in for the registrar where a test talks to a pool
//! element (the program, the `pool-element` library or the PE driver) itself;
//! [`fake_pe::FakePe`] stands in for a pool element, honest or hostile (`hostile-pe` runs it
//! as a program).

pub mod fake_pe;
pub mod fake_registrar;
pub mod tshark;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Directory holding the workspace's binaries: `RSERPOOL_BIN_DIR`, else the profile directory
/// this test binary was built into (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RSERPOOL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let deps = exe.parent().expect("test binary has a directory");
    deps.parent()
        .expect("deps directory has a parent")
        .to_path_buf()
}

/// Path of one of the workspace's programs; fails with a hint when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: build the workspace's programs first (`cargo nextest run --workspace` does)",
        path.display()
    );
    path
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// Lines not yet consumed by `wait_for`; lets a test wait for the n-th occurrence.
    unread: VecDeque<usize>,
    /// Output streams (stdout, stderr) still open.
    open_streams: usize,
    closed: bool,
}

/// Everything a child wrote to stdout and stderr, line by line, shared with reader threads.
#[derive(Clone, Default)]
pub struct Log {
    state: Arc<(Mutex<LogState>, Condvar)>,
}

impl Log {
    fn push(&self, line: String) {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().expect("log lock");
        st.lines.push(line);
        let index = st.lines.len() - 1;
        st.unread.push_back(index);
        cvar.notify_all();
    }

    fn close(&self) {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().expect("log lock");
        st.open_streams = st.open_streams.saturating_sub(1);
        st.closed = st.open_streams == 0;
        cvar.notify_all();
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.state.0.lock().expect("log lock").lines.clone()
    }

    /// Waits for the next not yet consumed line that satisfies `pred` and consumes it
    /// (lines before it that did not match stay unread).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().expect("log lock");
        loop {
            if let Some(pos) = st.unread.iter().position(|&i| pred(&st.lines[i])) {
                let index = st.unread.remove(pos).expect("position is valid");
                return Ok(st.lines[index].clone());
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                let tail: Vec<_> = st.lines.iter().rev().take(30).rev().cloned().collect();
                // A panic's or an error's message would scroll out of the tail behind its
                // backtrace.
                let panics: Vec<_> = st
                    .lines
                    .iter()
                    .enumerate()
                    .filter(|(_, line)| line.contains("panicked at") || line.starts_with("Error: "))
                    .take(3)
                    .flat_map(|(i, _)| st.lines.iter().skip(i).take(2).cloned())
                    .collect();
                bail!(
                    "{} waiting for a log line; panics and errors: {:?}; last lines:\n{}",
                    if st.closed {
                        "output closed"
                    } else {
                        "timed out"
                    },
                    panics,
                    tail.join("\n")
                );
            }
            st = cvar.wait_timeout(st, deadline - now).expect("log lock").0;
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(timeout, |l| l.contains(needle))
            .with_context(|| format!("waiting for {needle:?}"))
    }

    /// Counts lines containing `needle` so far.
    pub fn count(&self, needle: &str) -> usize {
        self.state
            .0
            .lock()
            .expect("log lock")
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Value of a `key=value` field in a log line (`tracing`'s fmt layout).
pub fn field(line: &str, key: &str) -> Option<String> {
    let pattern = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&pattern))
        .map(|v| v.trim_matches('"').to_string())
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: Log,
}

impl Proc {
    /// Starts `program` with `args`, capturing its output into [`Log`].
    pub fn spawn(name: &str, program: PathBuf, args: &[String]) -> Result<Proc> {
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let log = Log::default();
        log.state.0.lock().expect("log lock").open_streams = 2;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let tag = name.to_string();
            let verbose = std::env::var_os("E2E_VERBOSE").is_some();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if verbose {
                        eprintln!("[{tag}] {line}");
                    }
                    log.push(line);
                }
                log.close();
            });
        }
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. SIGKILL, SIGSTOP, SIGCONT, SIGTERM).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .with_context(|| format!("signalling {}", self.name))
    }

    /// Waits for the process to exit, bounded by `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            let tail: Vec<_> = self.log.lines().into_iter().rev().take(40).rev().collect();
            eprintln!(
                "---- last output of {} ----\n{}",
                self.name,
                tail.join("\n")
            );
        }
    }
}

/// True while a process with this pid exists (and is not a zombie we own).
pub fn pid_alive(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    !status.is_empty()
        && !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
}

/// An FGP Parameter of the full Mandelbrot set at this size and depth (what the pool element
/// tests ask for).
pub fn mandelbrot(
    width: u32,
    height: u32,
    max_iterations: u32,
) -> fractal_protocol::message::Parameter {
    fractal_protocol::message::Parameter {
        width,
        height,
        max_iterations,
        algorithm: fractal_protocol::message::AlgorithmId::MANDELBROT,
        c1_real: -1.8,
        c1_imag: -1.0,
        c2_real: 1.4,
        c2_imag: 1.0,
        n: 2.0,
    }
}

/// What the pool must deliver for `view` cut into `units` work units: each unit computed
/// locally from its own Parameter (one unit is exactly the untiled picture), however sessions
/// shared the units out and took over their tails.
pub fn expected_picture(view: &fractal_protocol::message::Parameter, units: usize) -> Vec<u32> {
    use fractal_protocol::{kernel, tiling};
    if units == 1 {
        return kernel::compute_image(view);
    }
    let mut picture = vec![0u32; (view.width * view.height) as usize];
    for tile in tiling::split(view, units) {
        for (index, value) in kernel::compute_image(&tile.parameter)
            .into_iter()
            .enumerate()
        {
            let x = tile.x + index as u32 % tile.width;
            let y = tile.y + index as u32 / tile.width;
            picture[(y * view.width + x) as usize] = value;
        }
    }
    picture
}

/// ENRP test registrars live on loopback: registrar `id` of network `net` at 127.0.`net`.`id`,
/// ASAP on port 3863.
pub fn enrp_registrar_asap(net: u8, id: u8) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, net, id], 3863))
}

/// ... and ENRP on port 9901.
pub fn enrp_registrar_enrp(net: u8, id: u8) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, net, id], 9901))
}

/// Starts registrar `id` of network `net` (identifier `id`, addresses as above) with ENRP to the
/// registrars `peers` of that network, no announces, and `extra` arguments; returns it once it
/// is ready with ENRP where expected.
pub fn start_enrp_registrar(net: u8, id: u8, peers: &[u8], extra: &[String]) -> Result<Proc> {
    let mut args: Vec<String> = vec![
        "--id".into(),
        id.to_string(),
        "--asap".into(),
        enrp_registrar_asap(net, id).to_string(),
        "--announce".into(),
        "off".into(),
        "--enrp".into(),
        enrp_registrar_enrp(net, id).to_string(),
        "--enrp-announce".into(),
        "off".into(),
    ];
    for &peer in peers {
        args.extend(["--peer".into(), enrp_registrar_enrp(net, peer).to_string()]);
    }
    args.extend(extra.iter().cloned());
    let proc = Proc::spawn(&format!("registrar{id}"), bin("registrar"), &args)?;
    let ready = proc.log.wait_for_text("registrar ready", READY_TIMEOUT)?;
    let enrp = field(&ready, "enrp").context("enrp=")?;
    anyhow::ensure!(
        enrp == enrp_registrar_enrp(net, id).to_string(),
        "ENRP at {enrp}"
    );
    Ok(proc)
}

/// `--tls-cert/--tls-key/--tls-ca` for credentials written into `dir/name/` as `name`.
pub fn tls_args(
    pem: &rserpool::transport::tls::TlsPem,
    dir: &std::path::Path,
    name: &str,
) -> Result<Vec<String>> {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder)?;
    let files = rserpool::transport::pki::write_files(pem, &folder, name)?;
    Ok([
        ("--tls-cert", files.cert),
        ("--tls-key", files.key),
        ("--tls-ca", files.ca),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect())
}

/// The PE identifiers the registrar at `asap` lists in `pool` (a Handle Resolution for all),
/// sorted.
pub async fn listed_pes(asap: std::net::SocketAddr, pool: &str) -> Result<Vec<u32>> {
    listed_pes_with(
        asap,
        pool,
        rserpool::transport::AssociationConfig::default(),
    )
    .await
}

/// [`listed_pes`] over an association with `config` (e.g. TLS).
pub async fn listed_pes_with(
    asap: std::net::SocketAddr,
    pool: &str,
    config: rserpool::transport::AssociationConfig,
) -> Result<Vec<u32>> {
    let pool = rserpool::wire::PoolHandle::new(pool.as_bytes())?;
    let resolution =
        rserpool::pu::list_pool_at(asap, &pool, config, Duration::from_secs(5)).await?;
    let mut ids: Vec<u32> = resolution.elements.iter().map(|e| e.id.0).collect();
    ids.sort();
    Ok(ids)
}

/// Starts `pool-element` with identifier `id` registering at `registrar` (and `extra`
/// arguments); returns it once it listens, with its data address.
pub fn start_pool_element(
    registrar: std::net::SocketAddr,
    id: &str,
    extra: &[&str],
) -> Result<(Proc, std::net::SocketAddr)> {
    let mut args = vec![
        "--registrar".to_string(),
        registrar.to_string(),
        "--id".to_string(),
        id.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let pe = Proc::spawn("pool-element", bin("pool-element"), &args)?;
    let line = pe
        .log
        .wait_for_text("pool element listening", READY_TIMEOUT)?;
    let data = field(&line, "data")
        .context("data= in the listening line")?
        .parse()
        .context("the data address")?;
    Ok((pe, data))
}
