//! Which part of the picture a free session computes next: work units, then tail takeovers.
//!
//! A picture is cut into **work units** ([`fractal_protocol::tiling::split`]), usually more
//! than it runs sessions at once. A session that finishes its unit takes the next one with a
//! fresh pool-policy choice, so a fast PE that finishes early is chosen again and does more of
//! the picture.
//!
//! When no unit is left, a free session **takes over the tail** of the tile expected to finish
//! last: the tile is cut at a row ahead of what its PE has delivered, and the rows below become
//! a new tile. The new tile's session starts with a Cookie Echo of a `<FG-TD1>` cookie that
//! carries the unit's own Parameter and the cut as its position. The new PE therefore computes
//! every pixel from the same coordinates as the unit's PE would, bit for bit. A new Parameter
//! for the rows below could not promise that: FGP has no offset field (see `tiling`). The cut
//! tile's session is closed once everything above the cut has arrived. What its PE computed
//! beyond the cut is dropped and counted as overrun.
//!
//! Pixel indices here are row-major within the unit's Parameter ("unit pixels"); a tile covers
//! the unit pixels `offset .. end`, whole rows apart from the tile's progress.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fractal_protocol::message::Parameter;
use fractal_protocol::tiling::Tile;

use super::coverage::Coverage;
use super::events::TileRect;

/// How far ahead of what arrived a PE may have computed: a PE sends Data at least every 25 ms
/// (more often while it is fast), and some is in flight.
const LOOKAHEAD: Duration = Duration::from_millis(40);
/// A tail its PE would compute in less than this is left to it: a new session costs a
/// resolution, a connect and the PE's start (one to a few milliseconds on loopback), plus what
/// the cut tile's PE computed beyond the cut.
const MIN_TAIL_TIME: Duration = Duration::from_millis(30);
/// Nor is a tail of fewer pixels cut off.
const MIN_TAIL_PIXELS: u64 = 256;
/// A rate measured over less time than this is not trusted: a PE sends Data in batches (every
/// 25 ms at least), so a short window says little, and a picture that takes less than this has
/// no tail worth taking over.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(50);

/// The part of a unit one tile covers, shared by the tile's task (which receives its pixels)
/// and the picture's (which cuts tails off). The lock orders the two: a cut is always beyond
/// every pixel the task has accepted, and the task never accepts a pixel beyond the cut.
#[derive(Debug)]
pub(crate) struct TileBounds {
    state: Mutex<BoundsState>,
}

#[derive(Debug)]
struct BoundsState {
    /// One past the tile's last unit pixel: the unit's end, or where its tail was cut off.
    end: u64,
    /// One past the highest unit pixel the task accepted.
    received_end: u64,
    /// A tail was cut off: the tile is complete once everything before `end` arrived, without
    /// waiting for the PE's finalizer (which comes only at the unit's end).
    cut: bool,
    /// The tile is complete; it cannot be cut any more.
    complete: bool,
    /// Pixels that arrived beyond `end` (computed ahead of a cut) and were dropped.
    overrun: u64,
}

/// What [`TileBounds::receive`] kept of a run of pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// The part within the tile (empty when all of it lies beyond the cut).
    pub kept: Range<u64>,
    /// Pixels of `kept` that had not arrived before.
    pub newly: u64,
    /// With it, every pixel of a cut tile has arrived.
    pub complete: bool,
}

impl TileBounds {
    /// The bounds of a tile ending at unit pixel `end` of a unit of `unit_pixels`.
    pub(crate) fn new(end: u64, unit_pixels: u64) -> TileBounds {
        TileBounds {
            state: Mutex::new(BoundsState {
                end,
                received_end: 0,
                cut: end < unit_pixels,
                complete: false,
                overrun: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One past the tile's last unit pixel.
    pub(crate) fn end(&self) -> u64 {
        self.lock().end
    }

    /// Pixels dropped because they lay beyond a cut.
    pub(crate) fn overrun(&self) -> u64 {
        self.lock().overrun
    }

    /// The tile's task accepts `run` (unit pixels, all at or after `offset`): the part before
    /// the end is added to `received`, the rest dropped.
    pub(crate) fn receive(&self, run: Range<u64>, received: &mut Coverage, offset: u64) -> Receipt {
        let mut state = self.lock();
        let kept = run.start.min(state.end)..run.end.min(state.end);
        state.overrun += (run.end - run.start) - (kept.end - kept.start);
        let newly = received.insert(kept.clone());
        state.received_end = state.received_end.max(kept.end);
        let complete = state.cut && received.covered() >= state.end - offset;
        state.complete |= complete;
        Receipt {
            kept,
            newly,
            complete,
        }
    }

    /// The PE sent its finalizer: the tile is complete if every pixel arrived, else how many
    /// are missing.
    pub(crate) fn finish(&self, received: &Coverage, offset: u64) -> Result<(), u64> {
        let mut state = self.lock();
        let missing = (state.end - offset).saturating_sub(received.covered());
        if missing > 0 {
            return Err(missing);
        }
        state.complete = true;
        Ok(())
    }

    /// Cuts the tile at unit pixel `at`, if that is still ahead of everything accepted and the
    /// tile is not complete.
    fn cut(&self, at: u64) -> bool {
        let mut state = self.lock();
        if state.complete || at <= state.received_end || at >= state.end {
            return false;
        }
        state.end = at;
        state.cut = true;
        true
    }

    fn snapshot(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        (!state.complete).then_some((state.received_end, state.end))
    }
}

/// A tile for a session to compute.
#[derive(Clone, Debug)]
pub(crate) struct TileJob {
    /// The tile's index in the picture.
    pub tile: usize,
    /// The unit's request (a tail shares its unit's).
    pub parameter: Parameter,
    /// The tile's first unit pixel (0 for a whole unit).
    pub offset: u64,
    pub bounds: Arc<TileBounds>,
}

/// What a free session does next.
#[derive(Debug)]
pub(crate) enum Assignment {
    /// A work unit not started yet.
    Unit(TileJob),
    /// The tail of tile `from`: it keeps `kept_rows` rows, the rest is the new tile `rect`.
    Tail {
        from: usize,
        kept_rows: u32,
        rect: TileRect,
        job: TileJob,
    },
}

/// Pixels a tile's current PE delivered since it took the tile over.
#[derive(Clone, Copy, Debug)]
struct Rate {
    since: Instant,
    pixels: u64,
}

impl Rate {
    /// Pixels per second, once measured long enough.
    fn per_second(&self, now: Instant) -> Option<f64> {
        let window = now.saturating_duration_since(self.since);
        (window >= MIN_RATE_WINDOW && self.pixels > 0)
            .then(|| self.pixels as f64 / window.as_secs_f64())
    }
}

#[derive(Debug)]
struct Running {
    unit: usize,
    offset: u64,
    rate: Rate,
}

/// The picture's plan (see the module docs): units waiting, tiles running, free sessions.
#[derive(Debug)]
pub(crate) struct Schedule {
    units: Vec<Tile>,
    pending: VecDeque<usize>,
    /// By tile index; `None` once complete (or not started).
    running: Vec<Option<Running>>,
    /// Every tile's bounds, by tile index.
    bounds: Vec<Arc<TileBounds>>,
    free_sessions: usize,
    tail_takeover: bool,
}

impl Schedule {
    /// A plan for `units` (tile `i` is unit `i`), computed by `sessions` sessions at once.
    pub(crate) fn new(units: Vec<Tile>, sessions: usize, tail_takeover: bool) -> Schedule {
        let bounds = units
            .iter()
            .map(|unit| {
                let pixels = unit.pixel_count();
                Arc::new(TileBounds::new(pixels, pixels))
            })
            .collect();
        Schedule {
            pending: (0..units.len()).collect(),
            running: (0..units.len()).map(|_| None).collect(),
            bounds,
            units,
            free_sessions: sessions.max(1),
            tail_takeover,
        }
    }

    /// Pixels dropped beyond cuts, over every tile.
    pub(crate) fn overrun(&self) -> u64 {
        self.bounds.iter().map(|bounds| bounds.overrun()).sum()
    }

    /// The next unit for a free session, if any (never a tail).
    pub(crate) fn next_unit(&mut self, now: Instant) -> Option<TileJob> {
        if self.free_sessions == 0 {
            return None;
        }
        let unit = self.pending.pop_front()?;
        self.free_sessions -= 1;
        Some(self.start(unit, unit, 0, now))
    }

    /// Whether a session is free to take over a tail (every unit has been taken).
    pub(crate) fn wants_tail(&self) -> bool {
        self.tail_takeover && self.free_sessions > 0 && self.pending.is_empty()
    }

    /// What a free session does next, if there is a free session and anything worth doing:
    /// the next unit, else a tail takeover (when enabled).
    pub(crate) fn next(&mut self, now: Instant) -> Option<Assignment> {
        if self.free_sessions == 0 {
            return None;
        }
        if let Some(job) = self.next_unit(now) {
            return Some(Assignment::Unit(job));
        }
        if !self.tail_takeover {
            return None;
        }
        let assignment = self.take_tail(now)?;
        self.free_sessions -= 1;
        Some(assignment)
    }

    /// Tile `tile` is complete: its session is free.
    pub(crate) fn completed(&mut self, tile: usize) {
        if let Some(slot) = self.running.get_mut(tile)
            && slot.take().is_some()
        {
            self.free_sessions += 1;
        }
    }

    /// Tile `tile`'s session has a new PE, or lost its PE (a failover or a refusal): its rate
    /// is measured afresh from `now`.
    pub(crate) fn measure_afresh(&mut self, tile: usize, now: Instant) {
        if let Some(Some(running)) = self.running.get_mut(tile) {
            running.rate = Rate {
                since: now,
                pixels: 0,
            };
        }
    }

    /// `count` pixels of tile `tile` arrived.
    pub(crate) fn received(&mut self, tile: usize, count: u64) {
        if let Some(Some(running)) = self.running.get_mut(tile) {
            running.rate.pixels += count;
        }
    }

    fn start(&mut self, tile: usize, unit: usize, offset: u64, now: Instant) -> TileJob {
        let bounds = self.bounds[tile].clone();
        self.running[tile] = Some(Running {
            unit,
            offset,
            rate: Rate {
                since: now,
                pixels: 0,
            },
        });
        TileJob {
            tile,
            parameter: self.units[unit].parameter,
            offset,
            bounds,
        }
    }

    /// Cuts the tail off the tile expected to finish last (see the module docs).
    fn take_tail(&mut self, now: Instant) -> Option<Assignment> {
        // The tasks keep receiving while we look: a cut that lost the race is planned again.
        for _ in 0..4 {
            let (from, cut_row) = self.tail_candidate(now)?;
            let running = self.running[from].as_ref()?;
            let unit = self.units[running.unit];
            let width = u64::from(unit.width);
            let (offset, unit_index) = (running.offset, running.unit);
            let end = self.bounds[from].end();
            if !self.bounds[from].cut(u64::from(cut_row) * width) {
                continue;
            }
            let first_row = (offset / width) as u32;
            let end_row = (end / width) as u32;
            let tile = self.running.len();
            let rect = TileRect {
                index: tile,
                x: unit.x,
                y: unit.y + cut_row,
                width: unit.width,
                height: end_row - cut_row,
            };
            self.running.push(None);
            self.bounds
                .push(Arc::new(TileBounds::new(end, unit.pixel_count())));
            let job = self.start(tile, unit_index, u64::from(cut_row) * width, now);
            return Some(Assignment::Tail {
                from,
                kept_rows: cut_row - first_row,
                rect,
                job,
            });
        }
        None
    }

    /// The running tile expected to finish last and the unit row to cut it at, if any tail is
    /// worth taking over.
    fn tail_candidate(&self, now: Instant) -> Option<(usize, u32)> {
        // A tile without a measured rate yet (just started, or failing over) is expected to
        // go at the typical rate: taken for infinitely slow, every new tail would be cut again
        // at once.
        let mut rates: Vec<f64> = self
            .running
            .iter()
            .flatten()
            .filter_map(|running| running.rate.per_second(now))
            .collect();
        rates.sort_by(f64::total_cmp);
        // Without any measured rate it is too early to tell which tile finishes last.
        let typical = rates.get(rates.len() / 2).copied()?;
        let mut best: Option<(f64, u64, usize, u32)> = None;
        for (tile, running) in self.running.iter().enumerate() {
            let Some(running) = running else { continue };
            let Some((received_end, end)) = self.bounds[tile].snapshot() else {
                continue;
            };
            let width = u64::from(self.units[running.unit].width);
            let start = received_end.max(running.offset);
            let rate = running.rate.per_second(now).unwrap_or(typical);
            let remaining = end - start;
            let seconds_left = remaining as f64 / rate;
            let ahead = rate * LOOKAHEAD.as_secs_f64();
            let Some(cut_row) = cut_row(start, end, width, ahead as u64) else {
                continue;
            };
            // The tail must be worth a session: its PE would need a while for it.
            let tail = end - u64::from(cut_row) * width;
            if (tail as f64 / rate) < MIN_TAIL_TIME.as_secs_f64() {
                continue;
            }
            let key = (seconds_left, remaining, tile, cut_row);
            if best
                .is_none_or(|(seconds, pixels, ..)| (seconds_left, remaining) > (seconds, pixels))
            {
                best = Some(key);
            }
        }
        best.map(|(_, _, tile, row)| (tile, row))
    }
}

/// Where to cut a tile that covers unit pixels up to `end` (a row boundary), `width` pixels a
/// row, whose PE delivered up to `start` and may have computed `ahead` pixels more: halfway
/// between the first whole row after that and the end, if the tail below has at least
/// [`MIN_TAIL_PIXELS`].
pub(crate) fn cut_row(start: u64, end: u64, width: u64, ahead: u64) -> Option<u32> {
    if width == 0 {
        return None;
    }
    let first = (start + ahead).div_ceil(width) + 1;
    let end_row = end / width;
    if first >= end_row {
        return None;
    }
    let cut = first + (end_row - first) / 2;
    ((end_row - cut) * width >= MIN_TAIL_PIXELS).then(|| u32::try_from(cut).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use fractal_protocol::message::AlgorithmId;
    use fractal_protocol::tiling;
    use proptest::prelude::*;

    fn view(width: u32, height: u32) -> Parameter {
        Parameter {
            width,
            height,
            max_iterations: 100,
            algorithm: AlgorithmId::MANDELBROT,
            c1_real: -2.0,
            c1_imag: 1.25,
            c2_real: 1.0,
            c2_imag: -1.25,
            n: 2.0,
        }
    }

    #[test]
    fn a_cut_lies_between_progress_and_end_and_leaves_enough_below() {
        // 100 pixels a row, 20 rows; delivered 3.5 rows: the first whole row after that is 4,
        // one more for safety, so halfway between 5 and 20.
        assert_eq!(cut_row(350, 2000, 100, 0), Some(12));
        assert_eq!(cut_row(350, 2000, 100, 200), Some(13));
        // Too little left below the cut.
        assert_eq!(cut_row(1500, 2000, 100, 0), None);
        assert_eq!(cut_row(0, 2000, 0, 0), None);
    }

    #[test]
    fn bounds_keep_cuts_ahead_of_what_was_accepted() {
        let bounds = TileBounds::new(100, 100);
        let mut received = Coverage::default();
        let receipt = bounds.receive(0..30, &mut received, 0);
        assert_eq!(receipt.kept, 0..30);
        assert!(!receipt.complete);
        assert!(
            !bounds.cut(30),
            "nothing may be cut at or before what arrived"
        );
        assert!(bounds.cut(50));
        let receipt = bounds.receive(30..60, &mut received, 0);
        assert_eq!(receipt.kept, 30..50);
        assert!(receipt.complete, "a cut tile completes without a finalizer");
        assert_eq!(bounds.overrun(), 10);
        assert!(!bounds.cut(45));
        // A tail starting at 50: complete by its finalizer once everything arrived.
        let tail = TileBounds::new(100, 100);
        let mut received = Coverage::default();
        tail.receive(50..90, &mut received, 50);
        assert_eq!(tail.finish(&received, 50), Err(10));
        tail.receive(90..100, &mut received, 50);
        assert_eq!(tail.finish(&received, 50), Ok(()));
        // A tail ending before its unit's end (cut off a cut tile) completes without one.
        let middle = TileBounds::new(80, 100);
        let mut received = Coverage::default();
        assert!(middle.receive(50..100, &mut received, 50).complete);
    }

    /// Two units: unit 0 delivered `fast` pixels and unit 1 `slow` pixels of their 20,000 in
    /// 100 ms, then unit 0 completes: what does its free session do?
    fn after_unit_0(fast: u64, slow: u64) -> Option<Assignment> {
        let units = tiling::split(&view(100, 400), 2);
        let start = Instant::now();
        let mut schedule = Schedule::new(units, 2, true);
        let jobs: Vec<TileJob> = std::iter::from_fn(|| match schedule.next(start) {
            Some(Assignment::Unit(job)) => Some(job),
            _ => None,
        })
        .collect();
        assert_eq!(jobs.len(), 2);
        let mut received = [Coverage::default(), Coverage::default()];
        for (job, count) in jobs.iter().zip([fast, slow]) {
            schedule.measure_afresh(job.tile, start);
            job.bounds.receive(0..count, &mut received[job.tile], 0);
            schedule.received(job.tile, count);
        }
        schedule.completed(0);
        schedule.next(start + Duration::from_millis(100))
    }

    #[test]
    fn the_tail_of_a_slow_tile_is_taken_over_and_a_short_one_is_not() {
        // Unit 1 did 2,000 of 20,000 pixels (40 of 400 rows of 50) in 100 ms: 0.9 s left. It
        // is cut halfway between row 57 (what arrived, 16 rows its PE may have computed since
        // at 20,000 pixels/s, and one more) and the end.
        match after_unit_0(20_000, 2_000) {
            Some(Assignment::Tail {
                from: 1,
                kept_rows,
                rect,
                job,
            }) => {
                assert_eq!(kept_rows, 228);
                assert_eq!(rect.index, 2);
                assert_eq!(rect.y, kept_rows);
                assert_eq!(rect.height, 400 - kept_rows);
                assert_eq!(job.offset, u64::from(kept_rows) * 50);
                assert_eq!(job.bounds.end(), 20_000);
            }
            other => panic!("no tail takeover: {other:?}"),
        }
        // Unit 1 did 19,000 in 100 ms: about 5 ms left, not worth a session.
        assert!(after_unit_0(20_000, 19_000).is_none());
    }

    #[test]
    fn a_free_session_finds_a_tail_once_rates_are_known() {
        let units = tiling::split(&view(100, 400), 2);
        let start = Instant::now();
        let mut schedule = Schedule::new(units, 2, true);
        let jobs: Vec<TileJob> = std::iter::from_fn(|| schedule.next_unit(start)).collect();
        for job in &jobs {
            schedule.measure_afresh(job.tile, start);
        }
        // Unit 0 was cheap: done after 10 ms, before any rate is worth trusting.
        let mut received = Coverage::default();
        jobs[0].bounds.receive(0..20_000, &mut received, 0);
        schedule.completed(0);
        let early = start + Duration::from_millis(10);
        assert!(schedule.wants_tail());
        assert!(schedule.next(early).is_none(), "too early to tell");
        // Later, unit 1's rate is known and shows it slow: the free session takes its tail.
        let mut received = Coverage::default();
        jobs[1].bounds.receive(0..1_000, &mut received, 0);
        schedule.received(1, 1_000);
        let later = start + Duration::from_millis(100);
        assert!(matches!(
            schedule.next(later),
            Some(Assignment::Tail { from: 1, .. })
        ));
        assert!(!schedule.wants_tail(), "no session is free any more");
    }

    /// Which tile each pixel of a `width` x `height` picture belongs to, by the rectangles.
    fn owners(rects: &[TileRect], width: u32, height: u32) -> Vec<Vec<usize>> {
        let mut owners = vec![Vec::new(); (width * height) as usize];
        for rect in rects {
            for y in rect.y..rect.y + rect.height {
                for x in rect.x..rect.x + rect.width {
                    owners[(y * width + x) as usize].push(rect.index);
                }
            }
        }
        owners
    }

    proptest! {
        /// Units and any sequence of tail takeovers cover every pixel exactly once, and every
        /// tile's rectangle is the part of its unit between its offset and its end.
        #[test]
        fn units_and_tails_cover_every_pixel_once(
            width in 1u32..60,
            height in 1u32..60,
            units in 1usize..20,
            sessions in 1usize..6,
            steps in proptest::collection::vec((0u8..4, 0u64..400, 0usize..64), 0..40),
        ) {
            let units = tiling::split(&view(width, height), units);
            let mut rects: Vec<TileRect> = units
                .iter()
                .map(|unit| TileRect {
                    index: unit.session,
                    x: unit.x,
                    y: unit.y,
                    width: unit.width,
                    height: unit.height,
                })
                .collect();
            let now = Instant::now();
            let mut schedule = Schedule::new(units.clone(), sessions, true);
            let mut jobs: Vec<TileJob> = Vec::new();
            let mut received: Vec<Coverage> = Vec::new();
            let mut completed: Vec<bool> = Vec::new();
            let apply = |assignment: Assignment,
                             rects: &mut Vec<TileRect>,
                             jobs: &mut Vec<TileJob>| {
                let job = match assignment {
                    Assignment::Unit(job) => job,
                    Assignment::Tail { from, kept_rows, rect, job } => {
                        rects[from].height = kept_rows;
                        prop_assert_eq!(rect.index, rects.len());
                        rects.push(rect);
                        job
                    }
                };
                jobs.push(job);
                Ok(())
            };
            let mut clock = now;
            while let Some(assignment) = schedule.next(clock) {
                apply(assignment, &mut rects, &mut jobs)?;
            }
            for (action, amount, pick) in steps {
                clock += Duration::from_millis(20);
                if jobs.is_empty() {
                    break;
                }
                let job = jobs[pick % jobs.len()].clone();
                while received.len() <= job.tile {
                    received.push(Coverage::default());
                    completed.push(false);
                }
                if completed[job.tile] {
                    continue;
                }
                match action {
                    // Pixels arrive from where the tile's data has got to.
                    0 | 1 => {
                        let from = job.offset + received[job.tile].covered();
                        let run = from..from + amount;
                        let receipt = job.bounds.receive(run, &mut received[job.tile], job.offset);
                        schedule.received(job.tile, receipt.kept.end - receipt.kept.start);
                        let finished = receipt.complete
                            || (job.bounds.end() == job.offset + received[job.tile].covered()
                                && job.bounds.finish(&received[job.tile], job.offset).is_ok());
                        if finished {
                            completed[job.tile] = true;
                            schedule.completed(job.tile);
                        }
                    }
                    // Time passes: nothing arrives.
                    _ => {}
                }
                while let Some(assignment) = schedule.next(clock) {
                    apply(assignment, &mut rects, &mut jobs)?;
                }
            }
            for owners in owners(&rects, width, height) {
                prop_assert_eq!(owners.len(), 1);
            }
            for job in &jobs {
                let rect = &rects[job.tile];
                let base = units.iter().find(|u| u.contains(rect.x, rect.y)).expect("unit");
                let width = u64::from(base.width);
                prop_assert_eq!(u64::from(rect.y - base.y) * width, job.offset);
                prop_assert_eq!(
                    u64::from(rect.y - base.y + rect.height) * width,
                    job.bounds.end()
                );
                prop_assert_eq!(job.parameter, base.parameter);
            }
        }
    }
}
