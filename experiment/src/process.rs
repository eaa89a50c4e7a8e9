//! The workspace's programs as child processes: started until their log says they are
//! ready, stopped with SIGTERM (a PE writes its last statistics then), killed if dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long a program may take to log that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args` and waits (at most 30 s) for a line of its log (stderr)
/// containing `ready`; returns the process and that line. The rest of the log is drained.
pub fn spawn_until_ready(program: &Path, args: &[String], ready: &str) -> Result<(Proc, String)> {
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
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(&ready)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line);
            }
        }
    });
    let proc = Proc(child);
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .with_context(|| format!("{} did not become ready", program.display()))?;
    Ok((proc, line))
}

/// The `asap=` address of a registrar's ready line.
pub fn asap_address(ready_line: &str) -> Result<String> {
    ready_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("asap="))
        .map(str::to_string)
        .context("asap= in the registrar's ready line")
}

/// Sends SIGTERM to every process, then waits up to `timeout` for each to exit. `false` if one
/// is still running (it is killed when dropped).
pub fn terminate_all(procs: &mut [Proc], timeout: Duration) -> Result<bool> {
    for proc in procs.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &proc.0.id().to_string()])
            .status();
    }
    let mut all_stopped = true;
    for proc in procs.iter_mut() {
        let deadline = Instant::now() + timeout;
        while proc.0.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                all_stopped = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(all_stopped)
}
