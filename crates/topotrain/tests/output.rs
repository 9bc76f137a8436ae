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

/// The README's command table lists every command of `topotrain --help`,
/// and every flag a row shows exists in that command's `--help`.
#[test]
fn the_readme_command_table_matches_help() {
    let help = |args: &[&str]| -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_topotrain"))
            .args(args)
            .arg("--help")
            .output()
            .expect("run topotrain");
        assert!(output.status.success(), "{args:?} --help failed");
        String::from_utf8(output.stdout).unwrap()
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut listed = Vec::new();
    for row in readme.lines().filter(|l| l.starts_with("| `topotrain ")) {
        let usage = row.split('`').nth(1).unwrap();
        let words: Vec<&str> = usage.split_whitespace().collect();
        let command = words[1];
        listed.push(command.to_string());
        let subcommands: Vec<&str> = match words.get(2) {
            Some(w) if w.starts_with(|c: char| c.is_ascii_lowercase()) => w.split("\\|").collect(),
            _ => vec![],
        };
        let helps: String = if subcommands.is_empty() {
            help(&[command])
        } else {
            subcommands.iter().map(|s| help(&[command, s])).collect()
        };
        for flag in usage
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--"))
        {
            assert!(
                helps.contains(&format!("{flag} ")) || helps.contains(&format!("{flag}\n")),
                "README row `{usage}`: {flag} is not in `topotrain {command} --help`"
            );
        }
    }
    let top = help(&[]);
    let commands = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap();
    for line in commands.lines().filter(|l| !l.trim().is_empty()) {
        let name = line.split_whitespace().next().unwrap();
        assert!(
            name == "help" || listed.iter().any(|l| l == name),
            "`topotrain {name}` is missing from the README's command table"
        );
    }
}
