//! The command line: `--help` is printed alone, before any log line.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-producer"))
        .args(args)
        .env_remove("SLUICE_LOG_FORMAT")
        .output()
        .expect("run sluice-producer");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn help_is_printed_before_any_log_line() {
    for args in [&["--help"][..], &["run", "--help"][..]] {
        let stdout = help(args);
        assert!(stdout.contains("Usage: sluice-producer"), "{stdout}");
        // stdout is a pipe here, so a log line would be a JSON object on a line of its own.
        assert!(
            !stdout.lines().any(|l| l.starts_with('{')),
            "{args:?}: a log line before the help:\n{stdout}"
        );
    }
}
