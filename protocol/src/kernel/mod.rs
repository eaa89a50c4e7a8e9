//! The computation of a pool element: iteration counts of a view, exactly as rsplib's
//! `fractalgeneratorservice.cc` computes them.
//!
//! Semantics (rsplib's code is the authority for the order of every floating-point operation):
//! * `stepX = (C2Real - C1Real) / Width`, `stepY = (C2Imag - C1Imag) / Height`, computed once per
//!   view; pixel (x, y) maps to `c = (C1Real + x * stepX, C1Imag + y * stepY)` with x, y as `f64`.
//! * Mandelbrot (algorithm 1): `z0 = 0`, `z <- z*z - c` (note the minus) with the complex product
//!   of GCC's `std::complex<double>` (`(a*a - b*b, a*b + b*a)`), stop when
//!   `re(z)*re(z) + im(z)*im(z) >= 2.0`. The value is the 0-based index of the iteration at which
//!   z escaped, `MaxIterations` if it never did.
//! * MandelbrotN (algorithm 2): `z <- pow(z, complex(N, 0)) - c`, same escape test; rsplib calls
//!   `pow(complex, complex)`, i.e. glibc's `cpow` (see [`scalar::complex_pow`]).
//! * Any other algorithm, or test mode: value = `(x * y) mod 256` (x, y wrapping `u32` products).
//!
//! No fused multiply-add anywhere: the reference is rsplib built for x86-64 without FMA.
//!
//! "Iterations" (returned by [`View::compute`]) counts evaluations of `z <- f(z)`: a pixel of
//! value `v` cost `v + 1` of them if it escaped (`v < MaxIterations`), `MaxIterations` otherwise
//! (see [`iterations_for`]); test-pattern pixels cost none.

pub mod fast;
pub mod scalar;

use std::sync::Mutex;

use crate::message::{AlgorithmId, Parameter};

/// Which implementation a [`View`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// The reference kernel: one pixel at a time, obvious code.
    Scalar,
    /// The vectorised kernel for Mandelbrot (bit-identical to `Scalar`); other algorithms use the
    /// scalar code.
    Fast,
    /// rsplib's `-fgptestmode`: the test pattern whatever the algorithm.
    TestMode,
}

/// The code that actually computes a view's pixels, resolved when the view is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Scalar Mandelbrot (reference).
    ScalarMandelbrot,
    /// Vectorised Mandelbrot with the given backend.
    FastMandelbrot(fast::Backend),
    /// Scalar MandelbrotN (complex power).
    ScalarMandelbrotN,
    /// `(x * y) mod 256`.
    TestPattern,
}

/// A pixel range handed to [`View::compute`] does not lie inside the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{len} pixels from ({}, {}) do not fit into a {width}x{height} view", start.0, start.1)]
pub struct OutsideView {
    /// Requested first pixel.
    pub start: (u32, u32),
    /// Requested number of pixels.
    pub len: usize,
    /// View width.
    pub width: u32,
    /// View height.
    pub height: u32,
}

/// One view to compute, built once from a Parameter (the steps are computed here, once, like
/// rsplib does per `calculateImage`).
#[derive(Clone, Copy, Debug)]
pub struct View {
    width: u32,
    height: u32,
    max_iterations: u32,
    c1_real: f64,
    c1_imag: f64,
    step_x: f64,
    step_y: f64,
    n: f64,
    engine: Engine,
}

impl View {
    /// Prepares `param` for computation with the given kernel. `Fast` picks the best backend of
    /// this CPU ([`fast::active_backend`]).
    pub fn new(param: &Parameter, kernel: KernelChoice) -> View {
        let engine = match (kernel, param.algorithm) {
            (KernelChoice::TestMode, _) => Engine::TestPattern,
            (KernelChoice::Scalar, AlgorithmId::MANDELBROT) => Engine::ScalarMandelbrot,
            (KernelChoice::Fast, AlgorithmId::MANDELBROT) => {
                Engine::FastMandelbrot(fast::active_backend())
            }
            (_, AlgorithmId::MANDELBROT_N) => Engine::ScalarMandelbrotN,
            _ => Engine::TestPattern,
        };
        View {
            width: param.width,
            height: param.height,
            max_iterations: param.max_iterations,
            c1_real: param.c1_real,
            c1_imag: param.c1_imag,
            // rsplib divides by the unsigned width converted to double.
            step_x: (param.c2_real - param.c1_real) / f64::from(param.width),
            step_y: (param.c2_imag - param.c1_imag) / f64::from(param.height),
            n: param.n,
            engine,
        }
    }

    /// Same as [`View::new`] with a given fast backend (for tests and benchmarks); a backend the
    /// CPU lacks falls back to [`fast::Backend::Portable`].
    pub fn with_backend(param: &Parameter, backend: fast::Backend) -> View {
        let mut view = View::new(param, KernelChoice::Fast);
        if let Engine::FastMandelbrot(_) = view.engine {
            view.engine = Engine::FastMandelbrot(backend.or_portable());
        }
        view
    }

    /// The code that computes this view.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// MaxIterations of the view.
    pub fn max_iterations(&self) -> u32 {
        self.max_iterations
    }

    /// Number of pixels of the view.
    pub fn pixel_count(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The complex parameter c of pixel (x, y), rounded exactly as rsplib rounds it.
    #[inline]
    pub fn point(&self, x: u32, y: u32) -> (f64, f64) {
        (
            self.c1_real + f64::from(x) * self.step_x,
            self.c1_imag + f64::from(y) * self.step_y,
        )
    }

    /// Pixels from `start` (inclusive) to the end of the view in row-major order; 0 if `start`
    /// lies outside the view.
    pub fn remaining_from(&self, start: (u32, u32)) -> u64 {
        match self.index_of(start) {
            Some(index) => self.pixel_count() - index,
            None => 0,
        }
    }

    /// The position `count` pixels after `start` in row-major order (`(0, height)` is the end of
    /// the view); `None` if that is beyond the end or `start` lies outside.
    pub fn advance(&self, start: (u32, u32), count: u64) -> Option<(u32, u32)> {
        let index = self.index_of(start)?.checked_add(count)?;
        if index > self.pixel_count() {
            return None;
        }
        let width = u64::from(self.width);
        let x = u32::try_from(index % width).ok()?;
        let y = u32::try_from(index / width).ok()?;
        Some((x, y))
    }

    /// Row-major index of `start` if it is a pixel of the view.
    fn index_of(&self, (x, y): (u32, u32)) -> Option<u64> {
        (x < self.width && y < self.height)
            .then(|| u64::from(y) * u64::from(self.width) + u64::from(x))
    }

    /// Fills `out` with the values of `out.len()` consecutive row-major pixels starting at
    /// `start` (wrapping into the next rows) and returns the iterations performed (see the module
    /// documentation). An empty `out` always succeeds.
    pub fn compute(&self, start: (u32, u32), out: &mut [u32]) -> Result<u64, OutsideView> {
        if out.is_empty() {
            return Ok(0);
        }
        self.check_range(start, out.len())?;
        Ok(self.fill(start, out))
    }

    /// Ok if `len` pixels from `start` lie inside the view (always for `len` 0).
    pub(crate) fn check_range(&self, start: (u32, u32), len: usize) -> Result<(), OutsideView> {
        let fits = u64::try_from(len).is_ok_and(|n| n <= self.remaining_from(start));
        if len == 0 || fits {
            Ok(())
        } else {
            Err(OutsideView {
                start,
                len,
                width: self.width,
                height: self.height,
            })
        }
    }

    /// [`View::compute`] without the range check: `start` and `out.len()` lie inside the view.
    fn fill(&self, start: (u32, u32), out: &mut [u32]) -> u64 {
        match self.engine {
            Engine::TestPattern => {
                for_each_pixel(self.width, start, out, scalar::test_pattern);
                return 0;
            }
            Engine::ScalarMandelbrot => for_each_pixel(self.width, start, out, |x, y| {
                let (cr, ci) = self.point(x, y);
                scalar::mandelbrot(cr, ci, self.max_iterations)
            }),
            Engine::ScalarMandelbrotN => for_each_pixel(self.width, start, out, |x, y| {
                let (cr, ci) = self.point(x, y);
                scalar::mandelbrot_n(cr, ci, self.n, self.max_iterations)
            }),
            Engine::FastMandelbrot(backend) => fast::compute_mandelbrot(self, start, out, backend),
        }
        iterations_in(out, self.max_iterations)
    }
}

/// Calls `pixel(x, y)` for `out.len()` consecutive row-major pixels from `start` and stores the
/// results; the caller guarantees the range lies inside a view of `width` columns.
fn for_each_pixel(
    width: u32,
    (mut x, mut y): (u32, u32),
    out: &mut [u32],
    mut pixel: impl FnMut(u32, u32) -> u32,
) {
    for slot in out {
        *slot = pixel(x, y);
        x += 1;
        if x == width {
            x = 0;
            y += 1;
        }
    }
}

/// Evaluations of `z <- f(z)` behind a pixel value: `value + 1` for an escaped pixel
/// (`value < max_iterations`), `max_iterations` otherwise.
#[inline]
pub fn iterations_for(value: u32, max_iterations: u32) -> u64 {
    u64::from(evaluations(value, max_iterations))
}

/// [`iterations_for`] in 32 bits. Branch-free (value + 1 <= max exactly when value < max), so
/// that sums vectorise.
#[inline]
pub(crate) fn evaluations(value: u32, max_iterations: u32) -> u32 {
    value.saturating_add(1).min(max_iterations)
}

/// Iterations behind `values` ([`iterations_for`] each), summed in 32 bits where that cannot
/// overflow, which vectorises far better than a 64-bit sum (with AVX2's unsigned minimum when
/// the CPU has it).
pub fn iterations_in(values: &[u32], max_iterations: u32) -> u64 {
    if sum_fits_u32(values.len(), max_iterations) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available, checked just above.
            return u64::from(unsafe { evaluations_in_u32_avx2(values, max_iterations) });
        }
        u64::from(evaluations_in_u32(values, max_iterations))
    } else {
        values
            .iter()
            .map(|&value| iterations_for(value, max_iterations))
            .sum()
    }
}

/// Whether the [`evaluations`] of `count` values sum exactly in 32 bits.
pub(crate) fn sum_fits_u32(count: usize, max_iterations: u32) -> bool {
    u64::from(max_iterations)
        .checked_mul(count as u64)
        .is_some_and(|bound| bound <= u64::from(u32::MAX))
}

/// The sum of [`evaluations`]; the caller makes sure it fits in 32 bits.
#[inline(always)]
fn evaluations_in_u32(values: &[u32], max_iterations: u32) -> u32 {
    values
        .iter()
        .map(|&value| evaluations(value, max_iterations))
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn evaluations_in_u32_avx2(values: &[u32], max_iterations: u32) -> u32 {
    evaluations_in_u32(values, max_iterations)
}

/// Row-major pixel buffer for `param`.
///
/// # Panics
/// If the image does not fit into memory (width * height beyond `usize`); this is for local use,
/// a pool element streams with [`View::compute`] instead.
fn image_buffer(param: &Parameter) -> Vec<u32> {
    let pixels = usize::try_from(u64::from(param.width) * u64::from(param.height))
        .unwrap_or_else(|_| panic!("{}x{} image too large", param.width, param.height));
    vec![0; pixels]
}

/// The whole image of `param` (row-major) computed with the fast kernel on this thread.
///
/// # Panics
/// If the image does not fit into memory.
pub fn compute_image(param: &Parameter) -> Vec<u32> {
    let view = View::new(param, KernelChoice::Fast);
    let mut image = image_buffer(param);
    if !image.is_empty() {
        view.fill((0, 0), &mut image);
    }
    image
}

/// The whole image of `param` computed with the fast kernel by `threads` threads (at least one)
/// taking rows one at a time, which balances the load however the set lies in the view.
///
/// # Panics
/// If the image does not fit into memory.
pub fn compute_image_parallel(param: &Parameter, threads: usize) -> Vec<u32> {
    let view = View::new(param, KernelChoice::Fast);
    let mut image = image_buffer(param);
    if image.is_empty() {
        return image;
    }
    let row_len = param.width as usize;
    let rows = Mutex::new(image.chunks_mut(row_len).zip(0u32..));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    // A poisoned lock only means another worker panicked; the iterator is intact.
                    let next = rows.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((row, y)) = next else { break };
                    view.fill((0, y), row);
                }
            });
        }
    });
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable 32-bit sum (what a CPU without AVX2 runs) matches the definition.
    #[test]
    fn the_portable_32_bit_sum_matches_the_definition() {
        let values: Vec<u32> = (0..1000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for max in [0, 1, 10, 1000, 4_000_000] {
            let wide: u64 = values.iter().map(|&v| iterations_for(v, max)).sum();
            assert_eq!(
                u64::from(evaluations_in_u32(&values, max)),
                wide,
                "max {max}"
            );
            assert_eq!(iterations_in(&values, max), wide, "max {max}");
        }
    }
}
