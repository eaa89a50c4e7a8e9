//! The failover story: what happened, oldest first, in the colour of its kind.

use std::collections::VecDeque;

use egui::{Color32, RichText};

use crate::gui::model::{StoryEntry, StoryKind};

pub(crate) fn show(ui: &mut egui::Ui, story: &VecDeque<StoryEntry>) {
    ui.heading("Failover story");
    egui::ScrollArea::vertical()
        .id_salt("story")
        .max_height(220.0)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            if story.is_empty() {
                ui.label("Nothing happened yet.");
            }
            for entry in story {
                ui.horizontal_wrapped(|ui| {
                    ui.label(RichText::new(format!("{:7.2}s", entry.at_s)).monospace());
                    ui.colored_label(colour(entry.kind), &entry.text);
                });
            }
        });
}

fn colour(kind: StoryKind) -> Color32 {
    match kind {
        StoryKind::Image => Color32::LIGHT_BLUE,
        StoryKind::Failure => Color32::from_rgb(255, 110, 110),
        StoryKind::Report => Color32::from_rgb(255, 190, 90),
        StoryKind::Recovery => Color32::from_rgb(120, 220, 120),
        StoryKind::Pool => Color32::from_rgb(200, 200, 120),
        StoryKind::Control => Color32::from_rgb(190, 160, 255),
    }
}
