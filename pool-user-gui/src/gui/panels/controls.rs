//! The control bar and the keyboard shortcuts. Both say what the user asked for as
//! [`Command`]s (the app carries them out in order); settings without side effects (colours,
//! pause) are changed in place.

use egui::Key;
use fractal_protocol::palette::Palette;
use fractal_protocol::preset::Preset;

use crate::gui::app::{PresetChoice, SESSION_CHOICES, Settings};

/// The keyboard shortcuts, as the window explains them.
const SHORTCUTS: &str = "N next image · R random preset · Space auto-continue on/off · \
                         S save PNG · + / - sessions · M failover marks · P PE marks · \
                         B tile borders";

/// What the user asked for with a control or a key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Command {
    NextImage,
    /// Sessions at once (restarts the picture after the calm period).
    SetSessions(usize),
    /// The next (or previous) of rsplib's session choices.
    StepSessions {
        up: bool,
    },
    /// Use this preset from now on, starting now.
    ChoosePreset(PresetChoice),
    /// Open the `.fsf` file named in the control bar.
    OpenFsf,
    SavePng,
    ToggleAutoContinue,
    ToggleFailoverMarks,
    TogglePeMarks,
    ToggleBorders,
}

/// The control bar; `fsf_path` is the text of its `.fsf` field.
pub(crate) fn show(
    ui: &mut egui::Ui,
    settings: &mut Settings,
    builtin: &[Preset],
    fsf_path: &mut String,
) -> Vec<Command> {
    let mut commands = Vec::new();
    ui.horizontal_wrapped(|ui| {
        sessions_and_preset(ui, settings, builtin, fsf_path, &mut commands);
        ui.separator();
        if ui
            .button("Next image")
            .on_hover_text("N; R = random preset")
            .clicked()
        {
            commands.push(Command::NextImage);
        }
        ui.checkbox(&mut settings.auto_continue, "Auto-continue")
            .on_hover_text("Space");
        ui.add(
            egui::Slider::new(&mut settings.pause_s, 0.0..=30.0)
                .suffix(" s")
                .text("pause"),
        );
        if ui.button("Save PNG").on_hover_text("S").clicked() {
            commands.push(Command::SavePng);
        }
        ui.separator();
        colours(ui, settings);
        ui.separator();
        ui.label("Keys").on_hover_text(SHORTCUTS);
    });
    commands
}

fn sessions_and_preset(
    ui: &mut egui::Ui,
    settings: &Settings,
    builtin: &[Preset],
    fsf_path: &mut String,
    commands: &mut Vec<Command>,
) {
    let mut sessions = settings.sessions;
    egui::ComboBox::from_label("Sessions")
        .selected_text(sessions.to_string())
        .width(60.0)
        .show_ui(ui, |ui| {
            for choice in SESSION_CHOICES {
                ui.selectable_value(&mut sessions, choice, choice.to_string());
            }
        });
    if sessions != settings.sessions {
        commands.push(Command::SetSessions(sessions));
    }

    ui.separator();
    let current = match &settings.preset {
        PresetChoice::Random => "Random".to_owned(),
        PresetChoice::Fixed(preset) => preset.name.clone(),
    };
    egui::ComboBox::from_label("Preset")
        .selected_text(current)
        .width(150.0)
        .show_ui(ui, |ui| {
            if ui.selectable_label(false, "Random").clicked() {
                commands.push(Command::ChoosePreset(PresetChoice::Random));
            }
            for preset in builtin {
                if ui.selectable_label(false, &preset.name).clicked() {
                    commands.push(Command::ChoosePreset(PresetChoice::Fixed(preset.clone())));
                }
            }
        });
    ui.add(
        egui::TextEdit::singleline(fsf_path)
            .hint_text("path/to/view.fsf")
            .desired_width(120.0),
    );
    if ui.button("Open .fsf").clicked() {
        commands.push(Command::OpenFsf);
    }
}

fn colours(ui: &mut egui::Ui, settings: &mut Settings) {
    egui::ComboBox::from_label("Palette")
        .selected_text(settings.colours.palette.name())
        .show_ui(ui, |ui| {
            for palette in Palette::ALL {
                ui.selectable_value(&mut settings.colours.palette, palette, palette.name());
            }
        });
    ui.checkbox(&mut settings.colours.failover_marks, "Failover marks")
        .on_hover_text("M: rsplib's palette shift per session and failover");
    ui.checkbox(&mut settings.colours.pe_marks, "PE marks")
        .on_hover_text("P: tint each pixel by the PE that computed it");
    ui.checkbox(&mut settings.show_borders, "Tiles")
        .on_hover_text("B: tile borders and session numbers");
}

/// The keys pressed this frame, as commands (none while a text field has the keyboard).
pub(crate) fn shortcuts(ctx: &egui::Context) -> Vec<Command> {
    if ctx.egui_wants_keyboard_input() {
        return Vec::new();
    }
    let pressed = |key| ctx.input(|input| input.key_pressed(key));
    // In the order the window has always handled them.
    let keys = [
        (pressed(Key::N), Command::NextImage),
        (pressed(Key::Space), Command::ToggleAutoContinue),
        (pressed(Key::S), Command::SavePng),
        (pressed(Key::M), Command::ToggleFailoverMarks),
        (pressed(Key::P), Command::TogglePeMarks),
        (pressed(Key::B), Command::ToggleBorders),
        (
            pressed(Key::Plus) || pressed(Key::Equals),
            Command::StepSessions { up: true },
        ),
        (pressed(Key::Minus), Command::StepSessions { up: false }),
        (pressed(Key::R), Command::ChoosePreset(PresetChoice::Random)),
    ];
    keys.into_iter()
        .filter_map(|(pressed, command)| pressed.then_some(command))
        .collect()
}
