//! Hooks that exist only so automated tests can drive the real window: the end-to-end GUI test
//! (`tests/tests/gui_demo.rs`) kills a bundled PE halfway through the first picture and closes
//! the window when done; the panel tests (`pool-user-gui/tests/gui_panels.rs`) fix the picture
//! size and stop the window's clock. Kept here, off the window's own code paths: every hook is off unless a hidden option
//! (`--demo-kill-at-percent`, `--quit-after-images`, `--picture-size`) or a test turns it on.

use egui::ViewportCommand;

use super::control::{ChildState, PoolControl};
use super::model::{Clock, GuiState, StoryKind};

/// The hooks' hidden command-line options (flattened into `WindowOptions`).
#[derive(clap::Args, Clone, Debug)]
pub struct TestHookOptions {
    /// Test hook: SIGKILL the busiest bundled PE once the first picture is this many percent done.
    #[arg(long, hide = true)]
    pub demo_kill_at_percent: Option<f64>,
    /// Test hook: close the window after this many completed images.
    #[arg(long, hide = true)]
    pub quit_after_images: Option<u64>,
    /// Test hook: fixed picture size WIDTHxHEIGHT instead of following the window.
    #[arg(long, hide = true, value_parser = super::parse_size)]
    pub picture_size: Option<(u32, u32)>,
}

/// Hooks for automated tests of the real window; all off by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TestHooks {
    /// Kill (SIGKILL) the bundled PE serving the most sessions once the first picture is this
    /// far done (percent).
    pub kill_at_percent: Option<f64>,
    /// Close the window after this many completed images.
    pub quit_after_images: Option<u64>,
    /// Fixed picture size instead of following the window.
    pub fixed_size: Option<(u32, u32)>,
    /// The window's clock stands still until the test moves it on
    /// ([`GuiState::advance_clock`]): its timers fire without sleeping.
    pub manual_clock: bool,
}

impl From<&TestHookOptions> for TestHooks {
    fn from(options: &TestHookOptions) -> TestHooks {
        TestHooks {
            kill_at_percent: options.demo_kill_at_percent,
            quit_after_images: options.quit_after_images,
            fixed_size: options.picture_size,
            manual_clock: false,
        }
    }
}

/// The hooks of one window and what they did so far.
#[derive(Debug)]
pub(super) struct HookRunner {
    hooks: TestHooks,
    /// The kill hook fired (it fires once).
    killed: bool,
}

impl HookRunner {
    pub(super) fn new(hooks: TestHooks) -> HookRunner {
        HookRunner {
            hooks,
            killed: false,
        }
    }

    /// The clock the window's state goes by.
    pub(super) fn clock(&self) -> Clock {
        if self.hooks.manual_clock {
            Clock::manual()
        } else {
            Clock::System
        }
    }

    /// The picture size a test fixed, if any.
    pub(super) fn fixed_size(&self) -> Option<(u32, u32)> {
        self.hooks.fixed_size
    }

    /// Runs the hooks that are due; call once a frame, after the window's own housekeeping.
    pub(super) fn run(
        &mut self,
        ctx: &egui::Context,
        state: &mut GuiState,
        pool: Option<&mut (dyn PoolControl + 'static)>,
    ) {
        if let (Some(percent), false) = (self.hooks.kill_at_percent, self.killed) {
            let done = state
                .picture
                .as_ref()
                .map_or(0.0, |picture| picture.fraction() * 100.0);
            if done >= percent && state.images_completed == 0 {
                self.killed = true;
                kill_busiest_bundled_pe(state, pool);
            }
        }
        if let Some(limit) = self.hooks.quit_after_images
            && state.images_completed >= limit
        {
            tracing::info!(images = state.images_completed, "closing window");
            ctx.send_viewport_cmd(ViewportCommand::Close);
        }
    }
}

/// Kills the bundled PE that serves the most sessions right now.
fn kill_busiest_bundled_pe(state: &mut GuiState, pool: Option<&mut (dyn PoolControl + 'static)>) {
    let Some(pool) = pool else {
        tracing::warn!("demo kill requested but there is no bundled pool");
        return;
    };
    let members = pool.pool_elements();
    let busiest = members
        .iter()
        .filter(|pe| pe.state == ChildState::Running)
        .filter_map(|pe| {
            let id = pe.pe_id?;
            let serving = state.serving.get(&id).map_or(0, |set| set.len());
            Some((serving, pe.slot, id, pe.pid))
        })
        .max();
    match busiest {
        Some((serving, slot, id, pid)) => {
            tracing::info!(
                pe = %id,
                pid = pid.unwrap_or(0),
                serving,
                "demo kill"
            );
            state.note(
                StoryKind::Control,
                format!("Killed PE {id} (SIGKILL) serving {serving} sessions"),
            );
            pool.kill(slot);
        }
        None => tracing::warn!("demo kill: no running bundled PE"),
    }
}
