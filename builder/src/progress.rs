//! What imgbuild says on stderr while it works: its progress by default, none of it with `-q`, and with
//! `-v` also each external step's command line and log file. Results (stdout), warnings and errors are
//! never held back. imgbuild prints no colour, so `NO_COLOR` changes nothing.

use std::fmt::Display;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI8, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};

static LEVEL: AtomicI8 = AtomicI8::new(0);

/// Every bar shown, one line each: steps run side by side (the initrd beside the role layer).
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Sets the level from the command line's `-v` and `-q` counts.
pub fn set(verbose: u8, quiet: u8) {
    let level = i16::from(verbose) - i16::from(quiet);
    LEVEL.store(level.clamp(-1, 1) as i8, Ordering::Relaxed);
}

fn level() -> i8 {
    LEVEL.load(Ordering::Relaxed)
}

/// A line of progress (a step done, a layer taken from the store); not with `-q`.
pub fn say(line: impl Display) {
    if level() >= 0 {
        BARS.suspend(|| eprintln!("{line}"));
    }
}

/// A line only `-v` shows.
pub fn detail(line: impl Display) {
    if level() >= 1 {
        BARS.suspend(|| eprintln!("{line}"));
    }
}

/// `bar`, drawn on stderr unless `-q` (indicatif draws nothing off a terminal anyway).
pub fn shown(bar: ProgressBar) -> ProgressBar {
    if level() < 0 {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    BARS.add(bar)
}
