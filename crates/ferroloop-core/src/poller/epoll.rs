//! The epoll backend of [`super::Poller`]: level-triggered registrations (no `EPOLLET`).

use super::{Event, Interest};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Events buffer: how many readiness reports one `wait` can return.
const DEFAULT_CAPACITY: usize = 1024;

/// An epoll instance. `&self` methods are safe to call from several threads: the kernel
/// serialises `epoll_ctl` against `epoll_wait`.
#[derive(Debug)]
pub struct Poller {
    epfd: OwnedFd,
}

/// A reusable buffer of readiness reports filled by [`Poller::wait`].
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl Default for Events {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Events {
    /// A buffer for up to `capacity` reports per wait.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            len: 0,
        }
    }

    /// The reports of the last wait.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.buf[..self.len].iter().map(|ev| {
            let bits = ev.events;
            Event {
                token: ev.u64,
                readable: bits & !(libc::EPOLLOUT as u32) != 0,
                writable: bits & !(libc::EPOLLIN as u32) != 0,
            }
        })
    }

    /// Number of reports of the last wait.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last wait reported nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the last wait's reports.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn epoll_bits(interest: Interest) -> u32 {
    let mut bits = 0;
    if interest.readable {
        bits |= libc::EPOLLIN as u32;
    }
    if interest.writable {
        bits |= libc::EPOLLOUT as u32;
    }
    bits
}

impl Poller {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epfd: sys::epoll_create()?,
        })
    }

    /// The epoll descriptor itself (for tests that count open descriptors).
    pub fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }

    /// Starts watching `fd`.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        sys::epoll_ctl(
            &self.epfd,
            libc::EPOLL_CTL_ADD,
            fd,
            epoll_bits(interest),
            token,
        )
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        sys::epoll_ctl(
            &self.epfd,
            libc::EPOLL_CTL_MOD,
            fd,
            epoll_bits(interest),
            token,
        )
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        sys::epoll_ctl(&self.epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: forever, 0: not at all) and fills `events`.
    pub fn wait(&self, events: &mut Events, timeout_ms: i32) -> io::Result<()> {
        events.len = 0;
        events.len = sys::epoll_wait(&self.epfd, &mut events.buf, timeout_ms)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn level_triggered_reports_again_until_drained() {
        let poller = Poller::new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        poller.add(b.as_raw_fd(), 7, Interest::READ).unwrap();
        let mut events = Events::with_capacity(8);
        poller.wait(&mut events, 0).unwrap();
        assert!(events.is_empty());
        a.write_all(b"xy").unwrap();
        for _ in 0..3 {
            poller.wait(&mut events, 0).unwrap();
            let evs: Vec<_> = events.iter().collect();
            assert_eq!(
                evs,
                vec![Event {
                    token: 7,
                    readable: true,
                    writable: false
                }]
            );
        }
        let mut buf = [0u8; 2];
        b.read_exact(&mut buf).unwrap();
        poller.wait(&mut events, 0).unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn hang_up_counts_as_readable_and_writable() {
        let poller = Poller::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        poller.add(b.as_raw_fd(), 1, Interest::READ).unwrap();
        drop(a);
        let mut events = Events::default();
        poller.wait(&mut events, 100).unwrap();
        let ev = events.iter().next().unwrap();
        assert!(ev.readable);
        poller.delete(b.as_raw_fd()).unwrap();
    }
}
