//! The Debian package in a fresh Debian system (mmdebstrap, the suite the recipes use): apt installs it
//! with its dependencies; both tools run from /usr/bin, imgbuild finds its recipes in /usr/share/lectern,
//! the `lectern` user owns the store, netbootd and the journal receiver are installed but neither enabled
//! nor started (the receiver's Debian package came as a dependency), `imgbuild
//! check` passes on the bundled example and `netbootd check` names what is missing before a build; an
//! upgrade keeps a locally edited /etc/default/netbootd; a purge leaves nothing of the package behind.
//!
//!
//! Then the production box, replicated: a fresh Debian booted with systemd in a container
//! (systemd-nspawn) whose one NIC, `lan0`, is on the VM lab's bridge, the video LAN. As an operator would,
//! the test installs the package there with apt, writes /etc/lectern/master.toml (the fixture's room, its
//! LAN on lan0, its encoder and backend machines of their own) and secrets.toml, and runs `netbootd
//! setup`. It must first refuse, changing nothing, an invalid master file, one naming an interface the box
//! lacks, and a LAN where a rogue DHCP server (dnsmasq) answers; then set the box up (networkd, images,
//! netbootd) and say so; a machine on the LAN (qemu, BIOS PXE) must then netboot from the container's
//! netbootd into its role (the streaming backend, a small one) and report up. A re-run changes nothing,
//! and one after a new bitrate reports only that change. Affordable because the images are not built
//! again: the container's store is the suite's shared test store as the read-only lower layer of an
//! overlay (nspawn `--overlay`), so imgbuild finds every role layer by its key (keys that include the
//! store's TLS key, which comes with the store) and builds only the host layers, into the overlay's upper
//! layer; the test store is never written. The two tests share this binary to run side by side.
//!
//! The package comes from `LECTERN_DEB` (scripts/test.sh builds it once), else the tests build it with
//! `scripts/package.sh` in a target directory of their own. LECTERN_IMAGE_TESTS=1, root,
//! systemd-container.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lectern_netboot::vms::identity_smbios;
use lectern_qemu_tests::debian_box::{
    BOOTABLE, SystemContainer, copy_in, debian_root, fresh_dir, lectern_deb, run,
};
use lectern_qemu_tests::{Firmware, Lab, fixture_builder, fixture_plan, repo, test_store_dir};
use serde_json::Value;

/// What runs inside the fresh system, as root. Each step leaves its output in /root/results for the
/// assertions below; a step that must succeed stops the script when it fails.
const DRILL: &str = r#"set -eu
unset RUST_BACKTRACE
r=/root/results
mkdir -p "$r"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends /root/first.deb >"$r/install.log" 2>&1
dpkg-query -W -f='${Version}' lectern >"$r/installed-version"
netbootd --version >"$r/netbootd-version"
imgbuild --version >"$r/imgbuild-version"
stat -c '%U:%G %a' /var/lib/lectern/store >"$r/store-owner"
ls /etc/systemd/system/multi-user.target.wants/ >"$r/enabled" 2>/dev/null || true
test -x /lib/systemd/systemd-journal-remote && test -s /lib/systemd/system/lectern-journal-remote.service
test -s /usr/share/man/man1/netbootd.1.gz && test -s /usr/share/bash-completion/completions/imgbuild
# The production layout, as the README's commands make it: the master file and its secrets in
# /etc/lectern, the store the package made.
install -d /etc/lectern
cp /usr/share/doc/lectern/examples/master.toml /etc/lectern/master.toml
sed -i 's|^store = .*|store = "/var/lib/lectern/store"|' /etc/lectern/master.toml
install -m 600 /usr/share/doc/lectern/examples/secrets.toml.example /etc/lectern/secrets.toml
cd /
imgbuild check --config /etc/lectern/master.toml >"$r/imgbuild-check" 2>&1 && echo 0 >"$r/imgbuild-check.rc" || echo $? >"$r/imgbuild-check.rc"
netbootd check --config /etc/lectern/master.toml >"$r/netbootd-check" 2>&1 && echo 0 >"$r/netbootd-check.rc" || echo $? >"$r/netbootd-check.rc"
# An upgrade over a locally edited conffile.
echo 'NETBOOTD_ARGS="--config /etc/lectern/master.toml -v"' >>/etc/default/netbootd
apt-get install -y -q --no-install-recommends /root/second.deb >"$r/upgrade.log" 2>&1
dpkg-query -W -f='${Version}' lectern >"$r/upgraded-version"
cp /etc/default/netbootd "$r/default-after-upgrade"
apt-get purge -y -q lectern >"$r/purge.log" 2>&1
for path in /usr/bin/netbootd /usr/bin/imgbuild /usr/share/lectern /etc/default/netbootd \
    /lib/systemd/system/netbootd.service /lib/systemd/system/lectern-journal-remote.service \
    /var/log/journal/remote /usr/lib/sysusers.d/lectern.conf /usr/lib/tmpfiles.d/lectern.conf \
    /var/lib/lectern /var/lib/netbootd /var/cache/lectern; do
  if [ -e "$path" ]; then echo "$path"; fi
done >"$r/left-after-purge"
find / -xdev -user lectern -not -path '/root/results*' >"$r/owned-by-lectern-after-purge" 2>/dev/null || true
echo done >"$r/finished"
"#;

#[test]
fn the_package_installs_runs_its_checks_upgrades_and_purges_cleanly_in_a_fresh_debian() {
    if !lectern_qemu_tests::vm_tests_enabled() {
        return;
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-package");
    fresh_dir(&tmp).unwrap();
    let first = lectern_deb(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let second = with_later_version(&first, &tmp).unwrap();
    let root = tmp.join("root");
    drill(&first, &second, &root).unwrap();
    let result = |name: &str| {
        fs::read_to_string(root.join("root/results").join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}"))
    };
    assert_eq!(result("finished"), "done\n");

    let version = control_field(&first, "Version").unwrap();
    assert_eq!(result("installed-version"), version);
    assert!(
        result("netbootd-version").starts_with("netbootd ")
            && result("imgbuild-version").starts_with("imgbuild "),
        "{}{}",
        result("netbootd-version"),
        result("imgbuild-version")
    );
    // The version names the commit (`+git<date>.<hash>`), as --version does.
    if let Some(commit) = version
        .split("+git")
        .nth(1)
        .and_then(|rest| rest.split('.').nth(1))
    {
        assert!(
            result("netbootd-version").contains(commit),
            "{version}: {}",
            result("netbootd-version")
        );
    }
    assert_eq!(result("store-owner"), "lectern:lectern 750\n");
    assert!(
        !result("enabled").contains("netbootd") && !result("enabled").contains("lectern"),
        "installing must not enable netbootd or the journal receiver: {}",
        result("enabled")
    );

    let check = result("imgbuild-check");
    assert_eq!(result("imgbuild-check.rc"), "0\n", "{check}");
    assert!(
        check.contains("recipes from /usr/share/lectern/recipes")
            && !check.contains("has no recipe"),
        "{check}"
    );
    // Before any build, netbootd check fails, and says why and what to run first.
    let check = result("netbootd-check");
    assert_eq!(result("netbootd-check.rc"), "1\n", "{check}");
    assert!(
        check.starts_with("Error: opening the store /var/lib/lectern/store")
            && check.contains("imgbuild all --config /etc/lectern/master.toml"),
        "{check}"
    );

    assert_eq!(
        result("upgraded-version"),
        control_field(&second, "Version").unwrap()
    );
    assert!(
        result("default-after-upgrade").ends_with("-v\"\n"),
        "the upgrade replaced a locally edited conffile: {}",
        result("default-after-upgrade")
    );
    assert_eq!(result("left-after-purge"), "", "left after purge");
    assert_eq!(result("owned-by-lectern-after-purge"), "");
    fs::remove_dir_all(&tmp).unwrap();
}

/// The same package with a higher version, to upgrade to.
fn with_later_version(deb: &Path, tmp: &Path) -> Result<PathBuf> {
    let tree = tmp.join("repack");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let version = control_field(deb, "Version")?;
    let text = fs::read_to_string(&control)?;
    fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {version}+1\n"),
        ),
    )?;
    let later = tmp.join("later.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&later))?;
    fs::remove_dir_all(&tree)?;
    Ok(later)
}

fn control_field(deb: &Path, field: &str) -> Result<String> {
    let output = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()?;
    ensure!(output.status.success(), "dpkg-deb -f {}", deb.display());
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A fresh Debian of the recipes' suite and mirror in `root`, with the drill run inside it.
fn drill(first: &Path, second: &Path, root: &Path) -> Result<()> {
    let script = root.with_extension("drill.sh");
    fs::write(&script, DRILL)?;
    debian_root(
        root,
        "apt-package-test",
        &[],
        &[
            copy_in(first, "/root/first.deb")?,
            copy_in(second, "/root/second.deb")?,
            copy_in(&script, "/root/drill.sh")?,
            "chroot \"$1\" sh /root/drill.sh".to_owned(),
        ],
    )
}

const INTERFACE: &str = "lan0";
const CLIENT: &str = "stream-backend";
/// The fixture's gateway, which the lab's bridge (the LAN's switch and router) holds; the rogue DHCP
/// server answers from it.
const ROUTER: &str = "10.99.0.254";

/// The fixture's master file as the production box's: its LAN on the box's NIC, the package's store,
/// the secrets beside it, and the room's encoder and backend machines of their own (local VMs would
/// run inside the container, beside the test's own guest, on two shared cores).
fn box_master() -> Result<String> {
    let text = fs::read_to_string(repo().join("builder/tests/fixtures/master.toml"))?;
    let edits: [(&str, &str); 6] = [
        ("interface = \"br0\"", "interface = \"lan0\""),
        ("store = \"store\"", "store = \"/var/lib/lectern/store\""),
        ("file = \"fixture-secrets.toml\"", "file = \"secrets.toml\""),
        (
            "where = \"local-vm\"\nhost = \"control\"",
            "where = \"bare-metal\"",
        ),
        (
            "where = \"local-vm\"\nhost = \"control\"",
            "where = \"bare-metal\"",
        ),
        ("vcpus = 1\nmemory_mb = 1536\n", ""),
    ];
    let mut text = text;
    for (from, to) in edits {
        ensure!(text.contains(from), "the fixture has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    Ok(text)
}

/// What a set-up could change on the box: networkd's files, the units' state, netbootd's arguments,
/// the LAN's link and addresses, and every file under netbootd's state and lectern's, but the store's
/// contents: those are the suite's test store, which other tests write to meanwhile, under the box's
/// overlay (what the box writes there is in the overlay's upper directory, [`fingerprint`] lists it).
const FINGERPRINT: &str = r#"
ls -l --time-style=+%s /etc/systemd/network/
for unit in netbootd netbootd-vms systemd-networkd; do
  echo "$unit $(systemctl is-enabled $unit 2>&1 || true) $(systemctl is-active $unit 2>&1 || true)"
done
cat /etc/default/netbootd
ip -br link show lan0; ip -br addr show lan0
find /var/lib/lectern /var/lib/netbootd -path /var/lib/lectern/store/* -prune \
  -o -printf '%p %u %m %s %T@\n' 2>/dev/null | sort
"#;

/// The box's [`FINGERPRINT`], and every file the box wrote into its store (`upper`: the overlay's
/// upper directory, on this side).
fn fingerprint(container: &SystemContainer, upper: &Path) -> Result<String> {
    let mut listing = container.must(FINGERPRINT)?;
    let output = Command::new("find")
        .arg(upper)
        .args(["-printf", "%P %u %m %s %T@\n"])
        .output()?;
    ensure!(output.status.success(), "find {}", upper.display());
    let mut written: Vec<&str> = std::str::from_utf8(&output.stdout)?.lines().collect();
    written.sort_unstable();
    for line in written {
        listing.push_str("store: ");
        listing.push_str(line);
        listing.push('\n');
    }
    Ok(listing)
}

/// Runs `netbootd setup` on `master` in the box: exit code, stdout, stderr.
fn setup(container: &SystemContainer, master: &str) -> Result<(i32, String, String)> {
    let output = container.sh(&format!("netbootd setup --config {master}"))?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Runs a set-up that must be refused, naming `why`, and change nothing.
fn refused(container: &SystemContainer, upper: &Path, master: &str, why: &str) -> Result<()> {
    let before = fingerprint(container, upper)?;
    let (code, out, err) = setup(container, master)?;
    ensure!(
        code == 1
            && err.contains("refused: ")
            && err.contains(why)
            && err.contains("nothing was changed"),
        "wanted a refusal naming {why:?}, got exit {code}:\n{out}{err}"
    );
    let after = fingerprint(container, upper)?;
    ensure!(
        before == after,
        "a refused set-up changed the box:\n--- before\n{before}--- after\n{after}"
    );
    eprintln!(
        "refused, nothing changed: {}",
        err.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// The step lines of a set-up's output with `status` (`done`, `unchanged`, `ok`).
fn steps<'o>(out: &'o str, status: &str) -> Vec<&'o str> {
    out.lines()
        .filter(|line| line.split_whitespace().next() == Some(status))
        .collect()
}

/// netbootd's record of `hostname` in the box's `/api/hosts` (its operator's views on the box's
/// loopback), or null.
fn record(container: &SystemContainer, hostname: &str) -> Value {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", container.netns(), "curl", "-sf", "-m", "5"])
        .arg("http://127.0.0.1:8081/api/hosts")
        .output();
    let hosts: Value = output
        .ok()
        .and_then(|output| serde_json::from_slice(&output.stdout).ok())
        .unwrap_or(Value::Null);
    (hosts.as_array().into_iter().flatten())
        .find(|host| host["hostname"] == hostname)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn the_set_up_command_makes_a_fresh_debian_the_netboot_server_and_a_machine_boots_from_it() {
    if !lectern_qemu_tests::vm_tests_enabled() {
        return;
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("production-box");
    fresh_dir(&tmp).unwrap();
    if let Err(error) = set_up_a_box(&tmp) {
        panic!("{error:#}\n(files kept in {})", tmp.display());
    }
    fs::remove_dir_all(&tmp).unwrap();
}

fn set_up_a_box(tmp: &Path) -> Result<()> {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs();
    // The images the box's imgbuild will find, in the suite's test store (built once per run, by
    // whichever test needs them first).
    let store = test_store_dir(env!("CARGO_TARGET_TMPDIR"));
    let builder = fixture_builder(&store)?;
    let fixture = fixture_plan()?;
    let master = box_master()?;
    let roles = lectern_master::load_text_without_secret_values(
        &repo().join("builder/tests/fixtures/master.toml"),
        &master,
    )
    .map_err(|problems| anyhow::anyhow!("{problems}"))?
    .image_roles();
    for role in &roles {
        builder.build_role(role.as_str(), &fixture)?;
    }
    eprintln!(
        "[{:>4} s] the test store has the images of {roles:?}",
        elapsed()
    );

    let deb = lectern_deb(Path::new(env!("CARGO_TARGET_TMPDIR")))?;
    let deb_name = deb
        .file_name()
        .context("the package has no name")?
        .to_string_lossy();
    let root = tmp.join("root");
    debian_root(
        &root,
        "apt-production-box",
        BOOTABLE,
        &[
            copy_in(&deb, &format!("/root/{deb_name}"))?,
            // The package's dependencies, downloaded now: the booted box has no way out to a mirror.
            format!(
                "chroot \"$1\" apt-get install --download-only -y -q --no-install-recommends /root/{deb_name}"
            ),
        ],
    )?;
    eprintln!(
        "[{:>4} s] a fresh Debian with lectern's dependencies downloaded",
        elapsed()
    );

    let mut lab = Lab::with_lan("br0", &format!("{ROUTER}/24"))?;
    let upper = tmp.join("store-upper");
    fs::create_dir_all(&upper)?;
    // Where the package's store goes: the overlay's mount point.
    fs::create_dir_all(root.join("var/lib/lectern/store"))?;
    let overlay = format!(
        "{}:{}:/var/lib/lectern/store",
        store.canonicalize()?.display(),
        upper.display()
    );
    let container = SystemContainer::boot(&root, &lab, INTERFACE, &[overlay])?;
    eprintln!("[{:>4} s] the box booted", elapsed());

    // The operator's steps, as the README gives them (dpkg spared its fsyncs: the box is thrown away).
    container.must(&format!(
        "cd /root; DEBIAN_FRONTEND=noninteractive apt install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io ./{deb_name} >install.log 2>&1 || {{ tail -n 30 install.log; exit 1; }}"
    ))?;
    let secrets = fs::read_to_string(repo().join("builder/tests/fixtures/fixture-secrets.toml"))?;
    let write = |path: &str, text: &str, mode: &str| {
        fs::write(root.join(path.trim_start_matches('/')), text)
            .with_context(|| format!("writing {path}"))?;
        container.must(&format!("chmod {mode} {path}"))
    };
    container.must("install -d /etc/lectern")?;
    write("/etc/lectern/secrets.toml", &secrets, "600")?;
    // The lock the test store's images were built from, as an operator brings master.lock with the
    // master file: the box's imgbuild then finds every layer by its locked versions, without a mirror.
    let lock = fs::read_to_string(store.with_extension("lock"))?;
    write("/etc/lectern/master.lock", &lock, "644")?;
    eprintln!("[{:>4} s] lectern installed", elapsed());

    // Refusals: nothing changes.
    write(
        "/etc/lectern/broken.toml",
        &master.replacen("mac = \"8c:16:45:00:e6:f6\"", "mac = \"8c:16:45:00:e6\"", 1),
        "644",
    )?;
    refused(
        &container,
        &upper,
        "/etc/lectern/broken.toml",
        "broken.toml:",
    )?;
    write(
        "/etc/lectern/elsewhere.toml",
        &master.replacen("interface = \"lan0\"", "interface = \"lan9\"", 1),
        "644",
    )?;
    refused(
        &container,
        &upper,
        "/etc/lectern/elsewhere.toml",
        "interface lan9",
    )?;
    write("/etc/lectern/master.toml", &master, "644")?;
    let leases = lab.dir().join("rogue.leases");
    let mut rogue = lab.dnsmasq("br0");
    rogue
        .arg("--log-dhcp")
        .arg(format!("--listen-address={ROUTER}"))
        .arg("--dhcp-range=10.99.0.100,10.99.0.150,1h")
        .arg(format!("--dhcp-leasefile={}", leases.display()));
    let rogue = lab.spawn(rogue, "rogue-dnsmasq.log")?;
    refused(
        &container,
        &upper,
        "/etc/lectern/master.toml",
        &format!("another DHCP server answers on {INTERFACE}: {ROUTER} (offered 10.99.0.1"),
    )?;
    lab.stop(rogue)?;

    // The set-up.
    let set_up = Instant::now();
    let (code, out, err) = setup(&container, "/etc/lectern/master.toml")?;
    ensure!(code == 0, "the set-up failed (exit {code}):\n{out}{err}");
    eprintln!(
        "[{:>4} s] the set-up took {:.0} s:\n{out}",
        elapsed(),
        set_up.elapsed().as_secs_f64()
    );
    let done = steps(&out, "done");
    for wanted in [
        "done      network: 10.99.0.1/24 on lan0: wrote /etc/systemd/network/10-lectern-video-lan.network; enabled and started systemd-networkd.service",
        "done      host layers: new layer for ",
        "done      netbootd.service: enabled, started",
    ] {
        ensure!(
            done.iter().any(|line| line.starts_with(wanted)),
            "{wanted:?} not done:\n{out}"
        );
    }
    ensure!(
        out.contains(
            "unchanged /etc/default/netbootd: netbootd's arguments name /etc/lectern/master.toml"
        ) && out.contains("unchanged netbootd-vms.service: not needed: no local VMs on control")
            && out.contains("ok        DHCP: no other DHCP server answered on lan0"),
        "{out}"
    );
    // The images came from the store as they were: the box built no image layer. (Whether the
    // set-up calls a role's image new depends on the shared store's newest release of it, which the
    // image tests running beside this one also record.)
    let built = upper.join("layers");
    ensure!(
        !built.exists() || fs::read_dir(&built)?.next().is_none(),
        "the box built image layers of its own ({}):\n{out}",
        built.display()
    );
    let plan = lectern_master::load_text_without_secret_values(
        &repo().join("builder/tests/fixtures/master.toml"),
        &master,
    )
    .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let client = plan.host(CLIENT).context("no backend")?;
    let mac = client.mac.context("no MAC")?.to_string();
    let listed = out.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words == ["1.", CLIENT, mac.as_str(), "streaming-backend"]
    });
    ensure!(
        listed && out.contains("http://127.0.0.1:8081/ on this box"),
        "the next steps do not name the machine to switch on and the dashboard:\n{out}"
    );
    let state = container.must(
        "systemctl is-enabled netbootd systemd-networkd; systemctl is-active netbootd; ip -br addr show lan0",
    )?;
    ensure!(
        state.starts_with("enabled\nenabled\nactive\n") && state.contains("10.99.0.1/24"),
        "{state}"
    );

    // A machine switched on on the LAN netboots from the box into its role.
    let booted = Instant::now();
    let smbios = identity_smbios(client.identity.as_ref());
    lab.pxe_boot(&mac, Firmware::Bios, &smbios, None)?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let now = record(&container, CLIENT);
        if now["state"] == "up" {
            eprintln!(
                "[{:>4} s] {CLIENT} up {:.0} s after power-on: {now}",
                elapsed(),
                booted.elapsed().as_secs_f64()
            );
            ensure!(now["role"] == "streaming-backend", "{now}");
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = (lab.guest_logs().iter())
                .map(|log| {
                    let text =
                        String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    format!(
                        "--- {}\n{}",
                        log.display(),
                        lines[lines.len().saturating_sub(30)..].join("\n")
                    )
                })
                .collect();
            let journal = container
                .sh("journalctl -u netbootd -n 60 --no-pager")
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            anyhow::bail!(
                "{CLIENT} not up within 20 minutes: {now}\n{}\n--- netbootd's journal\n{journal}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }

    // Again, unchanged: nothing done.
    let (code, out, err) = setup(&container, "/etc/lectern/master.toml")?;
    ensure!(code == 0, "the second set-up failed:\n{out}{err}");
    ensure!(
        steps(&out, "done").is_empty(),
        "a set-up without a change changed:\n{out}"
    );
    eprintln!(
        "[{:>4} s] the set-up again, without a change: nothing done",
        elapsed()
    );

    // A new bitrate: the hosts that stream or serve it get new layers, netbootd rereads the master
    // file, and nothing else changes.
    write(
        "/etc/lectern/master.toml",
        &master.replacen("video_kbps = 3000", "video_kbps = 2500", 1),
        "644",
    )?;
    let (code, out, err) = setup(&container, "/etc/lectern/master.toml")?;
    ensure!(
        code == 0,
        "the set-up after a new bitrate failed:\n{out}{err}"
    );
    ensure!(
        steps(&out, "done")
            == [
                "done      host layers: new layer for lameere-enc, stream-backend",
                "done      netbootd.service: reloaded (the master file changed)",
            ],
        "a new bitrate did more, or less:\n{out}"
    );
    ensure!(
        record(&container, CLIENT)["state"] == "up",
        "the backend did not stay up"
    );
    eprintln!("[{:>4} s] a new bitrate, set up:\n{out}", elapsed());
    drop(container);
    eprintln!("[{:>4} s] the box halted", elapsed());
    Ok(())
}
