//! The vectorised Mandelbrot kernel: several pixels advance in lock-step in SIMD lanes, with the
//! very same operations in the same order per lane as [`super::scalar::mandelbrot`], so every
//! value is bit-identical to the reference.
//!
//! Per iteration and lane: `t = zr*zi; zi = (t + t) - ci; zr = (sr - si) - cr; sr = zr*zr;
//! si = zi*zi; escaped = sr + si >= 2.0`. This equals the scalar code exactly: `zr*zi + zi*zr` is
//! `t + t` because IEEE products commute, and the squares of the escape test are the ones the next
//! product needs. Separate multiply/add/subtract instructions, never FMA.
//!
//! Lanes are grouped in quads (one AVX2 register of 4 × f64); several independent quads hide the
//! latency of the dependency chain of one iteration. When a lane finishes (escape or
//! MaxIterations) it is written out and refilled with the next pixel of the run, so lanes never
//! idle while pixels remain.

use super::View;

/// Which SIMD implementation runs the fast kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// x86-64 AVX2 intrinsics (4 × f64 per register).
    Avx2,
    /// Plain Rust over lane arrays, which LLVM vectorises with whatever the target baseline has
    /// (SSE2 on x86-64).
    Portable,
}

impl Backend {
    /// Whether this CPU can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 => false,
        }
    }

    /// This backend if available, the portable one otherwise.
    pub(crate) fn or_portable(self) -> Backend {
        if self.is_available() {
            self
        } else {
            Backend::Portable
        }
    }
}

/// The best backend of this CPU (runtime detection).
pub fn active_backend() -> Backend {
    Backend::Avx2.or_portable()
}

/// How the fast kernel organises its lanes; exposed for the benchmark that chose the default.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Independent quads of lanes (1 to 4).
    pub quads: usize,
    /// Refill a finished lane at once (true) or wait until the whole batch is done (false).
    pub refill: bool,
}

impl Tuning {
    /// The fastest tuning of `backend` measured with `cargo bench -p fractal-protocol --bench
    /// kernel` (full view and deep zoom, 512x384, MaxIterations 1000): three AVX2 registers in
    /// flight hide the ~12-cycle dependency chain of an iteration; four spill. The portable code
    /// peaks at two quads. Refilling beats batches where escape times are mixed (full view) and
    /// is within noise elsewhere.
    pub const fn default_for(backend: Backend) -> Tuning {
        match backend {
            Backend::Avx2 => Tuning {
                quads: 3,
                refill: true,
            },
            Backend::Portable => Tuning {
                quads: 2,
                refill: true,
            },
        }
    }
}

/// Fills `out` from `start` (the range lies inside the view; `view` is a Mandelbrot view).
pub(crate) fn compute_mandelbrot(
    view: &View,
    start: (u32, u32),
    out: &mut [u32],
    backend: Backend,
) {
    compute_tuned(view, start, out, backend, Tuning::default_for(backend));
}

/// [`View::compute`]'s pixels of a Mandelbrot view with explicit tuning (benchmark only); the
/// range must lie inside the view.
#[doc(hidden)]
pub fn compute_mandelbrot_tuned(
    view: &View,
    start: (u32, u32),
    out: &mut [u32],
    backend: Backend,
    tuning: Tuning,
) -> Result<(), super::OutsideView> {
    view.check_range(start, out.len())?;
    compute_tuned(view, start, out, backend, tuning);
    Ok(())
}

fn compute_tuned(
    view: &View,
    start: (u32, u32),
    out: &mut [u32],
    backend: Backend,
    tuning: Tuning,
) {
    match tuning.quads {
        0 | 1 => dispatch::<1>(view, start, out, backend, tuning.refill),
        2 => dispatch::<2>(view, start, out, backend, tuning.refill),
        3 => dispatch::<3>(view, start, out, backend, tuning.refill),
        _ => dispatch::<4>(view, start, out, backend, tuning.refill),
    }
}

fn dispatch<const K: usize>(
    view: &View,
    start: (u32, u32),
    out: &mut [u32],
    backend: Backend,
    refill: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if backend == Backend::Avx2 && Backend::Avx2.is_available() {
        // SAFETY: AVX2 was detected at run time just above.
        unsafe { run::<K, avx2::Avx2>(view, start, out, refill) };
        return;
    }
    let _ = backend;
    // SAFETY: the portable stepper has no requirements.
    unsafe { run::<K, Portable>(view, start, out, refill) };
}

/// Four lanes, aligned for AVX loads.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct Quad([f64; 4]);

/// State of `4 * K` lanes; an idle lane holds c = 0, z = 0, which never escapes.
#[derive(Clone, Copy, Debug)]
struct Lanes<const K: usize> {
    cr: [Quad; K],
    ci: [Quad; K],
    zr: [Quad; K],
    zi: [Quad; K],
    /// zr², kept from the escape test for the next product.
    sr: [Quad; K],
    /// zi², likewise.
    si: [Quad; K],
}

impl<const K: usize> Lanes<K> {
    fn idle() -> Self {
        let zero = [Quad::default(); K];
        Lanes {
            cr: zero,
            ci: zero,
            zr: zero,
            zi: zero,
            sr: zero,
            si: zero,
        }
    }

    fn load(&mut self, (k, j): (usize, usize), (cr, ci): (f64, f64)) {
        self.cr[k].0[j] = cr;
        self.ci[k].0[j] = ci;
        self.zr[k].0[j] = 0.0;
        self.zi[k].0[j] = 0.0;
        self.sr[k].0[j] = 0.0;
        self.si[k].0[j] = 0.0;
    }
}

/// Runs iterations of all lanes.
trait Stepper<const K: usize> {
    /// Runs at most `max_steps` (at least 1) iterations of every lane and stops after the first
    /// iteration in which some lane escaped. Returns the iterations run and the escape mask of
    /// the last one (bit `4k + j` for lane j of quad k; 0 if none escaped).
    ///
    /// # Safety
    /// The CPU supports what the implementation needs.
    unsafe fn advance(lanes: &mut Lanes<K>, max_steps: u64) -> (u64, u64);
}

/// Plain Rust stepper.
struct Portable;

impl<const K: usize> Stepper<K> for Portable {
    #[allow(clippy::needless_range_loop)] // parallel arrays indexed by quad and lane
    unsafe fn advance(lanes: &mut Lanes<K>, max_steps: u64) -> (u64, u64) {
        let mut state = *lanes;
        let mut escaped = [[false; 4]; K];
        let mut ran = max_steps;
        for step in 0..max_steps {
            let mut any = false;
            for k in 0..K {
                for j in 0..4 {
                    let (zr, zi) = (state.zr[k].0[j], state.zi[k].0[j]);
                    let t = zr * zi;
                    let zi = (t + t) - state.ci[k].0[j];
                    let zr = (state.sr[k].0[j] - state.si[k].0[j]) - state.cr[k].0[j];
                    let (sr, si) = (zr * zr, zi * zi);
                    state.zr[k].0[j] = zr;
                    state.zi[k].0[j] = zi;
                    state.sr[k].0[j] = sr;
                    state.si[k].0[j] = si;
                    escaped[k][j] = sr + si >= 2.0;
                    any |= escaped[k][j];
                }
            }
            if any {
                ran = step + 1;
                break;
            }
        }
        *lanes = state;
        let mut mask = 0;
        for (k, quad) in escaped.iter().enumerate() {
            for (j, &lane) in quad.iter().enumerate() {
                mask |= u64::from(lane) << (4 * k + j);
            }
        }
        (ran, mask)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256d, _CMP_GE_OQ, _mm256_add_pd, _mm256_cmp_pd, _mm256_load_pd, _mm256_movemask_pd,
        _mm256_mul_pd, _mm256_or_pd, _mm256_set1_pd, _mm256_setzero_pd, _mm256_store_pd,
        _mm256_sub_pd,
    };

    use super::{Lanes, Quad, Stepper};

    /// AVX2 stepper: one register per quad and state variable.
    pub(super) struct Avx2;

    impl<const K: usize> Stepper<K> for Avx2 {
        unsafe fn advance(lanes: &mut Lanes<K>, max_steps: u64) -> (u64, u64) {
            // SAFETY: the caller guarantees AVX2.
            unsafe { advance(lanes, max_steps) }
        }
    }

    #[target_feature(enable = "avx2")]
    fn load<const K: usize>(quads: &[Quad; K]) -> [__m256d; K] {
        let mut registers = [_mm256_setzero_pd(); K];
        for (register, quad) in registers.iter_mut().zip(quads) {
            // SAFETY: Quad is 32-byte aligned and holds 4 f64.
            *register = unsafe { _mm256_load_pd(quad.0.as_ptr()) };
        }
        registers
    }

    #[target_feature(enable = "avx2")]
    fn store<const K: usize>(registers: &[__m256d; K], quads: &mut [Quad; K]) {
        for (register, quad) in registers.iter().zip(quads) {
            // SAFETY: Quad is 32-byte aligned and holds 4 f64.
            unsafe { _mm256_store_pd(quad.0.as_mut_ptr(), *register) };
        }
    }

    #[target_feature(enable = "avx2")]
    #[allow(clippy::needless_range_loop)] // parallel arrays indexed by quad
    fn advance<const K: usize>(lanes: &mut Lanes<K>, max_steps: u64) -> (u64, u64) {
        let (cr, ci) = (load(&lanes.cr), load(&lanes.ci));
        let (mut zr, mut zi) = (load(&lanes.zr), load(&lanes.zi));
        let (mut sr, mut si) = (load(&lanes.sr), load(&lanes.si));
        let two = _mm256_set1_pd(2.0);
        let mut escaped = [_mm256_setzero_pd(); K];
        let mut ran = max_steps;
        for step in 0..max_steps {
            let mut any = _mm256_setzero_pd();
            for k in 0..K {
                let t = _mm256_mul_pd(zr[k], zi[k]);
                zi[k] = _mm256_sub_pd(_mm256_add_pd(t, t), ci[k]);
                zr[k] = _mm256_sub_pd(_mm256_sub_pd(sr[k], si[k]), cr[k]);
                sr[k] = _mm256_mul_pd(zr[k], zr[k]);
                si[k] = _mm256_mul_pd(zi[k], zi[k]);
                // Ordered, quiet >=: NaN compares false like C's >=.
                escaped[k] = _mm256_cmp_pd::<_CMP_GE_OQ>(_mm256_add_pd(sr[k], si[k]), two);
                any = _mm256_or_pd(any, escaped[k]);
            }
            if _mm256_movemask_pd(any) != 0 {
                ran = step + 1;
                break;
            }
        }
        store(&zr, &mut lanes.zr);
        store(&zi, &mut lanes.zi);
        store(&sr, &mut lanes.sr);
        store(&si, &mut lanes.si);
        let mut mask = 0;
        for k in 0..K {
            // movemask yields 4 bits, one per lane.
            mask |= (_mm256_movemask_pd(escaped[k]) as u64) << (4 * k);
        }
        (ran, mask)
    }
}

/// The pixels of a run in row-major order.
struct PixelFeed<'a> {
    view: &'a View,
    x: u32,
    y: u32,
    next_index: usize,
    len: usize,
}

impl PixelFeed<'_> {
    /// Output index and c of the next pixel.
    fn next(&mut self) -> Option<(usize, (f64, f64))> {
        if self.next_index == self.len {
            return None;
        }
        let pixel = (self.next_index, self.view.point(self.x, self.y));
        self.next_index += 1;
        self.x += 1;
        if self.x == self.view.width() {
            self.x = 0;
            self.y += 1;
        }
        Some(pixel)
    }
}

/// Marks an idle lane in `target`.
const IDLE: usize = usize::MAX;

/// Computes `out` with `4 * K` lanes driven by stepper `S`.
///
/// # Safety
/// The CPU supports what `S` needs.
unsafe fn run<const K: usize, S: Stepper<K>>(
    view: &View,
    start: (u32, u32),
    out: &mut [u32],
    refill: bool,
) {
    let max = view.max_iterations();
    if max == 0 {
        out.fill(0);
        return;
    }
    let mut feed = PixelFeed {
        view,
        x: start.0,
        y: start.1,
        next_index: 0,
        len: out.len(),
    };
    let mut lanes = Lanes::<K>::idle();
    // Output index of each lane's pixel, and the global step at which it started.
    let mut target = [[IDLE; 4]; K];
    let mut born = [[0_u64; 4]; K];
    let mut active = 0_usize;
    let mut step = 0_u64;
    loop {
        if active == 0 {
            // Load a fresh batch (at the start, and in batch mode whenever all lanes are done).
            for lane in (0..K).flat_map(|k| (0..4).map(move |j| (k, j))) {
                let Some((index, c)) = feed.next() else { break };
                lanes.load(lane, c);
                target[lane.0][lane.1] = index;
                born[lane.0][lane.1] = step;
                active += 1;
            }
            if active == 0 {
                return;
            }
        }
        // Run until some lane escapes or the oldest lane reaches MaxIterations.
        let mut limit = u64::MAX;
        for (targets, borns) in target.iter().zip(&born) {
            for (&index, &birth) in targets.iter().zip(borns) {
                if index != IDLE {
                    limit = limit.min(birth + u64::from(max) - step);
                }
            }
        }
        // SAFETY: forwarded from the caller.
        let (ran, escaped) = unsafe { S::advance(&mut lanes, limit) };
        step += ran;
        for k in 0..K {
            for j in 0..4 {
                let index = target[k][j];
                if index == IDLE {
                    continue;
                }
                let age = step - born[k][j];
                let value = if escaped & (1 << (4 * k + j)) != 0 {
                    age - 1 // index of the iteration that escaped
                } else if age == u64::from(max) {
                    u64::from(max)
                } else {
                    continue;
                };
                // value <= max, a u32.
                out[index] = value as u32;
                let next = if refill { feed.next() } else { None };
                match next {
                    Some((next, c)) => {
                        lanes.load((k, j), c);
                        target[k][j] = next;
                        born[k][j] = step;
                    }
                    None => {
                        lanes.load((k, j), (0.0, 0.0));
                        target[k][j] = IDLE;
                        active -= 1;
                    }
                }
            }
        }
    }
}
