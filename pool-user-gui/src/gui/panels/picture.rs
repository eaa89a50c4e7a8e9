//! The picture: a texture updated where data arrived, scaled into the central area, with the
//! tiles' borders, their PEs and a pulsing frame around tiles without a PE.

use egui::{
    Align2, Color32, ColorImage, FontId, Painter, Rect, RichText, Sense, Stroke, StrokeKind,
    TextureHandle, TextureOptions, Vec2,
};

use crate::client::events::TileRect;
use crate::gui::app::{STREAMING_FRAME, Settings};
use crate::gui::model::{ColourOptions, Picture, TileProgress};

/// Smallest picture side (rsplib's minimum width/height).
const MIN_SIDE: u32 = 64;
/// Largest picture side.
const MAX_SIDE: u32 = 4096;

/// The picture's texture, kept between frames so that only changed rows are uploaded.
#[derive(Default)]
pub(crate) struct PictureView {
    texture: Option<TextureHandle>,
    /// Image and colours the texture was drawn with (a change redraws everything).
    drawn_with: Option<(u64, ColourOptions)>,
}

impl PictureView {
    /// Draws `picture` (or why there is none) into the rest of `ui`; returns the picture size
    /// that area wants, in physical pixels.
    pub(crate) fn show(
        &mut self,
        ui: &mut egui::Ui,
        picture: Option<&mut Picture>,
        settings: &Settings,
        client_error: Option<&str>,
    ) -> (u32, u32) {
        let available = ui.available_size();
        let pixels_per_point = ui.ctx().pixels_per_point();
        // Used by the next image; only a window resize restarts the current one (panels that
        // change width just rescale the picture).
        let wanted = (
            ((available.x * pixels_per_point) as u32).clamp(MIN_SIDE, MAX_SIDE),
            ((available.y * pixels_per_point) as u32).clamp(MIN_SIDE, MAX_SIDE),
        );

        if let Some(error) = client_error {
            ui.centered_and_justified(|ui| {
                ui.label(
                    RichText::new(format!("The fractal client is not running:\n{error}"))
                        .color(Color32::LIGHT_RED)
                        .size(18.0),
                );
            });
            return wanted;
        }
        if let Some(picture) = picture {
            self.update_texture(ui.ctx(), picture, settings.colours);
            if let Some(texture) = &self.texture {
                draw(ui, picture, texture, settings);
                return wanted;
            }
        }
        ui.centered_and_justified(|ui| {
            ui.label(RichText::new("Waiting for the first image ...").size(18.0));
        });
        wanted
    }

    /// Uploads the changed rows of the picture to the texture.
    fn update_texture(
        &mut self,
        ctx: &egui::Context,
        picture: &mut Picture,
        colours: ColourOptions,
    ) {
        let key = (picture.image, colours);
        let size = [picture.width as usize, picture.height as usize];
        let fresh = self.drawn_with != Some(key)
            || self
                .texture
                .as_ref()
                .is_none_or(|texture| texture.size() != size);
        if fresh {
            picture.invalidate();
        }
        let Some((from, to)) = picture.take_dirty_rows() else {
            return;
        };
        let rows = picture.render_rows(from, to, colours);
        let band = ColorImage::from_rgba_unmultiplied(
            [picture.width as usize, (to - from) as usize],
            rows.as_flattened(),
        );
        match self.texture.as_mut() {
            Some(texture) if !fresh || texture.size() == size => {
                texture.set_partial([0, from as usize], band, TextureOptions::LINEAR);
            }
            _ => {
                self.texture = Some(ctx.load_texture("picture", band, TextureOptions::LINEAR));
            }
        }
        self.drawn_with = Some(key);
    }
}

/// The picture fitted into the area (keeping its aspect ratio), and the tiles over it.
fn draw(ui: &mut egui::Ui, picture: &Picture, texture: &TextureHandle, settings: &Settings) {
    let available = ui.available_size();
    let pixels_per_point = ui.ctx().pixels_per_point();
    let size = Vec2::new(picture.width as f32, picture.height as f32) / pixels_per_point;
    let scale = (available.x / size.x).min(available.y / size.y).min(1.0);
    let (rect, _response) = ui.allocate_exact_size(size * scale, Sense::hover());
    let painter = ui.painter_at(rect);
    painter.image(
        texture.id(),
        rect,
        Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
        Color32::WHITE,
    );
    let to_screen = |x: u32, y: u32| {
        rect.min
            + Vec2::new(
                x as f32 / picture.width as f32 * rect.width(),
                y as f32 / picture.height as f32 * rect.height(),
            )
    };
    let many = picture.tiles.len() > 1;
    for (tile, progress) in picture.tiles.iter().zip(&picture.progress) {
        let tile_rect = Rect::from_min_max(
            to_screen(tile.x, tile.y),
            to_screen(tile.x + tile.width, tile.y + tile.height),
        );
        if settings.show_borders && many {
            painter.rect_stroke(
                tile_rect,
                0.0,
                Stroke::new(1.0, Color32::from_black_alpha(140)),
                StrokeKind::Inside,
            );
        }
        if progress.failing_over || progress.waiting {
            failover_frame(ui, &painter, tile_rect);
        }
        if settings.show_borders && settings.show_session_numbers && many && !progress.completed {
            tile_label(&painter, tile_rect, tile, progress);
        }
    }
}

/// A pulsing red frame while the tile has no PE.
fn failover_frame(ui: &egui::Ui, painter: &Painter, tile_rect: Rect) {
    let phase = (ui.input(|input| input.time) * 4.0).sin() * 0.5 + 0.5;
    painter.rect_stroke(
        tile_rect,
        0.0,
        Stroke::new(
            3.0,
            Color32::from_rgba_unmultiplied(255, 40, 40, (120.0 + 135.0 * phase) as u8),
        ),
        StrokeKind::Inside,
    );
    ui.ctx().request_repaint_after(STREAMING_FRAME);
}

/// The tile's number and its PE (or why it has none), red on a black shadow.
fn tile_label(painter: &Painter, tile_rect: Rect, tile: &TileRect, progress: &TileProgress) {
    let mut label = format!("{}", tile.index + 1);
    if let Some(pe) = progress.pe {
        label.push_str(&format!("\n{pe}"));
    } else if progress.waiting {
        label.push_str("\nno PE");
    } else if progress.failing_over {
        label.push_str("\nfailover");
    }
    let font = FontId::proportional((tile_rect.height() / 5.0).clamp(9.0, 16.0));
    painter.text(
        tile_rect.center() + Vec2::new(1.0, 1.0),
        Align2::CENTER_CENTER,
        &label,
        font.clone(),
        Color32::BLACK,
    );
    painter.text(
        tile_rect.center(),
        Align2::CENTER_CENTER,
        &label,
        font,
        Color32::from_rgb(230, 30, 30),
    );
}
