//! The reference kernel: one pixel at a time, written to mirror rsplib's expressions one to one.
//! It is the oracle the fast kernel is tested against; keep it obvious.

use std::cmp::Ordering;
use std::f64::consts::{LN_2, PI};

/// Mandelbrot value of the point c = (`cr`, `ci`) under rsplib's iteration `z <- z*z - c`.
pub fn mandelbrot(cr: f64, ci: f64, max_iterations: u32) -> u32 {
    let (mut zr, mut zi) = (0.0_f64, 0.0_f64);
    let mut i = 0;
    while i < max_iterations {
        // GCC's std::complex<double> product without FMA: (ac - bd, ad + bc) with a=c, b=d.
        let square_r = zr * zr - zi * zi;
        let square_i = zr * zi + zi * zr;
        zr = square_r - cr;
        zi = square_i - ci;
        // rsplib writes the norm out (not std::abs); NaN compares false and never escapes.
        if zr * zr + zi * zi >= 2.0 {
            break;
        }
        i += 1;
    }
    i
}

/// MandelbrotN value of c = (`cr`, `ci`) under rsplib's `z <- pow(z, complex(n)) - c`.
pub fn mandelbrot_n(cr: f64, ci: f64, n: f64, max_iterations: u32) -> u32 {
    let (mut zr, mut zi) = (0.0_f64, 0.0_f64);
    let mut i = 0;
    while i < max_iterations {
        let (pr, pi) = complex_pow(zr, zi, n);
        zr = pr - cr;
        zi = pi - ci;
        if zr * zr + zi * zi >= 2.0 {
            break;
        }
        i += 1;
    }
    i
}

/// rsplib's test pattern (also used for unknown algorithms): `(x * y) mod 256` on `unsigned int`.
#[inline]
pub fn test_pattern(x: u32, y: u32) -> u32 {
    x.wrapping_mul(y) % 256
}

/// `pow(z, complex(n, 0))` as rsplib gets it: libstdc++ forwards `pow(complex, complex)` to
/// glibc's `cpow(x, y) = cexp(y * clog(x))`, and this follows glibc's case structure for `clog`
/// and `cexp` and GCC's complex product (with its `__muldc3` infinity recovery).
///
/// The elementary functions (`log`, `log1p`, `hypot`, `atan2`, `exp`, `sin`, `cos`) are Rust's,
/// which call the platform libm (glibc on Linux), so results are deterministic per platform and,
/// with glibc, bit-identical to rsplib on the same machine. The one place where C's result hangs
/// on the sign of a NaN (a zero base) is pinned to x86-64 glibc's answer below.
pub fn complex_pow(zr: f64, zi: f64, n: f64) -> (f64, f64) {
    if zr == 0.0 && zi == 0.0 {
        // clog(0) = (-inf, ±0 or ±pi); times (n, +0) gives (-n*inf, NaN) where the NaN comes from
        // 0 * -inf (sign bit set on x86-64); cexp(-inf + i NaN) = (0, copysign(0, NaN)).
        return if n > 0.0 {
            (0.0, -0.0)
        } else if n < 0.0 {
            (f64::INFINITY, f64::NAN)
        } else {
            // n = 0 or NaN: NaN in both parts, which no recovery rescues.
            (f64::NAN, f64::NAN)
        };
    }
    let (lr, li) = complex_log(zr, zi);
    let (wr, wi) = gcc_complex_mul(n, 0.0, lr, li);
    complex_exp(wr, wi)
}

/// glibc's `clog` case structure: `log|z|` computed so that it stays accurate near |z| = 1.
fn complex_log(re: f64, im: f64) -> (f64, f64) {
    if re == 0.0 && im == 0.0 {
        let angle = if re.is_sign_negative() { PI } else { 0.0 };
        return (-1.0 / re.abs(), angle.copysign(im));
    }
    if re.is_nan() || im.is_nan() {
        let real = if re.is_infinite() || im.is_infinite() {
            f64::INFINITY
        } else {
            f64::NAN
        };
        return (real, f64::NAN);
    }
    let (mut big, mut small) = (re.abs(), im.abs());
    if big < small {
        std::mem::swap(&mut big, &mut small);
    }
    let mut scale = 0_i32;
    if big > f64::MAX / 2.0 {
        scale = -1;
        big *= 0.5;
        small = if small >= f64::MIN_POSITIVE * 2.0 {
            small * 0.5
        } else {
            0.0
        };
    } else if big < f64::MIN_POSITIVE && small < f64::MIN_POSITIVE {
        scale = f64::MANTISSA_DIGITS as i32;
        let factor = 2.0_f64.powi(scale); // exact power of two
        big *= factor;
        small *= factor;
    }
    let real = if big == 1.0 && scale == 0 {
        (small * small).ln_1p() / 2.0
    } else if big > 1.0 && big < 2.0 && small < 1.0 && scale == 0 {
        let mut d2m1 = (big - 1.0) * (big + 1.0);
        if small >= f64::EPSILON {
            d2m1 += small * small;
        }
        d2m1.ln_1p() / 2.0
    } else if (0.5..1.0).contains(&big) && small < f64::EPSILON / 2.0 && scale == 0 {
        ((big - 1.0) * (big + 1.0)).ln_1p() / 2.0
    } else if (0.5..1.0).contains(&big) && scale == 0 && big * big + small * small >= 0.5 {
        x2_y2_minus_1(big, small).ln_1p() / 2.0
    } else {
        big.hypot(small).ln() - f64::from(scale) * LN_2
    };
    (real, im.atan2(re))
}

/// x² + y² - 1 without cancellation (glibc's `__x2y2m1`): exact products, then the five terms are
/// added smallest first with exact two-sums so that only the final additions round.
fn x2_y2_minus_1(x: f64, y: f64) -> f64 {
    let (xx_hi, xx_lo) = exact_product(x, x);
    let (yy_hi, yy_lo) = exact_product(y, y);
    let mut terms = [xx_lo, xx_hi, yy_lo, yy_hi, -1.0];
    let by_magnitude = |p: &f64, q: &f64| p.abs().partial_cmp(&q.abs()).unwrap_or(Ordering::Equal);
    terms.sort_by(by_magnitude);
    for i in 0..4 {
        let (a, b) = (terms[i + 1], terms[i]);
        let hi = a + b;
        terms[i] = (a - hi) + b;
        terms[i + 1] = hi;
        terms[i + 1..].sort_by(by_magnitude);
    }
    terms[4] + terms[3] + terms[2] + terms[1] + terms[0]
}

/// a * b as hi + lo exactly (Dekker's product with Veltkamp splitting; no FMA).
fn exact_product(a: f64, b: f64) -> (f64, f64) {
    fn split(v: f64) -> (f64, f64) {
        let t = 134_217_729.0 * v; // 2^27 + 1
        let hi = t - (t - v);
        (hi, v - hi)
    }
    let hi = a * b;
    let (a_hi, a_lo) = split(a);
    let (b_hi, b_lo) = split(b);
    let lo = ((a_hi * b_hi - hi) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo;
    (hi, lo)
}

/// (a + ib)(c + id) as GCC compiles it without -ffast-math: the textbook formula, and when both
/// parts come out NaN, libgcc's `__muldc3` recovery of infinite operands (C99 Annex G).
fn gcc_complex_mul(a: f64, b: f64, c: f64, d: f64) -> (f64, f64) {
    let (ac, bd, ad, bc) = (a * c, b * d, a * d, b * c);
    let (x, y) = (ac - bd, ad + bc);
    if !(x.is_nan() && y.is_nan()) {
        return (x, y);
    }
    let (mut a, mut b, mut c, mut d) = (a, b, c, d);
    let boxed = |v: f64| (if v.is_infinite() { 1.0_f64 } else { 0.0 }).copysign(v);
    let nan_to_zero = |v: f64| if v.is_nan() { 0.0_f64.copysign(v) } else { v };
    let mut recalc = false;
    if a.is_infinite() || b.is_infinite() {
        (a, b) = (boxed(a), boxed(b));
        (c, d) = (nan_to_zero(c), nan_to_zero(d));
        recalc = true;
    }
    if c.is_infinite() || d.is_infinite() {
        (c, d) = (boxed(c), boxed(d));
        (a, b) = (nan_to_zero(a), nan_to_zero(b));
        recalc = true;
    }
    if !recalc && (ac.is_infinite() || bd.is_infinite() || ad.is_infinite() || bc.is_infinite()) {
        (a, b) = (nan_to_zero(a), nan_to_zero(b));
        (c, d) = (nan_to_zero(c), nan_to_zero(d));
        recalc = true;
    }
    if recalc {
        (
            f64::INFINITY * (a * c - b * d),
            f64::INFINITY * (a * d + b * c),
        )
    } else {
        (x, y)
    }
}

/// glibc's `cexp` case structure, including its scaling that avoids spurious overflow.
fn complex_exp(re: f64, im: f64) -> (f64, f64) {
    // (int)((DBL_MAX_EXP - 1) * M_LN2) in glibc.
    const T: f64 = 709.0;
    let sin_cos = |v: f64| {
        if v.abs() > f64::MIN_POSITIVE {
            (v.sin(), v.cos())
        } else {
            (v, 1.0)
        }
    };
    if re.is_finite() {
        if !im.is_finite() {
            return (f64::NAN, f64::NAN);
        }
        let (mut sin_im, mut cos_im) = sin_cos(im);
        let mut re = re;
        if re > T {
            let exp_t = T.exp();
            re -= T;
            sin_im *= exp_t;
            cos_im *= exp_t;
            if re > T {
                re -= T;
                sin_im *= exp_t;
                cos_im *= exp_t;
            }
        }
        if re > T {
            (f64::MAX * cos_im, f64::MAX * sin_im)
        } else {
            let exp_re = re.exp();
            (exp_re * cos_im, exp_re * sin_im)
        }
    } else if re.is_infinite() {
        let magnitude = if re.is_sign_negative() {
            0.0
        } else {
            f64::INFINITY
        };
        if im.is_finite() {
            if im == 0.0 {
                (magnitude, im)
            } else {
                let (sin_im, cos_im) = sin_cos(im);
                (magnitude.copysign(cos_im), magnitude.copysign(sin_im))
            }
        } else if re.is_sign_positive() {
            (f64::INFINITY, f64::NAN) // glibc: im - im with im infinite or NaN
        } else {
            (0.0, 0.0_f64.copysign(im))
        }
    } else {
        (f64::NAN, if im == 0.0 { im } else { f64::NAN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_product_recovers_infinities_like_muldc3() {
        // (inf + i NaN) * (1 + i0): the textbook formula gives NaN + i NaN; Annex G boxes the
        // infinity to 1 and the NaN to 0 and yields an infinite real part.
        let (x, y) = gcc_complex_mul(f64::INFINITY, f64::NAN, 1.0, 0.0);
        assert_eq!(x, f64::INFINITY);
        assert!(y.is_nan());
        // Finite operands: exactly the textbook formula.
        assert_eq!(gcc_complex_mul(1.5, -2.0, 0.25, 3.0), (6.375, 4.0));
    }

    #[test]
    fn exact_product_is_exact() {
        let a = 1.0 + f64::EPSILON;
        let (hi, lo) = exact_product(a, a);
        // (1 + e)^2 = 1 + 2e + e^2: e^2 is below hi's precision and lands in lo.
        assert_eq!(hi, 1.0 + 2.0 * f64::EPSILON);
        assert_eq!(lo, f64::EPSILON * f64::EPSILON);
    }

    #[test]
    fn x2y2m1_keeps_digits_lost_by_the_naive_formula() {
        let x = 1.0 - f64::EPSILON; // x^2 - 1 = -2e + e^2 exactly
        let y = f64::EPSILON.sqrt(); // 2^-26, y^2 = e
        let accurate = x2_y2_minus_1(x, y);
        assert_eq!(accurate, -f64::EPSILON + f64::EPSILON * f64::EPSILON);
        assert_ne!(x * x + y * y - 1.0, accurate);
    }

    #[test]
    fn complex_pow_of_simple_values() {
        // i^2 = -1 (up to the rounding of cos(pi)); 2^3 = 8 on the positive axis.
        let (r, i) = complex_pow(0.0, 1.0, 2.0);
        assert!((r + 1.0).abs() < 1e-15 && i.abs() < 1e-15, "{r} {i}");
        let (r, i) = complex_pow(2.0, 0.0, 3.0);
        assert!((r - 8.0).abs() < 1e-14 && i == 0.0, "{r} {i}");
        // Zero base as x86-64 glibc returns it.
        let (r, i) = complex_pow(0.0, 0.0, 3.0);
        assert!(r == 0.0 && i == 0.0 && i.is_sign_negative());
        assert!(complex_pow(0.0, 0.0, 0.0).0.is_nan());
        assert_eq!(complex_pow(0.0, 0.0, -2.0).0, f64::INFINITY);
    }

    #[test]
    fn complex_log_and_exp_special_cases() {
        assert_eq!(complex_log(-0.0, 0.0), (f64::NEG_INFINITY, PI));
        assert_eq!(complex_log(-1.0, 0.0), (0.0, PI));
        assert_eq!(complex_log(f64::INFINITY, f64::NAN).0, f64::INFINITY);
        // Huge moduli are scaled, not overflowed.
        let (r, _) = complex_log(f64::MAX, f64::MAX);
        assert!(r.is_finite() && r > 709.0);
        assert_eq!(complex_exp(f64::NEG_INFINITY, 2.0), (0.0, 0.0));
        assert_eq!(complex_exp(0.0, 0.0), (1.0, 0.0));
        // Real part above 709: glibc scales by exp(709) first; exp(800) * (cos 3, sin 3) still
        // overflows, with the signs of cos 3 < 0 and sin 3 > 0.
        let (r, i) = complex_exp(800.0, 3.0);
        assert_eq!(r, f64::NEG_INFINITY);
        assert_eq!(i, f64::INFINITY);
    }
}
