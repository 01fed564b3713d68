//! The selector: the fd [`Registry`] and the [`Poller`] kept in step, like Python's
//! `selectors.EpollSelector` under asyncio's `add_reader`/`add_writer`.
//!
//! Invariants:
//! - after every successful call, the poller watches each registered descriptor for exactly
//!   the interest of its registry slot (token = the descriptor number);
//! - a failed registration leaves the registry as it was before the call, so a Python
//!   `OSError` from `add_reader` does not leave a callback behind;
//! - removal never fails: a descriptor closed by the user without `remove_reader` has already
//!   left the epoll set, and the error from deregistering it is ignored (as `selectors` does).

use crate::poller::{Events, Interest, Poller};
use crate::registry::{Change, Registry, Side, Slot};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Registry + poller. Generic over the callback type.
pub struct Selector<T> {
    poller: Arc<Poller>,
    registry: Registry<T>,
}

impl<T> Selector<T> {
    /// A selector over a new poller.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            poller: Arc::new(Poller::new()?),
            registry: Registry::new(),
        })
    }

    /// The poller, shared so that the loop can wait on it without borrowing the selector.
    pub fn poller(&self) -> &Arc<Poller> {
        &self.poller
    }

    /// Number of descriptors with a reader or a writer.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// Whether no descriptor is registered.
    pub fn is_empty(&self) -> bool {
        self.registry.is_empty()
    }

    /// The callbacks of `fd`.
    pub fn get(&self, fd: RawFd) -> Option<&Slot<T>> {
        self.registry.get(fd)
    }

    /// Sets the reader or writer of `fd`; returns the callback it replaced.
    pub fn set(&mut self, fd: RawFd, side: Side, item: T) -> io::Result<Option<T>> {
        if fd < 0 {
            // What epoll_ctl would say; the registry has no slot for it.
            return Err(io::Error::from_raw_os_error(crate::sys::EBADF));
        }
        let (old, change) = self.registry.set(fd, side, item);
        let applied = match change {
            Change::Add(interest) => self.add_or_modify(fd, interest),
            Change::Modify(interest) => self.modify_or_add(fd, interest),
            Change::Delete | Change::None => Ok(()),
        };
        if let Err(err) = applied {
            // Roll back to the state before the call.
            let (new, _) = self.registry.remove(fd, side);
            if let Some(old) = old {
                let _ = self.registry.set(fd, side, old);
            }
            drop(new);
            self.registry.trim();
            return Err(err);
        }
        Ok(old)
    }

    /// Removes the reader or writer of `fd`; returns it, or `None` if there was none.
    pub fn remove(&mut self, fd: RawFd, side: Side) -> Option<T> {
        let (old, change) = self.registry.remove(fd, side);
        match change {
            Change::Delete => {
                let _ = self.poller.delete(fd);
            }
            Change::Modify(interest) => {
                let _ = self.modify_or_add(fd, interest);
            }
            Change::Add(_) | Change::None => {}
        }
        old
    }

    /// Calls `ready` with each callback whose descriptor the last wait reported ready for its
    /// side; tokens of descriptors no longer registered (e.g. the waker's) are passed to `other`.
    pub fn dispatch(
        &self,
        events: &Events,
        mut ready: impl FnMut(RawFd, Side, &T),
        mut other: impl FnMut(u64),
    ) {
        for ev in events.iter() {
            let fd = RawFd::try_from(ev.token).ok();
            match fd.and_then(|fd| self.registry.get(fd).map(|slot| (fd, slot))) {
                Some((fd, slot)) => {
                    if ev.readable {
                        if let Some(reader) = &slot.reader {
                            ready(fd, Side::Read, reader);
                        }
                    }
                    if ev.writable {
                        if let Some(writer) = &slot.writer {
                            ready(fd, Side::Write, writer);
                        }
                    }
                }
                None => other(ev.token),
            }
        }
    }

    /// Checks the registry's invariants (the poller's side is the kernel's and is checked by
    /// the tests that poll).
    pub fn check_invariants(&self) {
        self.registry.check_invariants();
    }

    /// Removes every registration (`close()`); the caller drops the callbacks.
    pub fn drain_all(&mut self) -> Vec<T> {
        self.registry.drain_all()
    }

    fn add_or_modify(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        match self.poller.add(fd, fd as u64, interest) {
            // Still in the epoll set from an earlier life (a dup of it is open): take it over.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.poller.modify(fd, fd as u64, interest)
            }
            other => other,
        }
    }

    fn modify_or_add(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        match self.poller.modify(fd, fd as u64, interest) {
            // The user closed the descriptor and the number came back: register anew.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.poller.add(fd, fd as u64, interest)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn ready_list(sel: &Selector<u32>, events: &Events) -> Vec<(Side, u32)> {
        let mut out = Vec::new();
        sel.dispatch(events, |_, side, item| out.push((side, *item)), |_| {});
        out
    }

    #[test]
    fn reader_and_writer_on_one_fd() {
        let mut sel = Selector::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        assert!(sel.set(fd, Side::Read, 1).unwrap().is_none());
        assert!(sel.set(fd, Side::Write, 2).unwrap().is_none());
        let mut events = Events::default();
        sel.poller().wait(&mut events, 0).unwrap();
        assert_eq!(ready_list(&sel, &events), vec![(Side::Write, 2)]);
        a.write_all(b"x").unwrap();
        sel.poller().wait(&mut events, 0).unwrap();
        assert_eq!(
            ready_list(&sel, &events),
            vec![(Side::Read, 1), (Side::Write, 2)]
        );
        assert_eq!(sel.remove(fd, Side::Write), Some(2));
        sel.poller().wait(&mut events, 0).unwrap();
        assert_eq!(ready_list(&sel, &events), vec![(Side::Read, 1)]);
        assert_eq!(sel.remove(fd, Side::Read), Some(1));
        assert!(sel.is_empty());
        sel.check_invariants();
    }

    #[test]
    fn failed_registration_rolls_back() {
        let mut sel: Selector<u32> = Selector::new().unwrap();
        let err = sel.set(1_000_000, Side::Read, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(sel.is_empty());
        assert!(
            sel.registry.capacity() < 1000,
            "the table grown for it is freed"
        );
        let err = sel.set(-1, Side::Read, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(sel.is_empty());
        sel.check_invariants();
    }

    #[test]
    fn closed_then_reused_fd_is_registered_again() {
        let mut sel = Selector::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        sel.set(fd, Side::Read, 1).unwrap();
        drop(b); // closed without remove_reader: the kernel drops it from the epoll set
        let (mut c, d) = UnixStream::pair().unwrap();
        let reused = [c.as_raw_fd(), d.as_raw_fd()].contains(&fd);
        // Add a writer on the (possibly reused) number: the registry still has the reader.
        if reused {
            sel.set(fd, Side::Write, 2).unwrap();
            c.write_all(b"x").unwrap();
            let mut events = Events::default();
            sel.poller().wait(&mut events, 0).unwrap();
            assert!(!ready_list(&sel, &events).is_empty());
        }
        drop(a);
    }
}
