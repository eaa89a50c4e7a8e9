//! Kernel throughput: iterations per second per core of the scalar reference and the fast kernel
//! on the same views, their ratio, the lane tunings of the fast kernel, and all cores together.
//!
//! Run: `cargo bench -p fractal-protocol --bench kernel`

use std::hint::black_box;
use std::time::{Duration, Instant};

use fractal_protocol::kernel::fast::{self, Backend, Tuning};
use fractal_protocol::kernel::{KernelChoice, View, compute_image_parallel, iterations_for};
use fractal_protocol::message::{AlgorithmId, Parameter};

const WIDTH: u32 = 512;
const HEIGHT: u32 = 384;
const MAX_ITERATIONS: u32 = 1000;

fn view_parameter(c1: (f64, f64), c2: (f64, f64)) -> Parameter {
    Parameter {
        width: WIDTH,
        height: HEIGHT,
        max_iterations: MAX_ITERATIONS,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: c1.0,
        c1_imag: c1.1,
        c2_real: c2.0,
        c2_imag: c2.1,
        n: 2.0,
    }
}

/// Best time of several runs (at least 3 and at least ~1 s in total) and the iterations of one.
fn measure(mut run: impl FnMut() -> u64) -> (Duration, u64) {
    let mut best = Duration::MAX;
    let mut iterations = 0;
    let started = Instant::now();
    let mut runs = 0;
    while runs < 3 || (started.elapsed() < Duration::from_secs(1) && runs < 50) {
        let t = Instant::now();
        iterations = black_box(run());
        best = best.min(t.elapsed());
        runs += 1;
    }
    (best, iterations)
}

fn rate(iterations: u64, time: Duration) -> f64 {
    iterations as f64 / time.as_secs_f64()
}

fn main() {
    let views = [
        // rsplib's default view (fractalpooluser without a .fsf): the whole mirrored set.
        (
            "full view (-1.5,1.5)..(1.5,-1.5)",
            view_parameter((-1.5, 1.5), (1.5, -1.5)),
        ),
        // rsplib's fgpconfig/input-221.fsf: about 2e-7 wide.
        (
            "deep zoom input-221.fsf",
            view_parameter(
                (1.1456297333784093, 0.2850337049035325),
                (1.1456299288389704, 0.2850335583081117),
            ),
        ),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{WIDTH}x{HEIGHT} pixels, MaxIterations {MAX_ITERATIONS}; fast backend on this CPU: {:?}; {cores} cores",
        fast::active_backend()
    );
    for (name, parameter) in &views {
        println!("\n== {name}");
        let pixels = (WIDTH * HEIGHT) as usize;
        let mut out = vec![0; pixels];
        let scalar = View::new(parameter, KernelChoice::Scalar);
        let (scalar_time, iterations) = measure(|| scalar.compute((0, 0), &mut out).unwrap_or(0));
        let reference = out.clone();
        let scalar_rate = rate(iterations, scalar_time);
        println!(
            "{iterations} iterations per image ({:.1} per pixel)",
            iterations as f64 / pixels as f64
        );
        println!(
            "{:<34} {:>9.3} ms {:>10.1} M it/s/core  x{:.2}",
            "scalar reference",
            scalar_time.as_secs_f64() * 1e3,
            scalar_rate / 1e6,
            1.0
        );
        let fast = View::new(parameter, KernelChoice::Fast);
        let (time, fast_iterations) = measure(|| fast.compute((0, 0), &mut out).unwrap_or(0));
        assert_eq!(
            out, reference,
            "fast kernel differs from the scalar reference"
        );
        assert_eq!(fast_iterations, iterations);
        println!(
            "{:<34} {:>9.3} ms {:>10.1} M it/s/core  x{:.2}",
            format!("fast kernel ({:?})", fast::active_backend()),
            time.as_secs_f64() * 1e3,
            rate(iterations, time) / 1e6,
            rate(iterations, time) / scalar_rate
        );
        for backend in [Backend::Avx2, Backend::Portable] {
            if !backend.is_available() {
                continue;
            }
            let view = View::with_backend(parameter, backend);
            for refill in [false, true] {
                for quads in 1..=4 {
                    let tuning = Tuning { quads, refill };
                    let (time, _) = measure(|| {
                        fast::compute_mandelbrot_tuned(&view, (0, 0), &mut out, backend, tuning)
                            .map_or(0, |()| 1)
                    });
                    assert_eq!(out, reference, "{backend:?} {tuning:?} differs");
                    println!(
                        "  {:<32} {:>9.3} ms {:>10.1} M it/s/core  x{:.2}",
                        format!(
                            "{backend:?} {} lanes {}",
                            4 * quads,
                            if refill { "refill" } else { "batch" }
                        ),
                        time.as_secs_f64() * 1e3,
                        rate(iterations, time) / 1e6,
                        rate(iterations, time) / scalar_rate
                    );
                }
            }
        }
        let (time, parallel_iterations) = measure(|| {
            let image = compute_image_parallel(parameter, cores);
            image
                .iter()
                .map(|&v| iterations_for(v, MAX_ITERATIONS))
                .sum()
        });
        assert_eq!(parallel_iterations, iterations);
        println!(
            "{:<34} {:>9.3} ms {:>10.1} M it/s total ({:.1} per core)",
            format!("fast, {cores} threads"),
            time.as_secs_f64() * 1e3,
            rate(iterations, time) / 1e6,
            rate(iterations, time) / 1e6 / cores as f64
        );
    }
}
