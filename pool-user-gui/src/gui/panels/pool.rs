//! The pool panel: the registrars, the pool as a registrar lists it (with each PE's share of
//! the work beside its share of the capacity) and, for the bundled demo pool, buttons that
//! kill, hang and restart registrars and kill, hang, stop, restart and add pool elements.

use egui::{Color32, FontId, RichText};
use fractal_protocol::palette;

use crate::client::events::PoolEntry;
use crate::gui::control::{BundledPe, BundledRegistrar, ChildState, PoolControl};

use crate::gui::model::{GuiState, Picture, RegistrarStatus};

/// The bundled processes as this frame shows them.
pub(crate) struct Bundled {
    pub registrars: Vec<BundledRegistrar>,
    pub pes: Vec<BundledPe>,
}

impl Bundled {
    pub(crate) fn of(pool: &dyn PoolControl) -> Bundled {
        Bundled {
            registrars: pool.registrars(),
            pes: pool.pool_elements(),
        }
    }
}

/// What the user asked of the bundled pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum PoolAction {
    /// To the PE in this slot.
    Pe(PeAction, usize),
    /// To the registrar with this identifier.
    Registrar(RegistrarAction, u32),
    /// A new PE with this capacity (iterations per second; None = unlimited).
    Add(Option<u64>),
}

/// What a registrar's buttons do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegistrarAction {
    Kill,
    /// Hang, or resume a hung registrar.
    Hang,
    Restart,
}

/// What a PE's buttons do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeAction {
    Kill,
    /// Hang, or resume a hung PE.
    Hang,
    Stop,
    Restart,
}

impl PoolAction {
    /// Does it; returns the failover story's line for it. `pes` names the PEs by slot.
    pub(crate) fn apply(self, pool: &mut dyn PoolControl, pes: &[BundledPe]) -> String {
        match self {
            PoolAction::Pe(action, slot) => pe_action(pool, action, slot, pes),
            PoolAction::Registrar(RegistrarAction::Kill, id) => {
                pool.kill_registrar(id);
                format!(
                    "Killed registrar {id} (SIGKILL): its peers take over its PEs once it has \
                     been silent for 4 s"
                )
            }
            PoolAction::Registrar(RegistrarAction::Hang, id) => {
                pool.toggle_hang_registrar(id);
                format!("Hang/resume registrar {id} (SIGSTOP/SIGCONT)")
            }
            PoolAction::Registrar(RegistrarAction::Restart, id) => {
                pool.restart_registrar(id);
                format!("Restarted registrar {id}: empty, it downloads the handlespace from a peer")
            }
            PoolAction::Add(capacity) => {
                pool.add(capacity);
                format!("Added a PE ({})", describe_capacity(capacity))
            }
        }
    }
}

fn pe_action(
    pool: &mut dyn PoolControl,
    action: PeAction,
    slot: usize,
    pes: &[BundledPe],
) -> String {
    let name = pes
        .iter()
        .find(|pe| pe.slot == slot)
        .and_then(|pe| pe.pe_id)
        .map_or(format!("#{slot}"), |id| format!("{id}"));
    let (what, text) = match action {
        PeAction::Kill => {
            pool.kill(slot);
            ("kill", format!("Killed PE {name} (SIGKILL)"))
        }
        PeAction::Hang => {
            pool.toggle_hang(slot);
            ("hang", format!("Hang/resume PE {name} (SIGSTOP/SIGCONT)"))
        }
        PeAction::Stop => {
            pool.stop(slot);
            (
                "stop",
                format!("Stopping PE {name} (SIGTERM: final cookies, deregistration)"),
            )
        }
        PeAction::Restart => {
            pool.restart(slot);
            ("restart", format!("Restarted PE #{slot}"))
        }
    };
    tracing::info!(slot, action = what, "pool control");
    text
}

/// The panel; `add_capacity_m` is the Add PE slider (M iterations per second).
pub(crate) fn show(
    ui: &mut egui::Ui,
    state: &GuiState,
    pool_name: &str,
    bundled: Option<&Bundled>,
    add_capacity_m: &mut f32,
) -> Option<PoolAction> {
    let mut action = None;
    ui.heading(format!("Pool {pool_name}"));
    registrar_status(ui, state);
    if let Some(bundled) = bundled {
        for registrar in &bundled.registrars {
            ui.horizontal(|ui| {
                let homed = state
                    .pool
                    .iter()
                    .filter(|entry| entry.home_registrar == registrar.id)
                    .count();
                // Its own view, when the client asks every registrar (several bundled).
                let view = registrar
                    .address
                    .and_then(|address| state.registrar_views.get(&address))
                    .map_or(String::new(), |view| match view.pes {
                        Some(pes) => format!("; lists {pes} (checksum {:#06x})", view.checksum),
                        None => "; not answering".to_owned(),
                    });
                ui.label(format!(
                    "Registrar {} ({}): {}, home of {homed} PEs{view}",
                    registrar.id,
                    registrar
                        .address
                        .map_or("?".to_owned(), |address| address.to_string()),
                    describe_child(&registrar.state, registrar.pid)
                ));
                let id = registrar.id;
                if ui.button("Kill").clicked() {
                    action = Some(PoolAction::Registrar(RegistrarAction::Kill, id));
                }
                let hang = match registrar.state {
                    ChildState::Hung => "Resume",
                    _ => "Hang",
                };
                if ui.button(hang).clicked() {
                    action = Some(PoolAction::Registrar(RegistrarAction::Hang, id));
                }
                if ui.button("Restart").clicked() {
                    action = Some(PoolAction::Registrar(RegistrarAction::Restart, id));
                }
            });
        }
    }
    if state.pool.is_empty() && state.registrar != RegistrarStatus::Unknown {
        ui.colored_label(
            Color32::YELLOW,
            "No pool element registered: the picture waits until one joins.",
        );
    }
    if let Some(picture) = &state.picture {
        ui.label(format!(
            "Image {}: {} units for {} sessions, {} waiting; {} tails taken over",
            picture.image,
            picture.units,
            picture.sessions,
            picture.units_waiting(),
            picture.tail_takeovers
        ));
    }
    let bundled_pes = bundled.map_or(&[][..], |bundled| &bundled.pes);
    pool_grid(ui, state, bundled_pes, &mut action);
    if !bundled_pes.is_empty() {
        ui.add_space(6.0);
        ui.label(RichText::new("Bundled pool elements").strong());
        bundle_grid(ui, bundled_pes, &mut action);
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(add_capacity_m, 0.0..=1000.0)
                    .logarithmic(true)
                    .text("M iterations/s (0 = unlimited)"),
            );
            if ui.button("Add PE").clicked() {
                let capacity =
                    (*add_capacity_m >= 1.0).then(|| (f64::from(*add_capacity_m) * 1e6) as u64);
                action = Some(PoolAction::Add(capacity));
            }
        });
    }
    action
}

fn registrar_status(ui: &mut egui::Ui, state: &GuiState) {
    match &state.registrar {
        RegistrarStatus::Unknown => {
            ui.label("Looking for a registrar ...");
        }
        RegistrarStatus::Up(address) => {
            let address = address.map_or("?".to_owned(), |address| address.to_string());
            ui.label(format!(
                "Registrar {address}: up, {} PEs in the pool",
                state.pool.len()
            ));
        }
        RegistrarStatus::Unavailable(detail) => {
            ui.colored_label(
                Color32::LIGHT_RED,
                format!("No registrar reachable ({detail}); retrying"),
            );
        }
    }
}

/// Totals the work shares are measured against.
struct Totals {
    /// The pool's capacity (of the PEs whose capacity is known), iterations per second.
    capacity: f64,
    /// This picture's iterations so far.
    work: u64,
}

/// The pool as the registrar lists it, one row per PE.
fn pool_grid(
    ui: &mut egui::Ui,
    state: &GuiState,
    bundled_pes: &[BundledPe],
    action: &mut Option<PoolAction>,
) {
    // Each PE's capacity: what a bundled PE reported, else what its policy advertises.
    let capacities: Vec<Option<f64>> = state
        .pool
        .iter()
        .map(|entry| {
            bundled_pes
                .iter()
                .find(|pe| pe.pe_id == Some(entry.id))
                .and_then(|pe| pe.reported_capacity.or(pe.capacity))
                .map(|capacity| capacity as f64)
                .or(entry.capacity)
        })
        .collect();
    let totals = Totals {
        capacity: capacities.iter().flatten().sum(),
        work: state
            .picture
            .as_ref()
            .map_or(0, |picture| picture.pe_work.values().sum()),
    };
    egui::Grid::new("pool-grid")
        .striped(true)
        .num_columns(6)
        .show(ui, |ui| {
            ui.strong("PE");
            ui.strong("Policy, load");
            ui.strong("Capacity");
            ui.strong("Work / capacity").on_hover_text(
                "This picture's iterations the PE computed, against its share of the \
                 pool's capacity (the white tick)",
            );
            ui.strong("Done")
                .on_hover_text("Tiles completed since the window opened");
            ui.strong("");
            ui.end_row();
            for (entry, capacity) in state.pool.iter().zip(&capacities) {
                pool_row(ui, state, entry, *capacity, &totals);
                match bundled_pes.iter().find(|pe| pe.pe_id == Some(entry.id)) {
                    Some(pe) => {
                        ui.horizontal(|ui| pe_buttons(ui, pe, action));
                    }
                    None => {
                        ui.label("");
                    }
                }
                ui.end_row();
            }
        });
}

/// The cells of one PE's row, but its buttons.
fn pool_row(
    ui: &mut egui::Ui,
    state: &GuiState,
    entry: &PoolEntry,
    capacity: Option<f64>,
    totals: &Totals,
) {
    let picture: Option<&Picture> = state.picture.as_ref();
    let mark = picture
        .and_then(|picture| picture.pe_mark_index(entry.id))
        .map(|index| palette::mark_tint(index as u32));
    let label = RichText::new(format!("{}", entry.id)).monospace();
    let serving: Vec<String> = state
        .serving
        .get(&entry.id)
        .map(|tiles| tiles.iter().map(|t| (t + 1).to_string()).collect())
        .unwrap_or_default();
    let hover = format!(
        "{}\nserving tiles {}",
        entry.address,
        if serving.is_empty() {
            "-".to_owned()
        } else {
            serving.join(", ")
        }
    );
    match mark {
        Some([r, g, b]) => ui.colored_label(Color32::from_rgb(r, g, b), label),
        None => ui.label(label),
    }
    .on_hover_text(hover);
    match entry.load {
        Some(load) => ui.label(format!("{} {:.0} %", entry.policy, load * 100.0)),
        None => ui.label(&entry.policy),
    };
    ui.label(capacity.map_or("?".to_owned(), |c| format!("{:.0} M it/s", c / 1e6)));
    let work = picture
        .and_then(|picture| picture.pe_work.get(&entry.id))
        .copied()
        .unwrap_or(0);
    work_share(ui, work, totals.work, capacity, totals.capacity);
    ui.label(
        state
            .tiles_completed_by
            .get(&entry.id)
            .copied()
            .unwrap_or(0)
            .to_string(),
    );
}

/// The bundled PEs by slot, whether registered or not.
fn bundle_grid(ui: &mut egui::Ui, pes: &[BundledPe], action: &mut Option<PoolAction>) {
    egui::Grid::new("bundle-grid")
        .striped(true)
        .num_columns(4)
        .show(ui, |ui| {
            for pe in pes {
                ui.label(format!("#{}", pe.slot));
                ui.label(pe.pe_id.map_or("-".to_owned(), |id| format!("{id}")));
                ui.label(format!(
                    "{}, {}",
                    describe_capacity(pe.capacity),
                    describe_child(&pe.state, pe.pid)
                ));
                ui.horizontal(|ui| pe_buttons(ui, pe, action));
                ui.end_row();
            }
        });
}

fn pe_buttons(ui: &mut egui::Ui, pe: &BundledPe, action: &mut Option<PoolAction>) {
    let alive = matches!(pe.state, ChildState::Running | ChildState::Hung);
    if ui
        .add_enabled(alive, egui::Button::new("Kill"))
        .on_hover_text("SIGKILL")
        .clicked()
    {
        *action = Some(PoolAction::Pe(PeAction::Kill, pe.slot));
    }
    let hang = if pe.state == ChildState::Hung {
        "Resume"
    } else {
        "Hang"
    };
    if ui
        .add_enabled(alive, egui::Button::new(hang))
        .on_hover_text("SIGSTOP / SIGCONT")
        .clicked()
    {
        *action = Some(PoolAction::Pe(PeAction::Hang, pe.slot));
    }
    if ui
        .add_enabled(pe.state == ChildState::Running, egui::Button::new("Stop"))
        .on_hover_text("SIGTERM: graceful")
        .clicked()
    {
        *action = Some(PoolAction::Pe(PeAction::Stop, pe.slot));
    }
    if ui.button("Restart").clicked() {
        *action = Some(PoolAction::Pe(PeAction::Restart, pe.slot));
    }
}

/// A PE's share of the picture's work beside its share of the pool's capacity: a bar of the
/// work share with a tick at the capacity share, green when within 20 % of it.
fn work_share(ui: &mut egui::Ui, work: u64, total_work: u64, capacity: Option<f64>, total: f64) {
    let work_share = if total_work > 0 {
        work as f64 / total_work as f64
    } else {
        0.0
    };
    let capacity_share = capacity.filter(|_| total > 0.0).map(|c| c / total);
    let (rect, _) = ui.allocate_exact_size(egui::vec2(120.0, 14.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, Color32::from_gray(50));
    let fair = capacity_share.is_none_or(|share| {
        total_work == 0 || (work_share / share.max(f64::MIN_POSITIVE) - 1.0).abs() <= 0.2
    });
    let fill = if fair {
        Color32::from_rgb(70, 170, 90)
    } else {
        Color32::from_rgb(210, 170, 40)
    };
    let mut bar = rect;
    bar.set_width(rect.width() * work_share.clamp(0.0, 1.0) as f32);
    painter.rect_filled(bar, 2.0, fill);
    if let Some(share) = capacity_share {
        let x = rect.left() + rect.width() * share.clamp(0.0, 1.0) as f32;
        painter.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
            egui::Stroke::new(2.0, Color32::WHITE),
        );
    }
    let text = match capacity_share {
        Some(share) => format!("{:.0} % / {:.0} %", work_share * 100.0, share * 100.0),
        None => format!("{:.0} %", work_share * 100.0),
    };
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        text,
        FontId::proportional(11.0),
        Color32::WHITE,
    );
}

fn describe_capacity(capacity: Option<u64>) -> String {
    match capacity {
        None => "unlimited".to_owned(),
        Some(rate) => format!("{:.0} M it/s", rate as f64 / 1e6),
    }
}

fn describe_child(state: &ChildState, pid: Option<u32>) -> String {
    let pid = pid.map_or(String::new(), |pid| format!(" (pid {pid})"));
    match state {
        ChildState::Starting => format!("starting{pid}"),
        ChildState::Running => format!("running{pid}"),
        ChildState::Hung => format!("hung{pid}"),
        ChildState::Stopping => format!("stopping{pid}"),
        ChildState::Exited(how) => format!("exited: {how}"),
    }
}
