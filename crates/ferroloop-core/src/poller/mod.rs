//! The poller: which registered descriptors are ready, level-triggered.
//!
//! Contract (every backend keeps it):
//! - registration is **level-triggered**, as `selectors` is: a descriptor that stays readable is
//!   reported again on every [`Poller::wait`] until it is drained or deregistered, because
//!   asyncio's `add_reader` callbacks are expected to fire every iteration while data is unread;
//! - a token is a `u64` chosen by the caller and returned untouched with the event;
//! - readiness is mapped as `selectors.EpollSelector` maps it: any condition other than "writable"
//!   (including error and hang-up) counts as readable, any condition other than "readable" counts
//!   as writable; the caller masks that with what it registered for;
//! - `wait` retries nothing: `EINTR` is returned as an error so that the caller can run Python's
//!   signal handlers (PEP 475 semantics are the binding's job).
//!
//! Linux uses epoll ([`epoll`]); the types here are OS-neutral so a kqueue backend can follow.

#[cfg(target_os = "linux")]
mod epoll;
#[cfg(target_os = "linux")]
pub use epoll::{Events, Poller};

/// What a registration waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Wake when the descriptor is readable (or errored / hung up).
    pub readable: bool,
    /// Wake when the descriptor is writable (or errored).
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READ: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Writable only.
    pub const WRITE: Interest = Interest {
        readable: false,
        writable: true,
    };

    /// Whether this waits for nothing.
    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The token given at registration.
    pub token: u64,
    /// Readable, errored or hung up.
    pub readable: bool,
    /// Writable or errored.
    pub writable: bool,
}
