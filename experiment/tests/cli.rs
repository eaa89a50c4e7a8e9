//! The `pool-experiment` command line. (Being an integration test of this package, it also
//! has cargo build the program for the end-to-end test.)

use std::process::Command;

#[test]
fn scenarios_are_listed_and_unknown_ones_refused() {
    let program = env!("CARGO_BIN_EXE_pool-experiment");
    let list = Command::new(program).arg("list").output().expect("runs");
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    for name in [
        "fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "goodput", "smoke",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing: {text}"
        );
    }
    let unknown = Command::new(program)
        .args(["run", "fig99", "--out", "/nonexistent"])
        .output()
        .expect("runs");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no scenario `fig99`"));
}
