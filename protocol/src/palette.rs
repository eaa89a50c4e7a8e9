//! Turning iteration counts into colours.
//!
//! [`Palette::RsplibHsv`] is rsplib's scheme (`fractalpooluser.cc`): the value plus the colour
//! marks `2*image_run + 5*failover_count + 3*session_index` (u32, wrapping) gives
//! `hue = ((v mod 72) * 5) mod 360`, drawn as `QColor::setHsv(hue, 255, 255)`. [`hsv_to_rgb`]
//! reproduces Qt 5's integer/double arithmetic, so the colours match rsplib's pixels (including
//! the half-way cases such as hue 90 -> (128, 255, 0)). Points inside the set get a colour like
//! any other, as in rsplib.
//!
//! [`Palette::Smooth`] cycles a blue-white-gold gradient over log iterations with black for
//! points inside the set (value >= MaxIterations); marks shift the gradient's phase, so the
//! regions computed after a failover or by another session still stand out.
//! [`Palette::Greyscale`] is a plain log ramp (white far outside, dark grey near the set, black
//! inside) that ignores marks.
//!
//! [`mark_tint`] and [`blend`] let a UI tint what a given PE (or failover generation) computed.

/// rsplib's colour marks of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Marks {
    /// Number of the picture (rsplib's `Run`), shifts by 2 per picture.
    pub image_run: u32,
    /// Failovers of this session so far (rsplib's `PoolElementUsages`), shifts by 5 each.
    pub failover_count: u32,
    /// Session (tile) index (rsplib's `ThreadID`), shifts by 3 each.
    pub session_index: u32,
}

impl Marks {
    /// No marks: plain colours.
    pub const NONE: Marks = Marks {
        image_run: 0,
        failover_count: 0,
        session_index: 0,
    };

    /// Marks for one session.
    pub fn new(image_run: u32, failover_count: u32, session_index: u32) -> Marks {
        Marks {
            image_run,
            failover_count,
            session_index,
        }
    }

    /// rsplib's value offset `2*image_run + 5*failover_count + 3*session_index` (wrapping, as
    /// rsplib's uint32 arithmetic).
    pub fn offset(&self) -> u32 {
        self.image_run
            .wrapping_mul(2)
            .wrapping_add(self.failover_count.wrapping_mul(5))
            .wrapping_add(self.session_index.wrapping_mul(3))
    }
}

/// Colour schemes a UI can offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Palette {
    /// rsplib's 72-hue HSV cycle, marks included.
    #[default]
    RsplibHsv,
    /// Blue-white-gold gradient over log iterations, black inside the set.
    Smooth,
    /// Log greyscale ramp, black inside the set, marks ignored.
    Greyscale,
}

/// The classic blue-white-gold gradient: (position, colour), first and last colour equal so
/// that the cycle has no seam.
const GRADIENT: [(f64, [u8; 3]); 6] = [
    (0.0, [0, 7, 100]),
    (0.16, [32, 107, 203]),
    (0.42, [237, 255, 255]),
    (0.6425, [255, 170, 0]),
    (0.8575, [0, 2, 0]),
    (1.0, [0, 7, 100]),
];

/// Gradient cycles per natural-log unit of `(value + 8) / 8`.
const CYCLES_PER_LOG: f64 = 0.8;
/// Gradient phase shift per unit of mark offset (a failover, 5 units, shifts by 5/36).
const PHASE_PER_MARK: f64 = 1.0 / 36.0;

impl Palette {
    /// Every palette, in the order a chooser should list them.
    pub const ALL: [Palette; 3] = [Palette::RsplibHsv, Palette::Smooth, Palette::Greyscale];

    /// Name for a UI chooser.
    pub fn name(self) -> &'static str {
        match self {
            Palette::RsplibHsv => "rsplib HSV",
            Palette::Smooth => "Smooth gradient",
            Palette::Greyscale => "Greyscale",
        }
    }

    /// The palette with the given [`Palette::name`] (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Option<Palette> {
        Palette::ALL
            .into_iter()
            .find(|palette| palette.name().eq_ignore_ascii_case(name.trim()))
    }

    /// RGB colour of a pixel with iteration count `value` out of `max_iterations`.
    pub fn colour(self, value: u32, max_iterations: u32, marks: Marks) -> [u8; 3] {
        match self {
            Palette::RsplibHsv => {
                let shifted = value.wrapping_add(marks.offset());
                hsv_to_rgb(((shifted % 72) * 5) % 360, 255, 255)
            }
            Palette::Smooth => {
                if value >= max_iterations {
                    return [0, 0, 0];
                }
                let log = ((f64::from(value) + 8.0) / 8.0).ln();
                let phase = log * CYCLES_PER_LOG + f64::from(marks.offset() % 36) * PHASE_PER_MARK;
                gradient(phase.fract())
            }
            Palette::Greyscale => {
                if value >= max_iterations {
                    return [0, 0, 0];
                }
                let depth = f64::from(value).ln_1p() / f64::from(max_iterations).ln_1p();
                // Outside points stay at 32 or above so they never look like the black inside.
                let level = (255.0 - 223.0 * depth).round().clamp(32.0, 255.0) as u8;
                [level, level, level]
            }
        }
    }
}

/// Linear interpolation in [`GRADIENT`] at `phase` in [0, 1).
fn gradient(phase: f64) -> [u8; 3] {
    let phase = phase.clamp(0.0, 1.0);
    for pair in GRADIENT.windows(2) {
        let [(start, from), (end, to)] = [pair[0], pair[1]];
        if phase <= end {
            let t = (phase - start) / (end - start);
            let mix =
                |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
            return [
                mix(from[0], to[0]),
                mix(from[1], to[1]),
                mix(from[2], to[2]),
            ];
        }
    }
    GRADIENT[0].1
}

/// HSV to RGB exactly as Qt 5's `QColor::setHsv(hue, s, v).rgb()` computes it: 16-bit
/// components, double arithmetic, `qRound`, then division by 257 with rounding.
pub fn hsv_to_rgb(hue: u32, saturation: u8, value: u8) -> [u8; 3] {
    let hue16 = (hue % 360) * 100;
    let saturation16 = u32::from(saturation) * 0x101;
    let value16 = u32::from(value) * 0x101;
    if saturation16 == 0 {
        return [value, value, value];
    }
    let h = f64::from(hue16) / 6000.0;
    let s = f64::from(saturation16) / 65535.0;
    let v = f64::from(value16) / 65535.0;
    let sector = h as u32;
    let f = h - f64::from(sector);
    let p = v * (1.0 - s);
    let (r, g, b) = if sector & 1 == 1 {
        let q = v * (1.0 - s * f);
        match sector {
            1 => (q, v, p),
            3 => (p, q, v),
            _ => (v, p, q),
        }
    } else {
        let t = v * (1.0 - s * (1.0 - f));
        match sector {
            0 => (v, t, p),
            2 => (p, v, t),
            _ => (t, p, v),
        }
    };
    let to_8bit = |component: f64| {
        // qRound, then Qt's qt_div_257.
        let wide = (component * 65535.0 + 0.5) as u32;
        ((wide - (wide >> 8) + 0x80) >> 8) as u8
    };
    [to_8bit(r), to_8bit(g), to_8bit(b)]
}

/// rsplib's pre-fill of a tile before its data arrives (shown with colour marks when there is
/// more than one session): `HSV(((5*session mod 72)*5) mod 256, 100, 255)`.
pub fn tile_placeholder(session_index: u32) -> [u8; 3] {
    let hue = ((session_index.wrapping_mul(5) % 72) * 5) % 256;
    hsv_to_rgb(hue, 100, 255)
}

/// A distinct, saturated colour for mark `index` (a PE, a session, a failover generation):
/// hues step by 137 degrees, so 360 consecutive indices get 360 different hues and neighbours
/// contrast.
pub fn mark_tint(index: u32) -> [u8; 3] {
    hsv_to_rgb(((u64::from(index) * 137) % 360) as u32, 200, 255)
}

/// Mixes `tint` into `base` with weight `alpha` (0 = base, 255 = tint).
pub fn blend(base: [u8; 3], tint: [u8; 3], alpha: u8) -> [u8; 3] {
    let mix = |a: u8, b: u8| {
        let alpha = u32::from(alpha);
        ((u32::from(a) * (255 - alpha) + u32::from(b) * alpha + 127) / 255) as u8
    };
    [
        mix(base[0], tint[0]),
        mix(base[1], tint[1]),
        mix(base[2], tint[2]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HSV: Palette = Palette::RsplibHsv;

    #[test]
    fn rsplib_hues_by_hand() {
        // hue 0: (v, t = 0, p = 0).
        assert_eq!(HSV.colour(0, 1000, Marks::NONE), [255, 0, 0]);
        // hue 5: t = 5/60 -> 65535/12 = 5461.25 -> 5461 -> (5461 - 21 + 128) >> 8 = 21.
        assert_eq!(HSV.colour(1, 1000, Marks::NONE), [255, 21, 0]);
        // hue 60: sector 1, f = 0, q = 1.
        assert_eq!(HSV.colour(12, 1000, Marks::NONE), [255, 255, 0]);
        // hue 90: q = 0.5 -> 32767.5 + 0.5 -> 32768 -> (32768 - 128 + 128) >> 8 = 128.
        assert_eq!(HSV.colour(18, 1000, Marks::NONE), [128, 255, 0]);
        assert_eq!(HSV.colour(24, 1000, Marks::NONE), [0, 255, 0]);
        assert_eq!(HSV.colour(36, 1000, Marks::NONE), [0, 255, 255]);
        assert_eq!(HSV.colour(48, 1000, Marks::NONE), [0, 0, 255]);
        assert_eq!(HSV.colour(60, 1000, Marks::NONE), [255, 0, 255]);
        // hue 355: sector 5, q = 1 - 55/60 = 1/12 -> 21.
        assert_eq!(HSV.colour(71, 1000, Marks::NONE), [255, 0, 21]);
        // 72 hues, then it repeats; inside points are coloured too.
        assert_eq!(HSV.colour(72, 1000, Marks::NONE), [255, 0, 0]);
        assert_eq!(
            HSV.colour(1000, 1000, Marks::NONE),
            HSV.colour(1000 % 72, 0, Marks::NONE)
        );
    }

    #[test]
    fn rsplib_marks_shift_the_value() {
        let marks = Marks::new(1, 1, 2);
        assert_eq!(marks.offset(), 2 + 5 + 6);
        // 10 + 13 = 23 -> hue 115: sector 1, f = 55/60, q = 1/12 -> 21.
        assert_eq!(HSV.colour(10, 1000, marks), [21, 255, 0]);
        // uint32 wrap-around as in rsplib: u32::MAX + 2 = 1 -> hue 5.
        assert_eq!(
            HSV.colour(u32::MAX, 1000, Marks::new(1, 0, 0)),
            [255, 21, 0]
        );
    }

    #[test]
    fn tile_placeholder_by_hand() {
        // s = 100: p = 1 - 25700/65535 -> 39835 -> (39835 - 155 + 128) >> 8 = 155.
        assert_eq!(tile_placeholder(0), [255, 155, 155]);
        // Session 12: (60 mod 72) * 5 = 300 mod 256 = 44 -> sector 0, f = 44/60.
        let [r, g, b] = tile_placeholder(12);
        assert_eq!((r, b), (255, 155));
        assert!(g > 155 && g < 255);
    }

    #[test]
    fn smooth_and_greyscale_are_black_inside() {
        for palette in [Palette::Smooth, Palette::Greyscale] {
            assert_eq!(palette.colour(500, 500, Marks::NONE), [0, 0, 0]);
            assert_ne!(palette.colour(499, 500, Marks::NONE), [0, 0, 0]);
        }
        assert_eq!(Palette::Smooth.colour(0, 500, Marks::NONE), [0, 7, 100]);
        assert_eq!(
            Palette::Greyscale.colour(0, 500, Marks::NONE),
            [255, 255, 255]
        );
    }

    #[test]
    fn smooth_marks_change_the_colour() {
        let plain = Palette::Smooth.colour(40, 1000, Marks::NONE);
        let failed_over = Palette::Smooth.colour(40, 1000, Marks::new(0, 1, 0));
        assert_ne!(plain, failed_over);
    }

    #[test]
    fn smooth_gradient_is_continuous() {
        // From 100 iterations on, neighbouring counts differ by a few levels per channel at most
        // (phase step 0.8 / (v + 8) times the steepest segment, about 1190 levels per cycle).
        for value in 100..5000 {
            let a = Palette::Smooth.colour(value, 10_000, Marks::NONE);
            let b = Palette::Smooth.colour(value + 1, 10_000, Marks::NONE);
            for channel in 0..3 {
                let jump = i32::from(a[channel]).abs_diff(i32::from(b[channel]));
                assert!(jump <= 10, "value {value}: {a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn names_roundtrip() {
        for palette in Palette::ALL {
            assert_eq!(Palette::from_name(palette.name()), Some(palette));
        }
        assert_eq!(Palette::from_name("SMOOTH GRADIENT"), Some(Palette::Smooth));
        assert_eq!(Palette::from_name("nope"), None);
    }

    #[test]
    fn tints_are_distinct_and_blend() {
        let tints: std::collections::HashSet<[u8; 3]> = (0..16).map(mark_tint).collect();
        assert_eq!(tints.len(), 16);
        assert_eq!(blend([10, 20, 30], [200, 100, 0], 0), [10, 20, 30]);
        assert_eq!(blend([10, 20, 30], [200, 100, 0], 255), [200, 100, 0]);
        // (0 * 128 + 255 * 127 + 127) / 255 = 127.
        assert_eq!(blend([255, 0, 0], [0, 255, 0], 127), [128, 127, 0]);
    }
}
