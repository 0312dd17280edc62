//! The shipped systemd unit is accepted by `systemd-analyze verify`.

use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/percore.service")).unwrap();
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "TimeoutStopSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=percore",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("percore-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("percore.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/percore", env!("CARGO_BIN_EXE_percore")),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {complaints}");
    let own: Vec<&str> = complaints.lines().filter(|l| l.contains("percore.service")).collect();
    assert!(own.is_empty(), "systemd-analyze complains about the unit: {own:?}");
}
