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
//! Runs on a shard: never blocks.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::Instant;

/// One connection's read deadline.
pub struct ReadDeadline {
    fd: RawFd,
    at: Cell<Option<Instant>>,
    expired: Cell<bool>,
}

impl ReadDeadline {
    pub fn arm(&self, at: Instant) {
        self.at.set(Some(at));
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
}

impl Sweeper {
    /// A deadline for the connection on `fd`; the connection owns it, the sweeper only
    /// watches, so a closed connection (whose fd may be reused) is never touched.
    pub fn register(&self, fd: RawFd) -> Rc<ReadDeadline> {
        let slot = Rc::new(ReadDeadline {
            fd,
            at: Cell::new(None),
            expired: Cell::new(false),
        });
        self.slots.borrow_mut().push(Rc::downgrade(&slot));
        slot
    }

    /// Expires every armed deadline at or before `now`, and forgets closed connections.
    pub fn sweep(&self, now: Instant) {
        self.slots.borrow_mut().retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            if !slot.expired.get() && slot.at.get().is_some_and(|at| at <= now) {
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

        deadline.arm(now + Duration::from_secs(60));
        sweeper.sweep(now);
        assert!(!deadline.expired(), "not yet due");

        deadline.arm(now);
        sweeper.sweep(now);
        assert!(deadline.expired());
        let mut buf = [0u8; 8];
        assert_eq!(server_side.read(&mut buf).unwrap(), 0, "read side shut: end of stream");

        drop(deadline);
        sweeper.sweep(now);
        assert!(sweeper.is_empty());
        drop(client);
    }
}
