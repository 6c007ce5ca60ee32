//! The command line: `--help` is printed alone, before any log line.

use std::process::Command;

#[test]
fn help_is_printed_before_any_log_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-dashboard"))
        .arg("--help")
        .env_remove("SLUICE_LOG_FORMAT")
        .output()
        .expect("run sluice-dashboard --help");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Usage: sluice-dashboard"), "{stdout}");
    // stdout is a pipe here, so a log line would be a JSON object.
    assert!(
        !stdout.contains("\"level\""),
        "a log line before the help:\n{stdout}"
    );
}
