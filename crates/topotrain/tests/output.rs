//! How topotrain behaves when what reads its output goes away.

use std::process::{Command, Stdio};

/// `topotrain ... | head`: once the reader has closed the pipe, the next
/// write ends topotrain by SIGPIPE, like other command-line tools, and no
/// panic ("failed printing to stdout") reaches the user.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_program_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .args([
            "bench",
            "train",
            "--width",
            "4",
            "--res",
            "8",
            "--batch-size",
            "1",
        ])
        .args(["--warmup", "0", "--steps", "1", "--num-classes", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run topotrain");
    // Close the reading end before topotrain prints its one line.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(13),
        "{:?}: {stderr}",
        output.status
    );
}
