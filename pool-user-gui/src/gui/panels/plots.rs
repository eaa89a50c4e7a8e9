//! The figures over time: handling speed with failover marks, sessions and load per PE.

use std::collections::{BTreeMap, VecDeque};

use egui::Color32;
use egui_plot::{Legend, Line, Plot, PlotPoints, VLine};

use crate::gui::model::History;
use rserpool::wire::PeId;

pub(crate) fn show(ui: &mut egui::Ui, history: &History) {
    speed(ui, history);
    ui.heading("Sessions per PE");
    let sessions = Plot::new("sessions")
        .height(120.0)
        .include_y(0.0)
        .allow_drag(false)
        .legend(Legend::default());
    per_pe(ui, sessions, &history.sessions);
    if !history.load.is_empty() {
        ui.heading("Load per PE (registrar)");
        let load = Plot::new("load")
            .height(100.0)
            .include_y(0.0)
            .include_y(1.0)
            .allow_drag(false);
        per_pe(ui, load, &history.load);
    }
}

fn speed(ui: &mut egui::Ui, history: &History) {
    ui.heading("Handling speed");
    // Start the time axis at 0 so that failover marks alone do not make a microscopic axis.
    Plot::new("speed")
        .height(120.0)
        .include_x(0.0)
        .include_y(0.0)
        .allow_drag(false)
        .x_axis_label("s")
        .show(ui, |plot| {
            let points: Vec<[f64; 2]> = history
                .speed
                .iter()
                .map(|[t, speed]| [*t, speed / 1e6])
                .collect();
            plot.line(Line::new("Mpixel/s", PlotPoints::from(points)));
            for at in &history.failovers {
                plot.vline(VLine::new("failover", *at).color(Color32::RED));
            }
        });
}

/// One line per PE, named by its identifier.
fn per_pe(ui: &mut egui::Ui, plot: Plot<'_>, series: &BTreeMap<PeId, VecDeque<[f64; 2]>>) {
    plot.show(ui, |plot| {
        for (pe, series) in series {
            let points: Vec<[f64; 2]> = series.iter().copied().collect();
            plot.line(Line::new(format!("{pe}"), PlotPoints::from(points)));
        }
    });
}
