//! The real registrar, pool elements and headless pool user on loopback. Pictures through the
//! pool equal the local reference; SIGKILLed, SIGSTOPped and `--fail-after` PEs lose nothing;
//! an emptied pool is waited for (issue 5). A fast PE does more of the picture, and a tail
//! taken over from a slow PE survives a SIGKILL (issue 14). A TLS pool serves its members and
//! refuses everyone else (issue 16).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::{Proc, READY_TIMEOUT, bin, field};
use fractal_protocol::message::{MAX_POINTS_PER_DATA, Parameter};
use fractal_protocol::preset::Preset;
use nix::sys::signal::Signal;
use rserpool::wire::PeId;

/// How long a whole picture may take on a loaded 2-core machine.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(120);

struct Registrar {
    /// Lives as long as the test.
    proc: Proc,
    address: String,
}

fn registrar(extra: &[&str]) -> Result<Registrar> {
    let mut args: Vec<String> = vec!["--asap".into(), "127.0.0.1:0".into()];
    if !extra.contains(&"--announce") {
        args.extend(["--announce".into(), "off".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::spawn("registrar", bin("registrar"), &args)?;
    let ready = proc.log.wait_for_text("registrar ready", READY_TIMEOUT)?;
    let address = field(&ready, "asap").context("asap= in the ready line")?;
    Ok(Registrar { proc, address })
}

struct Pe {
    proc: Proc,
    id: String,
}

/// A pool element registered at `registrar` with id `id` (printed as 0x%08x in logs).
fn pool_element(registrar: &Registrar, id: u32, extra: &[&str]) -> Result<Pe> {
    let mut args = vec![
        "--registrar".to_string(),
        registrar.address.clone(),
        "--id".to_string(),
        format!("{id:#x}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::spawn(&format!("pe-{id:#x}"), bin("pool-element"), &args)?;
    proc.log
        .wait_for_text("pool element registered", READY_TIMEOUT)?;
    Ok(Pe {
        proc,
        id: PeId(id).to_string(),
    })
}

struct Picture {
    width: u32,
    height: u32,
    sessions: usize,
    /// Work units the picture is cut into (`--units`).
    units: usize,
    preset: &'static str,
    max_iterations: u32,
}

impl Picture {
    fn view(&self) -> Parameter {
        let preset = Preset::by_name(self.preset).expect("built-in preset");
        let mut view = preset.parameter(self.width, self.height);
        view.max_iterations = self.max_iterations;
        view
    }

    /// What the pool must deliver: each work unit computed locally from its own Parameter (with
    /// one unit that is exactly the untiled reference picture), however sessions shared the
    /// units out and took over their tails.
    fn expected(&self) -> Vec<u32> {
        e2e::expected_picture(&self.view(), self.units)
    }

    /// Starts `pool-user --headless` for this picture, writing into `dir`.
    fn start_pool_user(&self, registrar: &Registrar, dir: &Path, extra: &[&str]) -> Result<Proc> {
        let mut args: Vec<String> = vec![
            "--headless".into(),
            "--registrar".into(),
            registrar.address.clone(),
            "--width".into(),
            self.width.to_string(),
            "--height".into(),
            self.height.to_string(),
            "--sessions".into(),
            self.sessions.to_string(),
            "--units".into(),
            self.units.to_string(),
            "--preset".into(),
            self.preset.into(),
            "--max-iterations".into(),
            self.max_iterations.to_string(),
            "--iterations-out".into(),
            dir.join("iterations.bin").display().to_string(),
            "--stats-json".into(),
            dir.join("stats.json").display().to_string(),
            "--out".into(),
            dir.join("picture.png").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn("pool-user", bin("pool-user"), &args)
    }
}

/// Waits for the pool user to finish, then checks the picture bit for bit and returns the
/// statistics of the image.
fn finish_and_check(pu: &mut Proc, picture: &Picture, dir: &Path) -> Result<serde_json::Value> {
    let status = pu.wait_exit(IMAGE_TIMEOUT)?;
    anyhow::ensure!(status.success(), "pool-user failed: {status}");
    let bytes = std::fs::read(dir.join("iterations.bin"))?;
    let got: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let expected = picture.expected();
    anyhow::ensure!(
        got.len() == expected.len(),
        "iterations file has the wrong size"
    );
    let wrong = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
    anyhow::ensure!(wrong == 0, "{wrong} pixels differ from the reference");
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("stats.json"))?)?;
    Ok(stats[0].clone())
}

fn number(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {stats}"))
}

#[test]
fn pool_pictures_equal_the_local_reference() -> Result<()> {
    let registrar = registrar(&[])?;
    let _a = pool_element(&registrar, 0xa1, &[])?;
    let _b = pool_element(&registrar, 0xa2, &[])?;
    for sessions in [1, 6] {
        let dir = tempfile::tempdir()?;
        let picture = Picture {
            width: 257,
            height: 163,
            sessions,
            units: sessions * 4,
            preset: "seahorse-valley",
            max_iterations: 400,
        };
        let mut pu = picture.start_pool_user(&registrar, dir.path(), &[])?;
        let stats = finish_and_check(&mut pu, &picture, dir.path())?;
        assert_eq!(number(&stats, "failovers"), 0);
        assert_eq!(number(&stats, "pixels"), 257 * 163);
        assert!(dir.path().join("picture.png").is_file());
        pu.log.wait_for_text("image completed", READY_TIMEOUT)?;
    }
    Ok(())
}

#[test]
fn sigkilled_pes_lose_nothing() -> Result<()> {
    let registrar = registrar(&[])?;
    // Slow PEs (capacity in iterations/s) so that the picture takes seconds and kills land
    // in the middle of it.
    let slow = ["--capacity", "4000000", "--cookie-max-packets", "10"];
    let mut pes = Vec::new();
    for id in 0xb1..=0xb4 {
        pes.push(pool_element(&registrar, id, &slow)?);
    }
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 400,
        height: 300,
        sessions: 4,
        units: 16,
        preset: "full-set",
        max_iterations: 1000,
    };
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &[])?;
    let mut killed = Vec::new();
    for round in 0..2 {
        // Kill a PE that is serving a session right now, a different one each time.
        let line = pu.log.wait_for(READY_TIMEOUT, |l| {
            l.contains("session connected")
                && field(l, "pe").is_some_and(|pe| !killed.contains(&pe))
        })?;
        let pe_id = field(&line, "pe").context("pe=")?;
        std::thread::sleep(Duration::from_millis(400));
        let victim = pes
            .iter_mut()
            .find(|pe| pe.id == pe_id)
            .context("a PE of ours")?;
        victim.proc.signal(Signal::SIGKILL)?;
        killed.push(pe_id.clone());
        let started = pu.log.wait_for_text("failover started", READY_TIMEOUT)?;
        assert_eq!(
            field(&started, "pe").as_deref(),
            Some(pe_id.as_str()),
            "round {round}"
        );
        pu.log.wait_for_text("failover completed", READY_TIMEOUT)?;
    }
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    assert!(number(&stats, "failovers") >= 2, "{stats}");
    // Recomputed work per failover: at most one cookie interval (10 Data messages).
    let interval = 10 * MAX_POINTS_PER_DATA as u64;
    for line in pu
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("failover completed"))
    {
        let recomputed: u64 = field(line, "recomputed_pixels")
            .context("recomputed_pixels=")?
            .parse()?;
        assert!(recomputed <= interval, "{line}");
    }
    Ok(())
}

#[test]
fn sigstopped_pe_is_detected_reported_and_avoided() -> Result<()> {
    // The registrar keeps listing the hung PE (it would take 100 reports to drop it): the
    // pool user must avoid it on its own.
    let registrar = registrar(&[
        "--max-bad-pe-reports",
        "100",
        "--keepalive-timeout",
        "60000",
    ])?;
    let slow = ["--capacity", "3000000"];
    let hung = pool_element(&registrar, 0xc1, &slow)?;
    let _healthy = pool_element(&registrar, 0xc2, &slow)?;
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 300,
        height: 200,
        sessions: 2,
        units: 8,
        preset: "full-set",
        max_iterations: 1000,
    };
    let session_timeout = Duration::from_millis(1000);
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &["--session-timeout", "1000"])?;
    pu.log.wait_for(READY_TIMEOUT, |l| {
        l.contains("session connected") && field(l, "pe").as_deref() == Some(hung.id.as_str())
    })?;
    std::thread::sleep(Duration::from_millis(300));
    hung.proc.signal(Signal::SIGSTOP)?;
    let started = pu.log.wait_for_text("failover started", READY_TIMEOUT)?;
    assert_eq!(field(&started, "pe").as_deref(), Some(hung.id.as_str()));
    assert!(
        started.contains("DataSilence") || started.contains("HeartbeatTimeout"),
        "{started}"
    );
    let silent_ms: u64 = field(&started, "silent_ms")
        .context("silent_ms=")?
        .parse()?;
    let timeout_ms = session_timeout.as_millis() as u64;
    assert!(
        silent_ms >= timeout_ms && silent_ms < 3 * timeout_ms,
        "{started}"
    );
    pu.log
        .wait_for_text("endpoint unreachable reported", READY_TIMEOUT)?;
    let result = finish_and_check(&mut pu, &picture, dir.path());
    hung.proc.signal(Signal::SIGCONT)?;
    result?;
    // Not chosen again while it hung: no session connected to it after the detection.
    let lines = pu.log.lines();
    let detected = lines
        .iter()
        .position(|l| l.contains("failover started"))
        .context("failover line")?;
    assert!(
        !lines[detected..]
            .iter()
            .any(|l| l.contains("session connected")
                && field(l, "pe").as_deref() == Some(hung.id.as_str())),
        "the hung PE was chosen again"
    );
    Ok(())
}

#[test]
fn all_pes_gone_then_one_restarted() -> Result<()> {
    let registrar = registrar(&[])?;
    let first = pool_element(&registrar, 0xd1, &["--capacity", "3000000"])?;
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 240,
        height: 160,
        sessions: 2,
        units: 8,
        preset: "full-set",
        max_iterations: 1000,
    };
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &[])?;
    pu.log.wait_for_text("session connected", READY_TIMEOUT)?;
    std::thread::sleep(Duration::from_millis(300));
    first.proc.signal(Signal::SIGKILL)?;
    pu.log.wait_for_text("pool empty", READY_TIMEOUT)?;
    // The pool user keeps waiting.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pu.is_running(), "the pool user gave up");
    let _second = pool_element(&registrar, 0xd2, &[])?;
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    assert!(number(&stats, "failovers") >= 1);
    Ok(())
}

#[test]
fn fail_after_on_every_pe_gives_deterministic_failovers() -> Result<()> {
    let registrar = registrar(&[])?;
    let _a = pool_element(&registrar, 0xe1, &["--fail-after", "5"])?;
    let _b = pool_element(&registrar, 0xe2, &["--fail-after", "5"])?;
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 200,
        height: 150,
        sessions: 1,
        units: 1,
        preset: "seahorse-valley",
        max_iterations: 300,
    };
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &[])?;
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    // 30000 pixels = 93 Data messages of up to 324 points; every PE closes after 5 of them
    // with a cookie: 18 failovers, nothing recomputed, never from scratch.
    let messages = (200u64 * 150).div_ceil(MAX_POINTS_PER_DATA as u64);
    assert_eq!(number(&stats, "failovers"), messages / 5, "{stats}");
    assert_eq!(number(&stats, "recomputed_pixels"), 0, "{stats}");
    assert_eq!(number(&stats, "restarts_from_scratch"), 0, "{stats}");
    assert_eq!(number(&stats, "pes_used"), 2, "{stats}");
    Ok(())
}

#[test]
fn pool_user_finds_the_registrar_by_announces() -> Result<()> {
    // A port of our own for unicast announces, so parallel tests do not hear each other.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let announce = format!("127.0.0.1:{port}");
    let registrar = registrar(&["--announce", &announce, "--announce-interval", "100"])?;
    let _pe = pool_element(&registrar, 0xf1, &[])?;
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 64,
        height: 48,
        sessions: 1,
        units: 1,
        preset: "full-set",
        max_iterations: 200,
    };
    let mut args: Vec<String> = vec![
        "--headless".into(),
        "--announce-listen".into(),
        announce.clone(),
        "--width".into(),
        "64".into(),
        "--height".into(),
        "48".into(),
        "--preset".into(),
        "full-set".into(),
        "--max-iterations".into(),
        "200".into(),
        "--iterations-out".into(),
        dir.path().join("iterations.bin").display().to_string(),
        "--stats-json".into(),
        dir.path().join("stats.json").display().to_string(),
    ];
    args.push("--no-progress".into());
    let mut pu = Proc::spawn("pool-user", bin("pool-user"), &args)?;
    finish_and_check(&mut pu, &picture, dir.path())?;
    Ok(())
}

/// The pixels and iterations `stats` credits to the PE printed as `pe_id`.
fn pe_record(stats: &serde_json::Value, pe_id: &str) -> Option<(u64, u64)> {
    stats["pes"].as_array()?.iter().find_map(|pe| {
        let id = u32::try_from(pe["pe_id"].as_u64()?).ok()?;
        (PeId(id).to_string() == pe_id)
            .then(|| Some((pe["pixels"].as_u64()?, pe["iterations"].as_u64()?)))?
    })
}

#[test]
fn a_four_times_faster_pe_computes_at_least_twice_the_iterations() -> Result<()> {
    let registrar = registrar(&[])?;
    let fast = pool_element(&registrar, 0xe1, &["--capacity", "16000000"])?;
    let slow = pool_element(&registrar, 0xe2, &["--capacity", "4000000"])?;
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 240,
        height: 160,
        sessions: 4,
        units: 16,
        preset: "full-set",
        max_iterations: 1000,
    };
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &[])?;
    // Bit for bit what one PE computes for the same units.
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    let (_, fast_iterations) = pe_record(&stats, &fast.id).context("the fast PE's record")?;
    let (_, slow_iterations) = pe_record(&stats, &slow.id).context("the slow PE's record")?;
    assert!(
        fast_iterations >= 2 * slow_iterations,
        "fast {fast_iterations}, slow {slow_iterations}: {stats}"
    );
    assert_eq!(stats["preset"], "full-set");
    assert_eq!(number(&stats, "units"), 16);
    Ok(())
}

#[test]
fn a_tail_taken_over_survives_a_sigkill_of_its_new_pe() -> Result<()> {
    let registrar = registrar(&[])?;
    // Two units on two PEs: the fast one finishes early and its session takes over the tail
    // of the slow one's tile; a second fast PE joins for the failover.
    let cookies = ["--cookie-max-packets", "10"];
    let fast = pool_element(
        &registrar,
        0xf1,
        &[&["--capacity", "4000000"][..], &cookies].concat(),
    )?;
    let slow = pool_element(
        &registrar,
        0xf2,
        &[&["--capacity", "500000"][..], &cookies].concat(),
    )?;
    let dir = tempfile::tempdir()?;
    // Two units side by side, each through the set's heavy middle rows: the tail of either is
    // heavy.
    let picture = Picture {
        width: 200,
        height: 160,
        sessions: 2,
        units: 2,
        preset: "full-set",
        max_iterations: 1000,
    };
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &[])?;
    for pe in [&fast.id, &slow.id] {
        pu.log.wait_for(READY_TIMEOUT, |l| {
            l.contains("session connected") && field(l, "pe").as_deref() == Some(pe.as_str())
        })?;
    }
    let spare = pool_element(
        &registrar,
        0xf3,
        &[&["--capacity", "4000000"][..], &cookies].concat(),
    )?;
    let takeover = pu.log.wait_for_text("tail taken over", IMAGE_TIMEOUT)?;
    let tail = field(&takeover, "tail").context("tail=")?;
    let connected = pu.log.wait_for(READY_TIMEOUT, |l| {
        l.contains("session connected") && field(l, "tile").as_deref() == Some(tail.as_str())
    })?;
    let victim_id = field(&connected, "pe").context("pe=")?;
    // Let it deliver for a while (the tail takes it about 0.4 s), then kill it.
    std::thread::sleep(Duration::from_millis(150));
    let victim = [&fast, &spare]
        .into_iter()
        .find(|pe| pe.id == victim_id)
        .context("the tail went to a fast PE")?;
    victim.proc.signal(Signal::SIGKILL)?;
    let started = pu.log.wait_for(READY_TIMEOUT, |l| {
        l.contains("failover started") && field(l, "tile").as_deref() == Some(tail.as_str())
    })?;
    assert_eq!(field(&started, "pe"), Some(victim_id.clone()));
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    assert!(number(&stats, "tail_takeovers") >= 1, "{stats}");
    assert!(number(&stats, "failovers") >= 1, "{stats}");
    // Nothing lost beyond one cookie interval (10 Data messages) per failover.
    let interval = 10 * MAX_POINTS_PER_DATA as u64;
    let records = stats["failover_records"].as_array().context("records")?;
    assert!(!records.is_empty());
    for record in records {
        assert!(number(record, "recomputed_pixels") <= interval, "{record}");
    }
    drop(slow);
    Ok(())
}

#[test]
fn a_tls_pool_serves_its_members_and_refuses_everyone_else() -> Result<()> {
    use rserpool::transport::pki::PoolCa;
    let dir = tempfile::tempdir()?;
    let pool = PoolCa::new("pool CA")?;
    let stranger = PoolCa::new("another CA")?;
    let credentials = |ca: &PoolCa, name: &str, sans: &[&str]| {
        e2e::tls_args(&ca.issue(name, sans)?, dir.path(), name)
    };
    let registrar_tls = credentials(&pool, "registrar", &["127.0.0.1"])?;
    let registrar = registrar(&registrar_tls.iter().map(String::as_str).collect::<Vec<_>>())?;
    let member_tls = credentials(&pool, "pe", &[])?;
    let member = pool_element(
        &registrar,
        0xc1,
        &member_tls.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;

    // Without TLS, and with a certificate of another CA: both refused at the handshake.
    let plain = Proc::spawn(
        "pe-plain",
        bin("pool-element"),
        &[
            "--registrar".into(),
            registrar.address.clone(),
            "--id".into(),
            "0xc2".into(),
        ],
    )?;
    let mut impostor_pem = stranger.issue("impostor", &[])?;
    impostor_pem.ca = pool.certificate_pem().as_bytes().to_vec();
    let mut impostor_args = e2e::tls_args(&impostor_pem, dir.path(), "impostor")?;
    impostor_args.extend([
        "--registrar".into(),
        registrar.address.clone(),
        "--id".into(),
        "0xc3".into(),
    ]);
    let impostor = Proc::spawn("pe-impostor", bin("pool-element"), &impostor_args)?;
    registrar.proc.log.wait_for(READY_TIMEOUT, |line| {
        line.contains("TLS handshake refused") && line.contains("certificate")
    })?;
    registrar.proc.log.wait_for(READY_TIMEOUT, |line| {
        line.contains("TLS handshake refused") && !line.contains("certificate")
    })?;

    let picture = Picture {
        width: 160,
        height: 120,
        sessions: 3,
        units: 12,
        preset: "full-set",
        max_iterations: 300,
    };
    let user_tls = credentials(&pool, "pu", &[])?;
    let mut pu = picture.start_pool_user(
        &registrar,
        dir.path(),
        &user_tls.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    // Only the member served: the others were never listed.
    let (pixels, _) = pe_record(&stats, &member.id).context("the member's record")?;
    assert_eq!(pixels, 160 * 120, "{stats}");
    for (stranger_id, proc) in [(0xc2, &plain), (0xc3, &impostor)] {
        assert_eq!(pe_record(&stats, &PeId(stranger_id).to_string()), None);
        assert_eq!(proc.log.count("pool element registered"), 0);
    }
    Ok(())
}

/// A `hostile-pe` process registered beside an honest `pool-element`, misbehaving as `mode`
/// after two Data messages of each session: the picture still completes bit for bit, and every
/// session the hostile PE held is failed over. Returns the picture's wall time and failovers.
fn picture_beside_a_hostile_pe(mode: &str, id: u32) -> Result<(f64, u64)> {
    let registrar = registrar(&[])?;
    let _honest = pool_element(&registrar, id + 1, &[])?;
    let hostile = Proc::spawn(
        &format!("hostile-{mode}"),
        bin("hostile-pe"),
        &[
            "--registrar".into(),
            registrar.address.clone(),
            "--id".into(),
            format!("{id:#x}"),
            "--mode".into(),
            mode.into(),
        ],
    )?;
    hostile
        .log
        .wait_for_text("hostile pe registered", READY_TIMEOUT)?;
    let dir = tempfile::tempdir()?;
    let picture = Picture {
        width: 200,
        height: 150,
        sessions: 4,
        units: 8,
        preset: "full-set",
        max_iterations: 200,
    };
    let mut pu = picture.start_pool_user(&registrar, dir.path(), &["--session-timeout", "1000"])?;
    let stats = finish_and_check(&mut pu, &picture, dir.path())?;
    let hostile_id = u64::from(id);
    let records = stats["failover_records"]
        .as_array()
        .context("failover records")?;
    let from_hostile = records
        .iter()
        .filter(|record| record["old_pe"].as_u64() == Some(hostile_id))
        .count();
    assert!(from_hostile >= 1, "the hostile PE was never left: {stats}");
    let wall = stats["wall_time_s"].as_f64().context("wall time")?;
    eprintln!("{mode}: picture in {wall:.2} s, {from_hostile} failovers away from the hostile PE");
    Ok((wall, number(&stats, "failovers")))
}

#[test]
fn a_hostile_pe_repeating_its_data_cannot_hold_a_picture() -> Result<()> {
    picture_beside_a_hostile_pe("repeat-data", 0xd0).map(drop)
}

#[test]
fn a_hostile_pe_sending_empty_data_cannot_hold_a_picture() -> Result<()> {
    picture_beside_a_hostile_pe("empty-data", 0xd2).map(drop)
}

#[test]
fn a_hostile_pe_spamming_cookies_and_errors_cannot_hold_a_picture() -> Result<()> {
    picture_beside_a_hostile_pe("cookie-spam", 0xd4).map(drop)
}

#[test]
fn a_hostile_pe_with_cookies_ahead_of_its_data_cannot_hold_a_picture() -> Result<()> {
    picture_beside_a_hostile_pe("cookie-ahead", 0xd6).map(drop)
}
