//! Proves our traffic decodes in Wireshark: sends frames through the real framed-TCP transport
//! on loopback while tshark captures, then decodes the capture with
//! `assets/wireshark/rserpool-tcp.lua` and returns tshark's JSON.
//!
//! Needs tshark (with Lua) and the right to capture on `lo` (root or CAP_NET_RAW). A missing
//! tshark is an error, never a skip.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use e2e::tshark::{capture_and_decode, field_values};
//! let decoded = capture_and_decode(&[(11, vec![0x08, 0, 0, 4])]).await?;
//! decoded.assert_clean()?;
//! assert_eq!(field_values(&decoded.packets, "asap.message_type"), ["8"]);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rserpool::transport::{
    AssociationConfig, AssociationError, HeartbeatConfig, Listener, TcpFramed, Transport,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Bound on each step that waits (tshark start-up, traffic, capture shutdown).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What to send through the capture.
#[derive(Clone, Debug, Default)]
pub struct CapturePlan {
    /// Each batch is queued on the association at once (on a current-thread runtime, before the
    /// connection task runs, so small batches leave in one TCP segment); the next batch starts
    /// after the peer received the previous one.
    pub batches: Vec<Vec<(u32, Vec<u8>)>>,
    /// Heartbeats of both ends; `None` keeps the capture free of them.
    pub heartbeat: Option<HeartbeatConfig>,
    /// Wait until both ends measured an RTT (so requests and acks are on the wire) before sending.
    pub wait_for_heartbeats: bool,
}

/// A decoded capture.
#[derive(Debug)]
pub struct DecodedCapture {
    /// tshark's `-T json --no-duplicate-keys` packets (duplicate keys merged into arrays).
    pub packets: Vec<Value>,
    /// The listening (registrar-like) port the association used.
    pub port: u16,
    /// Packets matching `_ws.malformed || _ws.expert.severity >= error`, per tshark's own filter.
    pub flagged_frames: Vec<String>,
    /// tshark's stderr while decoding.
    pub decode_stderr: String,
    _dir: tempfile::TempDir,
}

impl DecodedCapture {
    /// Fails on malformed packets, error-severity expert items, or Lua errors.
    pub fn assert_clean(&self) -> Result<()> {
        ensure!(
            self.flagged_frames.is_empty(),
            "malformed/error frames: {:?}",
            self.flagged_frames
        );
        let problems = problems(&self.packets);
        ensure!(problems.is_empty(), "problems in the decode: {problems:?}");
        ensure!(
            !self.decode_stderr.contains("Lua"),
            "Lua trouble while decoding: {}",
            self.decode_stderr
        );
        Ok(())
    }
}

/// Path of the shim.
pub fn lua_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/wireshark/rserpool-tcp.lua")
}

/// Fails with an installation hint unless tshark runs.
pub fn require_tshark() -> Result<()> {
    require_program("tshark")
}

/// Fails with an installation hint unless `program --version` runs.
pub fn require_program(program: &str) -> Result<()> {
    let hint = "install tshark (Debian/Ubuntu: apt-get install tshark)";
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => bail!("{program} --version failed ({}): {hint}", output.status),
        Err(error) => bail!("{program} not found ({error}): {hint}"),
    }
}

/// Sends each frame as its own batch through a captured association; returns the decode.
pub async fn capture_and_decode(frames: &[(u32, Vec<u8>)]) -> Result<DecodedCapture> {
    let plan = CapturePlan {
        batches: frames.iter().map(|f| vec![f.clone()]).collect(),
        ..CapturePlan::default()
    };
    capture(&plan).await
}

/// Runs `plan` through a captured association and decodes the capture.
pub async fn capture(plan: &CapturePlan) -> Result<DecodedCapture> {
    let config = AssociationConfig {
        heartbeat: plan.heartbeat,
        ..AssociationConfig::default()
    };
    let transport = TcpFramed::new(config);
    let listener = transport.bind("127.0.0.1:0".parse()?).await?;
    let port = listener.local_addr()?.port();
    with_capture(port, run_traffic(&transport, &listener, plan)).await
}

/// Sends raw byte chunks (e.g. deliberately broken frames) over a plain TCP connection to
/// `port`-filtered capture, one write per chunk, and decodes the capture.
pub async fn capture_raw(chunks: &[Vec<u8>]) -> Result<DecodedCapture> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let traffic = async {
        let (client, server) = tokio::time::timeout(STEP_TIMEOUT, async {
            tokio::join!(
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
                listener.accept()
            )
        })
        .await
        .context("connecting through the capture")?;
        let mut client = client?;
        let (mut server, _) = server?;
        client.set_nodelay(true)?;
        let client_port = client.local_addr()?.port();
        let mut received = Vec::new();
        for chunk in chunks {
            client.write_all(chunk).await?;
            // Read it back before the next write so each chunk leaves as its own segment(s).
            let mut buf = vec![0u8; chunk.len()];
            tokio::time::timeout(STEP_TIMEOUT, server.read_exact(&mut buf))
                .await
                .context("chunk not received")??;
            received.extend_from_slice(&buf);
        }
        client.shutdown().await?;
        let mut rest = Vec::new();
        tokio::time::timeout(STEP_TIMEOUT, server.read_to_end(&mut rest))
            .await
            .context("no FIN")??;
        ensure!(
            rest.is_empty() && received == chunks.concat(),
            "raw bytes altered in transit"
        );
        drop(server);
        Ok(client_port)
    };
    with_capture(port, traffic).await
}

/// Captures `port` while `traffic` (returning the client's port, after a graceful close) runs,
/// then decodes the capture with the shim.
async fn with_capture(
    port: u16,
    traffic: impl Future<Output = Result<u16>>,
) -> Result<DecodedCapture> {
    require_tshark()?;
    let script = lua_script();
    ensure!(script.is_file(), "missing {}", script.display());
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("capture.pcap");

    let mut tshark = Tshark::start(port, &pcap).await?;
    let client_port = traffic.await?;
    tshark.wait_for_fins(port, client_port).await?;
    tshark.stop().await?;
    decoded(dir, pcap, port).await
}

/// Captures `port` (TCP and UDP, on any loopback address) while `traffic` runs, e.g. between
/// real processes that keep their associations open; once it is done, a UDP probe sent after
/// it and seen by tshark shows that everything before is in the capture. Then decodes it.
pub async fn capture_live(
    port: u16,
    traffic: impl Future<Output = Result<()>>,
) -> Result<DecodedCapture> {
    require_tshark()?;
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("capture.pcap");
    let mut tshark = Tshark::start(port, &pcap).await?;
    traffic.await?;
    // Lines of everything captured so far (the start's extra probes among them) are old news:
    // only a probe reported after them proves the capture caught up.
    while tshark.lines.try_recv().is_ok() {}
    tshark.wait_until_live(port).await?;
    tshark.stop().await?;
    decoded(dir, pcap, port).await
}

async fn decoded(
    dir: tempfile::TempDir,
    pcap: std::path::PathBuf,
    port: u16,
) -> Result<DecodedCapture> {
    let script = lua_script();
    ensure!(script.is_file(), "missing {}", script.display());
    let packets = decode_json(&pcap, port).await?;
    let flagged_frames =
        matching_frames(&pcap, port, "_ws.malformed || _ws.expert.severity >= error").await?;
    let decode_stderr = decode_stderr(&pcap, port).await?;
    Ok(DecodedCapture {
        packets,
        port,
        flagged_frames,
        decode_stderr,
        _dir: dir,
    })
}

/// Sends the plan's batches from a client to the accepted server and checks they arrive intact;
/// closes gracefully. Returns the client's port.
async fn run_traffic(
    transport: &TcpFramed,
    listener: &rserpool::transport::TcpFramedListener,
    plan: &CapturePlan,
) -> Result<u16> {
    let addr = listener.local_addr()?;
    let (client, server) = tokio::time::timeout(STEP_TIMEOUT, async {
        tokio::join!(transport.connect(addr), listener.accept())
    })
    .await
    .context("connecting through the capture")?;
    let client = client?;
    let mut server = server?;
    let client_port = client.local_addr().port();

    if plan.wait_for_heartbeats {
        tokio::time::timeout(STEP_TIMEOUT, async {
            while client.srtt().is_none() || server.srtt().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .context("heartbeats were not exchanged")?;
    }

    for batch in &plan.batches {
        for (ppid, payload) in batch {
            match client.try_send(*ppid, payload.clone()) {
                Ok(()) => {}
                Err(rserpool::transport::TrySendError::Full(frame)) => {
                    client.send(frame.ppid, frame.payload).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        for (ppid, payload) in batch {
            let frame = tokio::time::timeout(STEP_TIMEOUT, server.recv())
                .await
                .context("frame not received")??;
            ensure!(
                frame.ppid == *ppid && frame.payload == payload,
                "frame altered in transit (PPID {ppid})"
            );
        }
    }

    tokio::time::timeout(STEP_TIMEOUT, client.close())
        .await
        .context("close timed out")??;
    let end = tokio::time::timeout(STEP_TIMEOUT, server.recv())
        .await
        .context("no close seen")?;
    ensure!(
        matches!(end, Err(AssociationError::ClosedByPeer)),
        "server saw {end:?} instead of the close"
    );
    tokio::time::timeout(STEP_TIMEOUT, server.sender().finished())
        .await
        .context("server close")??;
    Ok(client_port)
}

/// A running `tshark -i lo` capture.
struct Tshark {
    child: Child,
    /// Summary lines (`srcport fin`) of captured packets, as tshark writes them.
    lines: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_seen: String,
}

impl Tshark {
    /// Starts capturing `tcp port {port}` into `pcap` and waits until tshark says it captures.
    async fn start(port: u16, pcap: &Path) -> Result<Self> {
        let mut child = Command::new("tshark")
            .args([
                "-i",
                "lo",
                "-f",
                &format!("tcp port {port} or udp port {port}"),
                "-F",
                "pcap",
                "-w",
            ])
            .arg(pcap)
            // -P -l: also print one line per packet as it is captured, to know when we are done.
            .args([
                "-P",
                "-l",
                "-T",
                "fields",
                "-e",
                "tcp.srcport",
                "-e",
                "tcp.flags.fin",
                "-e",
                "udp.dstport",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting tshark: install tshark")?;
        let lines = forward_lines(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("no tshark stdout"))?,
        );
        let stderr = forward_lines(
            child
                .stderr
                .take()
                .ok_or_else(|| anyhow!("no tshark stderr"))?,
        );
        let mut tshark = Tshark {
            child,
            lines,
            stderr,
            stderr_seen: String::new(),
        };
        let ready = tokio::time::timeout(STEP_TIMEOUT, async {
            while let Some(line) = tshark.stderr.recv().await {
                tshark.stderr_seen.push_str(&line);
                tshark.stderr_seen.push('\n');
                if line.contains("Capturing on") {
                    return true;
                }
            }
            false
        })
        .await;
        match ready {
            Ok(true) => {
                tshark.wait_until_live(port).await?;
                Ok(tshark)
            }
            Ok(false) => bail!(
                "tshark exited before capturing (capturing on lo needs root or CAP_NET_RAW): {}",
                tshark.stderr_seen
            ),
            Err(_) => bail!(
                "tshark did not start capturing within {STEP_TIMEOUT:?}: {}",
                tshark.stderr_seen
            ),
        }
    }

    /// "Capturing on" comes a few hundred milliseconds before packets are really captured:
    /// send UDP probes to the port until tshark reports one.
    async fn wait_until_live(&mut self, port: u16) -> Result<()> {
        let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let port_text = port.to_string();
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        let live = tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        probe.send_to(b"capture probe", ("127.0.0.1", port)).await?;
                    }
                    line = self.lines.recv() => match line {
                        Some(line) if line.split('\t').nth(2) == Some(port_text.as_str()) => return Ok(()),
                        Some(_) => {}
                        None => bail!("tshark stopped before capturing a probe"),
                    },
                }
            }
        })
        .await;
        live.context("tshark captured no probe")?
    }

    /// Waits until tshark has captured the FIN of both ends: everything sent before is in.
    async fn wait_for_fins(&mut self, server_port: u16, client_port: u16) -> Result<()> {
        let (mut server_fin, mut client_fin) = (false, false);
        let mut summary = Vec::new();
        let seen = tokio::time::timeout(STEP_TIMEOUT, async {
            while !(server_fin && client_fin) {
                let Some(line) = self.lines.recv().await else {
                    return false;
                };
                summary.push(line.clone());
                let mut fields = line.split('\t');
                let (Some(source), Some(fin)) = (fields.next(), fields.next()) else {
                    continue;
                };
                if fin.trim() == "1" || fin.trim() == "True" {
                    server_fin |= source == server_port.to_string();
                    client_fin |= source == client_port.to_string();
                }
            }
            true
        })
        .await;
        ensure!(
            seen == Ok(true),
            "tshark did not report both FINs (server {server_fin}, client {client_fin}); packets: {summary:?}"
        );
        Ok(())
    }

    /// Stops the capture (SIGINT, so the file is completed) and waits for tshark to exit.
    async fn stop(mut self) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("tshark already exited"))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait())
            .await
            .context("tshark did not stop after SIGINT")??;
        ensure!(
            status.success(),
            "capturing tshark failed: {status}: {}",
            self.stderr_seen
        );
        Ok(())
    }
}

/// Forwards the lines of a child's pipe to a channel (so the pipe never blocks the child).
fn forward_lines(pipe: impl AsyncRead + Unpin + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs tshark with the shim on `pcap`, `port` set by preference, plus `extra` arguments.
async fn decode(pcap: &Path, port: u16, extra: &[&str]) -> Result<std::process::Output> {
    let output = tokio::time::timeout(
        STEP_TIMEOUT,
        Command::new("tshark")
            .arg("-X")
            .arg(format!("lua_script:{}", lua_script().display()))
            .args(["-o", &format!("rserpool_tcp.ports:{port}"), "-r"])
            .arg(pcap)
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("tshark decode timed out")??;
    ensure!(
        output.status.success(),
        "tshark decode failed: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The capture as tshark JSON, one value per packet.
pub async fn decode_json(pcap: &Path, port: u16) -> Result<Vec<Value>> {
    let output = decode(pcap, port, &["-T", "json", "--no-duplicate-keys"]).await?;
    let packets: Vec<Value> =
        serde_json::from_slice(&output.stdout).context("parsing tshark JSON")?;
    Ok(packets)
}

/// Frame numbers matching a display filter.
pub async fn matching_frames(pcap: &Path, port: u16, filter: &str) -> Result<Vec<String>> {
    let output = decode(
        pcap,
        port,
        &["-Y", filter, "-T", "fields", "-e", "frame.number"],
    )
    .await?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

async fn decode_stderr(pcap: &Path, port: u16) -> Result<String> {
    let output = decode(pcap, port, &["-V"]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Runtime Lua errors show up in the tree text rather than on stderr.
    if text.contains("Lua Error") {
        stderr.push_str("Lua Error in the packet tree");
    }
    Ok(stderr)
}

/// Every value of `field` in the packets, in order (arrays from merged keys are flattened).
pub fn field_values(packets: &[Value], field: &str) -> Vec<String> {
    let mut values = Vec::new();
    for packet in packets {
        collect(packet, field, &mut values);
    }
    values
}

/// Values of `field` per packet (empty entries for packets without it).
pub fn field_values_per_packet(packets: &[Value], field: &str) -> Vec<Vec<String>> {
    packets
        .iter()
        .map(|p| field_values(std::slice::from_ref(p), field))
        .collect()
}

fn collect(value: &Value, field: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == field {
                    flatten_into(child, out);
                } else {
                    collect(child, field, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect(item, field, out)),
        _ => {}
    }
}

fn flatten_into(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten_into(item, out)),
        Value::String(text) => out.push(text.clone()),
        other => out.push(other.to_string()),
    }
}

/// Malformed markers and error-severity expert items in the JSON.
pub fn problems(packets: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    for (index, packet) in packets.iter().enumerate() {
        let mut local = Vec::new();
        find_problems(packet, &mut local);
        found.extend(
            local
                .into_iter()
                .map(|p| format!("packet {}: {p}", index + 1)),
        );
    }
    found
}

fn find_problems(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key.starts_with("_ws.malformed") || key == "_ws.lua.error" {
                    out.push(format!("{key}: {child}"));
                }
                if key == "_ws.expert.severity" {
                    let mut severities = Vec::new();
                    flatten_into(child, &mut severities);
                    // Wireshark's PI_ERROR.
                    if severities.iter().any(|s| s == "8388608") {
                        out.push(format!("expert error: {}", Value::Object(map.clone())));
                    }
                }
                find_problems(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| find_problems(item, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tshark_is_an_error_with_an_install_hint() {
        let error = require_program("tshark-that-is-not-installed").unwrap_err();
        assert!(error.to_string().contains("install tshark"), "{error}");
    }

    #[test]
    fn field_values_flatten_merged_duplicate_keys_in_order() {
        let packets: Vec<Value> = serde_json::from_str(
            r#"[{"_source": {"layers": {"rserpool_tcp": [{"rserpool_tcp.ppid": "32"}, {"rserpool_tcp.ppid": "0"}]}}},
                {"_source": {"layers": {"rserpool_tcp": {"rserpool_tcp.ppid": ["11", "12"]}}}}]"#,
        )
        .unwrap();
        assert_eq!(
            field_values(&packets, "rserpool_tcp.ppid"),
            ["32", "0", "11", "12"]
        );
        assert_eq!(
            field_values_per_packet(&packets, "rserpool_tcp.ppid"),
            [vec!["32", "0"], vec!["11", "12"]]
        );
    }

    #[test]
    fn problems_finds_malformed_and_error_expert_items_only() {
        let packets: Vec<Value> = serde_json::from_str(
            r#"[{"a": {"_ws.lua.fake": "", "_ws.expert": {"_ws.expert.severity": "4194304"}}},
                {"a": {"_ws.malformed": "x"}},
                {"a": {"_ws.expert": {"_ws.expert.severity": "8388608", "_ws.expert.message": "bad"}}}]"#,
        )
        .unwrap();
        let found = problems(&packets);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("packet 2") && found[1].starts_with("packet 3"));
    }
}
