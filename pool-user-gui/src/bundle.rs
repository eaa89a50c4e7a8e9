//! The bundled demo deployment: registrars (two by default, keeping one handlespace with ENRP,
//! with timers short enough to show a takeover in seconds) and pool elements started as child
//! processes of this very binary (`pool-user registrar ...`, `pool-user pool-element ...`), so
//! that they can really be killed, hung and stopped from the window.
//!
//! No orphans: children get `PR_SET_PDEATHSIG = SIGKILL` (Linux), so they die with the GUI even
//! if it crashes; [`Bundle`] kills them on drop; [`kill_on_signals`] kills them on SIGINT/SIGTERM
//! of the GUI. `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child ends, so spawn
//! from a thread that lives as long as the program (the GUI's main thread does).
//!
//! The child program is `std::env::current_exe()`, or `$POOL_USER_CHILD_EXE` when set (tests).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rserpool::wire::PeId;

/// Lifecycle of a bundled process as the window shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildState {
    Starting,
    Running,
    /// SIGSTOP'd by the Hang button.
    Hung,
    /// SIGTERM sent, waiting for it to exit.
    Stopping,
    /// Exited (or killed); the text says how.
    Exited(String),
}

/// A bundled pool element as the pool panel lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct BundledPe {
    /// Local number (stable across restarts), from 1.
    pub slot: usize,
    /// Identifier once the PE has registered.
    pub pe_id: Option<PeId>,
    pub pid: Option<u32>,
    /// Iterations per second (None = unlimited).
    pub capacity: Option<u64>,
    /// The capacity the PE reports to the pool: the one it was given, or the one it measured
    /// when unlimited (once it has started).
    pub reported_capacity: Option<u64>,
    pub state: ChildState,
}

/// A bundled registrar as the pool panel shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BundledRegistrar {
    /// Its registrar (ENRP server) identifier: its index, from 1.
    pub id: u32,
    pub address: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub state: ChildState,
}

/// Environment variable naming the program to run as registrar and pool elements.
pub const CHILD_EXE_ENV: &str = "POOL_USER_CHILD_EXE";

/// What to start.
#[derive(Clone, Debug)]
pub struct BundleConfig {
    pub pool: String,
    /// Policy of the pool elements (rsplib text form).
    pub policy: String,
    /// One entry per PE: iterations per second (None = unlimited).
    pub capacities: Vec<Option<u64>>,
    /// Registrars, keeping one handlespace with ENRP when more than one.
    pub registrars: usize,
    /// The program to run (None: `$POOL_USER_CHILD_EXE`, else this executable).
    pub child_exe: Option<PathBuf>,
    /// How long to wait for the registrar and the PEs to be ready.
    pub ready_timeout: Duration,
    /// Prefix for the children's stderr lines forwarded to ours (None: not forwarded).
    pub forward_logs: bool,
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            pool: "FractalGeneratorPool".to_owned(),
            policy: "LeastUsed".to_owned(),
            capacities: BundleConfig::demo_capacities(4),
            registrars: 2,
            child_exe: None,
            ready_timeout: Duration::from_secs(15),
            forward_logs: true,
        }
    }
}

impl BundleConfig {
    /// `count` PEs of the demo's mix of speeds: 60, 30, 15 and 8 M iterations/s, repeating
    /// (slow enough that a picture takes a few seconds and one can watch the tiles grow).
    pub fn demo_capacities(count: usize) -> Vec<Option<u64>> {
        const MIX: [Option<u64>; 4] = [
            Some(60_000_000),
            Some(30_000_000),
            Some(15_000_000),
            Some(8_000_000),
        ];
        (0..count).map(|index| MIX[index % MIX.len()]).collect()
    }
}

/// A running (or exited) child and the lines of its stderr.
struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

struct Member {
    state: ChildState,
    process: Option<ChildProcess>,
}

struct RegistrarMember {
    id: u32,
    member: Member,
    /// Known once it reported ready; a restart reuses both.
    asap: Option<SocketAddr>,
    enrp: Option<SocketAddr>,
}

/// ENRP timers of the bundled registrars: a registrar silent for 2 s is asked, and dead 2 s
/// later, so a demo shows a takeover in seconds (rsplib's defaults take 10 s).
const DEMO_ENRP_TIMERS: [(&str, &str); 3] = [
    ("--peer-heartbeat-cycle", "1000"),
    ("--peer-max-time-last-heard", "2000"),
    ("--peer-max-time-no-response", "2000"),
];

struct PeMember {
    slot: usize,
    capacity: Option<u64>,
    reported_capacity: Option<u64>,
    pe_id: Option<PeId>,
    member: Member,
}

/// Kills every bundled child; cheap to clone, usable from a signal-handling thread.
#[derive(Clone, Debug, Default)]
pub struct KillSwitch {
    pids: Arc<Mutex<BTreeSet<i32>>>,
}

impl KillSwitch {
    fn add(&self, pid: i32) {
        if let Ok(mut pids) = self.pids.lock() {
            pids.insert(pid);
        }
    }

    fn remove(&self, pid: i32) {
        if let Ok(mut pids) = self.pids.lock() {
            pids.remove(&pid);
        }
    }

    /// Pids of the children not yet reaped.
    pub fn pids(&self) -> Vec<i32> {
        self.pids
            .lock()
            .map(|pids| pids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every child not yet reaped.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The bundled registrar and pool elements.
pub struct Bundle {
    config: BundleConfig,
    exe: PathBuf,
    registrars: Vec<RegistrarMember>,
    pes: Vec<PeMember>,
    switch: KillSwitch,
}

/// Value of `key=value` in a log line.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|token| {
        token
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

fn parse_pe_id(text: &str) -> Option<PeId> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    u32::from_str_radix(hex, 16).ok().map(PeId)
}

impl Bundle {
    /// Starts the registrar, waits until it is ready, starts the PEs and waits (up to the
    /// timeout) until they have registered.
    pub fn start(config: BundleConfig) -> anyhow::Result<Bundle> {
        let exe = match config.child_exe.clone() {
            Some(exe) => exe,
            None => match std::env::var_os(CHILD_EXE_ENV) {
                Some(exe) => PathBuf::from(exe),
                None => std::env::current_exe().context("finding this program")?,
            },
        };
        let count = config.registrars.max(1);
        let mut bundle = Bundle {
            config,
            exe,
            registrars: (1..=count as u32)
                .map(|id| RegistrarMember {
                    id,
                    member: Member {
                        state: ChildState::Exited("not started".to_owned()),
                        process: None,
                    },
                    asap: None,
                    enrp: None,
                })
                .collect(),
            pes: Vec::new(),
            switch: KillSwitch::default(),
        };
        let deadline = Instant::now() + bundle.config.ready_timeout;
        // One after the other: each is told the ENRP addresses of those before it.
        for index in 0..count {
            bundle.spawn_registrar(index)?;
            while bundle.registrars[index].asap.is_none() {
                if Instant::now() >= deadline {
                    bail!("the bundled registrar did not report `registrar ready` in time");
                }
                if let ChildState::Exited(how) = &bundle.registrars[index].member.state {
                    bail!("the bundled registrar exited: {how}");
                }
                thread::sleep(Duration::from_millis(20));
                bundle.poll_all();
            }
        }
        for capacity in bundle.config.capacities.clone() {
            bundle.add_pe(capacity);
        }
        while bundle
            .pes
            .iter()
            .any(|pe| pe.member.state == ChildState::Starting)
        {
            if Instant::now() >= deadline {
                tracing::warn!("not every bundled pool element registered in time");
                break;
            }
            thread::sleep(Duration::from_millis(20));
            bundle.poll_all();
        }
        tracing::info!(
            registrars = ?bundle.registrar_addresses(),
            pes = bundle.pes.len(),
            "bundled pool ready"
        );
        Ok(bundle)
    }

    /// The bundled registrars' ASAP addresses (of those that reported ready).
    pub fn registrar_addresses(&self) -> Vec<SocketAddr> {
        self.registrars.iter().filter_map(|r| r.asap).collect()
    }

    /// A handle that kills all children (for signal handlers).
    pub fn kill_switch(&self) -> KillSwitch {
        self.switch.clone()
    }

    fn spawn(&self, name: &str, args: &[String]) -> anyhow::Result<ChildProcess> {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                    // The parent may have died before prctl: then we were re-parented.
                    if nix::unistd::getppid() == Pid::from_raw(1) {
                        return Err(std::io::Error::other("parent already gone"));
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} {name}", self.exe.display()))?;
        self.switch.add(child.id() as i32);
        tracing::info!(name, pid = child.id(), "bundled process started");
        let (sender, lines) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let prefix = format!("[{name}] ");
            let forward = self.config.forward_logs;
            thread::Builder::new()
                .name(format!("log {name}"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if forward {
                            eprintln!("{prefix}{line}");
                        }
                        if sender.send(line).is_err() {
                            // Nobody parses any more; keep draining so the child never blocks.
                            continue;
                        }
                    }
                })
                .context("starting a log reader thread")?;
        }
        Ok(ChildProcess { child, lines })
    }

    fn spawn_registrar(&mut self, index: usize) -> anyhow::Result<()> {
        let local = |address: Option<SocketAddr>| {
            address.map_or("127.0.0.1:0".to_owned(), |address| address.to_string())
        };
        let registrar = &self.registrars[index];
        let mut args = vec![
            "registrar".to_owned(),
            "--id".to_owned(),
            registrar.id.to_string(),
            "--asap".to_owned(),
            local(registrar.asap),
            "--announce".to_owned(),
            "off".to_owned(),
        ];
        if self.registrars.len() > 1 {
            args.extend([
                "--enrp".to_owned(),
                local(registrar.enrp),
                "--enrp-announce".to_owned(),
                "off".to_owned(),
            ]);
            for (flag, value) in DEMO_ENRP_TIMERS {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
            for peer in self.registrars.iter().filter(|r| r.id != registrar.id) {
                if let Some(enrp) = peer.enrp {
                    args.extend(["--peer".to_owned(), enrp.to_string()]);
                }
            }
        }
        let process = self.spawn(&format!("registrar{}", registrar.id), &args)?;
        self.registrars[index].member = Member {
            state: ChildState::Starting,
            process: Some(process),
        };
        Ok(())
    }

    fn pe_args(&self, capacity: Option<u64>) -> Vec<String> {
        let mut args = vec!["pool-element".to_owned()];
        for registrar in self.registrar_addresses() {
            args.extend(["--registrar".to_owned(), registrar.to_string()]);
        }
        args.extend([
            "--pool".to_owned(),
            self.config.pool.clone(),
            "--policy".to_owned(),
            self.config.policy.clone(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]);
        if let Some(capacity) = capacity {
            args.extend(["--capacity".to_owned(), capacity.to_string()]);
        }
        args
    }

    fn start_pe(&self, slot: usize, capacity: Option<u64>) -> Member {
        match self.spawn(&format!("pe{slot}"), &self.pe_args(capacity)) {
            Ok(process) => Member {
                state: ChildState::Starting,
                process: Some(process),
            },
            Err(error) => Member {
                state: ChildState::Exited(format!("{error:#}")),
                process: None,
            },
        }
    }

    fn add_pe(&mut self, capacity: Option<u64>) {
        let slot = self.pes.len() + 1;
        let member = self.start_pe(slot, capacity);
        self.pes.push(PeMember {
            slot,
            capacity,
            reported_capacity: None,
            pe_id: None,
            member,
        });
    }

    fn signal(&self, member: &Member, signal: Signal) -> bool {
        let Some(process) = &member.process else {
            return false;
        };
        signal::kill(Pid::from_raw(process.child.id() as i32), signal).is_ok()
    }

    /// Reads readiness lines and reaps exited children.
    fn poll_all(&mut self) {
        let switch = self.switch.clone();
        for registrar in &mut self.registrars {
            if let Some(process) = registrar.member.process.as_mut() {
                while let Ok(line) = process.lines.try_recv() {
                    if line.contains("registrar ready")
                        && let Some(address) =
                            log_field(&line, "asap").and_then(|text| text.parse().ok())
                    {
                        registrar.asap = Some(address);
                        registrar.enrp = log_field(&line, "enrp")
                            .and_then(|text| text.parse().ok())
                            .or(registrar.enrp);
                        registrar.member.state = ChildState::Running;
                    }
                }
            }
            reap(&mut registrar.member, &switch);
        }
        for pe in &mut self.pes {
            if let Some(process) = pe.member.process.as_mut() {
                while let Ok(line) = process.lines.try_recv() {
                    if line.contains("pool element capacity") {
                        pe.reported_capacity =
                            log_field(&line, "capacity").and_then(|text| text.parse().ok());
                    }
                    if line.contains("pool element registered")
                        && let Some(id) = log_field(&line, "pe").and_then(parse_pe_id)
                    {
                        pe.pe_id = Some(id);
                        if pe.member.state == ChildState::Starting {
                            pe.member.state = ChildState::Running;
                        }
                    }
                }
            }
            reap(&mut pe.member, &switch);
        }
    }

    fn pe_mut(&mut self, slot: usize) -> Option<&mut PeMember> {
        self.pes.iter_mut().find(|pe| pe.slot == slot)
    }

    fn kill_member(member: &mut Member, switch: &KillSwitch) {
        if let Some(process) = member.process.as_mut() {
            let _ = process.child.kill();
            let _ = process.child.wait();
            switch.remove(process.child.id() as i32);
        }
        member.process = None;
    }
}

/// Notes the exit of a child (and forgets its pid).
fn reap(member: &mut Member, switch: &KillSwitch) {
    let Some(process) = member.process.as_mut() else {
        return;
    };
    if let Ok(Some(status)) = process.child.try_wait() {
        switch.remove(process.child.id() as i32);
        member.state = ChildState::Exited(describe_status(status));
        member.process = None;
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => Signal::try_from(signal)
            .map_or(format!("signal {signal}"), |signal| {
                signal.as_str().to_owned()
            }),
        (None, None) => "ended".to_owned(),
    }
}

impl Bundle {
    /// The registrars' states.
    pub fn registrar_status(&self) -> Vec<BundledRegistrar> {
        self.registrars
            .iter()
            .map(|r| BundledRegistrar {
                id: r.id,
                address: r.asap,
                pid: r.member.process.as_ref().map(|p| p.child.id()),
                state: r.member.state.clone(),
            })
            .collect()
    }

    /// SIGKILL to registrar `id`: its peers take its PEs over.
    pub fn kill_registrar(&mut self, id: u32) {
        if let Some(registrar) = self.registrars.iter().find(|r| r.id == id) {
            self.signal(&registrar.member, Signal::SIGKILL);
        }
        self.poll_all();
    }

    /// SIGSTOP or SIGCONT to registrar `id`.
    pub fn toggle_hang_registrar(&mut self, id: u32) {
        let Some(index) = self.registrars.iter().position(|r| r.id == id) else {
            return;
        };
        let member = &self.registrars[index].member;
        let (signal, next) = if member.state == ChildState::Hung {
            (Signal::SIGCONT, ChildState::Running)
        } else {
            (Signal::SIGSTOP, ChildState::Hung)
        };
        if self.signal(member, signal) {
            self.registrars[index].member.state = next;
        }
    }

    /// The PEs' states.
    pub fn pe_status(&self) -> Vec<BundledPe> {
        self.pes
            .iter()
            .map(|pe| BundledPe {
                slot: pe.slot,
                pe_id: pe.pe_id,
                pid: pe.member.process.as_ref().map(|p| p.child.id()),
                capacity: pe.capacity,
                reported_capacity: pe.reported_capacity,
                state: pe.member.state.clone(),
            })
            .collect()
    }

    /// SIGKILL to PE `slot`.
    pub fn kill_pe(&mut self, slot: usize) {
        if let Some(pe) = self.pes.iter().find(|pe| pe.slot == slot) {
            self.signal(&pe.member, Signal::SIGKILL);
        }
        self.poll_all();
    }

    /// SIGSTOP or SIGCONT to PE `slot`.
    pub fn toggle_hang_pe(&mut self, slot: usize) {
        let Some(index) = self.pes.iter().position(|pe| pe.slot == slot) else {
            return;
        };
        let hung = self.pes[index].member.state == ChildState::Hung;
        let (signal, next) = if hung {
            (Signal::SIGCONT, ChildState::Running)
        } else {
            (Signal::SIGSTOP, ChildState::Hung)
        };
        if self.signal(&self.pes[index].member, signal) {
            self.pes[index].member.state = next;
        }
    }

    /// SIGTERM (graceful) to PE `slot`.
    pub fn stop_pe(&mut self, slot: usize) {
        let Some(index) = self.pes.iter().position(|pe| pe.slot == slot) else {
            return;
        };
        // A stopped process cannot act on SIGTERM: let it run first.
        if self.pes[index].member.state == ChildState::Hung {
            self.signal(&self.pes[index].member, Signal::SIGCONT);
        }
        if self.signal(&self.pes[index].member, Signal::SIGTERM) {
            self.pes[index].member.state = ChildState::Stopping;
        }
    }

    /// Kills PE `slot` if it runs and starts it again (it registers with a new identifier).
    pub fn restart_pe(&mut self, slot: usize) {
        let switch = self.switch.clone();
        let Some(capacity) = self.pe_mut(slot).map(|pe| {
            Bundle::kill_member(&mut pe.member, &switch);
            pe.capacity
        }) else {
            return;
        };
        let member = self.start_pe(slot, capacity);
        if let Some(pe) = self.pe_mut(slot) {
            pe.member = member;
            pe.pe_id = None;
        }
    }

    /// Starts one more PE.
    pub fn add(&mut self, capacity: Option<u64>) {
        self.add_pe(capacity);
    }

    /// Kills registrar `id` (if it runs) and starts it again at the same addresses, empty: it
    /// learns the handlespace from its peers.
    pub fn restart_registrar(&mut self, id: u32) {
        let switch = self.switch.clone();
        let Some(index) = self.registrars.iter().position(|r| r.id == id) else {
            return;
        };
        Bundle::kill_member(&mut self.registrars[index].member, &switch);
        if let Err(error) = self.spawn_registrar(index) {
            self.registrars[index].member.state = ChildState::Exited(format!("{error:#}"));
        }
    }

    /// Reads readiness lines and reaps exited children.
    pub fn poll(&mut self) {
        self.poll_all();
    }

    /// Kills every child and waits for them.
    pub fn shutdown(&mut self) {
        let switch = self.switch.clone();
        for pe in &mut self.pes {
            Bundle::kill_member(&mut pe.member, &switch);
            pe.member.state = ChildState::Exited("shut down".to_owned());
        }
        for registrar in &mut self.registrars {
            Bundle::kill_member(&mut registrar.member, &switch);
            registrar.member.state = ChildState::Exited("shut down".to_owned());
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(feature = "gui")]
impl crate::gui::control::PoolControl for Bundle {
    fn registrars(&self) -> Vec<BundledRegistrar> {
        self.registrar_status()
    }
    fn kill_registrar(&mut self, id: u32) {
        Bundle::kill_registrar(self, id);
    }
    fn toggle_hang_registrar(&mut self, id: u32) {
        Bundle::toggle_hang_registrar(self, id);
    }
    fn pool_elements(&self) -> Vec<BundledPe> {
        self.pe_status()
    }
    fn kill(&mut self, slot: usize) {
        self.kill_pe(slot);
    }
    fn toggle_hang(&mut self, slot: usize) {
        self.toggle_hang_pe(slot);
    }
    fn stop(&mut self, slot: usize) {
        self.stop_pe(slot);
    }
    fn restart(&mut self, slot: usize) {
        self.restart_pe(slot);
    }
    fn add(&mut self, capacity: Option<u64>) {
        Bundle::add(self, capacity);
    }
    fn restart_registrar(&mut self, id: u32) {
        Bundle::restart_registrar(self, id);
    }
    fn poll(&mut self) {
        self.poll_all();
    }
}

/// On SIGINT or SIGTERM: kills the bundled children and exits (130 / 143).
pub fn kill_on_signals(switch: KillSwitch) {
    let spawned = thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut interrupt), Ok(mut terminate)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let code = tokio::select! {
                    _ = interrupt.recv() => 130,
                    _ = terminate.recv() => 143,
                };
                tracing::info!(code, "signal received: stopping the bundled pool");
                switch.kill_all();
                std::process::exit(code);
            });
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot watch for signals");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `pool-user`: prints the readiness lines, then sleeps.
    fn fake_child() -> tempfile::TempPath {
        let mut file = tempfile::Builder::new()
            .prefix("fake-child")
            .tempfile()
            .unwrap_or_else(|error| panic!("tempfile: {error}"));
        let script = r#"#!/bin/sh
case "$1" in
  registrar) echo "INFO registrar ready asap=127.0.0.1:4567$3 id=0x0000000$3 announce=off enrp=127.0.0.1:990$3" >&2 ;;
  pool-element) printf 'INFO pool element registered pe=0x%08x pool=P registrar=127.0.0.1:45678\n' $$ >&2 ;;
esac
exec sleep 600
"#;
        file.write_all(script.as_bytes()).expect("write script");
        let path = file.into_temp_path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod script");
        path
    }

    fn config(exe: &tempfile::TempPath, pes: usize) -> BundleConfig {
        BundleConfig {
            capacities: BundleConfig::demo_capacities(pes),
            child_exe: Some(exe.to_path_buf()),
            forward_logs: false,
            ..BundleConfig::default()
        }
    }

    fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn fields_are_parsed() {
        let line =
            "2026-01-01T00:00:00Z INFO registrar: registrar ready asap=127.0.0.1:3863 id=0x0a";
        assert_eq!(log_field(line, "asap"), Some("127.0.0.1:3863"));
        assert_eq!(log_field(line, "id"), Some("0x0a"));
        assert_eq!(log_field(line, "as"), None);
        assert_eq!(parse_pe_id("0x0000abcd"), Some(PeId(0xabcd)));
        assert_eq!(parse_pe_id("zz"), None);
    }

    #[test]
    fn demo_mix_repeats() {
        let capacities = BundleConfig::demo_capacities(5);
        assert_eq!(capacities[0], Some(60_000_000));
        assert_eq!(capacities[3], Some(8_000_000));
        assert_eq!(capacities[4], Some(60_000_000));
    }

    #[test]
    fn starts_controls_and_kills_everything() {
        let exe = fake_child();
        let mut bundle = Bundle::start(config(&exe, 3)).expect("bundle starts");
        // Two registrars (ids 1 and 2, the fake takes its port from the id), the second told
        // where the first's ENRP is.
        assert_eq!(
            bundle.registrar_addresses(),
            vec![
                "127.0.0.1:45671".parse().expect("address"),
                "127.0.0.1:45672".parse().expect("address")
            ]
        );
        let pes = bundle.pe_status();
        assert_eq!(pes.len(), 3);
        for pe in &pes {
            assert_eq!(pe.state, ChildState::Running);
            // The fake prints its own pid as PE identifier.
            assert_eq!(pe.pe_id, pe.pid.map(PeId));
        }
        let switch = bundle.kill_switch();
        assert_eq!(switch.pids().len(), 5);

        bundle.kill_pe(1);
        assert!(wait_until(|| {
            bundle.poll();
            matches!(&bundle.pe_status()[0].state, ChildState::Exited(how) if how == "SIGKILL")
        }));

        bundle.toggle_hang_pe(2);
        assert_eq!(bundle.pe_status()[1].state, ChildState::Hung);
        bundle.toggle_hang_pe(2);
        assert_eq!(bundle.pe_status()[1].state, ChildState::Running);

        bundle.stop_pe(3);
        assert!(wait_until(|| {
            bundle.poll();
            matches!(&bundle.pe_status()[2].state, ChildState::Exited(how) if how == "SIGTERM")
        }));

        let old_pid = bundle.pe_status()[0].pid;
        bundle.restart_pe(1);
        assert!(wait_until(|| {
            bundle.poll();
            bundle.pe_status()[0].state == ChildState::Running
        }));
        assert_ne!(bundle.pe_status()[0].pid, old_pid);

        bundle.add(Some(1_000));
        assert!(wait_until(|| {
            bundle.poll();
            bundle.pe_status().get(3).map(|pe| pe.state.clone()) == Some(ChildState::Running)
        }));
        assert_eq!(bundle.pe_status()[3].capacity, Some(1_000));

        let registrar_pid = bundle.registrar_status()[0].pid;
        bundle.restart_registrar(1);
        assert!(wait_until(|| {
            bundle.poll();
            bundle.registrar_status()[0].state == ChildState::Running
        }));
        assert_ne!(bundle.registrar_status()[0].pid, registrar_pid);
        assert_eq!(
            bundle.registrar_addresses()[0],
            "127.0.0.1:45671".parse().expect("address")
        );

        bundle.kill_registrar(2);
        assert!(wait_until(|| {
            bundle.poll();
            matches!(&bundle.registrar_status()[1].state, ChildState::Exited(how) if how == "SIGKILL")
        }));

        let pids = switch.pids();
        assert_eq!(pids.len(), 4, "registrar 1, restarted PE 1, PE 2, added PE");
        drop(bundle);
        for pid in pids {
            // Reaped by the drop: the pid no longer names our child.
            let status = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            assert!(status.is_err(), "child {pid} was not reaped");
        }
        assert!(switch.pids().is_empty());
    }

    #[test]
    fn missing_program_is_an_error() {
        let config = BundleConfig {
            child_exe: Some(PathBuf::from("/nonexistent/pool-user")),
            forward_logs: false,
            ..BundleConfig::default()
        };
        assert!(Bundle::start(config).is_err());
    }
}
