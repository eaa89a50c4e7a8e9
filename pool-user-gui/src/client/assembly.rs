//! Putting a picture together from [`ClientEvent`]s, for any front end.

use fractal_protocol::kernel::iterations_in;
use fractal_protocol::message::DataView;

use std::ops::Range;

use super::coverage::Coverage;
use super::events::{ClientEvent, Failover, ImageStart, TileRect};

/// The picture of one image as its events arrive: iteration counts and, per pixel, how many
/// failovers its session had gone through when the pixel arrived (for colour marks).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageAssembly {
    pub image: u64,
    pub width: u32,
    pub height: u32,
    pub max_iterations: u32,
    pub tiles: Vec<TileRect>,
    /// Row-major iteration counts: final once the picture is complete. Where nothing arrived
    /// yet (see [`ImageAssembly::is_received`]) a new buffer holds 0 and a reused one (see
    /// [`ImageAssembly::from_started_reusing`]) still the earlier picture's values.
    pub iterations: Vec<u32>,
    /// Row-major failover generation of each pixel's session when it arrived; empty (all 0)
    /// until the first failover, so that a picture without one costs no memory for it.
    generation: Vec<u32>,
    /// Per tile, its pixels received (row-major within the tile): a few ranges, as PEs send
    /// runs.
    received: Vec<Coverage>,
    /// Failovers per tile so far.
    pub failovers: Vec<u32>,
    /// Completed tiles.
    pub completed: Vec<bool>,
    /// Iterations behind the received pixels, kept up to date by [`ImageAssembly::apply`] while
    /// each row is in cache (a pass over the whole picture at its end cost more).
    total_iterations: u64,
}

/// The buffers of a finished picture, for the next one: fresh pages cost a page fault and
/// zeroing each, about a millisecond per 1024x768 picture.
#[derive(Debug, Default)]
pub struct SpareBuffers {
    iterations: Vec<u32>,
}

/// What [`ImageAssembly::store_data`] stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub pixels: u64,
    /// Iterations behind the stored values.
    pub iterations: u64,
}

/// A run of a tile's pixels within one picture row.
struct RowRun {
    /// Row-major index in the picture of the run's first pixel.
    start: usize,
    len: usize,
}

impl ImageAssembly {
    /// An empty picture for an `ImageStarted` event (`None` for other events).
    pub fn from_started(event: &ClientEvent) -> Option<ImageAssembly> {
        Self::from_started_reusing(event, SpareBuffers::default())
    }

    /// The buffers of this picture, for [`ImageAssembly::from_started_reusing`].
    pub fn into_spare(self) -> SpareBuffers {
        SpareBuffers {
            iterations: self.iterations,
        }
    }

    /// [`ImageAssembly::from_started`] in the buffers of an earlier picture. They are not
    /// cleared: every pixel is overwritten before the picture is complete, and clearing
    /// would delay the sessions' start.
    pub fn from_started_reusing(event: &ClientEvent, spare: SpareBuffers) -> Option<ImageAssembly> {
        let ClientEvent::ImageStarted(ImageStart {
            image,
            width,
            height,
            max_iterations,
            tiles,
            ..
        }) = event
        else {
            return None;
        };
        let pixels = *width as usize * *height as usize;
        let mut iterations = spare.iterations;
        if iterations.len() != pixels {
            iterations.clear();
            iterations.resize(pixels, 0);
        }
        Some(ImageAssembly {
            image: *image,
            width: *width,
            height: *height,
            max_iterations: *max_iterations,
            tiles: tiles.clone(),
            iterations,
            generation: Vec::new(),
            received: vec![Coverage::default(); tiles.len()],
            failovers: vec![0; tiles.len()],
            completed: vec![false; tiles.len()],
            total_iterations: 0,
        })
    }

    /// Row-major index in the picture of pixel `index` (row-major within the tile) of `tile`.
    pub fn pixel_index(&self, tile: usize, index: u64) -> Option<usize> {
        let tile = self.tiles.get(tile)?;
        let width = u64::from(tile.width);
        if width == 0 || index >= width * u64::from(tile.height) {
            return None;
        }
        let x = u64::from(tile.x) + index % width;
        let y = u64::from(tile.y) + index / width;
        usize::try_from(y * u64::from(self.width) + x).ok()
    }

    /// Whether pixel `i` (row-major in the picture) arrived.
    pub fn is_received(&self, i: usize) -> bool {
        let width = self.width as usize;
        if width == 0 {
            return false;
        }
        let (x, y) = ((i % width) as u64, (i / width) as u64);
        self.tiles
            .iter()
            .zip(&self.received)
            .any(|(tile, received)| {
                let (tx, ty) = (u64::from(tile.x), u64::from(tile.y));
                (tx..tx + u64::from(tile.width)).contains(&x)
                    && (ty..ty + u64::from(tile.height)).contains(&y)
                    && received.contains((y - ty) * u64::from(tile.width) + (x - tx))
            })
    }

    /// Pixels received (each counted once).
    pub fn received_pixels(&self) -> u64 {
        self.received.iter().map(Coverage::covered).sum()
    }

    /// Iterations behind pixels `first .. first + count` of `tile` as received so far.
    pub fn iterations_in(&self, tile: usize, first: u64, count: u64) -> u64 {
        let Some(received) = self.received.get(tile) else {
            return 0;
        };
        received
            .overlaps(first..first.saturating_add(count))
            .map(|range| self.iterations_of(tile, range))
            .sum()
    }

    /// Applies one event of this image (events of other images are ignored).
    pub fn apply(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::TileData {
                image,
                tile,
                first,
                iterations,
                ..
            } if *image == self.image => {
                let generation = self.failovers.get(*tile).copied().unwrap_or(0);
                self.store(*tile, *first, iterations, generation);
            }
            ClientEvent::FailoverCompleted(Failover { image, tile, .. })
                if *image == self.image =>
            {
                if let Some(count) = self.failovers.get_mut(*tile) {
                    *count += 1;
                }
            }
            ClientEvent::TileSplit {
                image,
                tile,
                kept_rows,
                tail,
            } if *image == self.image => self.split(*tile, *kept_rows, tail),
            ClientEvent::TileCompleted { image, tile } if *image == self.image => {
                if let Some(done) = self.completed.get_mut(*tile) {
                    *done = true;
                }
            }
            _ => {}
        }
    }

    /// Tile `tile` keeps its first `kept_rows` rows; the rows below become the new tile `tail`
    /// (a tail takeover). Ignored unless `tail` is the next tile and lies within `tile`.
    fn split(&mut self, tile: usize, kept_rows: u32, tail: &TileRect) {
        let Some(rect) = self.tiles.get_mut(tile) else {
            return;
        };
        let fits = tail.index == self.received.len()
            && tail.x == rect.x
            && tail.width == rect.width
            && kept_rows < rect.height
            && u64::from(tail.y) == u64::from(rect.y) + u64::from(kept_rows)
            && u64::from(kept_rows) + u64::from(tail.height) == u64::from(rect.height);
        if !fits {
            return;
        }
        rect.height = kept_rows;
        self.tiles.push(tail.clone());
        self.received.push(Coverage::default());
        self.failovers.push(0);
        self.completed.push(false);
    }

    /// The row runs in the picture of pixels `range` (row-major within the tile) of `tile`,
    /// cut at the tile's and the picture's end.
    fn row_runs(&self, tile: usize, range: Range<u64>) -> impl Iterator<Item = RowRun> + use<> {
        let (tile_width, tile_height, tile_x, tile_y) = self
            .tiles
            .get(tile)
            .map(|tile| {
                (
                    u64::from(tile.width),
                    u64::from(tile.height),
                    u64::from(tile.x),
                    u64::from(tile.y),
                )
            })
            .unwrap_or_default();
        let end = range.end.min(tile_width * tile_height);
        let picture_width = u64::from(self.width);
        let picture_pixels = self.iterations.len() as u64;
        let mut index = range.start;
        std::iter::from_fn(move || {
            if index >= end {
                return None;
            }
            let column = index % tile_width;
            let len = (tile_width - column).min(end - index);
            let start = (tile_y + index / tile_width) * picture_width + tile_x + column;
            if start + len > picture_pixels {
                return None;
            }
            index += len;
            // Both bounded by the picture's length just above.
            Some(RowRun {
                start: start as usize,
                len: len as usize,
            })
        })
    }

    /// Iterations behind the stored values of pixels `range` of `tile`.
    fn iterations_of(&self, tile: usize, range: Range<u64>) -> u64 {
        self.row_runs(tile, range)
            .map(|run| {
                iterations_in(
                    &self.iterations[run.start..run.start + run.len],
                    self.max_iterations,
                )
            })
            .sum()
    }

    /// Stores the first `count` points of a Data message as pixels `first..` (row-major within
    /// the tile) of `tile`, decoded straight into the picture. Points past the tile's end are
    /// dropped.
    pub fn store_data(&mut self, tile: usize, first: u64, data: &DataView, count: usize) -> Stored {
        let generation = self.failovers.get(tile).copied().unwrap_or(0);
        let max = self.max_iterations;
        self.store_with(
            tile,
            first,
            count.min(data.len()),
            generation,
            |offset, slots| data.copy_points_counting(offset, slots, max),
        )
    }

    /// The stored values of pixels `range` of `tile`.
    pub fn tile_values(&self, tile: usize, range: Range<u64>) -> Vec<u32> {
        let mut values = Vec::with_capacity(range.end.saturating_sub(range.start) as usize);
        for run in self.row_runs(tile, range) {
            values.extend_from_slice(&self.iterations[run.start..run.start + run.len]);
        }
        values
    }

    /// Stores `values` as pixels `first..` (row-major within the tile) of `tile`, a tile row at
    /// a time; values past the tile's end are dropped.
    fn store(&mut self, tile: usize, first: u64, values: &[u32], generation: u32) {
        let max = self.max_iterations;
        self.store_with(tile, first, values.len(), generation, |offset, slots| {
            slots.copy_from_slice(&values[offset..offset + slots.len()]);
            iterations_in(slots, max)
        });
    }

    /// Stores `count` values as pixels `first..` of `tile`: `fill(offset, slots)` writes
    /// values `offset..offset + slots.len()` and returns the iterations behind them.
    fn store_with(
        &mut self,
        tile: usize,
        first: u64,
        count: usize,
        generation: u32,
        mut fill: impl FnMut(usize, &mut [u32]) -> u64,
    ) -> Stored {
        let Some(received) = self.received.get(tile) else {
            return Stored::default();
        };
        let range = first..first.saturating_add(count as u64);
        // Pixels that arrived before (a resume from an older cookie) leave the total first.
        let replaced: u64 = received
            .overlaps(range.clone())
            .map(|overlap| self.iterations_of(tile, overlap))
            .sum();
        let mut added = 0;
        let mut stored = 0;
        for run in self.row_runs(tile, range) {
            let slots = run.start..run.start + run.len;
            added += fill(stored, &mut self.iterations[slots.clone()]);
            if generation > 0 && self.generation.is_empty() {
                self.generation = vec![0; self.iterations.len()];
            }
            if let Some(marks) = self.generation.get_mut(slots) {
                marks.fill(generation);
            }
            stored += run.len;
        }
        self.total_iterations = self.total_iterations - replaced + added;
        if let Some(received) = self.received.get_mut(tile) {
            received.insert(first..first + stored as u64);
        }
        Stored {
            pixels: stored as u64,
            iterations: added,
        }
    }

    /// Failover generation of the tile of pixel `i` (row-major) when the pixel arrived.
    pub fn generation(&self, i: usize) -> u32 {
        self.generation.get(i).copied().unwrap_or(0)
    }

    /// Whether every tile is complete.
    pub fn is_complete(&self) -> bool {
        self.completed.iter().all(|&done| done)
    }

    /// Iterations behind the whole picture.
    pub fn total_iterations(&self) -> u64 {
        self.total_iterations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fractal_protocol::kernel::iterations_for;
    use rserpool::wire::PeId;

    fn started() -> ClientEvent {
        ClientEvent::ImageStarted(ImageStart {
            image: 3,
            width: 5,
            height: 2,
            max_iterations: 10,
            preset: "p".into(),
            sessions: 2,
            tiles: vec![
                TileRect {
                    index: 0,
                    x: 0,
                    y: 0,
                    width: 2,
                    height: 2,
                },
                TileRect {
                    index: 1,
                    x: 2,
                    y: 0,
                    width: 3,
                    height: 2,
                },
            ],
        })
    }

    #[test]
    fn tile_pixels_land_in_place_and_failovers_mark_generations() {
        let mut picture = ImageAssembly::from_started(&started()).expect("assembly");
        assert_eq!(picture.pixel_index(1, 0), Some(2));
        assert_eq!(picture.pixel_index(1, 3), Some(7));
        assert_eq!(picture.pixel_index(1, 6), None);
        assert_eq!(picture.pixel_index(2, 0), None);
        picture.apply(&ClientEvent::TileData {
            image: 3,
            tile: 1,
            pe_id: PeId(7),
            first: 2,
            iterations: vec![4, 10],
        });
        assert_eq!(picture.iterations, vec![0, 0, 0, 0, 4, 0, 0, 10, 0, 0]);
        // 4 escaped: 5 evaluations; 10 = max: 10 evaluations.
        assert_eq!(picture.iterations_in(1, 2, 2), 15);
        assert_eq!(picture.iterations_in(1, 0, 2), 0, "nothing received there");
        assert_eq!(picture.total_iterations(), 15);
        picture.apply(&ClientEvent::FailoverCompleted(Failover {
            image: 3,
            tile: 1,
            old_pe: PeId(7),
            new_pe: super::super::events::PeInfo {
                id: PeId(8),
                address: "127.0.0.1:1".parse().expect("address"),
            },
            resumed_at: 2,
            recomputed_pixels: 2,
            took: std::time::Duration::ZERO,
        }));
        picture.apply(&ClientEvent::TileData {
            image: 3,
            tile: 1,
            pe_id: PeId(8),
            first: 5,
            iterations: vec![1],
        });
        assert_eq!(picture.generation(9), 1);
        assert_eq!(picture.generation(7), 0);
        // Events of another image are ignored.
        picture.apply(&ClientEvent::TileCompleted { image: 4, tile: 0 });
        assert!(!picture.is_complete());
        picture.apply(&ClientEvent::TileCompleted { image: 3, tile: 0 });
        picture.apply(&ClientEvent::TileCompleted { image: 3, tile: 1 });
        assert!(picture.is_complete());
    }

    #[test]
    fn a_picture_in_reused_buffers_starts_empty_and_ends_like_a_fresh_one() {
        let data = |tile, iterations: Vec<u32>| ClientEvent::TileData {
            image: 3,
            tile,
            pe_id: PeId(7),
            first: 0,
            iterations,
        };
        let mut first = ImageAssembly::from_started(&started()).expect("assembly");
        first.apply(&data(1, vec![4, 5, 6, 7, 8, 9]));
        let mut reused =
            ImageAssembly::from_started_reusing(&started(), first.into_spare()).expect("assembly");
        let mut fresh = ImageAssembly::from_started(&started()).expect("assembly");
        assert_eq!(reused.received_pixels(), 0);
        assert_eq!(reused.total_iterations(), 0);
        assert!((0..10).all(|i| !reused.is_received(i)));
        assert_eq!(
            reused.iterations_in(1, 0, 6),
            0,
            "old values are not counted"
        );
        for picture in [&mut reused, &mut fresh] {
            picture.apply(&data(0, vec![1, 2, 3, 10]));
            picture.apply(&data(1, vec![9, 9, 9, 2, 2, 2]));
        }
        assert_eq!(reused, fresh);
        assert_eq!(fresh.received_pixels(), 10);
    }

    #[test]
    fn runs_across_tile_rows_land_where_pixel_index_says() {
        let mut picture = ImageAssembly::from_started(&started()).expect("assembly");
        // Tile 1 is 3 wide and 2 high; values past its end are dropped.
        for (first, count) in [(0u64, 6usize), (1, 4), (2, 5), (5, 1), (4, 9)] {
            let values: Vec<u32> = (0..count as u32).map(|v| v + 100 * first as u32).collect();
            picture.apply(&ClientEvent::TileData {
                image: 3,
                tile: 1,
                pe_id: PeId(9),
                first,
                iterations: values.clone(),
            });
            for (offset, value) in values.iter().enumerate() {
                if let Some(i) = picture.pixel_index(1, first + offset as u64) {
                    assert_eq!(
                        picture.iterations[i], *value,
                        "first {first} offset {offset}"
                    );
                    assert!(picture.is_received(i));
                }
            }
            // The running total equals a recount of the received pixels, overlaps included.
            let recount: u64 = (0..picture.iterations.len())
                .filter(|&i| picture.is_received(i))
                .map(|i| iterations_for(picture.iterations[i], picture.max_iterations))
                .sum();
            assert_eq!(picture.total_iterations(), recount, "after first {first}");
        }
        // Tile 0's pixels were never touched.
        for index in 0..4 {
            let i = picture.pixel_index(0, index).expect("in tile 0");
            assert!(!picture.is_received(i));
        }
    }
}
