//! Loopback ports for test servers, chosen outside the kernel's ephemeral port range.
//!
//! Why not port 0: the kernel hands out port 0 binds from the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), the same range every outgoing connection draws
//! its source port from. A test that stops a server and starts it again on the same port (an
//! outage test) then races every client on the machine: while the server is down, a client that
//! keeps reconnecting to it can be given that very port as its source port (a TCP self-connect),
//! and any other test's client may hold it too, so the restart fails with "address already in
//! use" at random. Ports below the ephemeral range are only ever taken by an explicit bind, so
//! a port we chose stays ours across restarts.
//!
//! How: candidates come from outside the ephemeral range (below it if there is room, else above
//! it), starting at an offset derived from the process id, and each one is
//! - claimed across processes with a lock file in the temp dir (held until the process ends),
//!   so parallel test binaries never hand out the same port, and
//! - checked by binding it, so a port some other program uses is skipped.
//!
//! This file depends on `std` and `fs2` only: the SDK's tests include it with `#[path]`, so every
//! test that picks a port uses this one function.

use fs2::FileExt as _;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Lowest port handed out: well clear of the registered services people run on their machines
/// below it (databases, brokers, dev servers on 1883, 5432, 8080, 8086, ...).
const LOWEST: u16 = 20_000;

/// Lock files of the ports this process holds; kept open (and so locked) until it exits.
static CLAIMED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A loopback TCP port that is free now, outside the ephemeral range, and not handed to any
/// other test process. Panics (with the reason) when no port can be found.
pub fn free_port() -> u16 {
    let range = test_port_range();
    let span = u32::from(range.end() - range.start()) + 1;
    // Where this process starts looking: spread processes apart so their searches rarely meet.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let lock_dir = std::env::temp_dir().join("locus-test-ports");
    std::fs::create_dir_all(&lock_dir).expect("creating the test port lock dir");
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = range.start() + offset as u16;
        if let Some(lock) = claim(&lock_dir, port) {
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
                return port;
            }
        }
    }
    panic!("no free loopback port in {range:?} (outside the ephemeral range)");
}

/// Takes the cross-process lock for `port`, or `None` if another live process holds it.
fn claim(lock_dir: &std::path::Path, port: u16) -> Option<File> {
    let path: PathBuf = lock_dir.join(port.to_string());
    let file = File::options().create(true).truncate(false).write(true).open(path).ok()?;
    file.try_lock_exclusive().ok()?;
    Some(file)
}

/// The ports tests may use: below the ephemeral range when at least 2,000 ports fit between
/// [`LOWEST`] and it, otherwise above it.
fn test_port_range() -> RangeInclusive<u16> {
    let (low, high) = ephemeral_range();
    if low > LOWEST.saturating_add(2_000) {
        LOWEST..=low - 1
    } else if high < u16::MAX - 2_000 {
        high + 1..=u16::MAX
    } else {
        panic!(
            "the ephemeral port range {low}-{high} (/proc/sys/net/ipv4/ip_local_port_range) \
             leaves no room for test ports; narrow it, e.g. to 32768-60999"
        )
    }
}

/// The kernel's ephemeral range; Linux's default where the file cannot be read.
fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => (low, high),
        _ => (32_768, 60_999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_distinct() {
        let (low, high) = ephemeral_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for port in &ports {
            assert!(!(low..=high).contains(port), "{port} is inside {low}-{high}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
    }
}
