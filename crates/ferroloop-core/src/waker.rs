//! The waker: how another thread interrupts a loop blocked in the poller.
//!
//! Protocol (wakeups are coalesced, as in smol-rs `polling`):
//! - before a blocking wait the loop calls [`Waker::before_sleep`] and then checks for work
//!   once more (the binding does this with the GIL held, so a callback queued before that check
//!   is seen, and one queued after it finds the loop marked asleep);
//! - [`Waker::wake`] writes the eventfd only on the transition "asleep, no wakeup pending" →
//!   "wakeup pending": a loop that is running, or already woken, costs no system call;
//! - after the wait the loop calls [`Waker::after_sleep`]; when the wait reported the waker's
//!   token it calls [`Waker::drain`], which empties the eventfd and clears the pending flag.
//!
//! Invariant: `pending` is true only while an eventfd write has happened or is about to happen
//! and has not been drained, so a set `pending` always ends in a readable eventfd.

use crate::poller::{Interest, Poller};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The poller token reserved for the waker (never a valid descriptor number).
pub const WAKER_TOKEN: u64 = u64::MAX;

/// An eventfd plus two flags.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    sleeping: AtomicBool,
    pending: AtomicBool,
}

impl Waker {
    /// Creates the eventfd and registers it with `poller` under [`WAKER_TOKEN`].
    pub fn new(poller: &Poller) -> io::Result<Self> {
        let fd = sys::eventfd()?;
        poller.add(fd.as_raw_fd(), WAKER_TOKEN, Interest::READ)?;
        Ok(Self {
            fd,
            sleeping: AtomicBool::new(false),
            pending: AtomicBool::new(false),
        })
    }

    /// The eventfd (for tests that count open descriptors).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Marks the loop as about to block.
    pub fn before_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Marks the loop as running again.
    pub fn after_sleep(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Wakes the loop if it is (about to be) blocked and no wakeup is pending.
    /// Returns whether this call wrote the eventfd.
    pub fn wake(&self) -> io::Result<bool> {
        // The plain load of `pending` first: while a wakeup is pending (the loop woke and waits
        // for the GIL), a producer's every call would otherwise be a locked read-modify-write.
        if !self.sleeping.load(Ordering::SeqCst)
            || self.pending.load(Ordering::SeqCst)
            || self.pending.swap(true, Ordering::SeqCst)
        {
            return Ok(false);
        }
        sys::eventfd_signal(&self.fd)?;
        Ok(true)
    }

    /// Empties the eventfd after the poller reported it, and allows the next wakeup.
    pub fn drain(&self) {
        self.pending.store(false, Ordering::SeqCst);
        // WouldBlock (already empty) is fine: the write may have been drained by an earlier call.
        let _ = sys::eventfd_drain(&self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::Events;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn wake_is_coalesced_and_only_when_asleep() {
        let poller = Poller::new().unwrap();
        let waker = Waker::new(&poller).unwrap();
        assert!(!waker.wake().unwrap(), "a running loop needs no write");
        waker.before_sleep();
        assert!(waker.wake().unwrap());
        assert!(!waker.wake().unwrap(), "second wakeup is coalesced");
        let mut events = Events::default();
        poller.wait(&mut events, 1000).unwrap();
        assert_eq!(events.iter().next().unwrap().token, WAKER_TOKEN);
        waker.after_sleep();
        waker.drain();
        poller.wait(&mut events, 0).unwrap();
        assert!(events.is_empty(), "drained");
    }

    #[test]
    fn wakes_a_blocked_wait_from_another_thread() {
        let poller = Arc::new(Poller::new().unwrap());
        let waker = Arc::new(Waker::new(&poller).unwrap());
        waker.before_sleep();
        let w = Arc::clone(&waker);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake().unwrap();
        });
        let start = Instant::now();
        let mut events = Events::default();
        poller.wait(&mut events, 10_000).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        waker.after_sleep();
        waker.drain();
        t.join().unwrap();
    }
}
