//! The window: the app's state and settings, the frame loop and the wiring between the client,
//! the bundled pool and the panels (`panels`: controls, picture, pool, story, plots, status).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use egui::ViewportCommand;
use fractal_protocol::preset::Preset;

use super::control::{ClientControl, ImageRequest, PoolControl};
use super::model::{ColourOptions, GuiState, StoryKind};
use super::panels::controls::{self, Command};
use super::panels::picture::PictureView;
use super::panels::pool::{self, Bundled};
use super::panels::{plots, status, story};
use super::test_hooks::{HookRunner, TestHooks};
use crate::client::events::ClientEvent;

/// rsplib's session choices (its context menu).
pub const SESSION_CHOICES: [usize; 18] = [
    1, 2, 3, 4, 6, 8, 9, 16, 25, 36, 49, 64, 81, 100, 144, 225, 256, 400,
];
/// A resize or session change restarts the picture after this calm period (rsplib: 500 ms).
const RESTART_DELAY: Duration = Duration::from_millis(500);
/// Frame interval while data streams in (60 frames/s).
pub(crate) const STREAMING_FRAME: Duration = Duration::from_millis(16);

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
    picture_view: PictureView,
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
        let hooks = HookRunner::new(hooks);
        let mut state = GuiState::with_clock(hooks.clock());
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
            hooks,
            builtin: Preset::builtin(),
            picture_view: PictureView::default(),
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
                self.last_data_at = Some(self.state.now());
            }
            let completed = matches!(event, ClientEvent::ImageCompleted { .. });
            self.state.apply(event);
            if completed && self.settings.auto_continue {
                let pause = Duration::from_secs_f32(self.settings.pause_s.max(0.0));
                self.next_image_at = Some(self.state.now() + pause);
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
        self.restart_at = Some(self.state.now() + RESTART_DELAY);
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
        let now = self.state.now();
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
        let now = self.state.now();
        let streaming = self
            .last_data_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_millis(500));
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

    /// Carries out what the user asked for with a control or a key.
    fn execute(&mut self, command: Command) {
        match command {
            Command::NextImage => self.start_next_image(),
            Command::SetSessions(sessions) => self.set_sessions(sessions),
            Command::StepSessions { up } => self.step_sessions(up),
            Command::ChoosePreset(choice) => {
                self.settings.preset = choice;
                self.start_next_image();
            }
            Command::OpenFsf => self.open_fsf(),
            Command::SavePng => {
                self.status_line = match self.save_png() {
                    Ok(path) => format!("Saved {}", path.display()),
                    Err(error) => format!("Save failed: {error}"),
                };
            }
            Command::ToggleAutoContinue => {
                self.settings.auto_continue = !self.settings.auto_continue;
            }
            Command::ToggleFailoverMarks => {
                self.settings.colours.failover_marks = !self.settings.colours.failover_marks;
            }
            Command::TogglePeMarks => {
                self.settings.colours.pe_marks = !self.settings.colours.pe_marks;
            }
            Command::ToggleBorders => self.settings.show_borders = !self.settings.show_borders,
        }
    }

    /// Draws the whole window into `ui` (the root ui of the viewport).
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.housekeeping(&ctx);
        for command in controls::shortcuts(&ctx) {
            self.execute(command);
        }
        let commands = egui::Panel::top("controls")
            .show(ui, |ui| {
                controls::show(ui, &mut self.settings, &self.builtin, &mut self.fsf_path)
            })
            .inner;
        for command in commands {
            self.execute(command);
        }
        let now = self.state.now();
        let next_in = self
            .next_image_at
            .map(|at| at.saturating_duration_since(now));
        egui::Panel::bottom("status").show(ui, |ui| {
            status::show(ui, &self.state, next_in, &self.status_line)
        });
        egui::Panel::right("side")
            .resizable(true)
            .default_size(430.0)
            .size_range(320.0..=720.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .id_salt("side-scroll")
                    .show(ui, |ui| self.side_panel(ui));
            });
        let wanted = egui::CentralPanel::default()
            .show(ui, |ui| {
                self.picture_view.show(
                    ui,
                    self.state.picture.as_mut(),
                    &self.settings,
                    self.client_error.as_deref(),
                )
            })
            .inner;
        self.wanted_size = Some(wanted);
    }

    /// The side panel: the pool (whose buttons act on the bundle), the story and the plots.
    fn side_panel(&mut self, ui: &mut egui::Ui) {
        let bundled = self.pool_control.as_deref().map(Bundled::of);
        let action = pool::show(
            ui,
            &self.state,
            &self.pool_name,
            bundled.as_ref(),
            &mut self.add_capacity_m,
        );
        if let Some(action) = action
            && let Some(pool) = self.pool_control.as_deref_mut()
        {
            let pes = bundled.map(|bundled| bundled.pes).unwrap_or_default();
            let text = action.apply(pool, &pes);
            self.state.note(StoryKind::Control, text);
        }
        ui.separator();
        story::show(ui, &self.state.story);
        ui.separator();
        plots::show(ui, &self.state.history);
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
