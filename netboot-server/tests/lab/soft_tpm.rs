//! A software TPM 2.0 (swtpm) for a test machine: its state in a directory of the test, its
//! endorsement key's Name read with stock tpm2-tools, as an operator reads a real machine's to
//! write it into the master file. Shared by the namespace tests and the VM lab.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian packages a soft TPM needs.
pub const SOFT_TPM_PACKAGES: &str = "swtpm tpm2-tools";

pub struct SoftTpm {
    /// swtpm's state: the TPM's seeds, hence its keys.
    pub state: PathBuf,
    /// The Name of its RSA endorsement key (`tpm2_readpublic`'s `name:`).
    pub ek_name: String,
}

impl SoftTpm {
    /// A new TPM with its state in `dir` (created): swtpm makes its seeds at first start.
    pub fn manufacture(dir: &Path) -> Result<SoftTpm, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port_pair()?;
        let mut swtpm = Command::new("swtpm")
            .args(tcp_server_args(dir, port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm ({}): {e}", SOFT_TPM_PACKAGES))?;
        let name = (|| {
            wait_for_port(port)?;
            let tcti = format!("swtpm:host=127.0.0.1,port={port}");
            let ek_ctx = dir.join("ek.ctx");
            tpm2(&tcti, &["tpm2_createek", "-Q", "-G", "rsa", "-c"], &ek_ctx)?;
            let public = tpm2(&tcti, &["tpm2_readpublic", "-c"], &ek_ctx)?;
            tpm2(&tcti, &["tpm2_flushcontext", "-t"], Path::new(""))?;
            let _ = std::fs::remove_file(&ek_ctx);
            public
                .lines()
                .find_map(|line| line.strip_prefix("name: "))
                .map(str::to_owned)
                .ok_or_else(|| format!("tpm2_readpublic printed no name:\n{public}"))
        })();
        let _ = swtpm.kill();
        let _ = swtpm.wait();
        Ok(SoftTpm {
            state: dir.to_owned(),
            ek_name: name?,
        })
    }

    /// swtpm serving this TPM's commands on `127.0.0.1:port` (and its control channel on the next
    /// port) of the network namespace it runs in; tpm2-tools reach it as `swtpm:port=…`.
    pub fn tcp_server(&self, port: u16) -> Vec<String> {
        tcp_server_args(&self.state, port)
    }

    /// swtpm for qemu's `-tpmdev emulator`: its control channel on the unix socket `socket`.
    pub fn qemu_server(&self, socket: &Path) -> Vec<String> {
        vec![
            "socket".into(),
            "--tpm2".into(),
            format!("--tpmstate=dir={}", self.state.display()),
            format!("--ctrl=type=unixio,path={}", socket.display()),
            "--terminate".into(),
        ]
    }

    /// qemu's arguments for a TIS TPM behind the swtpm of [`SoftTpm::qemu_server`].
    pub fn qemu_args(socket: &Path) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]
    }
}

fn tcp_server_args(state: &Path, port: u16) -> Vec<String> {
    vec![
        "socket".into(),
        "--tpm2".into(),
        format!("--tpmstate=dir={}", state.display()),
        format!("--server=type=tcp,port={port},bindaddr=127.0.0.1"),
        format!("--ctrl=type=tcp,port={},bindaddr=127.0.0.1", port + 1),
        // Started and ready, as firmware would leave it: tpm2-tools then talk to it directly.
        "--flags=not-need-init,startup-clear".into(),
    ]
}

/// Runs a tpm2-tools command with `file` as its last argument; its stdout.
fn tpm2(tcti: &str, command: &[&str], file: &Path) -> Result<String, String> {
    let mut run = Command::new(command[0]);
    run.args(&command[1..]).env("TPM2TOOLS_TCTI", tcti);
    if !file.as_os_str().is_empty() {
        run.arg(file);
    }
    let output = run
        .output()
        .map_err(|e| format!("{} ({SOFT_TPM_PACKAGES}): {e}", command[0]))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A port whose successor is free too (swtpm's command and control channels).
fn free_port_pair() -> Result<u16, String> {
    for _ in 0..20 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err("no two free loopback ports".into())
}

fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("swtpm did not listen on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
