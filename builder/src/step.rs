//! Long-running external steps: a spinner with the elapsed time while they run, their output in a log file,
//! and the end of that log in the error when they fail.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// Runs `command` with its stdout and stderr going to `log`; returns how long it took.
pub fn run(label: &str, command: &mut Command, log: &Path) -> Result<Duration> {
    crate::progress::detail(format_args!(
        "{label}: {command:?} (log: {})",
        log.display()
    ));
    let spinner = crate::progress::shown(ProgressBar::new_spinner().with_message(label.to_owned()));
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    spinner.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .status()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let elapsed = started.elapsed();
    spinner.finish_and_clear();
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        bail!(
            "{label} failed ({status}); last lines of {}:\n{tail}",
            log.display()
        );
    }
    crate::progress::say(format_args!(
        "{label}: done in {:.1} s",
        elapsed.as_secs_f64()
    ));
    Ok(elapsed)
}

/// Quotes `value` for a POSIX shell (hook command lines are shell code).
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_shows_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("step.log");
        let err = run(
            "failing step",
            Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]),
            &log,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("failing step failed"), "{err}");
        assert!(err.contains("out\noops"), "{err}");
        assert!(run("ok step", &mut Command::new("true"), &log).is_ok());
    }

    #[test]
    fn quotes_for_the_shell() {
        let quoted = sh_quote("it's a path");
        let echoed = Command::new("sh")
            .args(["-c", &format!("printf %s {quoted}")])
            .output()
            .unwrap();
        assert_eq!(echoed.stdout, b"it's a path");
    }
}
