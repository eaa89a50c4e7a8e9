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
