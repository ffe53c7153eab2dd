//! The dynamic address pool: leases persisted across restarts, and never one free address
//! offered to two clients in flight (iPXE never retries after a NAK).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
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
    offers: HashMap<Ipv4Addr, (MacAddr, SystemTime)>,
    /// Addresses their holder found in use, kept out until then (seconds since 1970); saved beside
    /// the leases, so a restart does not hand one out again.
    declined: BTreeMap<Ipv4Addr, u64>,
    lease_file: PathBuf,
    /// Leases changed since the table was last written.
    unsaved: bool,
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
            offers: HashMap::new(),
            declined: BTreeMap::new(),
            lease_file,
            unsaved: false,
        };
        let declined: BTreeMap<Ipv4Addr, u64> = match fs::read(pool.declined_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error),
        };
        pool.declined = (declined.into_iter())
            .filter(|(ip, until)| pool.in_range(*ip) && *until > unix_secs(now))
            .collect();
        let stored: Vec<Lease> = match fs::read(&pool.lease_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        for lease in stored {
            let fits = pool.in_range(lease.ip)
                && !pool.reserved_ips.contains(&lease.ip)
                && !pool.reserved_macs.contains(&lease.mac)
                && lease.expires > unix_secs(now);
            if fits {
                pool.leases.insert(lease.ip, lease);
            }
        }
        Ok(pool)
    }

    /// Offers from now on come from `first..=last`. Leases outside it are kept until they expire;
    /// their renewals are refused, so their clients move into the new range.
    pub fn set_range(&mut self, first: Ipv4Addr, last: Ipv4Addr) {
        (self.first, self.last) = (first, last);
        let in_range = |ip: &Ipv4Addr| (first..=last).contains(ip);
        self.offers.retain(|ip, _| in_range(ip));
    }

    /// New leases from now on last this long; those given keep theirs.
    pub fn set_lease_time(&mut self, lease_time: Duration) {
        self.lease_time = lease_time;
    }

    /// Beside the lease file: `dhcp-leases.json` → `dhcp-leases.declined.json`.
    fn declined_file(&self) -> PathBuf {
        self.lease_file.with_extension("declined.json")
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
        let before = self.leases.len();
        let (macs, ips) = (&self.reserved_macs, &self.reserved_ips);
        self.leases
            .retain(|ip, lease| !ips.contains(ip) && !macs.contains(&lease.mac));
        self.unsaved |= self.leases.len() != before;
    }

    /// Picks an address for `mac` and holds it: its current lease or offer, else the address
    /// it asks for, else the lowest free one.
    pub fn offer(
        &mut self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> Option<Ipv4Addr> {
        let held = self
            .leases
            .values()
            .find(|lease| lease.mac == mac)
            .map(|lease| lease.ip)
            .or_else(|| {
                self.offers
                    .iter()
                    .find(|(_, (holder, _))| *holder == mac)
                    .map(|(ip, _)| *ip)
            });
        let free = |ip: Ipv4Addr| self.available_to(ip, mac, now).is_ok();
        let ip = held
            .filter(|ip| free(*ip))
            .or_else(|| requested.filter(|ip| free(*ip)))
            .or_else(|| {
                (u32::from(self.first)..=u32::from(self.last))
                    .map(Ipv4Addr::from)
                    .find(|ip| free(*ip))
            })?;
        self.offers.retain(|_, (holder, _)| *holder != mac);
        self.offers.insert(ip, (mac, now));
        Some(ip)
    }

    /// Binds `ip` to `mac` for one lease time (a REQUEST we ACK); [`Pool::save`] before the
    /// ACK leaves.
    pub fn commit(&mut self, mac: MacAddr, ip: Ipv4Addr, now: SystemTime) -> Result<(), PoolError> {
        self.available_to(ip, mac, now)?;
        self.offers.retain(|_, (holder, _)| *holder != mac);
        self.leases.retain(|_, lease| lease.mac != mac);
        let expires = unix_secs(now + self.lease_time);
        self.leases.insert(ip, Lease { mac, ip, expires });
        self.unsaved = true;
        Ok(())
    }

    /// The client chose another server: free what we offered it.
    pub fn forget_offer(&mut self, mac: MacAddr) {
        self.offers.retain(|_, (holder, _)| *holder != mac);
    }

    pub fn release(&mut self, mac: MacAddr) {
        let before = self.leases.len();
        self.leases.retain(|_, lease| lease.mac != mac);
        self.unsaved |= self.leases.len() != before;
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
        self.leases.remove(&ip);
        self.offers.remove(&ip);
        self.declined.insert(ip, unix_secs(now + self.lease_time));
        self.unsaved = true;
        true
    }

    /// Current leases, for seeding the timeline at start.
    pub fn leases(&self) -> impl Iterator<Item = (MacAddr, Ipv4Addr)> + '_ {
        self.leases.values().map(|lease| (lease.mac, lease.ip))
    }

    /// Writes the table if it changed since the last save. The DHCP loop calls this once per
    /// batch of requests, before any reply leaves: one atomic write covers every lease in the
    /// batch (group commit), and no client holds an ACK for a lease not on disk.
    /// A failed write is logged and tried again at the next call; false until it succeeds.
    pub fn save(&mut self) -> bool {
        if !self.unsaved {
            return true;
        }
        let leases: Vec<&Lease> = self.leases.values().collect();
        let declined_file = self.declined_file();
        let files = [
            (&self.lease_file, serde_json::to_vec_pretty(&leases)),
            (&declined_file, serde_json::to_vec_pretty(&self.declined)),
        ];
        for (file, contents) in files {
            let contents = contents.expect("the tables serialise");
            if let Err(error) = lectern_store::write_atomic(file, |out| out.write_all(&contents)) {
                tracing::error!(file = %file.display(), %error, "could not persist DHCP leases: not answering until they are");
                return false;
            }
        }
        self.unsaved = false;
        true
    }
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

    fn pool(dir: &Path, reservations: Vec<(MacAddr, Ipv4Addr)>, now: SystemTime) -> Pool {
        Pool::load(
            FIRST,
            LAST,
            HOUR,
            reservations,
            dir.join("leases.json"),
            now,
        )
        .unwrap()
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
        let file = dir.path().join("leases.json");
        let now = SystemTime::now();
        let mut pool = pool(dir.path(), vec![], now);
        pool.offer(mac(1), None, now);
        pool.save();
        assert!(!file.exists(), "an offer is not a lease");
        pool.commit(mac(1), FIRST, now).unwrap();
        assert!(!file.exists(), "written on save, once per batch");
        pool.save();
        let written = fs::metadata(&file).unwrap().modified().unwrap();
        pool.save();
        assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), written);
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
        let reloaded = Pool::load(
            FIRST,
            LAST,
            HOUR,
            vec![],
            dir.path().join("leases.json"),
            now,
        )
        .unwrap();
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
        // The lease file's place taken by a directory: the write fails as on a full disk.
        let lease_file = dir.path().join("leases.json");
        fs::create_dir(&lease_file).unwrap();
        assert!(!pool.save(), "not on disk");
        assert!(!pool.save(), "still not: it is tried again");
        fs::remove_dir(&lease_file).unwrap();
        assert!(pool.save());
        let reloaded = self::pool(dir.path(), vec![], now);
        assert_eq!(reloaded.leases().collect::<Vec<_>>(), [(mac(1), FIRST)]);
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
