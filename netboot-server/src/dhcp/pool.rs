//! The dynamic address pool: leases persisted across restarts, and never one free address
//! offered to two clients in flight (iPXE never retries after a NAK).
//!
//! On disk: a snapshot of the table (`dhcp-leases.json`, the declined addresses beside it) and a
//! journal of the changes since (`dhcp-leases.journal`, one JSON line each), as Kea's memfile keeps
//! a lease file and compacts it. A batch of changes costs one append and one fdatasync; the
//! snapshot is rewritten, and the journal emptied, only when the journal outgrows the table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// How long an offered address stays held for the client it was offered to.
const OFFER_HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    mac: MacAddr,
    ip: Ipv4Addr,
    /// Seconds since the Unix epoch.
    expires: u64,
}

/// One change to the table, as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Lease(Lease),
    Free(Ipv4Addr),
    /// Declined until (seconds since 1970).
    Declined(Ipv4Addr, u64),
}

/// Journal lines that may pile up before the snapshot is rewritten: at least this many, or
/// twice the table.
const JOURNAL_LINES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{0} is not in the pool")]
    OutOfRange(Ipv4Addr),
    #[error("{0} is reserved or held by another client")]
    Taken(Ipv4Addr),
}

#[derive(Debug)]
pub struct Pool {
    first: Ipv4Addr,
    last: Ipv4Addr,
    lease_time: Duration,
    /// Addresses reserved by the policy, and the MACs holding them: never pool material.
    reserved_ips: HashSet<Ipv4Addr>,
    reserved_macs: HashSet<MacAddr>,
    leases: BTreeMap<Ipv4Addr, Lease>,
    /// The address each leasing MAC holds: one per MAC.
    lease_of: HashMap<MacAddr, Ipv4Addr>,
    offers: HashMap<Ipv4Addr, (MacAddr, SystemTime)>,
    offer_of: HashMap<MacAddr, Ipv4Addr>,
    /// Addresses their holder found in use, kept out until then (seconds since 1970); saved beside
    /// the leases, so a restart does not hand one out again.
    declined: BTreeMap<Ipv4Addr, u64>,
    /// Written by [`save`], outside the pool's lock.
    files: Arc<Mutex<LeaseFiles>>,
    /// Changes not yet taken by [`save`].
    unsaved: Vec<Change>,
}

/// The table on disk: the snapshot (the lease file, the declined addresses beside it) and the
/// journal of changes since.
#[derive(Debug)]
pub struct LeaseFiles {
    snapshot: PathBuf,
    /// Changes taken from the pool whose write failed: the next write puts them first.
    failed: Vec<Change>,
    /// The journal, open for appending once first written, and its whole lines and bytes.
    journal: Option<File>,
    journal_lines: usize,
    journal_bytes: u64,
    /// A failed append could not be cut off: the next save writes a snapshot instead.
    snapshot_due: bool,
    /// Journal lines that may pile up before the snapshot is rewritten, unless the table is larger.
    journal_limit: usize,
}

fn unix_secs(when: SystemTime) -> u64 {
    when.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

impl Pool {
    /// Loads `lease_file` if it exists, dropping what no longer fits: expired leases,
    /// addresses out of range or now reserved, and MACs that now have a reservation (a stale
    /// file must not move a reserved host into the pool).
    pub fn load(
        first: Ipv4Addr,
        last: Ipv4Addr,
        lease_time: Duration,
        reservations: impl IntoIterator<Item = (MacAddr, Ipv4Addr)>,
        lease_file: PathBuf,
        now: SystemTime,
    ) -> io::Result<Self> {
        let (reserved_macs, reserved_ips) = reservations.into_iter().unzip();
        let mut pool = Pool {
            first,
            last,
            lease_time,
            reserved_ips,
            reserved_macs,
            leases: BTreeMap::new(),
            lease_of: HashMap::new(),
            offers: HashMap::new(),
            offer_of: HashMap::new(),
            declined: BTreeMap::new(),
            files: Arc::new(Mutex::new(LeaseFiles {
                snapshot: lease_file,
                failed: Vec::new(),
                journal: None,
                journal_lines: 0,
                journal_bytes: 0,
                snapshot_due: false,
                journal_limit: JOURNAL_LINES,
            })),
            unsaved: Vec::new(),
        };
        let files = Arc::clone(&pool.files);
        let mut files = files.lock().expect("lease files lock");
        let read = |path: &PathBuf| match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        };
        let declined: BTreeMap<Ipv4Addr, u64> = match read(&files.declined_file())? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            None => BTreeMap::new(),
        };
        let stored: Vec<Lease> = match read(&files.snapshot)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            None => Vec::new(),
        };
        pool.declined = declined;
        for lease in stored {
            pool.bind(lease);
        }
        let journal = files.journal_file();
        let (changes, whole_bytes) = read_journal(&journal, read(&journal)?.unwrap_or_default())?;
        files.journal_lines = changes.len();
        // Appends go after the last whole line: a line cut short is cut off before the next one.
        files.journal_bytes = whole_bytes;
        drop(files);
        for change in changes {
            pool.apply(change);
        }
        // What no longer fits goes: expired entries, addresses out of range or now reserved, and
        // MACs that now have a reservation (a stale file must not move a reserved host into the pool).
        let stale: Vec<Ipv4Addr> = (pool.leases.values())
            .filter(|lease| {
                !pool.in_range(lease.ip)
                    || pool.reserved_ips.contains(&lease.ip)
                    || pool.reserved_macs.contains(&lease.mac)
                    || lease.expires <= unix_secs(now)
            })
            .map(|lease| lease.ip)
            .collect();
        for ip in stale {
            pool.unbind(ip);
        }
        let in_range = |ip: &Ipv4Addr| (pool.first..=pool.last).contains(ip);
        pool.declined
            .retain(|ip, until| in_range(ip) && *until > unix_secs(now));
        Ok(pool)
    }

    /// Applies one change read from the journal.
    fn apply(&mut self, change: Change) {
        match change {
            Change::Lease(lease) => self.bind(lease),
            Change::Free(ip) => self.unbind(ip),
            Change::Declined(ip, until) => {
                self.unbind(ip);
                self.declined.insert(ip, until);
            }
        }
    }

    /// Gives `lease.ip` to `lease.mac`, taking it from whoever held it and the MAC's old address
    /// from it: one holder per address, one address per MAC.
    fn bind(&mut self, lease: Lease) {
        if let Some(old) = self.lease_of.get(&lease.mac).copied() {
            self.leases.remove(&old);
        }
        self.unbind(lease.ip);
        self.lease_of.insert(lease.mac, lease.ip);
        self.leases.insert(lease.ip, lease);
    }

    /// Frees `ip`, if leased.
    fn unbind(&mut self, ip: Ipv4Addr) {
        if let Some(lease) = self.leases.remove(&ip) {
            self.lease_of.remove(&lease.mac);
        }
    }

    /// Holds `ip` for `mac`, dropping any other offer to it.
    fn hold(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) {
        self.forget_offer(mac);
        if let Some((holder, _)) = self.offers.insert(ip, (mac, now)) {
            self.offer_of.remove(&holder);
        }
        self.offer_of.insert(mac, ip);
    }

    /// Offers from now on come from `first..=last`. Leases outside it are kept until they expire;
    /// their renewals are refused, so their clients move into the new range.
    pub fn set_range(&mut self, first: Ipv4Addr, last: Ipv4Addr) {
        (self.first, self.last) = (first, last);
        let in_range = |ip: &Ipv4Addr| (first..=last).contains(ip);
        self.offers.retain(|ip, _| in_range(ip));
        let offers = &self.offers;
        self.offer_of.retain(|_, ip| offers.contains_key(ip));
    }

    /// New leases from now on last this long; those given keep theirs.
    pub fn set_lease_time(&mut self, lease_time: Duration) {
        self.lease_time = lease_time;
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }

    /// Whether `mac` may have `ip` now: in range, not reserved, declined, leased or offered
    /// to anyone else.
    fn available_to(&self, ip: Ipv4Addr, mac: MacAddr, now: SystemTime) -> Result<(), PoolError> {
        if !self.in_range(ip) {
            return Err(PoolError::OutOfRange(ip));
        }
        let leased_to_other = self
            .leases
            .get(&ip)
            .is_some_and(|lease| lease.mac != mac && lease.expires > unix_secs(now));
        let offered_to_other = self
            .offers
            .get(&ip)
            .is_some_and(|(holder, at)| *holder != mac && *at + OFFER_HOLD > now);
        let declined = self
            .declined
            .get(&ip)
            .is_some_and(|until| *until > unix_secs(now));
        if self.reserved_ips.contains(&ip) || leased_to_other || offered_to_other || declined {
            return Err(PoolError::Taken(ip));
        }
        Ok(())
    }

    /// New reservations from a reloaded policy: their MACs and addresses leave the pool.
    pub fn set_reservations(
        &mut self,
        reservations: impl IntoIterator<Item = (MacAddr, Ipv4Addr)>,
    ) {
        (self.reserved_macs, self.reserved_ips) = reservations.into_iter().unzip();
        let (macs, ips) = (&self.reserved_macs, &self.reserved_ips);
        let taken: Vec<Ipv4Addr> = (self.leases.values())
            .filter(|lease| ips.contains(&lease.ip) || macs.contains(&lease.mac))
            .map(|lease| lease.ip)
            .collect();
        for ip in taken {
            self.unbind(ip);
            self.unsaved.push(Change::Free(ip));
        }
    }

    /// Picks an address for `mac` and holds it: its current lease or offer, else the address
    /// it asks for, else the lowest free one.
    pub fn offer(
        &mut self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> Option<Ipv4Addr> {
        let held = (self.lease_of.get(&mac))
            .or_else(|| self.offer_of.get(&mac))
            .copied();
        let free = |ip: Ipv4Addr| self.available_to(ip, mac, now).is_ok();
        let ip = held
            .filter(|ip| free(*ip))
            .or_else(|| requested.filter(|ip| free(*ip)))
            .or_else(|| {
                (u32::from(self.first)..=u32::from(self.last))
                    .map(Ipv4Addr::from)
                    .find(|ip| free(*ip))
            })?;
        self.hold(mac, ip, now);
        Some(ip)
    }

    /// Binds `ip` to `mac` for one lease time (a REQUEST we ACK); [`Pool::save`] before the
    /// ACK leaves.
    pub fn commit(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) -> Result<(), PoolError> {
        self.available_to(ip, mac, now)?;
        self.forget_offer(mac);
        let lease = Lease {
            mac,
            ip,
            expires: unix_secs(now + self.lease_time),
        };
        self.bind(lease);
        self.unsaved.push(Change::Lease(lease));
        Ok(())
    }

    /// The client chose another server: free what we offered it.
    pub fn forget_offer(&mut self, mac: MacAddr) {
        if let Some(ip) = self.offer_of.remove(&mac) {
            self.offers.remove(&ip);
        }
    }

    pub fn release(&mut self, mac: MacAddr) {
        if let Some(ip) = self.lease_of.get(&mac).copied() {
            self.unbind(ip);
            self.unsaved.push(Change::Free(ip));
        }
    }

    /// The client found `ip` in use (RFC 2131 DHCPDECLINE): keep it out for a lease time. Only
    /// the client the address is leased or offered to may decline it, as Kea and ISC dhcpd have
    /// it: anyone else's DECLINE would take a working client's address away. False if refused.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) -> bool {
        let leased = self.leases.get(&ip).is_some_and(|lease| lease.mac == mac);
        let offered = self
            .offers
            .get(&ip)
            .is_some_and(|(holder, _)| *holder == mac);
        if !leased && !offered {
            return false;
        }
        self.unbind(ip);
        self.forget_offer(mac);
        let until = unix_secs(now + self.lease_time);
        self.declined.insert(ip, until);
        self.unsaved.push(Change::Declined(ip, until));
        true
    }

    /// Current leases, for seeding the timeline at start.
    pub fn leases(&self) -> impl Iterator<Item = (MacAddr, Ipv4Addr)> + '_ {
        self.leases.values().map(|lease| (lease.mac, lease.ip))
    }

    /// Whether `mac` holds a lease on `ip` from this pool (a reservation is not one).
    pub fn leases_to(&self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        self.lease_of.get(&mac) == Some(&ip)
    }

    /// Whether changes wait for [`save`].
    pub fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty()
    }

    /// The changes since the last take, and the whole table when `with_table`.
    fn take(&mut self, with_table: bool) -> Taken {
        Taken {
            changes: std::mem::take(&mut self.unsaved),
            table: with_table.then(|| Table {
                leases: self.leases.values().copied().collect(),
                declined: self.declined.clone(),
            }),
            table_len: self.leases.len(),
        }
    }

    #[cfg(test)]
    fn save(&mut self) -> bool {
        let files = Arc::clone(&self.files);
        let mut files = files.lock().unwrap();
        files.write(|with_table| self.take(with_table))
    }
}

/// The table as a snapshot holds it.
struct Table {
    leases: Vec<Lease>,
    declined: BTreeMap<Ipv4Addr, u64>,
}

/// What a write takes from the pool.
struct Taken {
    changes: Vec<Change>,
    table: Option<Table>,
    table_len: usize,
}

/// Writes the pool's changes since the last save. The DHCP loop calls this once per batch of
/// requests that changed the table, and sends the batch's lease ACKs only once it has returned
/// true: one durable write covers every lease in the batch (group commit), and no client holds
/// an ACK for a lease not on disk. The pool's lock is held only to take the changes, not through
/// the write and its sync, so offers go out meanwhile; writes are serialised by the files' lock,
/// in the order their changes were made. A failed write is logged and tried again at the next
/// call; false until it succeeds.
pub fn save(pool: &Mutex<Pool>) -> bool {
    let files = Arc::clone(&pool.lock().expect("pool lock").files);
    let mut files = files.lock().expect("lease files lock");
    files.write(|with_table| pool.lock().expect("pool lock").take(with_table))
}

impl LeaseFiles {
    /// Takes the pool's changes through `take` and puts them on disk: appended to the journal,
    /// or, after an append that could not be cut off, as a whole snapshot. The journal is folded
    /// into a new snapshot once it outgrows the table.
    fn write(&mut self, mut take: impl FnMut(bool) -> Taken) -> bool {
        let taken = take(self.snapshot_due);
        let mut changes = std::mem::take(&mut self.failed);
        changes.extend(taken.changes);
        let written = match &taken.table {
            Some(table) => self.write_snapshot(table),
            None if changes.is_empty() => return true,
            None => self.append(&changes),
        };
        if let Err(error) = written {
            tracing::error!(file = %self.snapshot.display(), %error, "could not persist DHCP leases: not answering until they are");
            self.failed = changes;
            return false;
        }
        if taken.table.is_none() && self.journal_lines > self.journal_limit.max(2 * taken.table_len)
        {
            // Changes made since the take above are in this table too, and go to disk with it.
            let folded = take(true);
            let table = folded.table.as_ref().expect("asked for");
            if let Err(error) = self.write_snapshot(table) {
                // The journal holds what was written before: it is folded in later.
                tracing::warn!(file = %self.snapshot.display(), %error, "could not rewrite the lease snapshot: the journal grows until it can");
                self.failed = folded.changes;
            }
        }
        true
    }

    /// Beside the lease file: `dhcp-leases.json` → `dhcp-leases.declined.json`.
    fn declined_file(&self) -> PathBuf {
        self.snapshot.with_extension("declined.json")
    }

    /// Beside the lease file: `dhcp-leases.json` → `dhcp-leases.journal`.
    fn journal_file(&self) -> PathBuf {
        self.snapshot.with_extension("journal")
    }

    /// Appends `changes` to the journal and waits until they are on disk. A partial append is cut
    /// off again, so that the journal never holds half a line before a whole one.
    fn append(&mut self, changes: &[Change]) -> io::Result<()> {
        let mut lines = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut lines, change).map_err(io::Error::other)?;
            lines.push(b'\n');
        }
        if self.journal.is_none() {
            let file = File::options()
                .create(true)
                .append(true)
                .open(self.journal_file())?;
            file.set_len(self.journal_bytes)?;
            // The new file's name must be on disk too.
            lectern_store::sync_parent(&self.journal_file())?;
            self.journal = Some(file);
        }
        let journal = self.journal.as_mut().expect("opened above");
        let appended = journal.write_all(&lines).and_then(|()| journal.sync_data());
        if let Err(error) = appended {
            self.snapshot_due = journal.set_len(self.journal_bytes).is_err();
            return Err(error);
        }
        self.journal_bytes += lines.len() as u64;
        self.journal_lines += changes.len();
        Ok(())
    }

    /// Writes the whole table (atomically, each file synced), then empties the journal: until
    /// it is emptied, replaying it over the new snapshot gives the same table.
    fn write_snapshot(&mut self, table: &Table) -> io::Result<()> {
        let declined_file = self.declined_file();
        let files = [
            (&self.snapshot, serde_json::to_vec_pretty(&table.leases)),
            (&declined_file, serde_json::to_vec_pretty(&table.declined)),
        ];
        for (file, contents) in files {
            let contents = contents.map_err(io::Error::other)?;
            lectern_store::write_atomic(file, |out| out.write_all(&contents))?;
        }
        let journal = File::create(self.journal_file())?;
        journal.sync_all()?;
        self.journal = Some(journal);
        (self.journal_lines, self.journal_bytes) = (0, 0);
        self.snapshot_due = false;
        Ok(())
    }
}

/// The unexpired leases of a server's `lease_file` and its journal, as a restart would read them:
/// for what looks at a server's state from outside (its tests, an operator's tool).
pub fn leases_on_disk(lease_file: PathBuf) -> io::Result<Vec<(MacAddr, Ipv4Addr)>> {
    let any = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST);
    let pool = Pool::load(
        any.0,
        any.1,
        Duration::ZERO,
        [],
        lease_file,
        SystemTime::now(),
    )?;
    Ok(pool.leases().collect())
}

/// The changes in a journal's `bytes`, in order, and the length of its whole lines. Only the last
/// line may be cut short (a crash during an append, whose batch was never answered): it is left
/// out. Any other damage is an error.
fn read_journal(path: &std::path::Path, bytes: Vec<u8>) -> io::Result<(Vec<Change>, u64)> {
    let whole_bytes = bytes
        .iter()
        .rposition(|byte| *byte == b'\n')
        .map_or(0, |end| end + 1);
    if whole_bytes < bytes.len() {
        tracing::warn!(journal = %path.display(), "the lease journal ends in a line cut short: left out, it was never acknowledged");
    }
    let lines = match whole_bytes {
        0 => None,
        end => Some(bytes[..end - 1].split(|byte| *byte == b'\n')),
    };
    let changes = (lines.into_iter().flatten())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_slice(line).map_err(|error| {
                io::Error::other(format!("{}: line {}: {error}", path.display(), index + 1))
            })
        })
        .collect::<io::Result<_>>()?;
    Ok((changes, whole_bytes as u64))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FIRST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const LAST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
    const HOUR: Duration = Duration::from_secs(3600);

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }

    fn load(
        dir: &Path,
        reservations: Vec<(MacAddr, Ipv4Addr)>,
        now: SystemTime,
    ) -> io::Result<Pool> {
        let lease_file = dir.join("leases.json");
        Pool::load(FIRST, LAST, HOUR, reservations, lease_file, now)
    }

    fn pool(dir: &Path, reservations: Vec<(MacAddr, Ipv4Addr)>, now: SystemTime) -> Pool {
        load(dir, reservations, now).unwrap()
    }

    #[test]
    fn clients_in_flight_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut pool = pool(
            dir.path(),
            vec![(mac(9), Ipv4Addr::new(10, 0, 0, 101))],
            now,
        );
        let first = pool.offer(mac(1), None, now).unwrap();
        let second = pool.offer(mac(2), Some(first), now).unwrap();
        assert_eq!(
            (first, second),
            (FIRST, LAST),
            "the reserved .101 is skipped"
        );
        assert_eq!(pool.offer(mac(3), None, now), None, "pool exhausted");
        assert_eq!(
            pool.offer(mac(1), None, now),
            Some(first),
            "a repeated DISCOVER keeps its offer"
        );
        assert_eq!(
            pool.commit(mac(2), first, now),
            Err(PoolError::Taken(first))
        );
        assert_eq!(
            pool.offer(mac(3), None, now + OFFER_HOLD + Duration::from_secs(1)),
            Some(FIRST)
        );
    }

    #[test]
    fn leases_survive_a_restart_and_keep_their_address() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut before = pool(dir.path(), vec![], now);
        before.commit(mac(1), LAST, now).unwrap();
        before.save();
        let mut after = pool(dir.path(), vec![], now);
        assert_eq!(after.leases().collect::<Vec<_>>(), vec![(mac(1), LAST)]);
        assert_eq!(after.offer(mac(1), None, now), Some(LAST));
        assert_eq!(after.offer(mac(2), Some(LAST), now), Some(FIRST));
    }

    #[test]
    fn leases_reach_the_disk_on_save_only_once_changed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("leases.journal");
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.offer(mac(1), None, now);
        pool.save();
        assert!(!journal.exists(), "an offer is not a lease");
        pool.commit(mac(1), FIRST, now).unwrap();
        pool.commit(mac(2), LAST, now).unwrap();
        assert!(!journal.exists(), "written on save, once per batch");
        pool.save();
        let lines = || fs::read_to_string(&journal).unwrap().lines().count();
        assert_eq!(lines(), 2);
        pool.save();
        assert_eq!(lines(), 2, "nothing new, nothing written");
    }

    #[test]
    fn the_journal_is_folded_into_the_snapshot_and_replays_over_it_alike() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("leases.journal");
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.files.lock().unwrap().journal_limit = 4;
        for n in 0..3 {
            pool.commit(mac(n), Ipv4Addr::new(10, 0, 0, 100 + n), now)
                .unwrap();
            pool.save();
        }
        pool.release(mac(0));
        assert!(pool.decline(mac(2), LAST, now));
        pool.save();
        // Five lines, over the limit: the snapshot was rewritten and the journal emptied. A crash
        // between the two leaves the whole journal beside the new snapshot.
        assert_eq!(fs::read(&journal).unwrap(), b"", "folded into the snapshot");
        let mut before_compaction = Vec::new();
        for change in [
            Change::Lease(Lease {
                mac: mac(0),
                ip: FIRST,
                expires: unix_secs(now + HOUR),
            }),
            Change::Lease(Lease {
                mac: mac(1),
                ip: Ipv4Addr::new(10, 0, 0, 101),
                expires: unix_secs(now + HOUR),
            }),
            Change::Lease(Lease {
                mac: mac(2),
                ip: LAST,
                expires: unix_secs(now + HOUR),
            }),
            Change::Free(FIRST),
            Change::Declined(LAST, unix_secs(now + HOUR)),
        ] {
            serde_json::to_writer(&mut before_compaction, &change).unwrap();
            before_compaction.push(b'\n');
        }
        let want = vec![(mac(1), Ipv4Addr::new(10, 0, 0, 101))];
        assert_eq!(
            self::pool(dir.path(), vec![], now)
                .leases()
                .collect::<Vec<_>>(),
            want
        );
        fs::write(&journal, before_compaction).unwrap();
        let replayed = self::pool(dir.path(), vec![], now);
        assert_eq!(
            replayed.leases().collect::<Vec<_>>(),
            want,
            "the same table"
        );
        assert!(replayed.declined.contains_key(&LAST));
    }

    #[test]
    fn a_journal_line_cut_short_at_the_end_is_left_out_and_damage_elsewhere_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("leases.journal");
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.commit(mac(1), FIRST, now).unwrap();
        pool.save();
        let whole = fs::read(&journal).unwrap();
        // A crash in the middle of the next batch's append: that batch was never answered.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"lease":{"mac":"02:00:00:00:00:02","ip":"10.0."#);
        fs::write(&journal, &torn).unwrap();
        let mut reloaded = self::pool(dir.path(), vec![], now);
        assert_eq!(reloaded.leases().collect::<Vec<_>>(), [(mac(1), FIRST)]);
        // The next batch goes after the last whole line, not after the torn one.
        reloaded.commit(mac(3), LAST, now).unwrap();
        assert!(reloaded.save());
        let again = self::pool(dir.path(), vec![], now);
        assert_eq!(again.leases().count(), 2);
        let mut damaged = b"{not json}\n".to_vec();
        damaged.extend_from_slice(&whole);
        fs::write(&journal, &damaged).unwrap();
        let error = load(dir.path(), vec![], now).unwrap_err().to_string();
        assert!(error.contains("leases.journal: line 1"), "{error}");
    }

    #[test]
    fn stale_entries_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut before = pool(dir.path(), vec![], now);
        before.commit(mac(1), FIRST, now).unwrap();
        before.commit(mac(2), LAST, now).unwrap();
        before.save();
        // mac(1) got a reservation since: its pool lease must not keep it in the pool.
        let after = pool(dir.path(), vec![(mac(1), Ipv4Addr::new(10, 0, 0, 50))], now);
        assert_eq!(after.leases().collect::<Vec<_>>(), vec![(mac(2), LAST)]);
        let expired = pool(dir.path(), vec![], now + HOUR + Duration::from_secs(1));
        assert_eq!(expired.leases().count(), 0);
    }

    #[test]
    fn new_reservations_take_their_hosts_and_addresses_out_of_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.commit(mac(1), FIRST, now).unwrap();
        pool.commit(mac(2), LAST, now).unwrap();
        pool.save();
        pool.set_reservations([(mac(1), Ipv4Addr::new(10, 0, 0, 50)), (mac(7), LAST)]);
        pool.save();
        assert_eq!(pool.leases().count(), 0);
        assert_eq!(pool.offer(mac(2), None, now), Some(FIRST));
        let reloaded = self::pool(dir.path(), vec![], now);
        assert_eq!(
            reloaded.leases().count(),
            0,
            "the pruned table was persisted"
        );
    }

    #[test]
    fn a_new_range_takes_offers_and_moves_old_leases_at_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.commit(mac(1), FIRST, now).unwrap();
        let (first, last) = (Ipv4Addr::new(10, 0, 0, 150), Ipv4Addr::new(10, 0, 0, 160));
        pool.set_range(first, last);
        assert_eq!(pool.leases().count(), 1, "kept until it expires");
        assert_eq!(pool.offer(mac(2), None, now), Some(first));
        assert_eq!(
            pool.commit(mac(1), FIRST, now),
            Err(PoolError::OutOfRange(FIRST))
        );
    }

    #[test]
    fn a_failed_write_is_said_and_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.commit(mac(1), FIRST, now).unwrap();
        // The journal's place taken by a directory: the write fails as on a full disk.
        let journal = dir.path().join("leases.journal");
        fs::create_dir(&journal).unwrap();
        assert!(!pool.save(), "not on disk");
        assert!(!pool.save(), "still not: it is tried again");
        fs::remove_dir(&journal).unwrap();
        assert!(pool.save());
        let reloaded = self::pool(dir.path(), vec![], now);
        assert_eq!(reloaded.leases().collect::<Vec<_>>(), [(mac(1), FIRST)]);
    }

    #[test]
    fn a_write_in_flight_leaves_the_pool_free_for_offers() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let pool = Mutex::new(pool(dir.path(), vec![], now));
        pool.lock().unwrap().commit(mac(1), FIRST, now).unwrap();
        // The journal's place taken by a FIFO: opening it to append blocks until a reader comes,
        // as a write stalls on a busy disk.
        let journal = dir.path().join("leases.journal");
        let status = std::process::Command::new("mkfifo")
            .arg(&journal)
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| save(&pool));
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !pool.lock().unwrap().unsaved.is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the write never took its changes"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(100));
            assert!(!writer.is_finished(), "the write is stuck on the FIFO");
            let offered = pool
                .try_lock()
                .map(|mut pool| pool.offer(mac(2), None, now));
            assert_eq!(offered.ok().flatten(), Some(Ipv4Addr::new(10, 0, 0, 101)));
            let _reader = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&journal)
                .unwrap();
            assert!(
                !writer.join().unwrap(),
                "a FIFO cannot be synced: not on disk"
            );
        });
        // The lease is kept for the next write.
        fs::remove_file(&journal).unwrap();
        assert!(save(&pool));
        assert_eq!(
            self::pool(dir.path(), vec![], now)
                .leases()
                .collect::<Vec<_>>(),
            [(mac(1), FIRST)]
        );
    }

    #[test]
    fn declined_and_released_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.commit(mac(1), FIRST, now).unwrap();
        // A DECLINE from anyone but the holder changes nothing.
        assert!(!pool.decline(mac(2), FIRST, now));
        assert_eq!(pool.leases().collect::<Vec<_>>(), [(mac(1), FIRST)]);
        assert!(pool.decline(mac(1), FIRST, now));
        pool.save();
        // The declined address stays out after a restart, until its probation ends.
        let mut pool = self::pool(dir.path(), vec![], now);
        assert_ne!(pool.offer(mac(3), Some(FIRST), now), Some(FIRST));
        pool.forget_offer(mac(3));
        let later = now + HOUR + Duration::from_secs(1);
        assert_eq!(
            self::pool(dir.path(), vec![], later).offer(mac(3), Some(FIRST), later),
            Some(FIRST)
        );
        assert_eq!(
            pool.offer(mac(1), None, now),
            Some(Ipv4Addr::new(10, 0, 0, 101))
        );
        pool.commit(mac(1), Ipv4Addr::new(10, 0, 0, 101), now)
            .unwrap();
        pool.release(mac(1));
        assert_eq!(pool.leases().count(), 0);
        assert_eq!(
            pool.commit(mac(1), Ipv4Addr::new(10, 0, 1, 1), now),
            Err(PoolError::OutOfRange(Ipv4Addr::new(10, 0, 1, 1)))
        );
    }
}
