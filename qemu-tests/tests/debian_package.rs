//! The Debian package in a fresh Debian system (mmdebstrap, the suite the recipes use): apt installs it
//! with its dependencies; both tools run from /usr/bin, imgbuild finds its recipes in /usr/share/lectern,
//! the `lectern` user owns the store, netbootd and the journal receiver are installed but neither enabled
//! nor started (the receiver's Debian package came as a dependency), `imgbuild
//! check` passes on the bundled example and `netbootd check` names what is missing before a build; an
//! upgrade keeps a locally edited /etc/default/netbootd; a purge leaves nothing of the package behind.
//!
//! The package comes from `LECTERN_DEB` (scripts/test.sh builds it once), else this test builds it with
//! `scripts/package.sh` in its own target directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use lectern_builder::recipe::Recipes;
use lectern_qemu_tests::repo;

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
# The production layout: the master file and its secrets in /etc/lectern, the store the package made.
mkdir -p /etc/lectern
sed 's|^store = .*|store = "/var/lib/lectern/store"|' /usr/share/doc/lectern/examples/master.toml >/etc/lectern/master.toml
install -m 0600 /usr/share/doc/lectern/examples/secrets.toml.example /etc/lectern/secrets.toml
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
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let first = package(&tmp).unwrap();
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

/// `LECTERN_DEB`, else a package built from this checkout.
fn package(tmp: &Path) -> Result<PathBuf> {
    if let Some(deb) = std::env::var_os("LECTERN_DEB") {
        return Ok(deb.into());
    }
    // Its own target directory: the one this test runs from is locked by cargo while it runs.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-package-target");
    let output = Command::new(repo().join("scripts/package.sh"))
        .arg(tmp.join("deb"))
        .env("CARGO_TARGET_DIR", target)
        .env("DEB_BUILD_OPTIONS", "noopt nostrip noddebs")
        .output()?;
    ensure!(
        output.status.success(),
        "scripts/package.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().into())
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

/// A fresh Debian of the recipes' suite and mirror in `root`, with the drill run inside it. Its packages are
/// cached between runs (beside imgbuild's, not in it).
fn drill(first: &Path, second: &Path, root: &Path) -> Result<()> {
    let cache =
        Path::new(&std::env::var("LECTERN_CACHE").unwrap_or_else(|_| "/var/cache/lectern".into()))
            .join("apt-package-test");
    fs::create_dir_all(&cache)?;
    let script = root.with_extension("drill.sh");
    fs::write(&script, DRILL)?;
    let copy_in = |from: &Path, to: &str| -> Result<String> {
        let from = from.to_str().context("path is not UTF-8")?;
        Ok(format!("--customize-hook=cp {from} \"$1\"/root/{to}"))
    };
    let cache = cache.to_str().context("cache path is not UTF-8")?;
    let debian = Recipes::load(&repo().join("recipes"), &repo().join("overlays"))?.debian;
    run(Command::new("mmdebstrap")
        .args(["--variant=apt", "--mode=root", "--quiet"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!("--setup-hook=sync-in {cache} /var/cache/apt/archives/"))
        .arg("--essential-hook=echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > \"$1\"/etc/apt/apt.conf.d/keep-cache")
        .arg(copy_in(first, "first.deb")?)
        .arg(copy_in(second, "second.deb")?)
        .arg(copy_in(&script, "drill.sh")?)
        .arg("--customize-hook=chroot \"$1\" sh /root/drill.sh")
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {cache}"))
        .arg("--customize-hook=rm \"$1\"/etc/apt/apt.conf.d/keep-cache")
        .arg(&debian.suite)
        .arg(root)
        .arg(&debian.mirror))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
