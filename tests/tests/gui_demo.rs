//! The one-command GUI demo under Xvfb (software rendering): `pool-user` starts its bundled
//! registrar and pool elements, the picture grows, the GUI's own test hook kills the busiest
//! bundled PE, the picture still completes, and no bundled process survives the window.
//! Also: SIGTERM and SIGKILL of the GUI take the bundled processes with it.
//!
//! Needs `Xvfb`, `xwd` and ImageMagick's `convert` (installed by `.ci/run`). The screenshot is
//! left at `<target>/<profile>/gui-demo.png`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e::{Proc, READY_TIMEOUT, bin, bin_dir, field, pid_alive};
use nix::sys::signal::Signal;

/// An Xvfb server on a free display number, killed on drop.
struct Display {
    number: u32,
    server: Proc,
}

impl Drop for Display {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its lock and socket (a killed one leaves them behind, and
        // the next tests have to skip that display number).
        if self
            .server
            .signal(nix::sys::signal::Signal::SIGTERM)
            .is_ok()
        {
            let _ = self.server.wait_exit(Duration::from_secs(5));
        }
    }
}

impl Display {
    fn start() -> Result<Display> {
        let xvfb = which("Xvfb").context("Xvfb is not installed (see .ci/run)")?;
        // Start from a number derived from our pid so parallel tests rarely collide.
        let first = 100 + std::process::id() % 400;
        for number in first..first + 50 {
            if Path::new(&format!("/tmp/.X11-unix/X{number}")).exists()
                || Path::new(&format!("/tmp/.X{number}-lock")).exists()
            {
                continue;
            }
            let args = vec![
                format!(":{number}"),
                "-screen".to_owned(),
                "0".to_owned(),
                "1600x1000x24".to_owned(),
                "-nolisten".to_owned(),
                "tcp".to_owned(),
            ];
            let mut server = Proc::spawn("xvfb", xvfb.clone(), &args)?;
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
            let lock = PathBuf::from(format!("/tmp/.X{number}-lock"));
            // The display is ours only if the lock names our server: another test may have
            // started one on the same number a moment earlier (ours then exits, but the
            // socket is already there).
            let pid = server.pid().to_string();
            let ours = || std::fs::read_to_string(&lock).is_ok_and(|text| text.trim() == pid);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && server.is_running() && !(socket.exists() && ours()) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if socket.exists() && ours() && server.is_running() {
                return Ok(Display { number, server });
            }
        }
        bail!("could not start Xvfb on any display")
    }

    fn name(&self) -> String {
        format!(":{}", self.number)
    }

    /// Screenshot of the whole screen as PNG.
    fn screenshot(&self, path: &Path) -> Result<()> {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "xwd -root -display {} | convert xwd:- '{}'",
                self.name(),
                path.display()
            ))
            .status()
            .context("running xwd | convert")?;
        ensure!(status.success(), "xwd | convert failed: {status}");
        Ok(())
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// `pool-user` with the bundled pool on `display`, via `env` so that only the child sees DISPLAY.
fn start_gui(display: &Display, args: &[&str]) -> Result<Proc> {
    let mut full = vec![
        format!("DISPLAY={}", display.name()),
        "LIBGL_ALWAYS_SOFTWARE=1".to_owned(),
        bin("pool-user").display().to_string(),
    ];
    full.extend(args.iter().map(|arg| arg.to_string()));
    Proc::spawn("pool-user", PathBuf::from("/usr/bin/env"), &full)
}

/// Pids of the bundled processes the GUI logged so far.
fn bundled_pids(gui: &Proc) -> Vec<i32> {
    gui.log
        .lines()
        .iter()
        .filter(|line| line.contains("bundled process started"))
        .filter_map(|line| field(line, "pid")?.parse().ok())
        .collect()
}

fn wait_gone(pids: &[i32]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&pid| pid_alive(pid)).collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("bundled processes still alive: {alive:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn demo_survives_a_killed_pe_and_leaves_no_processes() -> Result<()> {
    let display = Display::start()?;
    let mut gui = start_gui(
        &display,
        &[
            "--sessions",
            "16",
            "--picture-size",
            "480x300",
            "--preset",
            "full-set",
            // Slow PEs (36 M iterations in all): the picture takes seconds, time to kill one.
            "--bundled-capacities",
            "20e6,10e6,10e6,5e6",
            "--demo-kill-at-percent",
            "20",
            "--quit-after-images",
            "1",
        ],
    )?;
    gui.log
        .wait_for_text("bundled pool ready", READY_TIMEOUT)
        .context("bundled pool")?;
    let pids = bundled_pids(&gui);
    assert_eq!(pids.len(), 6, "2 registrars and 4 pool elements");
    let progress = gui.log.wait_for(READY_TIMEOUT, |line| {
        line.contains("image progress")
            && field(line, "percent")
                .and_then(|percent| percent.parse::<u32>().ok())
                .is_some_and(|percent| (10..100).contains(&percent))
    })?;
    assert!(progress.contains("image=1"), "{progress}");
    let kill = gui
        .log
        .wait_for_text("demo kill", READY_TIMEOUT)
        .context("the test hook kills a PE")?;
    let victim: i32 = field(&kill, "pid")
        .and_then(|pid| pid.parse().ok())
        .context("pid of the killed PE")?;
    assert!(pids.contains(&victim), "killed {victim}, bundled {pids:?}");

    // Let the window draw a few frames of the failover before taking its picture.
    gui.log
        .wait_for_text("image progress", READY_TIMEOUT)
        .context("progress after the kill")?;
    std::thread::sleep(Duration::from_millis(300));
    let shot = bin_dir().join("gui-demo.png");
    display.screenshot(&shot)?;
    let size = std::fs::metadata(&shot)?.len();
    assert!(size > 10_000, "screenshot of {size} bytes looks empty");

    let completed = gui
        .log
        .wait_for_text("picture completed", READY_TIMEOUT * 2)
        .context("the picture completes despite the killed PE")?;
    assert!(completed.contains("image=1"), "{completed}");
    let failovers: u64 = field(&completed, "failovers")
        .and_then(|count| count.parse().ok())
        .context("failovers field")?;
    assert!(failovers >= 1, "the killed PE served sessions: {completed}");

    let status = gui.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "pool-user exited with {status}");
    wait_gone(&pids)?;
    assert!(!pid_alive(victim));
    Ok(())
}

#[test]
fn sigterm_of_the_gui_stops_the_bundle() -> Result<()> {
    let display = Display::start()?;
    let mut gui = start_gui(&display, &["--picture-size", "200x120"])?;
    gui.log.wait_for_text("bundled pool ready", READY_TIMEOUT)?;
    let pids = bundled_pids(&gui);
    assert_eq!(pids.len(), 6);
    assert!(pids.iter().all(|&pid| pid_alive(pid)));
    gui.signal(Signal::SIGTERM)?;
    gui.wait_exit(Duration::from_secs(20))?;
    wait_gone(&pids)
}

#[test]
fn sigkill_of_the_gui_takes_the_bundle_along() -> Result<()> {
    let display = Display::start()?;
    let mut gui = start_gui(&display, &["--picture-size", "200x120"])?;
    gui.log.wait_for_text("bundled pool ready", READY_TIMEOUT)?;
    let pids = bundled_pids(&gui);
    assert_eq!(pids.len(), 6);
    // No handler runs: only PR_SET_PDEATHSIG can clean up.
    gui.signal(Signal::SIGKILL)?;
    gui.wait_exit(Duration::from_secs(20))?;
    wait_gone(&pids)
}

/// `cargo run --release` on a machine without a display: no backend error, but the bundled
/// demo without a window, its picture written, its processes gone at the end.
#[test]
fn without_a_display_the_demo_runs_headless_and_writes_the_picture() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let picture = dir.path().join("fractal-demo.png");
    let mut child = Command::new(bin("pool-user"))
        .args(["--width", "96", "--height", "64", "--no-progress"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill()?;
            bail!("the demo without a display did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(status.success(), "exit {status}: {stderr}");
    ensure!(
        stderr.contains("No display") && stderr.contains("fractal-demo.png"),
        "no explanation: {stderr}"
    );
    let (width, height) = image::image_dimensions(&picture).context("the picture")?;
    ensure!((width, height) == (96, 64), "picture of {width}x{height}");
    let pids: Vec<i32> = stderr
        .lines()
        .filter(|line| line.contains("bundled process started"))
        .filter_map(|line| field(line, "pid")?.parse().ok())
        .collect();
    ensure!(pids.len() == 6, "bundled processes: {pids:?}");
    wait_gone(&pids)
}
