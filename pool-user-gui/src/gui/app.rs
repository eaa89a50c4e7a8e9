//! The window: controls, picture, pool panel, failover story and plots.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use egui::{
    Align2, Color32, ColorImage, FontId, Key, Rect, RichText, Sense, Stroke, StrokeKind,
    TextureHandle, TextureOptions, Vec2, ViewportCommand,
};
use egui_plot::{Legend, Line, Plot, PlotPoints, VLine};
use fractal_protocol::palette::{self, Palette};
use fractal_protocol::preset::Preset;

use super::control::{ChildState, ClientControl, ImageRequest, PoolControl};
use super::model::{ColourOptions, GuiState, RegistrarStatus, StoryKind};
use super::test_hooks::{HookRunner, TestHooks};
use crate::client::events::ClientEvent;

/// rsplib's session choices (its context menu).
pub const SESSION_CHOICES: [usize; 18] = [
    1, 2, 3, 4, 6, 8, 9, 16, 25, 36, 49, 64, 81, 100, 144, 225, 256, 400,
];
/// Smallest picture side (rsplib's minimum width/height).
const MIN_SIDE: u32 = 64;
/// Largest picture side.
const MAX_SIDE: u32 = 4096;
/// A resize or session change restarts the picture after this calm period (rsplib: 500 ms).
const RESTART_DELAY: Duration = Duration::from_millis(500);
/// Frame interval while data streams in (60 frames/s).
const STREAMING_FRAME: Duration = Duration::from_millis(16);

/// The keyboard shortcuts, as the window explains them.
const SHORTCUTS: &str = "N next image · R random preset · Space auto-continue on/off · \
                         S save PNG · + / - sessions · M failover marks · P PE marks · \
                         B tile borders";

/// Which preset the next image uses.
#[derive(Clone, Debug, PartialEq)]
pub enum PresetChoice {
    /// A random built-in preset per image (rsplib's behaviour).
    Random,
    /// This preset every time (a built-in one or an opened `.fsf`).
    Fixed(Preset),
}

/// Settings the user changes in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub sessions: usize,
    pub preset: PresetChoice,
    pub colours: ColourOptions,
    pub auto_continue: bool,
    /// Pause between images with auto-continue (rsplib: 5 s).
    pub pause_s: f32,
    pub show_borders: bool,
    pub show_session_numbers: bool,
    /// Where Save PNG writes.
    pub save_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sessions: 16,
            preset: PresetChoice::Random,
            colours: ColourOptions::default(),
            auto_continue: true,
            pause_s: 5.0,
            show_borders: true,
            show_session_numbers: true,
            save_dir: PathBuf::from("."),
        }
    }
}

/// The application: state, settings and the two outward interfaces.
pub struct PoolUserApp {
    pub state: GuiState,
    pub settings: Settings,
    events: mpsc::Receiver<ClientEvent>,
    client: Option<Box<dyn ClientControl>>,
    client_error: Option<String>,
    pool_control: Option<Box<dyn PoolControl>>,
    pool_name: String,
    /// Only tests turn these on.
    hooks: HookRunner,
    builtin: Vec<Preset>,
    texture: Option<TextureHandle>,
    /// Colours the texture was drawn with (a change redraws everything).
    drawn_with: Option<(u64, ColourOptions)>,
    /// Picture size wanted by the layout (physical pixels).
    wanted_size: Option<(u32, u32)>,
    /// Window size in points (a change restarts the picture).
    window_size: Option<egui::Vec2>,
    /// Size and sessions of the image last requested.
    requested: Option<ImageRequest>,
    restart_at: Option<Instant>,
    next_image_at: Option<Instant>,
    last_data_at: Option<Instant>,
    add_capacity_m: f32,
    fsf_path: String,
    status_line: String,
    title: String,
}

impl PoolUserApp {
    /// A window fed by `events`, commanding `client` (None: `client_error` says why) and, for
    /// the bundled pool, `pool_control`.
    pub fn new(
        events: mpsc::Receiver<ClientEvent>,
        client: Result<Box<dyn ClientControl>, String>,
        pool_control: Option<Box<dyn PoolControl>>,
        pool_name: String,
        settings: Settings,
        hooks: TestHooks,
    ) -> PoolUserApp {
        let (client, client_error) = match client {
            Ok(client) => (Some(client), None),
            Err(error) => (None, Some(error)),
        };
        let mut state = GuiState::new();
        let mode = if pool_control.is_some() {
            "bundled demo pool on loopback"
        } else {
            "existing deployment"
        };
        state.note(StoryKind::Control, format!("Pool {pool_name}: {mode}"));
        PoolUserApp {
            state,
            settings,
            events,
            client,
            client_error,
            pool_control,
            title: String::new(),
            pool_name,
            hooks: HookRunner::new(hooks),
            builtin: Preset::builtin(),
            texture: None,
            drawn_with: None,
            wanted_size: None,
            window_size: None,
            requested: None,
            restart_at: None,
            next_image_at: None,
            last_data_at: None,
            add_capacity_m: 100.0,
            fsf_path: String::new(),
            status_line: String::new(),
        }
    }

    /// The last image request sent to the client.
    pub fn last_request(&self) -> Option<&ImageRequest> {
        self.requested.as_ref()
    }

    /// Applies all pending client events.
    pub fn drain_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            if matches!(event, ClientEvent::TileData { .. }) {
                self.last_data_at = Some(Instant::now());
            }
            let completed = matches!(event, ClientEvent::ImageCompleted { .. });
            self.state.apply(event);
            if completed && self.settings.auto_continue {
                self.next_image_at =
                    Some(Instant::now() + Duration::from_secs_f32(self.settings.pause_s.max(0.0)));
            }
        }
    }

    /// Sends a new image request with the current settings (now).
    pub fn start_next_image(&mut self) {
        let Some((width, height)) = self.hooks.fixed_size().or(self.wanted_size) else {
            return;
        };
        let preset = match &self.settings.preset {
            PresetChoice::Random => Preset::random(&mut rand::rng()),
            PresetChoice::Fixed(preset) => preset.clone(),
        };
        let request = ImageRequest {
            width,
            height,
            sessions: self.settings.sessions,
            preset,
        };
        self.restart_at = None;
        self.next_image_at = None;
        if let Some(client) = self.client.as_mut() {
            client.start_image(request.clone());
        }
        self.requested = Some(request);
    }

    /// Restarts the picture after the calm period (resize, session change).
    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + RESTART_DELAY);
    }

    fn set_sessions(&mut self, sessions: usize) {
        if sessions != self.settings.sessions {
            self.settings.sessions = sessions;
            self.schedule_restart();
        }
    }

    fn step_sessions(&mut self, up: bool) {
        let position = SESSION_CHOICES
            .iter()
            .position(|&choice| choice >= self.settings.sessions)
            .unwrap_or(SESSION_CHOICES.len() - 1);
        let next = if up {
            (position + 1).min(SESSION_CHOICES.len() - 1)
        } else {
            position.saturating_sub(1)
        };
        self.set_sessions(SESSION_CHOICES[next]);
    }

    /// Writes the current picture as PNG into the save directory.
    pub fn save_png(&mut self) -> Result<PathBuf, String> {
        let Some(picture) = &self.state.picture else {
            return Err("no picture yet".to_owned());
        };
        let pixels = picture.render_rows(0, picture.height, self.settings.colours);
        let rgba: Vec<u8> = pixels.as_flattened().to_vec();
        let image = image::RgbaImage::from_raw(picture.width, picture.height, rgba)
            .ok_or_else(|| "picture buffer has the wrong size".to_owned())?;
        let path = self.settings.save_dir.join(format!(
            "fractal-{:04}-{}.png",
            picture.image, picture.preset
        ));
        image
            .save(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(path)
    }

    fn open_fsf(&mut self) {
        match Preset::from_fsf_file(self.fsf_path.trim()) {
            Ok(preset) => {
                self.status_line = format!("Opened preset {}", preset.name);
                self.settings.preset = PresetChoice::Fixed(preset);
                self.start_next_image();
            }
            Err(error) => self.status_line = format!("Cannot open: {error}"),
        }
    }

    /// Timers and hooks that run every frame, before drawing.
    fn housekeeping(&mut self, ctx: &egui::Context) {
        self.drain_events();
        self.state.tick();
        if let Some(pool) = self.pool_control.as_mut() {
            pool.poll();
        }
        let now = Instant::now();
        let window = ctx.content_rect().size();
        if self.window_size != Some(window) {
            let resized = self.window_size.is_some();
            self.window_size = Some(window);
            if resized && self.requested.is_some() && self.hooks.fixed_size().is_none() {
                self.schedule_restart();
            }
        }
        let size_known = self.hooks.fixed_size().or(self.wanted_size).is_some();
        if self.requested.is_none() && self.restart_at.is_none() && size_known {
            // The first image, once the layout has settled.
            self.schedule_restart();
        }
        if self.restart_at.is_some_and(|at| now >= at) {
            if self.requested.is_some() {
                self.state
                    .note(StoryKind::Control, "Restarting the picture");
            }
            self.start_next_image();
        }
        if !self.settings.auto_continue {
            self.next_image_at = None;
        }
        if self.next_image_at.is_some_and(|at| now >= at) {
            self.start_next_image();
        }
        self.hooks
            .run(ctx, &mut self.state, self.pool_control.as_deref_mut());
        let streaming = self
            .last_data_at
            .is_some_and(|at| at.elapsed() < Duration::from_millis(500));
        if streaming {
            ctx.request_repaint_after(STREAMING_FRAME);
        } else {
            // Timers (restart, auto-continue, plots, bundle polling) still need frames.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
        let title = format!("Fractal Generator - pool {}", self.pool_name);
        if title != self.title {
            ctx.send_viewport_cmd(ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let pressed = |key| ctx.input(|input| input.key_pressed(key));
        if pressed(Key::N) {
            self.start_next_image();
        }
        if pressed(Key::Space) {
            self.settings.auto_continue = !self.settings.auto_continue;
        }
        if pressed(Key::S) {
            self.status_line = match self.save_png() {
                Ok(path) => format!("Saved {}", path.display()),
                Err(error) => format!("Save failed: {error}"),
            };
        }
        if pressed(Key::M) {
            self.settings.colours.failover_marks = !self.settings.colours.failover_marks;
        }
        if pressed(Key::P) {
            self.settings.colours.pe_marks = !self.settings.colours.pe_marks;
        }
        if pressed(Key::B) {
            self.settings.show_borders = !self.settings.show_borders;
        }
        if pressed(Key::Plus) || pressed(Key::Equals) {
            self.step_sessions(true);
        }
        if pressed(Key::Minus) {
            self.step_sessions(false);
        }
        if pressed(Key::R) {
            self.settings.preset = PresetChoice::Random;
            self.start_next_image();
        }
    }

    /// Draws the whole window into `ui` (the root ui of the viewport).
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.housekeeping(&ctx);
        self.shortcuts(&ctx);
        egui::Panel::top("controls").show(ui, |ui| self.controls(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::right("side")
            .resizable(true)
            .default_size(430.0)
            .size_range(320.0..=720.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .id_salt("side-scroll")
                    .show(ui, |ui| {
                        self.pool_panel(ui);
                        ui.separator();
                        self.story_panel(ui);
                        ui.separator();
                        self.plots(ui);
                    });
            });
        egui::CentralPanel::default().show(ui, |ui| self.picture_panel(ui));
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            let mut sessions = self.settings.sessions;
            egui::ComboBox::from_label("Sessions")
                .selected_text(sessions.to_string())
                .width(60.0)
                .show_ui(ui, |ui| {
                    for choice in SESSION_CHOICES {
                        ui.selectable_value(&mut sessions, choice, choice.to_string());
                    }
                });
            self.set_sessions(sessions);

            ui.separator();
            let current = match &self.settings.preset {
                PresetChoice::Random => "Random".to_owned(),
                PresetChoice::Fixed(preset) => preset.name.clone(),
            };
            let mut chosen = None;
            egui::ComboBox::from_label("Preset")
                .selected_text(current)
                .width(150.0)
                .show_ui(ui, |ui| {
                    if ui.selectable_label(false, "Random").clicked() {
                        chosen = Some(PresetChoice::Random);
                    }
                    for preset in &self.builtin {
                        if ui.selectable_label(false, &preset.name).clicked() {
                            chosen = Some(PresetChoice::Fixed(preset.clone()));
                        }
                    }
                });
            if let Some(choice) = chosen {
                self.settings.preset = choice;
                self.start_next_image();
            }
            ui.add(
                egui::TextEdit::singleline(&mut self.fsf_path)
                    .hint_text("path/to/view.fsf")
                    .desired_width(120.0),
            );
            if ui.button("Open .fsf").clicked() {
                self.open_fsf();
            }

            ui.separator();
            if ui
                .button("Next image")
                .on_hover_text("N; R = random preset")
                .clicked()
            {
                self.start_next_image();
            }
            ui.checkbox(&mut self.settings.auto_continue, "Auto-continue")
                .on_hover_text("Space");
            ui.add(
                egui::Slider::new(&mut self.settings.pause_s, 0.0..=30.0)
                    .suffix(" s")
                    .text("pause"),
            );
            if ui.button("Save PNG").on_hover_text("S").clicked() {
                self.status_line = match self.save_png() {
                    Ok(path) => format!("Saved {}", path.display()),
                    Err(error) => format!("Save failed: {error}"),
                };
            }

            ui.separator();
            egui::ComboBox::from_label("Palette")
                .selected_text(self.settings.colours.palette.name())
                .show_ui(ui, |ui| {
                    for palette in Palette::ALL {
                        ui.selectable_value(
                            &mut self.settings.colours.palette,
                            palette,
                            palette.name(),
                        );
                    }
                });
            ui.checkbox(&mut self.settings.colours.failover_marks, "Failover marks")
                .on_hover_text("M: rsplib's palette shift per session and failover");
            ui.checkbox(&mut self.settings.colours.pe_marks, "PE marks")
                .on_hover_text("P: tint each pixel by the PE that computed it");
            ui.checkbox(&mut self.settings.show_borders, "Tiles")
                .on_hover_text("B: tile borders and session numbers");
            ui.separator();
            ui.label("Keys").on_hover_text(SHORTCUTS);
        });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            match &self.state.picture {
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
                        let wait = self
                            .next_image_at
                            .map(|at| at.saturating_duration_since(Instant::now()));
                        match wait {
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
            ui.label(format!("{} images", self.state.images_completed));
            ui.separator();
            ui.label(format!("{:.2} Mpixel/s", self.state.pixels_per_s / 1e6));
            ui.separator();
            ui.label(format!("{} failovers", self.state.failovers));
            if !self.status_line.is_empty() {
                ui.separator();
                ui.label(&self.status_line);
            }
        });
    }

    fn picture_panel(&mut self, ui: &mut egui::Ui) {
        let available = ui.available_size();
        let pixels_per_point = ui.ctx().pixels_per_point();
        let wanted = (
            ((available.x * pixels_per_point) as u32).clamp(MIN_SIDE, MAX_SIDE),
            ((available.y * pixels_per_point) as u32).clamp(MIN_SIDE, MAX_SIDE),
        );
        // Used by the next image; only a window resize restarts the current one (panels that
        // change width just rescale the picture).
        self.wanted_size = Some(wanted);

        if let Some(error) = &self.client_error {
            ui.centered_and_justified(|ui| {
                ui.label(
                    RichText::new(format!("The fractal client is not running:\n{error}"))
                        .color(Color32::LIGHT_RED)
                        .size(18.0),
                );
            });
            return;
        }
        self.update_texture(ui.ctx());
        let (Some(picture), Some(texture)) = (&self.state.picture, &self.texture) else {
            ui.centered_and_justified(|ui| {
                ui.label(RichText::new("Waiting for the first image ...").size(18.0));
            });
            return;
        };
        // Fit the picture into the area, keeping its aspect ratio.
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
            if self.settings.show_borders && many {
                painter.rect_stroke(
                    tile_rect,
                    0.0,
                    Stroke::new(1.0, Color32::from_black_alpha(140)),
                    StrokeKind::Inside,
                );
            }
            if progress.failing_over || progress.waiting {
                // A pulsing red frame while the tile has no PE.
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
            if self.settings.show_borders
                && self.settings.show_session_numbers
                && many
                && !progress.completed
            {
                let mut label = format!("{}", tile.index + 1);
                if let Some(pe) = progress.pe {
                    label.push_str(&format!("\n{pe:08x}"));
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
        }
    }

    /// Uploads the changed rows of the picture to the texture.
    fn update_texture(&mut self, ctx: &egui::Context) {
        let colours = self.settings.colours;
        let Some(picture) = self.state.picture.as_mut() else {
            return;
        };
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

    fn pool_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading(format!("Pool {}", self.pool_name));
        match &self.state.registrar {
            RegistrarStatus::Unknown => {
                ui.label("Looking for a registrar ...");
            }
            RegistrarStatus::Up(address) => {
                let address = address.map_or("?".to_owned(), |address| address.to_string());
                ui.label(format!(
                    "Registrar {address}: up, {} PEs in the pool",
                    self.state.pool.len()
                ));
            }
            RegistrarStatus::Unavailable(detail) => {
                ui.colored_label(
                    Color32::LIGHT_RED,
                    format!("No registrar reachable ({detail}); retrying"),
                );
            }
        }
        let bundled = self
            .pool_control
            .as_ref()
            .map(|pool| (pool.registrar(), pool.pool_elements()));
        if let Some((registrar, _)) = &bundled {
            ui.horizontal(|ui| {
                ui.label(format!(
                    "Bundled registrar: {}",
                    describe_child(&registrar.state, registrar.pid)
                ));
                if ui.button("Restart registrar").clicked()
                    && let Some(pool) = self.pool_control.as_mut()
                {
                    pool.restart_registrar();
                    self.state
                        .note(StoryKind::Control, "Restarted the registrar".to_owned());
                }
            });
        }
        if self.state.pool.is_empty() && self.state.registrar != RegistrarStatus::Unknown {
            ui.colored_label(
                Color32::YELLOW,
                "No pool element registered: the picture waits until one joins.",
            );
        }

        let bundled_pes = bundled.map(|(_, pes)| pes).unwrap_or_default();
        if let Some(picture) = &self.state.picture {
            ui.label(format!(
                "Image {}: {} units for {} sessions, {} waiting; {} tails taken over",
                picture.image,
                picture.units,
                picture.sessions,
                picture.units_waiting(),
                picture.tail_takeovers
            ));
        }
        // Each PE's capacity: what a bundled PE reported, else what its policy advertises.
        let capacities: Vec<Option<f64>> = self
            .state
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
        let total_capacity: f64 = capacities.iter().flatten().sum();
        let total_work: u64 = self
            .state
            .picture
            .as_ref()
            .map_or(0, |picture| picture.pe_work.values().sum());
        let mut action: Option<(&'static str, usize)> = None;
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
                let picture = self.state.picture.as_ref();
                for (entry, capacity) in self.state.pool.iter().zip(&capacities) {
                    let mark = picture
                        .and_then(|picture| picture.pe_mark_index(entry.id))
                        .map(|index| palette::mark_tint(index as u32));
                    let label = RichText::new(format!("0x{:08x}", entry.id)).monospace();
                    let serving: Vec<String> = self
                        .state
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
                    work_share(ui, work, total_work, *capacity, total_capacity);
                    ui.label(
                        self.state
                            .tiles_completed_by
                            .get(&entry.id)
                            .copied()
                            .unwrap_or(0)
                            .to_string(),
                    );
                    match bundled_pes.iter().find(|pe| pe.pe_id == Some(entry.id)) {
                        Some(pe) => {
                            ui.horizontal(|ui| pe_buttons(ui, pe, &mut action));
                        }
                        None => {
                            ui.label("");
                        }
                    }
                    ui.end_row();
                }
            });

        if !bundled_pes.is_empty() {
            ui.add_space(6.0);
            ui.label(RichText::new("Bundled pool elements").strong());
            egui::Grid::new("bundle-grid")
                .striped(true)
                .num_columns(4)
                .show(ui, |ui| {
                    for pe in &bundled_pes {
                        ui.label(format!("#{}", pe.slot));
                        ui.label(pe.pe_id.map_or("-".to_owned(), |id| format!("0x{id:08x}")));
                        ui.label(format!(
                            "{}, {}",
                            describe_capacity(pe.capacity),
                            describe_child(&pe.state, pe.pid)
                        ));
                        ui.horizontal(|ui| pe_buttons(ui, pe, &mut action));
                        ui.end_row();
                    }
                });
            ui.horizontal(|ui| {
                ui.add(
                    egui::Slider::new(&mut self.add_capacity_m, 0.0..=1000.0)
                        .logarithmic(true)
                        .text("M iterations/s (0 = unlimited)"),
                );
                if ui.button("Add PE").clicked() {
                    let capacity = (self.add_capacity_m >= 1.0)
                        .then(|| (f64::from(self.add_capacity_m) * 1e6) as u64);
                    if let Some(pool) = self.pool_control.as_mut() {
                        pool.add(capacity);
                    }
                    self.state.note(
                        StoryKind::Control,
                        format!("Added a PE ({})", describe_capacity(capacity)),
                    );
                }
            });
        }
        if let Some((what, slot)) = action {
            self.pool_action(what, slot, &bundled_pes);
        }
    }

    fn pool_action(&mut self, what: &str, slot: usize, pes: &[super::control::BundledPe]) {
        let Some(pool) = self.pool_control.as_mut() else {
            return;
        };
        let name = pes
            .iter()
            .find(|pe| pe.slot == slot)
            .and_then(|pe| pe.pe_id)
            .map_or(format!("#{slot}"), |id| format!("0x{id:08x}"));
        let text = match what {
            "kill" => {
                pool.kill(slot);
                format!("Killed PE {name} (SIGKILL)")
            }
            "hang" => {
                pool.toggle_hang(slot);
                format!("Hang/resume PE {name} (SIGSTOP/SIGCONT)")
            }
            "stop" => {
                pool.stop(slot);
                format!("Stopping PE {name} (SIGTERM: final cookies, deregistration)")
            }
            "restart" => {
                pool.restart(slot);
                format!("Restarted PE #{slot}")
            }
            _ => return,
        };
        tracing::info!(slot, action = what, "pool control");
        self.state.note(StoryKind::Control, text);
    }

    fn story_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading("Failover story");
        egui::ScrollArea::vertical()
            .id_salt("story")
            .max_height(220.0)
            .stick_to_bottom(true)
            .show(ui, |ui| {
                if self.state.story.is_empty() {
                    ui.label("Nothing happened yet.");
                }
                for entry in &self.state.story {
                    let colour = match entry.kind {
                        StoryKind::Image => Color32::LIGHT_BLUE,
                        StoryKind::Failure => Color32::from_rgb(255, 110, 110),
                        StoryKind::Report => Color32::from_rgb(255, 190, 90),
                        StoryKind::Recovery => Color32::from_rgb(120, 220, 120),
                        StoryKind::Pool => Color32::from_rgb(200, 200, 120),
                        StoryKind::Control => Color32::from_rgb(190, 160, 255),
                    };
                    ui.horizontal_wrapped(|ui| {
                        ui.label(RichText::new(format!("{:7.2}s", entry.at_s)).monospace());
                        ui.colored_label(colour, &entry.text);
                    });
                }
            });
    }

    fn plots(&mut self, ui: &mut egui::Ui) {
        ui.heading("Handling speed");
        let failovers = self.state.history.failovers.clone();
        // Start the time axis at 0 so that failover marks alone do not make a microscopic axis.
        Plot::new("speed")
            .height(120.0)
            .include_x(0.0)
            .include_y(0.0)
            .allow_drag(false)
            .x_axis_label("s")
            .show(ui, |plot| {
                let points: Vec<[f64; 2]> = self
                    .state
                    .history
                    .speed
                    .iter()
                    .map(|[t, speed]| [*t, speed / 1e6])
                    .collect();
                plot.line(Line::new("Mpixel/s", PlotPoints::from(points)));
                for at in &failovers {
                    plot.vline(VLine::new("failover", *at).color(Color32::RED));
                }
            });
        ui.heading("Sessions per PE");
        Plot::new("sessions")
            .height(120.0)
            .include_y(0.0)
            .allow_drag(false)
            .legend(Legend::default())
            .show(ui, |plot| {
                for (pe, series) in &self.state.history.sessions {
                    let points: Vec<[f64; 2]> = series.iter().copied().collect();
                    plot.line(Line::new(format!("{pe:08x}"), PlotPoints::from(points)));
                }
            });
        if !self.state.history.load.is_empty() {
            ui.heading("Load per PE (registrar)");
            Plot::new("load")
                .height(100.0)
                .include_y(0.0)
                .include_y(1.0)
                .allow_drag(false)
                .show(ui, |plot| {
                    for (pe, series) in &self.state.history.load {
                        let points: Vec<[f64; 2]> = series.iter().copied().collect();
                        plot.line(Line::new(format!("{pe:08x}"), PlotPoints::from(points)));
                    }
                });
        }
    }
}

fn pe_buttons(
    ui: &mut egui::Ui,
    pe: &super::control::BundledPe,
    action: &mut Option<(&'static str, usize)>,
) {
    let alive = matches!(pe.state, ChildState::Running | ChildState::Hung);
    if ui
        .add_enabled(alive, egui::Button::new("Kill"))
        .on_hover_text("SIGKILL")
        .clicked()
    {
        *action = Some(("kill", pe.slot));
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
        *action = Some(("hang", pe.slot));
    }
    if ui
        .add_enabled(pe.state == ChildState::Running, egui::Button::new("Stop"))
        .on_hover_text("SIGTERM: graceful")
        .clicked()
    {
        *action = Some(("stop", pe.slot));
    }
    if ui.button("Restart").clicked() {
        *action = Some(("restart", pe.slot));
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

impl eframe::App for PoolUserApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        PoolUserApp::ui(self, ui);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // Close the sessions before the bundled PEs go away with the bundle.
        if let Some(client) = self.client.as_mut() {
            client.cancel();
        }
    }
}
