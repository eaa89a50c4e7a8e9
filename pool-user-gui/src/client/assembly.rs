//! Putting a picture together from [`ClientEvent`]s, for any front end.

use fractal_protocol::kernel::iterations_for;

use super::events::{ClientEvent, TileRect};

/// The picture of one image as its events arrive: iteration counts and, per pixel, how many
/// failovers its session had gone through when the pixel arrived (for colour marks).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageAssembly {
    pub image: u64,
    pub width: u32,
    pub height: u32,
    pub max_iterations: u32,
    pub tiles: Vec<TileRect>,
    /// Row-major iteration counts (0 where nothing arrived yet).
    pub iterations: Vec<u32>,
    /// Row-major failover generation of each pixel's session when it arrived.
    pub generation: Vec<u32>,
    /// Whether each pixel arrived.
    pub received: Vec<bool>,
    /// PE that delivered each pixel last (0 = none yet).
    pub pe_of_pixel: Vec<u32>,
    /// Failovers per session so far.
    pub failovers: Vec<u32>,
    /// Completed tiles.
    pub completed: Vec<bool>,
}

impl ImageAssembly {
    /// An empty picture for an `ImageStarted` event (`None` for other events).
    pub fn from_started(event: &ClientEvent) -> Option<ImageAssembly> {
        let ClientEvent::ImageStarted {
            image,
            width,
            height,
            max_iterations,
            tiles,
            ..
        } = event
        else {
            return None;
        };
        let pixels = *width as usize * *height as usize;
        Some(ImageAssembly {
            image: *image,
            width: *width,
            height: *height,
            max_iterations: *max_iterations,
            tiles: tiles.clone(),
            iterations: vec![0; pixels],
            generation: vec![0; pixels],
            received: vec![false; pixels],
            pe_of_pixel: vec![0; pixels],
            failovers: vec![0; tiles.len()],
            completed: vec![false; tiles.len()],
        })
    }

    /// Row-major index in the picture of pixel `index` (row-major within the tile) of `session`.
    pub fn pixel_index(&self, session: usize, index: u64) -> Option<usize> {
        let tile = self.tiles.get(session)?;
        let width = u64::from(tile.width);
        if width == 0 || index >= width * u64::from(tile.height) {
            return None;
        }
        let x = u64::from(tile.x) + index % width;
        let y = u64::from(tile.y) + index / width;
        usize::try_from(y * u64::from(self.width) + x).ok()
    }

    /// Iterations behind pixels `first .. first + count` of `session` as received so far.
    pub fn iterations_in(&self, session: usize, first: u64, count: u64) -> u64 {
        (first..first + count)
            .filter_map(|index| self.pixel_index(session, index))
            .filter(|&i| self.received.get(i).copied().unwrap_or(false))
            .filter_map(|i| self.iterations.get(i))
            .map(|&value| iterations_for(value, self.max_iterations))
            .sum()
    }

    /// Applies one event of this image (events of other images are ignored).
    pub fn apply(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::TileData {
                image,
                session,
                pe_id,
                first,
                iterations,
            } if *image == self.image => {
                let generation = self.failovers.get(*session).copied().unwrap_or(0);
                for (offset, value) in iterations.iter().enumerate() {
                    if let Some(i) = self.pixel_index(*session, first + offset as u64)
                        && i < self.iterations.len()
                    {
                        self.iterations[i] = *value;
                        self.generation[i] = generation;
                        self.received[i] = true;
                        self.pe_of_pixel[i] = *pe_id;
                    }
                }
            }
            ClientEvent::FailoverCompleted { image, session, .. } if *image == self.image => {
                if let Some(count) = self.failovers.get_mut(*session) {
                    *count += 1;
                }
            }
            ClientEvent::TileCompleted { image, session } if *image == self.image => {
                if let Some(done) = self.completed.get_mut(*session) {
                    *done = true;
                }
            }
            _ => {}
        }
    }

    /// Whether every tile is complete.
    pub fn is_complete(&self) -> bool {
        self.completed.iter().all(|&done| done)
    }

    /// Iterations behind the whole picture.
    pub fn total_iterations(&self) -> u64 {
        self.iterations
            .iter()
            .map(|&value| iterations_for(value, self.max_iterations))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> ClientEvent {
        ClientEvent::ImageStarted {
            image: 3,
            width: 5,
            height: 2,
            max_iterations: 10,
            preset: "p".into(),
            tiles: vec![
                TileRect {
                    session: 0,
                    x: 0,
                    y: 0,
                    width: 2,
                    height: 2,
                },
                TileRect {
                    session: 1,
                    x: 2,
                    y: 0,
                    width: 3,
                    height: 2,
                },
            ],
        }
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
            session: 1,
            pe_id: 7,
            first: 2,
            iterations: vec![4, 10],
        });
        assert_eq!(picture.iterations, vec![0, 0, 0, 0, 4, 0, 0, 10, 0, 0]);
        // 4 escaped: 5 evaluations; 10 = max: 10 evaluations.
        assert_eq!(picture.iterations_in(1, 2, 2), 15);
        assert_eq!(picture.iterations_in(1, 0, 2), 0, "nothing received there");
        picture.apply(&ClientEvent::FailoverCompleted {
            image: 3,
            session: 1,
            old_pe: 7,
            new_pe: super::super::events::PeInfo {
                id: 8,
                address: "127.0.0.1:1".parse().expect("address"),
            },
            resumed_at: 2,
            recomputed_pixels: 2,
            took: std::time::Duration::ZERO,
        });
        picture.apply(&ClientEvent::TileData {
            image: 3,
            session: 1,
            pe_id: 8,
            first: 5,
            iterations: vec![1],
        });
        assert_eq!(picture.generation[9], 1);
        assert_eq!(picture.generation[7], 0);
        assert_eq!(picture.pe_of_pixel[9], 8);
        // Events of another image are ignored.
        picture.apply(&ClientEvent::TileCompleted {
            image: 4,
            session: 0,
        });
        assert!(!picture.is_complete());
        picture.apply(&ClientEvent::TileCompleted {
            image: 3,
            session: 0,
        });
        picture.apply(&ClientEvent::TileCompleted {
            image: 3,
            session: 1,
        });
        assert!(picture.is_complete());
    }
}
