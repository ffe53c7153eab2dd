//! Where layers are built: the trees mmdebstrap installs into and the initrd and root image are made
//! from. A build writes and deletes ~2 GB of small files there; on disk that cost the role layer a
//! third of its time (unpacking the base, deleting the tree). So they go to memory (/dev/shm) when
//! the machine has the room to spare, else beside the store, whose outputs stay on disk either way.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const SHARED_MEMORY: &str = "/dev/shm";

/// Room a build takes there at its peak: the biggest role's tree (the mixer's, ~1.4 GB, with its
/// packages) and the initrd's tree made beside it (~0.6 GB), with margin.
const BUILD_ROOM: u64 = 4 << 30;

/// Memory left to everything else while a build holds that room.
const SPARE_MEMORY: u64 = 4 << 30;

/// The directory to build in: [`SHARED_MEMORY`] when it has [`BUILD_ROOM`] free, runs programs and
/// leaves [`SPARE_MEMORY`] available beside it; else `on_disk`.
pub fn choose(on_disk: &Path) -> PathBuf {
    let memory = room_in(Path::new(SHARED_MEMORY)).zip(memory_available());
    match memory {
        Some((room, available)) if fits_in_memory(room, available) => PathBuf::from(SHARED_MEMORY),
        _ => on_disk.to_owned(),
    }
}

fn fits_in_memory(room: u64, available: u64) -> bool {
    room >= BUILD_ROOM && available >= BUILD_ROOM + SPARE_MEMORY
}

/// Free bytes of the file system at `path`; None if it cannot be read or does not run programs.
fn room_in(path: &Path) -> Option<u64> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` a statvfs the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 || stat.f_flag & libc::ST_NOEXEC != 0
    {
        return None;
    }
    Some(stat.f_bavail * stat.f_frsize)
}

/// MemAvailable of /proc/meminfo, in bytes.
fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_memory_available(&meminfo)
}

fn parse_memory_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_in_memory_only_with_room_and_memory_to_spare() {
        const GIB: u64 = 1 << 30;
        assert!(fits_in_memory(12 * GIB, 23 * GIB));
        assert!(fits_in_memory(4 * GIB, 8 * GIB));
        assert!(!fits_in_memory(3 * GIB, 23 * GIB), "too little room");
        assert!(!fits_in_memory(12 * GIB, 7 * GIB), "too little memory left");
    }

    #[test]
    fn reads_memory_available() {
        let meminfo = "MemTotal:       24683664 kB\nMemFree:        21000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_memory_available(meminfo), Some(22_000_000 * 1024));
        assert_eq!(parse_memory_available("MemTotal: 1 kB\n"), None);
        assert!(memory_available().is_some(), "this machine's /proc/meminfo");
    }

    #[test]
    fn reads_the_room_of_file_systems_that_run_programs() {
        assert!(room_in(Path::new("/")).is_some_and(|room| room > 0));
        assert_eq!(room_in(Path::new("/nonexistent/lectern")), None);
    }
}
