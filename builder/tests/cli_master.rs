//! `imgbuild check`, `plan` and `schema` on the bundled examples: exit codes, wiring, and no
//! secret value in any output.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// The examples, with their example secrets as real (0600) secrets files, in a temp dir.
fn examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (file, secrets) in [
        ("master.toml", "secrets.toml"),
        ("fosdem-25.toml", "fosdem-25.secrets.toml"),
    ] {
        std::fs::copy(examples.join(file), dir.path().join(file)).unwrap();
        let target = dir.path().join(secrets);
        std::fs::copy(examples.join(format!("{secrets}.example")), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

fn imgbuild(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn both_examples_check_and_no_output_shows_a_secret() {
    let dir = examples();
    let secrets: Vec<String> = ["secrets.toml", "fosdem-25.secrets.toml"]
        .iter()
        .flat_map(|f| {
            let table: toml::Table =
                toml::from_str(&std::fs::read_to_string(dir.path().join(f)).unwrap()).unwrap();
            let keys = table["stream_keys"].as_table().unwrap().clone();
            keys.values()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(secrets.len() >= 27);
    for config in ["master.toml", "fosdem-25.toml"] {
        for args in [vec!["check"], vec!["plan"], vec!["plan", "--json"]] {
            let mut args = args.clone();
            args.extend(["--config", config]);
            let output = imgbuild(dir.path(), &args);
            let shown = text(&output);
            assert!(output.status.success(), "imgbuild {args:?}:\n{shown}");
            for secret in &secrets {
                assert!(
                    !shown.contains(secret.as_str()),
                    "imgbuild {args:?} shows a secret"
                );
            }
        }
    }
    // The default --config is ./master.toml.
    let plan = imgbuild(dir.path(), &["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let lameere = plan["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["slug"] == "lameere")
        .unwrap();
    assert_eq!(lameere["sources"][1]["port"], 10001);
    assert_eq!(
        lameere["renditions"][0]["push_url"],
        "rtmp://stream-backend.video.example.org/stream/lameere?key=***"
    );
}

#[test]
fn a_mixer_recording_to_ram_is_a_warning_naming_it() {
    let dir = examples();
    let master = dir.path().join("master.toml");
    let text_of = std::fs::read_to_string(&master).unwrap();
    let line = text_of
        .lines()
        .position(|l| l == "hostname = \"lameere-mixer\"");
    std::fs::write(&master, text_of.replace("record_disk = \"/dev/sdb\"\n", "")).unwrap();
    let output = imgbuild(dir.path(), &["check"]);
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    let at = format!(
        "warning: master.toml:{}:1: machines[lameere-mixer]: no `record_disk`: recordings go to RAM",
        line.unwrap()
    );
    assert!(shown.contains(&at), "{shown}");
}

#[test]
fn a_broken_master_file_fails_check_with_its_line() {
    let dir = examples();
    let master = dir.path().join("master.toml");
    let broken = std::fs::read_to_string(&master)
        .unwrap()
        .replace("mac = \"52:54:00:42:01:11\"", "mac = \"52:54:00:42:01\"");
    std::fs::write(&master, broken).unwrap();
    let output = imgbuild(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("master.toml:97:7: machines[lameere-source-1].mac"),
        "{}",
        text(&output)
    );
}

#[test]
fn schema_is_json_and_markdown_names_every_table() {
    let dir = examples();
    let schema = imgbuild(dir.path(), &["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let markdown = text(&imgbuild(dir.path(), &["schema", "--markdown"]));
    for table in [
        "`[network.dhcp]`",
        "`[[rooms]]`",
        "`[[machines]]`",
        "`[[encoders]]`",
    ] {
        assert!(markdown.contains(table), "{table}");
    }
}

#[test]
fn progress_goes_to_stderr_and_quiet_keeps_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    lectern_store::Store::create(&store).unwrap();
    let list = |flags: &[&str]| {
        let mut args = flags.to_vec();
        args.extend(["list", "--store", store.to_str().unwrap()]);
        imgbuild(dir.path(), &args)
    };
    let normal = list(&[]);
    assert!(normal.status.success(), "{}", text(&normal));
    assert_eq!(
        String::from_utf8_lossy(&normal.stderr),
        "no master.toml here: building without per-host layers\n"
    );
    for flags in [&["-q"][..], &["--quiet"], &["-q", "-v", "-q"]] {
        let quiet = list(flags);
        assert!(quiet.status.success(), "{}", text(&quiet));
        assert_eq!(quiet.stderr, b"", "imgbuild {flags:?} list");
        assert_eq!(quiet.stdout, normal.stdout, "results are never held back");
    }
    let verbose = list(&["-v"]);
    assert!(verbose.status.success(), "{}", text(&verbose));
    assert_eq!(verbose.stderr, normal.stderr);
    // A command line imgbuild cannot parse: exit code 2.
    assert_eq!(list(&["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn check_says_which_layers_the_lock_file_does_not_cover() {
    use lectern_builder::lock::{Lock, LockedLayer};
    use lectern_builder::recipe::Recipes;

    let dir = examples();
    let shown = text(&imgbuild(dir.path(), &["check"]));
    assert!(
        shown.contains("note: no master.lock yet: the first build resolves the packages of every layer from the mirror and locks them there"),
        "{shown}"
    );

    // The base locked for its recipe, the encoder for a package its recipe no longer asks for.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let recipes = Recipes::load(&repo.join("recipes"), &repo.join("overlays")).unwrap();
    let mut lock = Lock::default();
    let entry = |recipe: &[String]| LockedLayer {
        recipe: recipe.iter().cloned().collect(),
        packages: [("adduser".to_owned(), "3.134".to_owned())].into(),
    };
    lock.layers
        .insert("base".into(), entry(&recipes.base.packages));
    let mut encoder = recipes.role("encoder").unwrap().packages.clone();
    encoder.push("x264".into());
    lock.layers.insert("encoder".into(), entry(&encoder));
    let lock_file = dir.path().join("fosdem-25.lock");
    lock.write(&lock_file).unwrap();
    let output = imgbuild(dir.path(), &["check", "--config", "fosdem-25.toml"]);
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(!shown.contains("the base recipe"), "{shown}");
    assert!(
        shown.contains("warning: fosdem-25.lock: the encoder recipe no longer asks for x264 since it was locked: the next build resolves that layer again, keeping every version the lock names"),
        "{shown}"
    );
    assert!(
        shown.contains("note: fosdem-25.lock: no versions locked for the mixer layer yet"),
        "{shown}"
    );

    // A lock file imgbuild cannot read fails the check, naming its line.
    std::fs::write(&lock_file, "[base]\nadduser\n").unwrap();
    let output = imgbuild(dir.path(), &["check", "--config", "fosdem-25.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("fosdem-25.lock:2: \"adduser\" is not `PACKAGE VERSION`"),
        "{}",
        text(&output)
    );
}
