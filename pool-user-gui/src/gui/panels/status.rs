//! The status bar: progress of the picture, images, speed, failovers and the last message.

use std::time::Duration;

use crate::gui::model::GuiState;

/// `next_in`: time until auto-continue starts the next image, if it will.
pub(crate) fn show(
    ui: &mut egui::Ui,
    state: &GuiState,
    next_in: Option<Duration>,
    status_line: &str,
) {
    ui.horizontal(|ui| {
        match &state.picture {
            Some(picture) => {
                let percent = picture.fraction() * 100.0;
                ui.add(
                    egui::ProgressBar::new(picture.fraction() as f32)
                        .desired_width(160.0)
                        .text(format!("{percent:.1} %")),
                );
                ui.label(format!(
                    "Image {} ({}) {}x{}",
                    picture.image, picture.preset, picture.width, picture.height
                ));
                if let Some(took) = picture.completed_after {
                    match next_in {
                        Some(wait) => ui.label(format!(
                            "complete in {:.1} s; next in {} s",
                            took.as_secs_f64(),
                            wait.as_secs() + 1
                        )),
                        None => ui.label(format!("complete in {:.1} s", took.as_secs_f64())),
                    };
                }
            }
            None => {
                ui.label("No picture yet");
            }
        }
        ui.separator();
        ui.label(format!("{} images", state.images_completed));
        ui.separator();
        ui.label(format!("{:.2} Mpixel/s", state.pixels_per_s / 1e6));
        ui.separator();
        ui.label(format!("{} failovers", state.failovers));
        if !status_line.is_empty() {
            ui.separator();
            ui.label(status_line);
        }
    });
}
