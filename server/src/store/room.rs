//! Room in a group of pipelines: a counting semaphore whose waiters give up after one fixed
//! wait (`pool_wait_ms`), first come first served.
//!
//! Why not the runtime's semaphore under its `timeout`: that arms a timer per waiter, an
//! insert and a removal in the reactor's timer tree. At `/queries?queries=20` under load,
//! where most statements wait for room, those timers were 40% of a request's user-space
//! instructions (callgrind). Every waiter here waits the same span, so deadlines fall due
//! in arrival order: one sweeper task per room sleeps until the oldest waiter's deadline
//! and expires the front of the line.
//!
//! Runs on a shard: never blocks, no `Send`.

use crate::runtime;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub struct Room {
    units: usize,
    free: Cell<usize>,
    line: RefCell<VecDeque<Rc<Waiter>>>,
    /// Waiters still `Waiting` (the line may also hold answered ones not yet popped).
    waiting: Cell<usize>,
    wait: Cell<Duration>,
    /// A sweeper task is alive; at most one per room.
    sweeping: Cell<bool>,
}

struct Waiter {
    deadline: Instant,
    state: Cell<State>,
    waker: RefCell<Option<Waker>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    /// A unit was handed over by `release`; the waiter owns it now.
    Granted,
    /// Past its deadline, or its future was dropped: `release` skips it.
    Gone,
}

/// A unit of room, given back when dropped.
pub struct Permit {
    room: Rc<Room>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.room.release();
    }
}

impl Room {
    pub fn new(units: usize, wait: Duration) -> Rc<Room> {
        Rc::new(Room {
            units,
            free: Cell::new(units),
            line: RefCell::new(VecDeque::new()),
            waiting: Cell::new(0),
            wait: Cell::new(wait),
            sweeping: Cell::new(false),
        })
    }

    /// A reload's `pool_wait_ms`, for waits that begin after it.
    pub fn set_wait(&self, wait: Duration) {
        self.wait.set(wait);
    }

    /// A unit now, if one is free and no one waits for it.
    pub fn try_take(self: &Rc<Self>) -> Option<Permit> {
        let free = self.free.get();
        if free == 0 || !self.line.borrow().is_empty() {
            return None;
        }
        self.free.set(free - 1);
        Some(Permit { room: self.clone() })
    }

    /// Statements waiting in line.
    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Units handed out and not yet given back.
    pub fn in_use(&self) -> usize {
        self.units - self.free.get()
    }

    /// Answers a waiter that is still `Waiting`.
    fn settle(&self, waiter: &Waiter, state: State) {
        debug_assert_eq!(waiter.state.get(), State::Waiting);
        waiter.state.set(state);
        self.waiting.set(self.waiting.get() - 1);
        if let Some(waker) = waiter.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits in line for a unit; `None` once the room's wait has passed.
    pub fn take(self: &Rc<Self>) -> Take {
        if let Some(permit) = self.try_take() {
            return Take {
                room: self.clone(),
                waiter: None,
                ready: Some(permit),
            };
        }
        let waiter = Rc::new(Waiter {
            deadline: Instant::now() + self.wait.get(),
            state: Cell::new(State::Waiting),
            waker: RefCell::new(None),
        });
        self.line.borrow_mut().push_back(waiter.clone());
        self.waiting.set(self.waiting.get() + 1);
        if !self.sweeping.replace(true) {
            runtime::spawn(sweep(self.clone()));
        }
        Take {
            room: self.clone(),
            waiter: Some(waiter),
            ready: None,
        }
    }

    /// Hands a unit to the first live waiter, or frees it.
    fn release(&self) {
        let mut line = self.line.borrow_mut();
        while let Some(waiter) = line.pop_front() {
            if waiter.state.get() == State::Waiting {
                self.settle(&waiter, State::Granted);
                return;
            }
        }
        self.free.set(self.free.get() + 1);
    }
}

/// Expires waiters at their deadlines, oldest first, while anyone waits.
async fn sweep(room: Rc<Room>) {
    loop {
        let front = {
            let mut line = room.line.borrow_mut();
            let now = Instant::now();
            while let Some(waiter) = line.front() {
                match waiter.state.get() {
                    State::Waiting if waiter.deadline > now => break,
                    State::Waiting => room.settle(waiter, State::Gone),
                    State::Granted | State::Gone => {}
                }
                line.pop_front();
            }
            line.front().map(|waiter| waiter.deadline)
        };
        match front {
            Some(deadline) => runtime::sleep(deadline.saturating_duration_since(Instant::now())).await,
            None => {
                room.sweeping.set(false);
                return;
            }
        }
    }
}

/// The future of `Room::take`.
pub struct Take {
    room: Rc<Room>,
    waiter: Option<Rc<Waiter>>,
    ready: Option<Permit>,
}

impl Future for Take {
    type Output = Option<Permit>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Permit>> {
        if let Some(permit) = self.ready.take() {
            return Poll::Ready(Some(permit));
        }
        let Some(waiter) = self.waiter.as_ref() else {
            return Poll::Ready(None);
        };
        match waiter.state.get() {
            State::Waiting => {
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Granted => {
                self.waiter = None;
                Poll::Ready(Some(Permit {
                    room: self.room.clone(),
                }))
            }
            State::Gone => {
                self.waiter = None;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Take {
    /// A waiter dropped before it was answered leaves the line; a unit granted to it and
    /// never taken goes back.
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            match waiter.state.get() {
                State::Granted => self.room.release(),
                State::Waiting => self.room.settle(&waiter, State::Gone),
                State::Gone => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use runtime::run_for_test as run;

    #[test]
    fn units_are_handed_over_first_come_first_served() {
        run(|| async {
            let room = Room::new(1, Duration::from_secs(5));
            let first = room.try_take().expect("one unit free");
            assert!(room.try_take().is_none());
            let order = Rc::new(RefCell::new(Vec::new()));
            let done = Rc::new(Cell::new(0));
            for i in 0..3 {
                let (room, order, done) = (room.clone(), order.clone(), done.clone());
                runtime::spawn(async move {
                    let permit = room.take().await.expect("granted");
                    order.borrow_mut().push(i);
                    runtime::yield_now().await;
                    drop(permit);
                    done.set(done.get() + 1);
                });
                runtime::yield_now().await;
            }
            assert_eq!(room.waiting(), 3);
            // Someone waits: a free-looking try must not jump the line.
            drop(first);
            assert!(room.try_take().is_none(), "the released unit went to the first waiter");
            while done.get() < 3 {
                runtime::yield_now().await;
            }
            assert_eq!(*order.borrow(), vec![0, 1, 2]);
            assert!(room.try_take().is_some(), "every unit came back");
        });
    }

    #[test]
    fn a_waiter_gives_up_at_its_deadline_and_a_dropped_one_returns_its_grant() {
        run(|| async {
            let room = Room::new(1, Duration::from_millis(50));
            let held = room.try_take().expect("one unit free");
            let started = Instant::now();
            assert!(room.take().await.is_none(), "no unit within the wait");
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(50) && waited < Duration::from_millis(500),
                "{waited:?}"
            );
            // Granted, then dropped before it was polled again: the unit is not lost.
            let pending = room.take();
            drop(held);
            drop(pending);
            assert!(room.try_take().is_some(), "the dropped waiter's unit came back");
        });
    }
}
