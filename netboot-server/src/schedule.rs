//! The schedule mode of `netbootd cloud`: a room's cloud encoders run from a lead time before its first
//! talk of each day until a tail after its last, read from the conference's schedule (the
//! Pentabarf/frab XML conferences publish: `<day>` → `<room name>` → `<event>` with `<date>`, an
//! RFC 3339 start, and `<duration>`, `HH:MM`). Rooms are matched by the master file's room name, else
//! its slug. The mode owns its rooms' instances: outside a window it keeps them down.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// When a room's encoders must run: `[start, stop)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub stop: u64,
}

/// Each talk of the schedule as `(room name, start, end)` in Unix seconds.
pub fn talks(xml: &str) -> Result<Vec<(String, u64, u64)>> {
    let doc = roxmltree::Document::parse(xml).context("the schedule is not well-formed XML")?;
    let mut talks = Vec::new();
    for room in doc.descendants().filter(|n| n.has_tag_name("room")) {
        let Some(name) = room.attribute("name") else {
            continue;
        };
        for event in room.children().filter(|n| n.has_tag_name("event")) {
            let text = |tag: &str| {
                event
                    .children()
                    .find(|n| n.has_tag_name(tag))
                    .and_then(|n| n.text())
                    .map(str::trim)
            };
            let id = event.attribute("id").unwrap_or("?");
            let start = text("date")
                .with_context(|| format!("event {id} in {name} has no <date>"))
                .and_then(rfc3339_seconds)?;
            let duration = text("duration")
                .with_context(|| format!("event {id} in {name} has no <duration>"))
                .and_then(clock_seconds)?;
            talks.push((name.to_owned(), start, start + duration));
        }
    }
    Ok(talks)
}

/// For each of `rooms` (`(slug, name)`), the windows its encoders run in: per calendar day of the
/// schedule (UTC), from `lead` before the first talk to `tail` after the last, overlapping ones merged.
/// An error names a room the schedule does not have.
pub fn windows(
    talks: &[(String, u64, u64)],
    rooms: &[(String, String)],
    lead: Duration,
    tail: Duration,
) -> Result<BTreeMap<String, Vec<Window>>> {
    let mut plan = BTreeMap::new();
    for (slug, name) in rooms {
        let mine: Vec<_> = talks
            .iter()
            .filter(|(room, _, _)| room == name || room.eq_ignore_ascii_case(slug))
            .collect();
        if mine.is_empty() {
            let known: std::collections::BTreeSet<&str> =
                talks.iter().map(|(room, _, _)| room.as_str()).collect();
            bail!(
                "room {slug} ({name:?}) has cloud encoders, but the schedule has no room of that name \
                 (it has: {})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let mut days: BTreeMap<u64, Window> = BTreeMap::new();
        for &(_, start, end) in mine {
            let day = days
                .entry(start / 86_400)
                .or_insert(Window { start, stop: end });
            day.start = day.start.min(start);
            day.stop = day.stop.max(end);
        }
        let mut merged: Vec<Window> = Vec::new();
        for day in days.into_values() {
            let window = Window {
                start: day.start.saturating_sub(lead.as_secs()),
                stop: day.stop + tail.as_secs(),
            };
            match merged.last_mut() {
                Some(last) if window.start <= last.stop => last.stop = last.stop.max(window.stop),
                _ => merged.push(window),
            }
        }
        plan.insert(slug.clone(), merged);
    }
    Ok(plan)
}

/// What the schedule wants of a room's encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Up,
    Down,
}

pub fn want(windows: &[Window], now: u64) -> Want {
    if windows.iter().any(|w| w.start <= now && now < w.stop) {
        Want::Up
    } else {
        Want::Down
    }
}

/// The next time after `now` at which any room's wish changes.
pub fn next_change(plan: &BTreeMap<String, Vec<Window>>, now: u64) -> Option<u64> {
    plan.values()
        .flatten()
        .flat_map(|w| [w.start, w.stop])
        .filter(|&t| t > now)
        .min()
}

/// Starts and stops a room's encoders (the cloud, or a test's record of it).
pub trait RoomSwitch {
    fn up(&self, room: &str) -> Result<()>;
    fn down(&self, room: &str) -> Result<()>;
}

/// Time as the schedule mode sees it: the system clock, or a test's.
pub trait Clock {
    fn now(&self) -> u64;
    /// Waits until `until`; false when asked to stop instead.
    fn wait(&mut self, until: u64) -> bool;
}

/// How often the schedule is read again (talks move during a conference).
pub const REFRESH: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(60);

/// Brings every room to what the schedule wants now, then again at each change, until the clock says
/// stop. `load` reads the schedule's windows, at the start and every [`REFRESH`]; when it fails, the
/// last windows it gave stay in force. A failed start or stop is logged and retried a minute later.
pub fn run(
    load: &dyn Fn() -> Result<BTreeMap<String, Vec<Window>>>,
    switch: &dyn RoomSwitch,
    clock: &mut dyn Clock,
) -> Result<()> {
    let mut plan = load()?;
    let mut loaded_at = clock.now();
    let mut state: BTreeMap<String, Want> = BTreeMap::new();
    loop {
        let now = clock.now();
        if now >= loaded_at + REFRESH.as_secs() {
            match load() {
                Ok(fresh) => plan = fresh,
                Err(error) => tracing::warn!("schedule: keeping the last one read: {error:#}"),
            }
            loaded_at = now;
        }
        let mut failed = false;
        for (room, windows) in &plan {
            let wanted = want(windows, now);
            if state.get(room) == Some(&wanted) {
                continue;
            }
            let done = match wanted {
                Want::Up => switch.up(room),
                Want::Down => switch.down(room),
            };
            match done {
                Ok(()) => {
                    tracing::info!(%room, ?wanted, "schedule: cloud encoders switched");
                    state.insert(room.clone(), wanted);
                }
                Err(error) => {
                    tracing::error!(%room, ?wanted, "schedule: {error:#}");
                    failed = true;
                }
            }
        }
        let mut until = loaded_at + REFRESH.as_secs();
        if let Some(next) = next_change(&plan, now) {
            until = until.min(next);
        }
        if failed {
            until = until.min(now + RETRY.as_secs());
        }
        if !clock.wait(until) {
            return Ok(());
        }
    }
}

/// `HH:MM` or `HH:MM:SS` as seconds.
fn clock_seconds(text: &str) -> Result<u64> {
    let parts: Vec<u64> = text
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not a duration HH:MM"))?;
    match parts.as_slice() {
        [h, m] => Ok(h * 3600 + m * 60),
        [h, m, s] => Ok(h * 3600 + m * 60 + s),
        _ => bail!("{text:?} is not a duration HH:MM"),
    }
}

/// An RFC 3339 time with its offset (`2027-02-01T09:30:00+01:00`, `…Z`) as Unix seconds.
fn rfc3339_seconds(text: &str) -> Result<u64> {
    let bad = || format!("{text:?} is not an RFC 3339 time like 2027-02-01T09:30:00+01:00");
    let (date, time) = text.split_once('T').with_context(bad)?;
    let ymd: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(bad)?;
    let [year, month, day] = ymd[..] else {
        bail!(bad())
    };
    let (clock, offset) = match time.find(['+', '-', 'Z']) {
        Some(at) => time.split_at(at),
        None => bail!(bad()),
    };
    let clock = clock.split('.').next().unwrap_or_default();
    let seconds = clock_seconds(clock).with_context(bad)? as i64;
    let offset = match offset {
        "Z" => 0,
        sign_and_clock => {
            let sign = if sign_and_clock.starts_with('-') {
                -1
            } else {
                1
            };
            sign * clock_seconds(&sign_and_clock[1..]).with_context(bad)? as i64
        }
    };
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + seconds - offset).with_context(bad)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const SCHEDULE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<schedule>
  <day index="1" date="2027-02-06">
    <room name="UB2.252A (Lameere)">
      <event id="101"><date>2027-02-06T09:30:00+01:00</date><start>09:30</start><duration>00:25</duration></event>
      <event id="102"><date>2027-02-06T17:00:00+01:00</date><start>17:00</start><duration>00:50</duration></event>
    </room>
    <room name="H.1308 (Rolin)">
      <event id="201"><date>2027-02-06T10:00:00+01:00</date><start>10:00</start><duration>01:00</duration></event>
    </room>
  </day>
  <day index="2" date="2027-02-07">
    <room name="UB2.252A (Lameere)">
      <event id="103"><date>2027-02-07T09:00:00+01:00</date><start>09:00</start><duration>00:30</duration></event>
    </room>
  </day>
</schedule>"#;

    /// 2027-02-06T08:30:00Z, 09:30 in Brussels.
    const SAT_0930: u64 = 1_801_902_600;

    fn lameere() -> Vec<(String, String)> {
        vec![("lameere".into(), "UB2.252A (Lameere)".into())]
    }

    /// Lameere's windows with a 30-minute lead and a 15-minute tail.
    fn lameere_windows() -> BTreeMap<String, Vec<Window>> {
        let talks = talks(SCHEDULE).unwrap();
        windows(
            &talks,
            &lameere(),
            Duration::from_secs(1800),
            Duration::from_secs(900),
        )
        .unwrap()
    }

    #[test]
    fn times_and_durations_are_read_with_their_offsets() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            rfc3339_seconds("2027-02-06T09:30:00+01:00").unwrap(),
            SAT_0930
        );
        assert_eq!(
            rfc3339_seconds("2027-02-06T03:30:00-05:00").unwrap(),
            SAT_0930
        );
        assert_eq!(
            rfc3339_seconds("2024-02-29T23:59:59.5Z").unwrap(),
            1_709_251_199
        );
        assert!(rfc3339_seconds("2027-02-06 09:30").is_err());
        assert_eq!(clock_seconds("01:30").unwrap(), 5400);
        assert!(clock_seconds("an hour").is_err());
    }

    #[test]
    fn a_rooms_day_runs_from_lead_before_its_first_talk_to_tail_after_its_last() {
        let talks = talks(SCHEDULE).unwrap();
        assert_eq!(talks.len(), 4);
        let lead = Duration::from_secs(30 * 60);
        let tail = Duration::from_secs(15 * 60);
        let plan = windows(&talks, &lameere(), lead, tail).unwrap();
        let saturday_end = SAT_0930 + (17 * 3600 + 50 * 60) - (9 * 3600 + 30 * 60);
        let sunday_start = rfc3339_seconds("2027-02-07T09:00:00+01:00").unwrap();
        assert_eq!(
            plan["lameere"],
            vec![
                Window {
                    start: SAT_0930 - 1800,
                    stop: saturday_end + 900
                },
                Window {
                    start: sunday_start - 1800,
                    stop: sunday_start + 1800 + 900
                },
            ]
        );
        assert_eq!(want(&plan["lameere"], SAT_0930 - 1801), Want::Down);
        assert_eq!(want(&plan["lameere"], SAT_0930 - 1800), Want::Up);
        assert_eq!(want(&plan["lameere"], saturday_end + 899), Want::Up);
        assert_eq!(want(&plan["lameere"], saturday_end + 900), Want::Down);

        let err = windows(&talks, &[("aula".into(), "Aula".into())], lead, tail).unwrap_err();
        assert!(
            err.to_string()
                .contains("H.1308 (Rolin), UB2.252A (Lameere)"),
            "{err}"
        );
    }

    /// A clock that jumps to each wake-up time, and stops after `limit` of them.
    struct FakeClock {
        now: u64,
        wakes: usize,
    }

    impl Clock for FakeClock {
        fn now(&self) -> u64 {
            self.now
        }
        fn wait(&mut self, until: u64) -> bool {
            self.now = until;
            self.wakes -= 1;
            self.wakes > 0
        }
    }

    #[derive(Default)]
    struct Record {
        calls: RefCell<Vec<(String, Want, u64)>>,
        now: RefCell<u64>,
        fail_first_up: RefCell<bool>,
    }

    impl RoomSwitch for Record {
        fn up(&self, room: &str) -> Result<()> {
            if self.fail_first_up.replace(false) {
                bail!("RunInstances: throttled");
            }
            self.calls
                .borrow_mut()
                .push((room.into(), Want::Up, *self.now.borrow()));
            Ok(())
        }
        fn down(&self, room: &str) -> Result<()> {
            self.calls
                .borrow_mut()
                .push((room.into(), Want::Down, *self.now.borrow()));
            Ok(())
        }
    }

    /// Runs the schedule mode from `start` on a fake clock that `record` can read.
    fn run_from(start: u64, record: &Record, wakes: usize) -> Vec<(String, Want, u64)> {
        struct Shared<'a>(&'a Record, FakeClock);
        impl Clock for Shared<'_> {
            fn now(&self) -> u64 {
                *self.0.now.borrow_mut() = self.1.now;
                self.1.now
            }
            fn wait(&mut self, until: u64) -> bool {
                self.1.wait(until)
            }
        }
        let plan = lameere_windows();
        let mut clock = Shared(record, FakeClock { now: start, wakes });
        run(&|| Ok(plan.clone()), record, &mut clock).unwrap();
        record.calls.take()
    }

    #[test]
    fn the_schedule_mode_starts_and_stops_at_the_right_times() {
        let plan = lameere_windows();
        let [sat, sun] = plan["lameere"][..] else {
            panic!()
        };
        let calls = run_from(sat.start - 3600, &Record::default(), 1000);
        let room = || "lameere".to_owned();
        assert_eq!(
            calls,
            vec![
                (room(), Want::Down, sat.start - 3600),
                (room(), Want::Up, sat.start),
                (room(), Want::Down, sat.stop),
                (room(), Want::Up, sun.start),
                (room(), Want::Down, sun.stop),
            ]
        );
        // Started mid-talk: up at once. A failed start is retried a minute later.
        let record = Record::default();
        *record.fail_first_up.borrow_mut() = true;
        let calls = run_from(sat.start + 600, &record, 2);
        assert_eq!(calls, vec![(room(), Want::Up, sat.start + 660)]);
    }
}
