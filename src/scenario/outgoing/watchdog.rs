//! One watchdog for every FTP session of the node: a single thread that shuts sockets
//! down when their run's deadline passes, so that a stalled server cannot hold a
//! scenario thread past it (the old code started a thread per session).
//!
//! A session registers its control socket with its deadline and gets a [`Watch`]; the
//! watch ends (without touching the socket) when dropped.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

#[derive(Default)]
struct Watched {
    next_id: u64,
    /// (deadline, id) → the socket to shut down then.
    due: BTreeMap<(Instant, u64), TcpStream>,
}

struct Watchdog {
    watched: Mutex<Watched>,
    changed: Condvar,
}

static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();

fn watchdog() -> Option<&'static Watchdog> {
    *WATCHDOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            watched: Mutex::new(Watched::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("ftp-watchdog".into())
            .spawn(move || dog.run())
            .ok()
            .map(|_| dog)
    })
}

impl Watchdog {
    fn run(&self) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            // Everything due: shut it down and forget it.
            while let Some(entry) = watched.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let socket = entry.remove();
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            watched = match watched.due.keys().next().map(|(at, _)| *at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(watched, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .changed
                    .wait(watched)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// A socket watched until its deadline; dropping it ends the watch.
pub struct Watch {
    key: Option<(Instant, u64)>,
}

/// Shuts `stream` down at `deadline` unless the returned watch is dropped first. Without
/// a watchdog thread (the OS refused one) the socket's own timeouts still bound it.
pub fn watch(stream: &TcpStream, deadline: Instant) -> Watch {
    let (Some(dog), Ok(clone)) = (watchdog(), stream.try_clone()) else {
        return Watch { key: None };
    };
    let mut watched = dog.watched.lock().unwrap_or_else(|e| e.into_inner());
    watched.next_id += 1;
    let key = (deadline, watched.next_id);
    let earliest = watched.due.keys().next().is_none_or(|first| key < *first);
    watched.due.insert(key, clone);
    drop(watched);
    if earliest {
        dog.changed.notify_one();
    }
    Watch { key: Some(key) }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let (Some(key), Some(dog)) = (self.key, watchdog()) {
            dog.watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .due
                .remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn a_stalled_read_ends_at_the_deadline_and_a_dropped_watch_never_fires() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let started = Instant::now();
        let _w = watch(&client, Instant::now() + Duration::from_millis(200));
        let mut buf = [0u8; 8];
        let n = (&client).read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(5));

        let other = TcpStream::connect(addr).unwrap();
        let (mut server2, _) = listener.accept().unwrap();
        drop(watch(&other, Instant::now() + Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(150));
        use std::io::Write;
        server2.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        (&other).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }
}
