//! Kernel tests: rsplib's golden values, hand-derived values, fast == scalar bit for bit, streaming.

use fractal_protocol::kernel::fast::{self, Backend};
use fractal_protocol::kernel::{
    Engine, KernelChoice, OutsideView, View, compute_image, compute_image_parallel, iterations_for,
    iterations_in, scalar,
};
use fractal_protocol::message::{AlgorithmId, Parameter};
use proptest::prelude::*;

fn param(width: u32, height: u32, max: u32, c1: (f64, f64), c2: (f64, f64)) -> Parameter {
    Parameter {
        width,
        height,
        max_iterations: max,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: c1.0,
        c1_imag: c1.1,
        c2_real: c2.0,
        c2_imag: c2.1,
        n: 2.0,
    }
}

fn image_with(view: &View) -> (Vec<u32>, u64) {
    let mut out = vec![0; view.pixel_count() as usize];
    let iterations = view.compute((0, 0), &mut out).unwrap();
    (out, iterations)
}

/// Every backend this machine can run, for the fast kernel.
fn available_backends() -> Vec<Backend> {
    [Backend::Avx2, Backend::Portable]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Golden values of rsplib's loop (tests/kernel_oracle/oracle.cc compiled with g++, see
// generate.sh).

struct Golden {
    name: String,
    param: Parameter,
    values: Vec<u32>,
}

fn golden_files() -> Vec<Golden> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kernel_oracle");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap().split(' ').collect();
            let int = |i: usize| header[i].parse::<u32>().unwrap();
            let float = |i: usize| header[i].parse::<f64>().unwrap();
            let param = Parameter {
                width: int(0),
                height: int(1),
                max_iterations: int(2),
                algorithm: AlgorithmId(int(3)),
                c1_real: float(4),
                c1_imag: float(5),
                c2_real: float(6),
                c2_imag: float(7),
                n: float(8),
            };
            let values: Vec<u32> = lines
                .flat_map(|line| line.split(' '))
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(
                values.len() as u64,
                u64::from(param.width) * u64::from(param.height)
            );
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            Golden {
                name,
                param,
                values,
            }
        })
        .collect()
}

fn assert_same(name: &str, width: u32, expected: &[u32], actual: &[u32]) {
    assert_eq!(expected.len(), actual.len(), "{name}");
    let mismatches: Vec<_> = (0..expected.len())
        .filter(|&i| expected[i] != actual[i])
        .collect();
    if let Some(&first) = mismatches.first() {
        panic!(
            "{name}: {} of {} pixels differ; first at ({}, {}): rsplib {} vs ours {}",
            mismatches.len(),
            expected.len(),
            first as u32 % width,
            first as u32 / width,
            expected[first],
            actual[first]
        );
    }
}

#[test]
fn mandelbrot_matches_rsplib_golden_values() {
    let goldens: Vec<_> = golden_files()
        .into_iter()
        .filter(|g| g.param.algorithm == AlgorithmId::MANDELBROT)
        .collect();
    assert!(goldens.len() >= 4);
    for golden in &goldens {
        let mut views = vec![View::new(&golden.param, KernelChoice::Scalar)];
        views.extend(
            available_backends()
                .into_iter()
                .map(|b| View::with_backend(&golden.param, b)),
        );
        for view in views {
            let (values, iterations) = image_with(&view);
            let name = format!("{} with {:?}", golden.name, view.engine());
            assert_same(&name, golden.param.width, &golden.values, &values);
            let expected_iterations: u64 = golden
                .values
                .iter()
                .map(|&v| iterations_for(v, golden.param.max_iterations))
                .sum();
            assert_eq!(iterations, expected_iterations, "{name}");
        }
    }
}

/// MandelbrotN goes through libm (log, atan2, exp, sin, cos, ...): our values equal rsplib's
/// where the libm is the same, i.e. glibc on x86-64 (the golden files come from there).
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[test]
fn mandelbrot_n_matches_rsplib_golden_values_with_glibc() {
    let goldens: Vec<_> = golden_files()
        .into_iter()
        .filter(|g| g.param.algorithm == AlgorithmId::MANDELBROT_N)
        .collect();
    assert!(goldens.len() >= 4);
    for golden in &goldens {
        for kernel in [KernelChoice::Scalar, KernelChoice::Fast] {
            let view = View::new(&golden.param, kernel);
            assert_eq!(view.engine(), Engine::ScalarMandelbrotN);
            let (values, _) = image_with(&view);
            assert_same(&golden.name, golden.param.width, &golden.values, &values);
        }
    }
}

#[test]
fn unknown_algorithm_matches_rsplib_test_pattern() {
    let goldens: Vec<_> = golden_files()
        .into_iter()
        .filter(|g| g.name.starts_with("test_pattern"))
        .collect();
    assert_eq!(goldens.len(), 1);
    for golden in &goldens {
        for kernel in [KernelChoice::Scalar, KernelChoice::Fast] {
            let view = View::new(&golden.param, kernel);
            assert_eq!(view.engine(), Engine::TestPattern);
            let (values, iterations) = image_with(&view);
            assert_same(&golden.name, golden.param.width, &golden.values, &values);
            assert_eq!(iterations, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values worked out by hand. Recall rsplib's rule: z1 = -c, z(k+1) = z(k)^2 - c, the value is the
// 0-based index k of the first z(k+1) with |z|^2 >= 2, MaxIterations if none.

#[test]
fn hand_checked_points() {
    let max = 100;
    // c = 0: z stays 0 forever -> MaxIterations.
    assert_eq!(scalar::mandelbrot(0.0, 0.0, max), max);
    // c = (2, 0): i=0: z = 0 - 2 = -2, |z|^2 = 4 >= 2 -> 0.
    assert_eq!(scalar::mandelbrot(2.0, 0.0, max), 0);
    // c = (1.5, 0): i=0: z = -1.5, |z|^2 = 2.25 -> 0.
    assert_eq!(scalar::mandelbrot(1.5, 0.0, max), 0);
    // c = (-1, 0): i=0: z = 1 (|z|^2 = 1); i=1: z = 1 + 1 = 2 (4) -> 1.
    assert_eq!(scalar::mandelbrot(-1.0, 0.0, max), 1);
    // c = (1, 0): z = -1, 0, -1, 0, ... (the mirror image of the classic c = -1) -> never.
    assert_eq!(scalar::mandelbrot(1.0, 0.0, max), max);
    // c = (0, 1): i=0: z = (0, -1) (|z|^2 = 1); i=1: z = (-1, 0) - (0, 1) = (-1, -1), |z|^2 = 2
    // reaches rsplib's escape bound 2 (radius sqrt 2; the classic c = i never escapes) -> 1.
    assert_eq!(scalar::mandelbrot(0.0, 1.0, max), 1);
    // c = (-0.5, 0), all exact in binary: z = 0.5 (0.25); 0.75 (0.5625); 1.0625 (1.12890625);
    // 1.12890625 + 0.5 = 1.62890625 (2.65...) at i=3 -> 3.
    assert_eq!(scalar::mandelbrot(-0.5, 0.0, max), 3);
    // c = (0.5, 0): z = -0.5, -0.25, -0.4375, ... converges to (1 - sqrt 3)/2 -> never.
    assert_eq!(scalar::mandelbrot(0.5, 0.0, max), max);
    // MaxIterations 1 with c = -1: i=0 does not escape, the loop ends -> 1 (= MaxIterations).
    assert_eq!(scalar::mandelbrot(-1.0, 0.0, 1), 1);
    // MaxIterations 0: no iteration at all -> 0.
    assert_eq!(scalar::mandelbrot(2.0, 0.0, 0), 0);
    assert_eq!(scalar::mandelbrot(0.0, 0.0, 0), 0);
    // NaN compares false: never escapes.
    assert_eq!(scalar::mandelbrot(f64::NAN, 0.0, max), max);
    // MandelbrotN with N = 3, c = (2, 0): z1 = pow(0, 3) - 2 = -2, |z|^2 = 4 -> 0.
    assert_eq!(scalar::mandelbrot_n(2.0, 0.0, 3.0, max), 0);
    // N = 3, c = 0: pow(0, 3) = 0 every time -> never.
    assert_eq!(scalar::mandelbrot_n(0.0, 0.0, 3.0, max), max);
}

#[test]
fn hand_checked_view_pixels() {
    // 4x4 view with C1 = (-2, 2), C2 = (2, -2): steps (1, -1), pixel (x, y) -> c = (x - 2, 2 - y).
    let p = param(4, 4, 50, (-2.0, 2.0), (2.0, -2.0));
    let view = View::new(&p, KernelChoice::Scalar);
    assert_eq!(view.point(2, 2), (0.0, 0.0));
    assert_eq!(view.point(1, 2), (-1.0, 0.0));
    for kernel in [
        View::new(&p, KernelChoice::Scalar),
        View::new(&p, KernelChoice::Fast),
    ] {
        let (image, iterations) = image_with(&kernel);
        let at = |x: usize, y: usize| image[y * 4 + x];
        assert_eq!(at(2, 2), 50, "c = 0");
        assert_eq!(at(1, 2), 1, "c = -1");
        assert_eq!(at(3, 2), 50, "c = 1");
        assert_eq!(at(2, 1), 1, "c = i");
        assert_eq!(at(0, 2), 0, "c = -2: z1 = 2");
        assert_eq!(at(0, 0), 0, "c = -2 + 2i");
        let expected: u64 = image.iter().map(|&v| iterations_for(v, 50)).sum();
        assert_eq!(iterations, expected);
    }
}

#[test]
fn iteration_sums_agree_in_32_and_64_bits() {
    let values: Vec<u32> = (0..5000u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    for max in [1, 10, 1000, 100_000, u32::MAX] {
        for slice in [&values[..0], &values[..1], &values[..324], &values[..]] {
            let wide: u64 = slice.iter().map(|&v| iterations_for(v, max)).sum();
            assert_eq!(
                iterations_in(slice, max),
                wide,
                "max {max}, {}",
                slice.len()
            );
        }
    }
}

#[test]
fn iterations_count_updates_of_z() {
    assert_eq!(iterations_for(0, 10), 1); // escaped in the first update
    assert_eq!(iterations_for(9, 10), 10); // escaped in the last allowed update
    assert_eq!(iterations_for(10, 10), 10); // never escaped
    assert_eq!(iterations_for(0, 0), 0);
    // A view of c = 0 costs exactly pixels * MaxIterations.
    let p = param(3, 2, 77, (0.0, 0.0), (0.0, 0.0));
    for kernel in [KernelChoice::Scalar, KernelChoice::Fast] {
        let (image, iterations) = image_with(&View::new(&p, kernel));
        assert!(image.iter().all(|&v| v == 77));
        assert_eq!(iterations, 6 * 77);
    }
}

#[test]
fn test_mode_and_unknown_algorithms_give_the_pattern() {
    let mut p = param(300, 3, 1000, (-1.5, 1.5), (1.5, -1.5));
    let view = View::new(&p, KernelChoice::TestMode);
    assert_eq!(view.engine(), Engine::TestPattern);
    let mut out = vec![0; 3];
    assert_eq!(view.compute((255, 2), &mut out), Ok(0));
    // 255*2 = 510 -> 254, 256*2 = 512 -> 0, 257*2 = 514 -> 2.
    assert_eq!(out, [254, 0, 2]);
    for algorithm in [0, 3, u32::MAX] {
        p.algorithm = AlgorithmId(algorithm);
        for kernel in [KernelChoice::Scalar, KernelChoice::Fast] {
            assert_eq!(View::new(&p, kernel).engine(), Engine::TestPattern);
        }
    }
    // The product wraps like rsplib's unsigned int: 65536 * 65537 = 2^32 + 65536 -> 0 mod 256;
    // 65535 * 65535 = 4294836225 -> 1.
    assert_eq!(scalar::test_pattern(65536, 65537), 0);
    assert_eq!(scalar::test_pattern(65535, 65535), 1);
    assert_eq!(scalar::test_pattern(17, 16), 16);
}

// ---------------------------------------------------------------------------------------------
// The fast kernel.

#[test]
fn fast_kernel_uses_avx2_when_the_cpu_has_it() {
    let p = param(8, 8, 10, (-1.5, 1.5), (1.5, -1.5));
    let engine = View::new(&p, KernelChoice::Fast).engine();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_eq!(fast::active_backend(), Backend::Avx2);
        assert_eq!(engine, Engine::FastMandelbrot(Backend::Avx2));
        return;
    }
    assert_eq!(engine, Engine::FastMandelbrot(Backend::Portable));
}

#[test]
fn every_tuning_matches_the_scalar_kernel() {
    let p = param(61, 23, 300, (-0.9, 1.2), (1.7, -1.1));
    let (expected, _) = image_with(&View::new(&p, KernelChoice::Scalar));
    for backend in available_backends() {
        let view = View::with_backend(&p, backend);
        for quads in 1..=4 {
            for refill in [false, true] {
                let tuning = fast::Tuning { quads, refill };
                // Start mid-row so that runs wrap rows and end mid-row.
                let mut out = vec![0; expected.len() - 30];
                fast::compute_mandelbrot_tuned(&view, (5, 0), &mut out, backend, tuning).unwrap();
                let name = format!("{backend:?} {tuning:?}");
                assert_same(&name, p.width, &expected[5..expected.len() - 25], &out);
            }
        }
    }
}

#[test]
fn non_finite_parameters_neither_panic_nor_diverge() {
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        -0.0,
        1e-310,
    ];
    for &a in &specials {
        for &b in &specials {
            let p = param(7, 5, 20, (a, 1.0), (b, -1.0));
            let (expected, expected_iterations) = image_with(&View::new(&p, KernelChoice::Scalar));
            for backend in available_backends() {
                let (values, iterations) = image_with(&View::with_backend(&p, backend));
                assert_eq!(values, expected, "{a} {b} {backend:?}");
                assert_eq!(iterations, expected_iterations);
            }
            let mut n_param = p;
            n_param.algorithm = AlgorithmId::MANDELBROT_N;
            for n in [a, b, 0.0, -2.0] {
                n_param.n = n;
                image_with(&View::new(&n_param, KernelChoice::Fast));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming and degenerate views.

#[test]
fn chunks_from_any_position_equal_the_whole_image() {
    let p = param(37, 19, 200, (-0.5, 1.1), (1.9, -1.0));
    for kernel in [KernelChoice::Scalar, KernelChoice::Fast] {
        let view = View::new(&p, kernel);
        let (whole, whole_iterations) = image_with(&view);
        // Stream in Data-sized chunks from a cookie position, like a pool element resuming.
        for resume_at in [0_u64, 1, 36, 37, 300, 702] {
            let mut position = view.advance((0, 0), resume_at).unwrap();
            let mut streamed = Vec::new();
            let mut iterations = 0;
            while view.remaining_from(position) > 0 {
                let len = view.remaining_from(position).min(324) as usize;
                let mut chunk = vec![0; len];
                iterations += view.compute(position, &mut chunk).unwrap();
                streamed.extend_from_slice(&chunk);
                position = view.advance(position, len as u64).unwrap();
            }
            assert_eq!(position, (0, p.height));
            assert_eq!(streamed, whole[resume_at as usize..]);
            if resume_at == 0 {
                assert_eq!(iterations, whole_iterations);
            }
        }
    }
}

#[test]
fn ranges_outside_the_view_are_rejected() {
    let p = param(10, 4, 50, (-1.5, 1.5), (1.5, -1.5));
    let view = View::new(&p, KernelChoice::Fast);
    let mut out = vec![0; 5];
    assert_eq!(view.compute((6, 3), &mut out[..4]).map(|_| ()), Ok(()));
    let error = view.compute((6, 3), &mut out).unwrap_err();
    assert_eq!(
        error,
        OutsideView {
            start: (6, 3),
            len: 5,
            width: 10,
            height: 4
        }
    );
    assert!(view.compute((10, 0), &mut out[..1]).is_err());
    assert!(view.compute((0, 4), &mut out[..1]).is_err());
    assert!(view.compute((u32::MAX, u32::MAX), &mut out).is_err());
    // Nothing to compute is fine anywhere.
    assert_eq!(view.compute((u32::MAX, 7), &mut []), Ok(0));
    assert_eq!(view.remaining_from((9, 3)), 1);
    assert_eq!(view.remaining_from((10, 3)), 0);
    assert_eq!(view.advance((9, 3), 1), Some((0, 4)));
    assert_eq!(view.advance((9, 3), 2), None);
    assert_eq!(view.advance((0, 0), u64::MAX), None);
}

#[test]
fn degenerate_views() {
    for (width, height) in [(1, 1), (1, 9), (9, 1), (1, 5)] {
        let p = param(width, height, 300, (-0.75, 0.6), (0.9, -0.4));
        let (expected, _) = image_with(&View::new(&p, KernelChoice::Scalar));
        // Width 1 / height 1 still use the step: c = C1 + 0 * step for the only column/row.
        assert_eq!(expected[0], scalar::mandelbrot(-0.75, 0.6, 300));
        for backend in available_backends() {
            let (values, _) = image_with(&View::with_backend(&p, backend));
            assert_eq!(values, expected, "{width}x{height} {backend:?}");
        }
        assert_eq!(compute_image(&p), expected);
        assert_eq!(compute_image_parallel(&p, 3), expected);
    }
    // Empty views: nothing to compute, no panic (the steps are infinite or NaN).
    for (width, height) in [(0, 0), (0, 5), (5, 0)] {
        let p = param(width, height, 10, (-1.0, 1.0), (1.0, -1.0));
        let view = View::new(&p, KernelChoice::Fast);
        assert_eq!(view.pixel_count(), 0);
        assert!(view.compute((0, 0), &mut [0]).is_err());
        assert!(compute_image(&p).is_empty());
        assert!(compute_image_parallel(&p, 2).is_empty());
    }
}

#[test]
fn parallel_image_equals_serial_image() {
    let p = param(97, 41, 500, (-1.5, 1.5), (1.5, -1.5));
    let (expected, _) = image_with(&View::new(&p, KernelChoice::Scalar));
    assert_eq!(compute_image(&p), expected);
    for threads in [0, 1, 2, 3, 8] {
        assert_eq!(compute_image_parallel(&p, threads), expected, "{threads}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fast == scalar on random views.

/// A random view: centre in the interesting region of rsplib's (mirrored) set, widths from
/// 1e-13 (deep zoom) to 5, any orientation.
fn arbitrary_view() -> impl Strategy<Value = Parameter> {
    (
        (-1.0f64..2.5, -1.5f64..1.5),
        (-13.0f64..0.7, -1.0f64..1.0),
        (any::<bool>(), any::<bool>()),
        (1u32..90, 1u32..40, 1u32..2000),
    )
        .prop_map(
            |((cx, cy), (log_width, log_aspect), (flip_x, flip_y), (w, h, max))| {
                let half_w = 10f64.powf(log_width) / 2.0;
                let half_h = half_w * 10f64.powf(log_aspect);
                let sx = if flip_x { -1.0 } else { 1.0 };
                let sy = if flip_y { 1.0 } else { -1.0 };
                param(
                    w,
                    h,
                    max,
                    (cx - sx * half_w, cy - sy * half_h),
                    (cx + sx * half_w, cy + sy * half_h),
                )
            },
        )
}

/// A view on a dyadic grid (c multiples of 1/16), where orbits are often exact and |z|^2 hits the
/// escape bound 2.0 exactly, e.g. c = i: z2 = (-1, -1).
fn dyadic_view() -> impl Strategy<Value = Parameter> {
    (
        (-32i32..40, -24i32..24),
        (1i32..6, 1i32..6, any::<bool>(), any::<bool>()),
        (1u32..60, 1u32..40, 1u32..300),
    )
        .prop_map(|((x1, y1), (sx, sy, flip_x, flip_y), (w, h, max))| {
            let sx = if flip_x { -sx } else { sx };
            let sy = if flip_y { sy } else { -sy };
            let c1 = (f64::from(x1) / 16.0, f64::from(y1) / 16.0);
            let c2 = (
                c1.0 + f64::from(sx * w as i32) / 16.0,
                c1.1 + f64::from(sy * h as i32) / 16.0,
            );
            param(w, h, max, c1, c2)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn fast_equals_scalar_bit_for_bit(
        p in prop_oneof![arbitrary_view(), dyadic_view()],
        start_fraction in 0.0f64..1.0,
        len_fraction in 0.0f64..1.0,
    ) {
        let scalar_view = View::new(&p, KernelChoice::Scalar);
        let pixels = scalar_view.pixel_count();
        let start_index = ((pixels as f64 * start_fraction) as u64).min(pixels - 1);
        let start = scalar_view.advance((0, 0), start_index).unwrap();
        let remaining = pixels - start_index;
        // Up to 700 pixels: several rows for narrow views, so runs cross row ends.
        let len = 1 + ((remaining.min(700) - 1) as f64 * len_fraction) as usize;
        let mut expected = vec![0; len];
        let expected_iterations = scalar_view.compute(start, &mut expected).unwrap();
        for backend in available_backends() {
            let view = View::with_backend(&p, backend);
            let mut out = vec![u32::MAX; len];
            let iterations = view.compute(start, &mut out).unwrap();
            prop_assert_eq!(&out, &expected, "{:?} {:?} from {:?}", backend, p, start);
            prop_assert_eq!(iterations, expected_iterations);
        }
    }
}
