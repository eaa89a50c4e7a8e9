//! The window's panels and controls, driven headless with egui_kittest (no GPU, no renderer) and
//! fed with synthetic client events.
#![cfg(feature = "gui")]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use pool_user_gui::client::events::{
    ClientEvent, Failover, FailureReason, ImageStart, ImageStats, PeInfo, PoolEntry, TileRect,
};
use pool_user_gui::gui::app::{PoolUserApp, Settings};
use pool_user_gui::gui::control::{
    BundledPe, BundledRegistrar, ChildState, ClientControl, EventSink, ImageRequest, PoolControl,
};
use pool_user_gui::gui::model::{Clock, ColourOptions, GuiState};
use pool_user_gui::gui::test_hooks::TestHooks;
use rserpool::wire::PeId;

/// Records what the window asked the client to do.
#[derive(Clone, Default)]
struct RecordingClient {
    requests: Rc<RefCell<Vec<ImageRequest>>>,
}

impl ClientControl for RecordingClient {
    fn start_image(&mut self, request: ImageRequest) {
        self.requests.borrow_mut().push(request);
    }
    fn cancel(&mut self) {}
}

/// A bundled pool that records the buttons pressed.
#[derive(Clone)]
struct FakePool {
    actions: Rc<RefCell<Vec<String>>>,
    pes: Vec<BundledPe>,
}

impl PoolControl for FakePool {
    fn registrars(&self) -> Vec<BundledRegistrar> {
        (1..=2)
            .map(|id| BundledRegistrar {
                id,
                address: Some(addr(3862 + id as u16)),
                pid: Some(100 + id),
                state: ChildState::Running,
            })
            .collect()
    }
    fn kill_registrar(&mut self, id: u32) {
        self.actions
            .borrow_mut()
            .push(format!("kill registrar {id}"));
    }
    fn toggle_hang_registrar(&mut self, id: u32) {
        self.actions
            .borrow_mut()
            .push(format!("hang registrar {id}"));
    }
    fn pool_elements(&self) -> Vec<BundledPe> {
        self.pes.clone()
    }
    fn kill(&mut self, slot: usize) {
        self.actions.borrow_mut().push(format!("kill {slot}"));
    }
    fn toggle_hang(&mut self, slot: usize) {
        self.actions.borrow_mut().push(format!("hang {slot}"));
    }
    fn stop(&mut self, slot: usize) {
        self.actions.borrow_mut().push(format!("stop {slot}"));
    }
    fn restart(&mut self, slot: usize) {
        self.actions.borrow_mut().push(format!("restart {slot}"));
    }
    fn add(&mut self, capacity: Option<u64>) {
        self.actions.borrow_mut().push(format!("add {capacity:?}"));
    }
    fn restart_registrar(&mut self, id: u32) {
        self.actions
            .borrow_mut()
            .push(format!("restart registrar {id}"));
    }
    fn poll(&mut self) {}
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pe(id: u32) -> PeInfo {
    PeInfo {
        id: PeId(id),
        address: addr(40_000 + (id % 1000) as u16),
    }
}

/// A 4-tile 40x20 picture: tiles of 20x10.
fn image_started(image: u64) -> ClientEvent {
    let tiles = (0..4)
        .map(|index| TileRect {
            index,
            x: (index as u32 % 2) * 20,
            y: (index as u32 / 2) * 10,
            width: 20,
            height: 10,
        })
        .collect();
    ClientEvent::ImageStarted(ImageStart {
        image,
        width: 40,
        height: 20,
        max_iterations: 100,
        preset: "full-set".to_owned(),
        sessions: 4,
        tiles,
    })
}

fn tile_data(tile: usize, pe_id: u32, first: u64, count: usize) -> ClientEvent {
    ClientEvent::TileData {
        image: 1,
        tile,
        pe_id: PeId(pe_id),
        first,
        iterations: (0..count as u32).map(|value| value % 100).collect(),
    }
}

struct Setup {
    harness: Harness<'static, PoolUserApp>,
    sink: EventSink,
    requests: Rc<RefCell<Vec<ImageRequest>>>,
    actions: Rc<RefCell<Vec<String>>>,
}

fn setup(bundled: bool) -> Setup {
    let (sink, events) = EventSink::new(None);
    let client = RecordingClient::default();
    let requests = Rc::clone(&client.requests);
    let actions = Rc::new(RefCell::new(Vec::new()));
    let pool = bundled.then(|| {
        Box::new(FakePool {
            actions: Rc::clone(&actions),
            pes: vec![
                BundledPe {
                    slot: 1,
                    pe_id: Some(PeId(0xaaaa_0001)),
                    pid: Some(101),
                    capacity: None,
                    reported_capacity: Some(150_000_000),
                    state: ChildState::Running,
                },
                BundledPe {
                    slot: 2,
                    pe_id: Some(PeId(0xaaaa_0002)),
                    pid: Some(102),
                    capacity: Some(50_000_000),
                    reported_capacity: Some(50_000_000),
                    state: ChildState::Running,
                },
            ],
        }) as Box<dyn PoolControl>
    });
    let settings = Settings {
        auto_continue: false,
        ..Settings::default()
    };
    let hooks = TestHooks {
        fixed_size: Some((40, 20)),
        manual_clock: true,
        ..TestHooks::default()
    };
    let app = PoolUserApp::new(
        events,
        Ok(Box::new(client)),
        pool,
        "TestPool".to_owned(),
        settings,
        hooks,
    );
    let harness = Harness::builder()
        .with_size(egui::vec2(1600.0, 1000.0))
        .build_ui_state(|ui, app: &mut PoolUserApp| app.ui(ui), app);
    Setup {
        harness,
        sink,
        requests,
        actions,
    }
}

/// Lets the window's (manual) clock pass the calm period after which a resize or a session
/// change restarts the picture (500 ms), as if the user had waited.
fn wait_out_restart_delay(harness: &mut Harness<'static, PoolUserApp>) {
    harness
        .state_mut()
        .state
        .advance_clock(Duration::from_millis(600));
}

fn snapshot(ids: &[u32]) -> ClientEvent {
    ClientEvent::PoolSnapshot {
        registrar: Some(addr(3863)),
        entries: ids
            .iter()
            .map(|&id| PoolEntry {
                id: PeId(id),
                address: pe(id).address,
                policy: "LeastUsed".to_owned(),
                load: Some(0.25),
                capacity: None,
                home_registrar: 1 + id % 2,
            })
            .collect(),
    }
}

#[test]
fn tile_data_shows_up_in_the_picture() {
    let mut setup = setup(false);
    setup.sink.send(image_started(1));
    // Rows 2 and 3 of tile 3 (bottom right), and the first pixel of tile 0.
    setup.sink.send(tile_data(3, 7, 40, 40));
    setup.sink.send(tile_data(0, 7, 0, 1));
    setup.harness.run();
    let picture = setup
        .harness
        .state()
        .state
        .picture
        .as_ref()
        .expect("picture");
    assert_eq!(picture.received(), 41);
    assert_eq!(picture.value(0, 0), Some(0));
    // Tile 3 starts at (20, 10); its pixel 40 is its (0, 2), i.e. (20, 12), value 0; pixel 41 = 1.
    assert_eq!(picture.value(20, 12), Some(0));
    assert_eq!(picture.value(21, 12), Some(1));
    assert_eq!(picture.value(20, 11), None);
    assert_eq!(picture.pixel_pe(21, 13), Some(PeId(7)));
    assert_eq!(picture.tile_at(25, 15), Some(3));
    // Data alone (without SessionConnected) tells which PE serves which tile.
    let serving = &setup.harness.state().state.serving;
    assert_eq!(
        serving[&PeId(7)].iter().copied().collect::<Vec<_>>(),
        vec![0, 3]
    );
    setup
        .harness
        .get_by_label_contains("Image 1 (full-set) 40x20");
    setup.harness.get_by_label_contains("5.1 %");
}

#[test]
fn only_changed_rows_are_redrawn() {
    let mut state = GuiState::new();
    state.apply(image_started(1));
    let picture = state.picture.as_mut().expect("picture");
    assert_eq!(picture.take_dirty_rows(), Some((0, 20)));
    assert_eq!(picture.take_dirty_rows(), None);
    // 25 pixels of tile 2 (x 0..20, y 10..20) from its pixel 30: tile rows 1 and 2.
    state.apply(tile_data(2, 9, 30, 25));
    let picture = state.picture.as_mut().expect("picture");
    assert_eq!(picture.take_dirty_rows(), Some((11, 13)));
    // Data beyond the tile is ignored, not a panic.
    state.apply(tile_data(2, 9, 199, 50));
    state.apply(tile_data(9, 9, 0, 5));
    let picture = state.picture.as_mut().expect("picture");
    assert_eq!(picture.received(), 26);
}

#[test]
fn colours_follow_palette_and_marks() {
    let mut state = GuiState::new();
    state.apply(image_started(1));
    state.apply(tile_data(0, 1, 0, 20));
    state.apply(tile_data(1, 2, 0, 20));
    let picture = state.picture.as_ref().expect("picture");
    let plain = ColourOptions {
        failover_marks: false,
        ..ColourOptions::default()
    };
    let pe_marked = ColourOptions {
        pe_marks: true,
        ..plain
    };
    let row = picture.render_rows(0, 1, plain);
    assert_eq!(row.len(), 40);
    // Without marks, tile 0 and tile 1 have the same values, so the same colours.
    assert_eq!(row[0..20], row[20..40]);
    // PE marks tint the two PEs differently.
    let tinted = picture.render_rows(0, 1, pe_marked);
    assert_ne!(tinted[0..20], tinted[20..40]);
    // Pixels without data are grey without marks.
    let empty = picture.render_rows(1, 2, plain);
    assert_eq!(empty[0], [200, 200, 200, 255]);
}

#[test]
fn failover_appears_in_the_story_and_status_bar() {
    let mut setup = setup(false);
    setup.sink.send(image_started(1));
    setup.sink.send(ClientEvent::SessionConnected {
        image: 1,
        tile: 2,
        pe: pe(0x0000_0bad),
        resumed_at: None,
    });
    setup.sink.send(tile_data(2, 0x0bad, 0, 30));
    setup.sink.send(ClientEvent::FailoverStarted {
        image: 1,
        tile: 2,
        pe: pe(0x0000_0bad),
        reason: FailureReason::ConnectionLost("reset".to_owned()),
        silent_for: Duration::from_millis(1234),
    });
    setup.sink.send(ClientEvent::UnreachableReported {
        pe_id: PeId(0x0bad),
    });
    setup.sink.send(ClientEvent::FailoverCompleted(Failover {
        image: 1,
        tile: 2,
        old_pe: PeId(0x0bad),
        new_pe: pe(0x0000_0900),
        resumed_at: 20,
        recomputed_pixels: 10,
        took: Duration::from_millis(17),
    }));
    setup.sink.send(tile_data(2, 0x0900, 20, 30));
    setup.harness.run();
    let harness = &setup.harness;
    harness.get_by_label_contains("Tile 3: PE 0x00000bad failed");
    harness.get_by_label_contains("detected after 1234 ms");
    harness.get_by_label_contains("Reported PE 0x00000bad unreachable");
    harness.get_by_label_contains("PE 0x00000900 took over from 0x00000bad in 17 ms");
    harness.get_by_label_contains("cookie at pixel 20, 10 pixels recomputed");
    harness.get_by_label("1 failovers");
    let state = &harness.state().state;
    assert_eq!(state.failovers, 1);
    let picture = state.picture.as_ref().expect("picture");
    assert_eq!(picture.progress[2].failovers, 1);
    assert_eq!(picture.progress[2].pe, Some(PeId(0x0900)));
    // 30 + 20 new pixels; the 10 recomputed ones count once.
    assert_eq!(picture.received(), 50);
    assert!(state.serving[&PeId(0x0900)].contains(&2));
    assert!(!state.serving.contains_key(&PeId(0x0bad)));
}

#[test]
fn kill_button_kills_the_bundled_pe() {
    let mut setup = setup(true);
    setup.sink.send(snapshot(&[0xaaaa_0001, 0xaaaa_0002]));
    setup.harness.run();
    // Each registrar with the PEs it is home for (from the pool's view).
    setup
        .harness
        .get_by_label_contains("Registrar 1 (127.0.0.1:3863): running");
    setup
        .harness
        .get_by_label_contains("Registrar 2 (127.0.0.1:3864): running");
    assert_eq!(
        setup
            .harness
            .get_all_by_label_contains("home of 1 PEs")
            .count(),
        2
    );
    // Two registrars, then the pool table and the bundle table listing the PEs: every Kill
    // button is live.
    let kills = setup.harness.get_all_by_label("Kill").count();
    assert_eq!(kills, 6);
    setup
        .harness
        .get_all_by_label("Kill")
        .nth(3)
        .expect("second PE's Kill")
        .click();
    setup.harness.run();
    setup
        .harness
        .get_all_by_label("Kill")
        .nth(1)
        .expect("second registrar's Kill")
        .click();
    setup.harness.run();
    setup
        .harness
        .get_all_by_label("Hang")
        .nth(2)
        .expect("first PE's Hang")
        .click();
    setup.harness.run();
    setup
        .harness
        .get_all_by_label("Stop")
        .nth(1)
        .expect("Stop")
        .click();
    setup.harness.run();
    setup
        .harness
        .get_all_by_label("Restart")
        .next()
        .expect("first registrar's Restart")
        .click();
    setup.harness.run();
    setup.harness.get_by_label("Add PE").click();
    setup.harness.run();
    assert_eq!(
        *setup.actions.borrow(),
        vec![
            "kill 2".to_owned(),
            "kill registrar 2".to_owned(),
            "hang 1".to_owned(),
            "stop 2".to_owned(),
            "restart registrar 1".to_owned(),
            "add Some(100000000)".to_owned(),
        ]
    );
    setup
        .harness
        .get_by_label_contains("Killed PE 0xaaaa0002 (SIGKILL)");
}

#[test]
fn empty_states_say_what_is_missing() {
    let mut setup = setup(false);
    setup.harness.run();
    setup.harness.get_by_label("Looking for a registrar ...");
    setup.sink.send(ClientEvent::RegistrarUnavailable {
        detail: "connection refused".to_owned(),
    });
    setup.harness.run();
    setup
        .harness
        .get_by_label("No registrar reachable (connection refused); retrying");
    setup.sink.send(snapshot(&[]));
    setup.sink.send(image_started(1));
    setup.sink.send(ClientEvent::PoolEmpty {
        image: 1,
        tile: 0,
        retry_in: Duration::from_millis(500),
        detail: None,
    });
    setup.harness.run();
    setup
        .harness
        .get_by_label_contains("No pool element registered");
    setup
        .harness
        .get_by_label_contains("No pool element available; retrying every 500 ms");
    assert!(
        setup
            .harness
            .state()
            .state
            .picture
            .as_ref()
            .expect("picture")
            .progress[0]
            .waiting
    );
}

#[test]
fn controls_send_image_requests() {
    let mut setup = setup(false);
    // The first image starts once the layout has settled, and not before.
    setup.harness.run();
    assert!(setup.requests.borrow().is_empty());
    wait_out_restart_delay(&mut setup.harness);
    setup.harness.run();
    assert_eq!(setup.requests.borrow().len(), 1);
    let first = setup.requests.borrow()[0].clone();
    assert_eq!((first.width, first.height, first.sessions), (40, 20, 16));

    setup.harness.get_by_label("Next image").click();
    setup.harness.run();
    assert_eq!(setup.requests.borrow().len(), 2);

    // Keyboard: + goes to the next of rsplib's session choices and restarts the picture.
    setup.harness.key_press(egui::Key::Plus);
    setup.harness.run();
    assert_eq!(setup.harness.state().settings.sessions, 25);
    assert_eq!(setup.requests.borrow().len(), 2);
    wait_out_restart_delay(&mut setup.harness);
    setup.harness.run();
    let requests = setup.requests.borrow();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].sessions, 25);
}

#[test]
fn completed_image_is_counted_and_saved() {
    let mut setup = setup(false);
    let dir = tempfile::tempdir().expect("tempdir");
    setup.harness.state_mut().settings.save_dir = dir.path().to_path_buf();
    setup.sink.send(image_started(1));
    for tile in 0..4 {
        setup.sink.send(tile_data(tile, 5, 0, 200));
        setup
            .sink
            .send(ClientEvent::TileCompleted { image: 1, tile });
    }
    setup.sink.send(ClientEvent::ImageCompleted {
        image: 1,
        stats: ImageStats {
            width: 40,
            height: 20,
            sessions: 4,
            wall_time_s: 1.5,
            pes_used: 1,
            ..ImageStats::default()
        },
    });
    setup.harness.run();
    setup.harness.get_by_label("1 images");
    setup.harness.get_by_label_contains("100.0 %");
    setup
        .harness
        .get_by_label_contains("Image 1 complete in 1.5 s");
    assert_eq!(setup.harness.state().state.tiles_completed_by[&PeId(5)], 4);
    let path = setup.harness.state_mut().save_png().expect("saved");
    let saved = image::open(&path).expect("png").into_rgba8();
    assert_eq!(saved.dimensions(), (40, 20));
    // Everything arrived: no placeholder pixel left.
    let placeholder = fractal_protocol::palette::tile_placeholder(0);
    assert!(
        saved
            .pixels()
            .all(|pixel| pixel.0[..3] != placeholder[..] && pixel.0 != [200, 200, 200, 255])
    );
}

#[test]
fn speed_and_story_times_follow_the_model_clock() {
    let mut state = GuiState::with_clock(Clock::manual());
    state.apply(image_started(1));
    state.apply(tile_data(0, 1, 0, 100));
    state.tick();
    assert_eq!(state.pixels_per_s, 0.0, "the speed window is still open");
    state.advance_clock(Duration::from_secs(2));
    state.tick();
    assert_eq!(state.pixels_per_s, 50.0);
    assert_eq!(state.history.speed.back(), Some(&[2.0, 50.0]));
    state.apply(ClientEvent::UnreachableReported { pe_id: PeId(1) });
    assert_eq!(state.story.back().map(|entry| entry.at_s), Some(2.0));
}

#[test]
fn events_of_an_old_image_are_ignored() {
    let mut state = GuiState::new();
    state.apply(image_started(2));
    state.apply(tile_data(0, 1, 0, 10)); // image 1
    state.apply(ClientEvent::TileCompleted { image: 1, tile: 0 });
    let picture = state.picture.as_ref().expect("picture");
    assert_eq!(picture.received(), 0);
    assert!(!picture.progress[0].completed);
}

#[test]
fn sink_reports_a_closed_window() {
    let (sink, events) = EventSink::new(None);
    assert!(sink.send(ClientEvent::UnreachableReported { pe_id: PeId(1) }));
    assert_eq!(
        events.try_recv().ok(),
        Some(ClientEvent::UnreachableReported { pe_id: PeId(1) })
    );
    drop(events);
    assert!(!sink.send(ClientEvent::UnreachableReported { pe_id: PeId(2) }));
}

#[test]
fn window_resize_restarts_the_picture_at_the_new_size() {
    let (_sink, events) = EventSink::new(None);
    let client = RecordingClient::default();
    let requests = Rc::clone(&client.requests);
    let app = PoolUserApp::new(
        events,
        Ok(Box::new(client)),
        None,
        "TestPool".to_owned(),
        Settings::default(),
        TestHooks {
            manual_clock: true,
            ..TestHooks::default()
        },
    );
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1600.0, 1000.0))
        .build_ui_state(|ui, app: &mut PoolUserApp| app.ui(ui), app);
    assert!(requests.borrow().is_empty());
    wait_out_restart_delay(&mut harness);
    harness.run();
    assert_eq!(requests.borrow().len(), 1);
    let first = requests.borrow()[0].clone();
    // The picture fills the central area: less than the window, more than half of it.
    assert!(first.width < 1600 && first.width > 800, "{first:?}");
    assert!(first.height < 1000 && first.height > 500, "{first:?}");

    harness.set_size(egui::vec2(1200.0, 800.0));
    harness.run();
    assert_eq!(requests.borrow().len(), 1);
    wait_out_restart_delay(&mut harness);
    harness.run();
    let requests = requests.borrow();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].width < first.width && requests[1].height < first.height);
}

#[test]
fn a_pe_moving_to_another_registrar_is_told_in_the_story() {
    let mut setup = setup(true);
    setup.sink.send(snapshot(&[0xaaaa_0001, 0xaaaa_0002]));
    setup.harness.run();
    // Its registrar died: the PE registered with registrar 2, and the pool user asks another.
    let ClientEvent::PoolSnapshot { mut entries, .. } = snapshot(&[0xaaaa_0001, 0xaaaa_0002])
    else {
        unreachable!("a snapshot");
    };
    for entry in &mut entries {
        entry.home_registrar = 2;
    }
    setup.sink.send(ClientEvent::PoolSnapshot {
        registrar: Some(addr(3864)),
        entries,
    });
    setup.harness.run();
    setup
        .harness
        .get_by_label_contains("PE 0xaaaa0002 has a new home: registrar 2 (was 1)");
    setup
        .harness
        .get_by_label_contains("Asking registrar 127.0.0.1:3864 now (was 127.0.0.1:3863)");
    // PE 0xaaaa0001 was homed at 2 already: no line for it.
    assert_eq!(
        setup
            .harness
            .get_all_by_label_contains("has a new home")
            .count(),
        1
    );
    setup.harness.get_by_label_contains("home of 2 PEs");
}

#[test]
fn each_registrars_own_view_is_shown_until_they_agree() {
    use pool_user_gui::client::events::RegistrarView;
    let mut setup = setup(true);
    setup.sink.send(snapshot(&[0xaaaa_0001, 0xaaaa_0002]));
    setup.sink.send(ClientEvent::RegistrarViews(vec![
        RegistrarView {
            address: addr(3863),
            pes: Some(2),
            checksum: 0x1234,
        },
        RegistrarView {
            address: addr(3864),
            pes: None,
            checksum: 0xffff,
        },
    ]));
    setup.harness.run();
    setup.harness.get_by_label_contains(
        "Registrar 1 (127.0.0.1:3863): running (pid 101), home of 1 PEs; lists 2 (checksum 0x1234)",
    );
    setup.harness.get_by_label_contains("; not answering");
}
