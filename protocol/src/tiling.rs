//! Splitting a picture into tiles, one per session, and the pixel to complex mapping.
//!
//! # Grid shape
//!
//! We keep rsplib's shape (`fractalpooluser.cc`): with T tiles, `rows = floor(sqrt(T))`; rows
//! `0..rows-1` get `min(remaining, rows)` tiles each and the last row gets the rest (T = 6 gives
//! 2 + 4, T = 3 one row of 3, T = 8 gives 2 + 6). Unlike rsplib, which gives every tile
//! `rint(H / rows)` x `W / cols` pixels and leaves the remainder grey, row r covers pixel rows
//! `floor(r*H/rows) .. floor((r+1)*H/rows)` and columns are cut the same way, so the tiles cover
//! every pixel exactly once and sizes differ by at most one pixel.
//!
//! Pictures too small for the requested sessions: T = min(sessions, W*H) (0 sessions count as
//! 1). If rsplib's shape does not fit (more rows than pixel rows, or a row with more tiles than
//! pixel columns), the tiles are spread evenly over `clamp(max(floor(sqrt(T)), ceil(T/W)), 1,
//! H)` rows instead. No tile is ever empty; a picture without pixels yields no tiles. Tiles are
//! numbered row-major from 0; the number is the session index (rsplib's ThreadID).
//!
//! # Coordinates
//!
//! A PE computes pixel (x, y) of a Parameter as [`pixel_c`]:
//! `c = (C1Real + x*stepX, C1Imag + y*stepY)` with `stepX = (C2Real - C1Real)/Width` and
//! `stepY = (C2Imag - C1Imag)/Height`. FGP has no offset field, so a tile's Parameter can only
//! move C1 and C2. Per axis (real shown; imaginary is the same with y), for a tile starting at
//! column x0 with w columns of a view with W columns:
//!
//! * `C1' = pixel_c(view, x0, _).0`, the untiled coordinate of column x0, bit for bit;
//!   `C1' = C1` when x0 = 0.
//! * `C2'` is the double for which the PE's step `(C2' - C1')/w` is closest to the view's step,
//!   found by bisection over neighbouring doubles; it is the view's own C2 when the tile spans
//!   the full axis. The step is bit-identical whenever any double achieves it.
//!
//! Guarantee, with `M = max(|C1|, |C2|)` of the view on that axis and `ulp(M)` the spacing of
//! doubles at M:
//!
//! 1. a tile's first column (row) gets exactly the untiled coordinate (bit for bit, except that a
//!    zero may change sign);
//! 2. every pixel's coordinate differs from the untiled one by at most [`MAX_ULP_ERROR`]
//!    (= 16) `ulp(M)`;
//! 3. one tile covering the picture keeps the view's Parameter unchanged, bit for bit.
//!
//! Sketch of (2), u = 2^-53, `M·u < ulp(M)`: every pixel coordinate lies within about M of 0 and
//! every product `x·step` within 2M, so the untiled value is within 3Mu of the exact
//! `C1 + X·step`; the tiled value adds C1's error (3Mu), its own rounding (3Mu) and
//! `w·|step' - step|`, which is at most `ulp(C2')/2 + w·ulp(step) <= ulp(M) + 4Mu` for the
//! closest achievable step. In total below 14 `ulp(M)`; the property tests check 16 and measure
//! the observed maximum.

use crate::message::Parameter;

/// Proven bound, in `ulp(M)`, on how far a tiled pixel coordinate may be from the untiled one.
pub const MAX_ULP_ERROR: f64 = 16.0;

/// One rectangular part of the picture, computed by one session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    /// Session index (row-major tile number, from 0).
    pub session: usize,
    /// Left column in the full picture.
    pub x: u32,
    /// Top row in the full picture.
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// The request for this tile: its size and its part of the complex view.
    pub parameter: Parameter,
}

impl Tile {
    /// Whether the full-picture pixel (x, y) belongs to this tile.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x
            && y >= self.y
            && u64::from(x) < u64::from(self.x) + u64::from(self.width)
            && u64::from(y) < u64::from(self.y) + u64::from(self.height)
    }

    /// Number of pixels of the tile.
    pub fn pixel_count(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The coordinate of pixel `index` along one axis: `origin + index * step`. This is the single
/// definition of the mapping; [`pixel_c`] and the kernels use it.
#[inline]
pub fn coordinate(origin: f64, step: f64, index: u32) -> f64 {
    origin + f64::from(index) * step
}

/// Complex coordinate of pixel (x, y), exactly as rsplib's PE computes it.
#[inline]
pub fn pixel_c(param: &Parameter, x: u32, y: u32) -> (f64, f64) {
    let (step_x, step_y) = param.steps();
    (
        coordinate(param.c1_real, step_x, x),
        coordinate(param.c1_imag, step_y, y),
    )
}

/// Tiles per row for `sessions` sessions on a `width` x `height` picture (see the module
/// docs). Empty for a picture without pixels.
pub fn row_counts(sessions: usize, width: u32, height: u32) -> Vec<u32> {
    if width == 0 || height == 0 {
        return Vec::new();
    }
    let pixels = u64::from(width) * u64::from(height);
    let tiles = (sessions.max(1) as u64).min(pixels);
    let rows = tiles.isqrt();
    let mut counts = Vec::with_capacity(rows as usize);
    let mut remaining = tiles;
    for row in 0..rows {
        let count = if row + 1 < rows {
            remaining.min(rows)
        } else {
            remaining
        };
        remaining -= count;
        counts.push(count);
    }
    let fits = rows <= u64::from(height) && counts.iter().all(|&count| count <= u64::from(width));
    if !fits {
        let rows = rows
            .max(tiles.div_ceil(u64::from(width)))
            .clamp(1, u64::from(height));
        let base = tiles / rows;
        let extra = tiles % rows;
        // Like rsplib, the later rows take the larger share.
        counts = (0..rows)
            .map(|row| base + u64::from(row >= rows - extra))
            .collect();
    }
    // Every count is at most `width`, a u32.
    counts
        .into_iter()
        .map(|count| u32::try_from(count).unwrap_or(width))
        .collect()
}

/// Splits `view` into tiles for `sessions` sessions (see the module docs for shape and the
/// coordinate guarantee). The tiles cover every pixel exactly once.
pub fn split(view: &Parameter, sessions: usize) -> Vec<Tile> {
    let counts = row_counts(sessions, view.width, view.height);
    let rows = counts.len() as u64;
    let mut tiles = Vec::with_capacity(counts.iter().map(|&c| c as usize).sum());
    for (row, &columns) in counts.iter().enumerate() {
        let (y, height) = cut(view.height, rows, row as u64);
        let (c1_imag, c2_imag) = sub_axis(view.c1_imag, view.c2_imag, view.height, y, height);
        for column in 0..columns {
            let (x, width) = cut(view.width, u64::from(columns), u64::from(column));
            let (c1_real, c2_real) = sub_axis(view.c1_real, view.c2_real, view.width, x, width);
            tiles.push(Tile {
                session: tiles.len(),
                x,
                y,
                width,
                height,
                parameter: Parameter {
                    width,
                    height,
                    c1_real,
                    c1_imag,
                    c2_real,
                    c2_imag,
                    ..*view
                },
            });
        }
    }
    tiles
}

/// Start and length of part `index` of `parts` equal cuts of `total` pixels.
fn cut(total: u32, parts: u64, index: u64) -> (u32, u32) {
    let boundary = |i: u64| (i * u64::from(total) / parts) as u32;
    let start = boundary(index);
    (start, boundary(index + 1) - start)
}

/// Corners of the pixel range `start .. start + len` of an axis from `c1` to `c2` over `full`
/// pixels.
fn sub_axis(c1: f64, c2: f64, full: u32, start: u32, len: u32) -> (f64, f64) {
    if start == 0 && len == full {
        return (c1, c2);
    }
    let step = (c2 - c1) / f64::from(full);
    let tile_c1 = if start == 0 {
        c1
    } else {
        coordinate(c1, step, start)
    };
    (tile_c1, end_for_step(tile_c1, step, len))
}

/// The double `c2` for which `(c2 - c1) / len` (as a PE computes it) is closest to `step`,
/// exact when possible.
fn end_for_step(c1: f64, step: f64, len: u32) -> f64 {
    let quotient = |key: i64| (from_key(key) - c1) / f64::from(len);
    let guess = c1 + step * f64::from(len);
    if !guess.is_finite() || !step.is_finite() {
        return guess;
    }
    let guess_key = to_key(guess);
    let (min_key, max_key) = (to_key(f64::MIN), to_key(f64::MAX));
    // Bracket: quotient(low) < step <= quotient(high), by exponential search around the guess.
    let (mut low, mut high);
    if quotient(guess_key) >= step {
        high = guess_key;
        let mut distance = 1i64;
        loop {
            low = guess_key.saturating_sub(distance).max(min_key);
            if quotient(low) < step {
                break;
            }
            if low == min_key {
                return from_key(low);
            }
            high = low;
            distance = distance.saturating_mul(2);
        }
    } else {
        low = guess_key;
        let mut distance = 1i64;
        loop {
            high = guess_key.saturating_add(distance).min(max_key);
            if quotient(high) >= step {
                break;
            }
            if high == max_key {
                return from_key(high);
            }
            low = high;
            distance = distance.saturating_mul(2);
        }
    }
    // Bisection: smallest key with quotient >= step (the quotient is monotone in c2).
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if quotient(middle) >= step {
            high = middle;
        } else {
            low = middle;
        }
    }
    let above = (quotient(high) - step).abs();
    let below = (step - quotient(low)).abs();
    if above <= below {
        from_key(high)
    } else {
        from_key(low)
    }
}

/// Maps a double to an integer preserving order (-0.0 and +0.0 share key 0).
fn to_key(value: f64) -> i64 {
    let bits = value.to_bits() as i64;
    if bits < 0 { -(bits & i64::MAX) } else { bits }
}

/// Inverse of [`to_key`].
fn from_key(key: i64) -> f64 {
    if key < 0 {
        -f64::from_bits(key.unsigned_abs())
    } else {
        f64::from_bits(key as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AlgorithmId;
    use proptest::prelude::*;

    fn view(width: u32, height: u32, c1: (f64, f64), c2: (f64, f64)) -> Parameter {
        Parameter {
            width,
            height,
            max_iterations: 1000,
            algorithm: AlgorithmId::MANDELBROT,
            c1_real: c1.0,
            c1_imag: c1.1,
            c2_real: c2.0,
            c2_imag: c2.1,
            n: 2.0,
        }
    }

    /// rsplib's loop from fractalpooluser.cc, written independently of `row_counts`.
    fn rsplib_counts(threads: usize) -> Vec<u32> {
        let y_count = (threads as f64).sqrt().floor() as usize;
        let mut remaining = threads;
        let mut counts = Vec::new();
        for y in 0..y_count {
            let x_count = if y < y_count - 1 {
                remaining.min(y_count)
            } else {
                remaining
            };
            if x_count > 0 {
                remaining -= x_count;
                counts.push(x_count as u32);
            }
        }
        counts
    }

    fn ulp(magnitude: f64) -> f64 {
        magnitude.next_up() - magnitude
    }

    #[test]
    fn shape_matches_rsplib_for_1_to_512_sessions() {
        for sessions in 1..=512 {
            assert_eq!(
                row_counts(sessions, 1920, 1080),
                rsplib_counts(sessions),
                "{sessions} sessions"
            );
        }
        assert_eq!(row_counts(6, 400, 250), vec![2, 4]);
        assert_eq!(row_counts(3, 400, 250), vec![3]);
        assert_eq!(row_counts(8, 400, 250), vec![2, 6]);
        assert_eq!(row_counts(10, 400, 250), vec![3, 3, 4]);
    }

    #[test]
    fn tiny_pictures_get_no_empty_tiles() {
        assert_eq!(row_counts(400, 3, 2), vec![3, 3]);
        assert_eq!(row_counts(4, 1, 100), vec![1, 1, 1, 1]);
        assert_eq!(row_counts(5, 100, 1), vec![5]);
        assert_eq!(row_counts(0, 10, 10), vec![1]);
        assert!(row_counts(7, 0, 10).is_empty());
        assert!(split(&view(10, 0, (0.0, 0.0), (1.0, 1.0)), 3).is_empty());
        let tiles = split(&view(1, 1, (-1.0, 1.0), (1.0, -1.0)), 400);
        assert_eq!(tiles.len(), 1);
    }

    #[test]
    fn single_session_keeps_the_parameter_bit_for_bit() {
        let full = view(400, 250, (-0.0, 1.5), (1.5, -1.5));
        let tiles = split(&full, 1);
        assert_eq!(tiles.len(), 1);
        assert!(tiles[0].parameter.bitwise_eq(&full));
        assert_eq!((tiles[0].x, tiles[0].y), (0, 0));
    }

    #[test]
    fn rsplib_remainder_pixels_are_covered() {
        // rsplib: 3 columns of 400 / 3 = 133 px leave column 399 grey; we cover it.
        let tiles = split(&view(400, 250, (-1.5, 1.5), (1.5, -1.5)), 3);
        let widths: Vec<u32> = tiles.iter().map(|tile| tile.width).collect();
        assert_eq!(widths, vec![133, 133, 134]);
        assert_eq!(tiles[2].x + tiles[2].width, 400);
        // The last tile ends on the view's corner exactly.
        assert_eq!(tiles[2].parameter.c2_real.to_bits(), 1.5f64.to_bits());
    }

    #[test]
    fn end_for_step_finds_exact_steps_where_they_exist() {
        // Left half of [-1.5, 1.5] over 400 pixels: step 3/400 is reachable exactly.
        let step = 3.0 / 400.0;
        let c2 = end_for_step(-1.5, step, 200);
        assert_eq!(((c2 - -1.5) / 200.0).to_bits(), step.to_bits());
    }

    #[test]
    fn key_order_roundtrip() {
        let values = [
            f64::MIN,
            -1.5,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            5e-324,
            1.0,
            f64::MAX,
        ];
        for pair in values.windows(2) {
            assert!(to_key(pair[0]) <= to_key(pair[1]));
        }
        for value in values {
            assert_eq!(from_key(to_key(value)), value);
        }
    }

    /// Views over many magnitudes, including deep zooms far from the origin.
    fn arb_view() -> impl Strategy<Value = Parameter> {
        (
            1u32..=700,
            1u32..=700,
            -2.0f64..2.0,
            -2.0f64..2.0,
            -16i32..2,
            0.2f64..5.0,
            0.2f64..5.0,
            prop::bool::ANY,
        )
            .prop_map(|(w, h, cr, ci, exponent, sx, sy, flip)| {
                let span = 10f64.powi(exponent);
                let (dx, dy) = (span * sx, span * sy);
                let c1 = (cr, ci + dy);
                let c2 = if flip {
                    (cr - dx, ci - dy)
                } else {
                    (cr + dx, ci)
                };
                view(w, h, c1, c2)
            })
    }

    /// Checks cover and the coordinate guarantee; returns the largest error in ulp(M).
    fn check_split(full: &Parameter, sessions: usize) -> f64 {
        let tiles = split(full, sessions);
        let expected = (sessions.max(1) as u64).min(full.pixel_count());
        assert_eq!(tiles.len() as u64, expected);
        let mut covered = vec![0u8; full.pixel_count() as usize];
        for (index, tile) in tiles.iter().enumerate() {
            assert_eq!(tile.session, index);
            assert!(tile.width > 0 && tile.height > 0, "empty tile {tile:?}");
            assert_eq!(tile.parameter.width, tile.width);
            assert_eq!(tile.parameter.height, tile.height);
            for y in tile.y..tile.y + tile.height {
                for x in tile.x..tile.x + tile.width {
                    covered[(y * full.width + x) as usize] += 1;
                }
            }
        }
        assert!(
            covered.iter().all(|&count| count == 1),
            "not an exact cover"
        );

        let ulp_real = ulp(full.c1_real.abs().max(full.c2_real.abs()));
        let ulp_imag = ulp(full.c1_imag.abs().max(full.c2_imag.abs()));
        let mut worst: f64 = 0.0;
        for tile in &tiles {
            let first = pixel_c(&tile.parameter, 0, 0);
            let untiled_first = pixel_c(full, tile.x, tile.y);
            assert_eq!(first, untiled_first, "first pixel differs in {tile:?}");
            // Each axis depends on one index only, so checking one row and one column of the
            // tile covers every pixel.
            for x in 0..tile.width {
                let tiled = pixel_c(&tile.parameter, x, 0).0;
                let untiled = pixel_c(full, tile.x + x, tile.y).0;
                worst = worst.max((tiled - untiled).abs() / ulp_real);
            }
            for y in 0..tile.height {
                let tiled = pixel_c(&tile.parameter, 0, y).1;
                let untiled = pixel_c(full, tile.x, tile.y + y).1;
                worst = worst.max((tiled - untiled).abs() / ulp_imag);
            }
        }
        assert!(
            worst <= MAX_ULP_ERROR,
            "error {worst} ulp(M) exceeds the bound"
        );
        worst
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn split_covers_exactly_and_keeps_coordinates(full in arb_view(), sessions in 0usize..=600) {
            check_split(&full, sessions);
        }

        #[test]
        fn more_sessions_than_pixels(w in 1u32..=12, h in 1u32..=12, sessions in 1usize..=400) {
            let full = view(w, h, (-1.5, 1.5), (1.5, -1.5));
            check_split(&full, sessions);
        }
    }

    /// Deterministic sweep reporting the observed worst error and how often the step is exact
    /// (run with `--nocapture` to see the figures).
    #[test]
    fn observed_error_sweep() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut worst: f64 = 0.0;
        let (mut exact_steps, mut tiles_seen) = (0u64, 0u64);
        for _ in 0..300 {
            let span = 10f64.powf(-14.0 * next());
            let full = view(
                64 + (next() * 900.0) as u32,
                64 + (next() * 600.0) as u32,
                (next() * 4.0 - 2.0, next() * 4.0 - 2.0 + span),
                (0.0, 0.0),
            );
            let full = Parameter {
                c2_real: full.c1_real + span * 1.6,
                c2_imag: full.c1_imag - span,
                ..full
            };
            let sessions = 1 + (next() * 400.0) as usize;
            worst = worst.max(check_split(&full, sessions));
            let (step_x, _) = full.steps();
            for tile in split(&full, sessions) {
                tiles_seen += 1;
                exact_steps += u64::from(tile.parameter.steps().0.to_bits() == step_x.to_bits());
            }
        }
        println!(
            "tiling sweep: worst error {worst} ulp(M); real step exact in {exact_steps} of {tiles_seen} tiles"
        );
        assert!(worst <= MAX_ULP_ERROR);
    }
}
