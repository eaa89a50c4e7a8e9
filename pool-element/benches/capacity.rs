//! `--capacity`: the iteration rate a pool element achieves for one session against the rate
//! it was given, and the longest gap between Data messages (the PU's silence timer).
//!
//! Run: `cargo bench -p pool-element --bench capacity`

use std::time::{Duration, Instant};

use clap::Parser;
use fractal_protocol::kernel::{KernelChoice, View, iterations_for};
use fractal_protocol::message::{AlgorithmId, Parameter};
use pool_element::{Cli, run_until};
use rserpool::transport::{self, AssociationConfig, PPID_FGP};

fn parameter() -> Parameter {
    Parameter {
        width: 160,
        height: 120,
        max_iterations: 1000,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: -1.8,
        c1_imag: -1.0,
        c2_real: 1.4,
        c2_imag: 1.0,
        n: 2.0,
    }
}

fn total_iterations(p: &Parameter) -> u64 {
    let mut image = vec![0; (p.width * p.height) as usize];
    View::new(p, KernelChoice::Scalar)
        .compute((0, 0), &mut image)
        .expect("whole view");
    image
        .iter()
        .map(|&v| iterations_for(v, p.max_iterations))
        .sum()
}

async fn measure(capacity: Option<u64>) -> (Duration, Duration) {
    let capacity_text = capacity.map(|c| c.to_string());
    let mut args = vec!["pool-element", "--registrar", "127.0.0.1:9"];
    if let Some(text) = &capacity_text {
        args.extend(["--capacity", text]);
    }
    let cli = Cli::try_parse_from(args).expect("valid");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pe = tokio::spawn(run_until(
        cli,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let data = ready_rx.await.expect("ready");
    let mut session = transport::connect(data, AssociationConfig::default())
        .await
        .expect("connect");
    let started = Instant::now();
    session
        .send(PPID_FGP, parameter().encode().to_vec())
        .await
        .expect("send");
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while let Ok(frame) = session.recv().await {
        if frame.ppid == PPID_FGP {
            longest_gap = longest_gap.max(last.elapsed());
            last = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(());
    let _ = pe.await;
    (elapsed, longest_gap)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let p = parameter();
    let total = total_iterations(&p);
    println!(
        "view {}x{} MaxIterations {}: {total} iterations",
        p.width, p.height, p.max_iterations
    );
    for capacity in [None, Some(20_000_000), Some(5_000_000), Some(1_000_000)] {
        let (elapsed, gap) = runtime.block_on(measure(capacity));
        let rate = total as f64 / elapsed.as_secs_f64();
        match capacity {
            Some(c) => println!(
                "capacity {c:>10} it/s: achieved {rate:>12.0} it/s ({:.3} of capacity) in {elapsed:.2?}, longest Data gap {gap:.0?}",
                rate / c as f64
            ),
            None => println!(
                "capacity  unlimited: achieved {rate:>12.0} it/s in {elapsed:.2?}, longest Data gap {gap:.0?}"
            ),
        }
    }
}
