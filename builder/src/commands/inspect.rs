//! `imgbuild check`, `plan` and `schema`: what the master file says, without building.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use lectern_master::plan::{Plan, RoleConfig};

use super::Global;
use crate::lock::{self, Lock};
use crate::recipe::{BASE, Recipes};

/// Validates the master file and finds the recipes its roles need; prints every problem, or the
/// warnings and a one-line summary.
pub fn check(global: &Global) -> ExitCode {
    let config = &global.config;
    match lectern_master::load(config) {
        Ok(plan) => {
            for warning in &plan.warnings {
                eprintln!("{warning}\n");
            }
            let recipes_dir = global.recipes_dir();
            let recipes = match global.recipes() {
                Ok(recipes) => recipes,
                Err(err) => {
                    eprintln!("{err:#}");
                    return ExitCode::FAILURE;
                }
            };
            for role in plan.image_roles() {
                if recipes.role(role.as_str()).is_err() {
                    let hosts: Vec<&str> = (plan.hosts.iter())
                        .filter(|host| host.role == role)
                        .map(|host| host.hostname.as_str())
                        .collect();
                    eprintln!(
                        "warning: role {role} has no recipe in {}: its hosts ({}) get no image and would boot nothing; imgbuild all skips them\n",
                        recipes_dir.display(),
                        hosts.join(", ")
                    );
                }
            }
            if let Err(err) = check_lock(global, &plan, &recipes) {
                eprintln!("{err:#}");
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} rooms, {} hosts, {} netbooted; recipes from {})",
                config.display(),
                plan.rooms.len(),
                plan.hosts.len(),
                plan.netbooted().count(),
                recipes_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            ExitCode::FAILURE
        }
    }
}

/// Says which layers the lock file does not cover (not locked yet, or a recipe that asks for other
/// packages than it was locked for); fails when the lock file cannot be read.
fn check_lock(global: &Global, plan: &Plan, recipes: &Recipes) -> anyhow::Result<()> {
    let lock_file = global.lock_file();
    let Some(lock) = Lock::load(&lock_file)? else {
        eprintln!(
            "note: no {} yet: the first build resolves the packages of every layer from the mirror and locks them there\n",
            lock_file.display()
        );
        return Ok(());
    };
    let roles = plan.image_roles();
    let layers = std::iter::once(BASE).chain(roles.iter().map(|role| role.as_str()));
    for layer in layers {
        let Ok(recipe) = recipes.role(layer) else {
            continue;
        };
        if let Some(reason) = lock::uncovered(&lock, layer, &recipe.packages) {
            let (level, then) = if lock.layers.contains_key(layer) {
                (
                    "warning",
                    "the next build resolves that layer again, keeping every version the lock names",
                )
            } else {
                (
                    "note",
                    "its first build resolves them from the mirror and locks them",
                )
            };
            eprintln!("{level}: {}: {reason}: {then}\n", lock_file.display());
        }
    }
    Ok(())
}

/// Prints the plan as a table, or as JSON; secrets show as `***` either way.
pub fn plan(config: &Path, json: bool) -> ExitCode {
    match lectern_master::load(config) {
        Ok(plan) if json => {
            let text = serde_json::to_string_pretty(&plan).expect("the plan is plain data");
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok(plan) => {
            print!("{}", table(&plan));
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the master file's JSON Schema, or its Markdown reference (for the README).
pub fn schema(markdown: bool) -> ExitCode {
    if markdown {
        print!("{}", lectern_master::reference::markdown());
    } else {
        let schema = lectern_master::schema();
        println!(
            "{}",
            serde_json::to_string_pretty(&schema).expect("a schema is plain JSON")
        );
    }
    ExitCode::SUCCESS
}

fn table(plan: &Plan) -> String {
    let header = ["HOST", "ROLE", "ROOM", "WHERE", "MAC", "IP", "WIRING"];
    let hosts: Vec<[String; 7]> = plan
        .hosts
        .iter()
        .map(|h| {
            [
                h.hostname.clone(),
                h.role.to_string(),
                h.room.clone().unwrap_or_else(|| "-".into()),
                name_of(h.placement),
                h.mac.map_or("-".into(), |m| m.to_string()),
                match (h.ip, h.netboot) {
                    (Some(ip), _) => ip.to_string(),
                    (None, true) => "dhcp".into(),
                    (None, false) => "-".into(),
                },
                wiring(&h.config),
            ]
        })
        .collect();
    let mut out = columns(header, &hosts);
    let c = &plan.conference;
    let _ = write!(out, "\n{}", c.name);
    for (label, value) in [("web", &c.url), ("schedule", &c.schedule_url)] {
        if let Some(value) = value {
            let _ = write!(out, ", {label} {value}");
        }
    }
    out.push_str("\n\n");
    let rooms: Vec<[String; 4]> = plan
        .rooms
        .iter()
        .map(|r| {
            let irc = match (&r.irc_channel, &c.irc_network) {
                (Some(channel), Some(network)) => format!("{channel} on {network}"),
                (Some(channel), None) => channel.clone(),
                (None, _) => "-".into(),
            };
            [
                r.slug.clone(),
                r.name.clone(),
                irc,
                r.url.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&columns(["ROOM", "NAME", "IRC", "SCHEDULE"], &rooms));
    let _ = writeln!(
        out,
        "\n{} rooms, {} hosts ({} netbooted from {}, DHCP {:?} on {})",
        plan.rooms.len(),
        plan.hosts.len(),
        plan.netbooted().count(),
        plan.netboot.base_url,
        plan.network.dhcp.mode,
        plan.network.dhcp.interface,
    );
    out
}

/// Left-aligned columns, the last one unpadded.
fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for cells in std::iter::once(&header).chain(rows) {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// One line on what a host feeds, pulls or pushes.
fn wiring(config: &RoleConfig) -> String {
    match config {
        RoleConfig::Mixer(m) => {
            let inputs: Vec<String> = m
                .sources
                .iter()
                .map(|s| format!("{}:{}<-{}", s.name, s.port, s.machine))
                .collect();
            let mut text = format!(
                "{}x{}@{} in {} live :{}",
                m.video.width,
                m.video.height,
                m.video.framerate,
                inputs.join(" "),
                m.live_out_port
            );
            for c in &m.contributions {
                let _ = write!(text, " contribution->{}", c.url);
            }
            text
        }
        RoleConfig::Source(s) => format!(
            "{} ({}) -> {}:{}",
            s.source,
            name_of(s.capture.kind),
            s.mixer,
            s.mixer_port
        ),
        RoleConfig::Encoder(e) => {
            let pushes: Vec<String> = e
                .renditions
                .iter()
                .map(|r| r.push_url.to_string())
                .collect();
            format!("{} -> {}", e.pull_url, pushes.join(" + "))
        }
        RoleConfig::Netboot => "serves DHCP/TFTP/HTTP".into(),
        RoleConfig::StreamingBackend(b) => {
            let rooms: Vec<&str> = b.rooms.iter().map(|r| r.slug.as_str()).collect();
            format!(
                "ingests rtmp /{}/ for {}; HLS {}, watch {}",
                b.rtmp_app,
                rooms.join(", "),
                b.hls_path,
                b.watch_path
            )
        }
        RoleConfig::StreamingFrontend(f) => format!(
            "caches {} ({}): HLS {}, watch {}; {} MiB",
            f.backend, f.backend_address, f.hls_path, f.watch_path, f.cache_mb
        ),
    }
}

/// A choice as the master file spells it.
fn name_of(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiring_names_ports_and_hides_keys() {
        let dir = tempfile::tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let master = dir.path().join("master.toml");
        std::fs::copy(examples.join("master.toml"), &master).unwrap();
        let secrets = dir.path().join("secrets.toml");
        std::fs::copy(examples.join("secrets.toml.example"), &secrets).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = table(&lectern_master::load(&master).unwrap());
        assert!(
            text.contains("cam:10000<-lameere-source-1 slides:10001<-lameere-source-2"),
            "{text}"
        );
        assert!(text.contains("tcp://10.42.0.20:15000 -> rtmp://stream-backend.video.example.org/stream/cornil?key=*** + rtmp://stream-backend.video.example.org/stream/cornil_480p?key=***"), "{text}");
        assert!(!text.contains("example-key"), "{text}");
        assert!(
            text.contains("\nFOSDEM 2027, web https://fosdem.org/2027/, schedule https://fosdem.org/2027/schedule/xml\n"),
            "{text}"
        );
        let lameere = text.lines().find(|l| l.starts_with("lameere ")).unwrap();
        assert!(
            lameere.contains("UB2.252A (Lameere)")
                && lameere.contains("#fosdem-lameere on libera")
                && lameere.ends_with("https://fosdem.org/2027/schedule/room/ub2252a/"),
            "{text}"
        );
    }
}
