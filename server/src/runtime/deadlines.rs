//! Read deadlines for client connections, enforced by one sweeper per shard instead of a
//! timer per wait.
//!
//! Why: a connection that finds no bytes waits in io_uring, and a glommio timer armed and
//! cancelled around every such wait measurably cost json throughput (about 15% on the
//! peer benchmark). A wait here only stores its deadline; the shard's sweeper, every
//! `http.deadline_sweep_ms`, shuts the read side of sockets whose deadline passed, which
//! wakes their pending wait with end-of-stream, and marks them expired. Timeouts fire up to
//! one sweep late.
//!
//! Draining: `cap_idle` bounds every wait *between requests* (not a request half read)
//! by one instant, so idle keep-alive connections close soon after a shutdown begins,
//! while a request already on its way on them is still read and answered.
//!
//! Runs on a shard: never blocks.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::Instant;

/// One connection's read deadline.
pub struct ReadDeadline {
    fd: RawFd,
    at: Cell<Option<Instant>>,
    /// The armed wait is for a next request, not for the rest of one.
    between_requests: Cell<bool>,
    expired: Cell<bool>,
}

impl ReadDeadline {
    pub fn arm(&self, at: Instant, between_requests: bool) {
        self.at.set(Some(at));
        self.between_requests.set(between_requests);
    }

    pub fn disarm(&self) {
        self.at.set(None);
    }

    /// True once the sweeper found the deadline passed; the socket's read side is shut.
    pub fn expired(&self) -> bool {
        self.expired.get()
    }
}

/// The shard's registry of connection deadlines.
#[derive(Default)]
pub struct Sweeper {
    slots: RefCell<Vec<Weak<ReadDeadline>>>,
    /// Set when draining: no wait between requests lasts past it.
    idle_cap: Cell<Option<Instant>>,
}

impl Sweeper {
    /// A deadline for the connection on `fd`; the connection owns it, the sweeper only
    /// watches, so a closed connection (whose fd may be reused) is never touched.
    pub fn register(&self, fd: RawFd) -> Rc<ReadDeadline> {
        let slot = Rc::new(ReadDeadline {
            fd,
            at: Cell::new(None),
            between_requests: Cell::new(false),
            expired: Cell::new(false),
        });
        self.slots.borrow_mut().push(Rc::downgrade(&slot));
        slot
    }

    /// From now on, waits between requests end at `at` at the latest, including waits
    /// armed later.
    pub fn cap_idle(&self, at: Instant) {
        self.idle_cap.set(Some(at));
    }

    /// Expires every armed deadline at or before `now`, and forgets closed connections.
    pub fn sweep(&self, now: Instant) {
        let idle_cap = self.idle_cap.get();
        self.slots.borrow_mut().retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            let due = match (slot.at.get(), idle_cap) {
                (Some(at), Some(cap)) if slot.between_requests.get() => Some(at.min(cap)),
                (at, _) => at,
            };
            if !slot.expired.get() && due.is_some_and(|at| at <= now) {
                slot.expired.set(true);
                // SAFETY: the fd belongs to a live connection (we hold a strong reference to
                // its deadline, which it owns alongside the socket); shutdown has no memory
                // effects. The pending io_uring wait then completes with end-of-stream.
                unsafe { libc::shutdown(slot.fd, libc::SHUT_RD) };
            }
            true
        });
    }

    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn an_expired_deadline_ends_the_read_side_and_closed_connections_are_forgotten() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap(); // blocking-ok: unit test
        let (mut server_side, _) = listener.accept().unwrap();
        let sweeper = Sweeper::default();
        let deadline = sweeper.register(server_side.as_raw_fd());
        let now = Instant::now();

        deadline.arm(now + Duration::from_secs(60), false);
        sweeper.sweep(now);
        assert!(!deadline.expired(), "not yet due");

        deadline.arm(now, false);
        sweeper.sweep(now);
        assert!(deadline.expired());
        let mut buf = [0u8; 8];
        assert_eq!(server_side.read(&mut buf).unwrap(), 0, "read side shut: end of stream");

        drop(deadline);
        sweeper.sweep(now);
        assert!(sweeper.is_empty());
        drop(client);
    }

    #[test]
    fn the_drain_cap_ends_waits_between_requests_but_not_a_request_half_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (_idle_client, _mid_client) = (
            std::net::TcpStream::connect(address).unwrap(), // blocking-ok: unit test
            std::net::TcpStream::connect(address).unwrap(), // blocking-ok: unit test
        );
        let (idle_side, _) = listener.accept().unwrap();
        let (mid_side, _) = listener.accept().unwrap();
        let sweeper = Sweeper::default();
        let idle = sweeper.register(idle_side.as_raw_fd());
        let mid_request = sweeper.register(mid_side.as_raw_fd());
        let now = Instant::now();
        idle.arm(now + Duration::from_secs(60), true);
        mid_request.arm(now + Duration::from_secs(60), false);

        sweeper.cap_idle(now + Duration::from_millis(500));
        sweeper.sweep(now);
        assert!(!idle.expired(), "the cap is not reached yet");
        sweeper.sweep(now + Duration::from_millis(500));
        assert!(idle.expired(), "a wait between requests ends at the cap");
        assert!(!mid_request.expired(), "a request half read keeps its own deadline");
    }
}
