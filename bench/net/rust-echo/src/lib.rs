//! What the two binaries of this crate share: `rust-echo` (the pure-Rust server of the network
//! benchmark) and `rust-load` (its load generator for the stream rows).

use std::io;
use std::os::fd::RawFd;

/// The fixed keep-alive response of the `http` rows. Must stay byte-identical to `RESPONSE`
/// in bench/net/servers.py.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";

/// `epoll_ctl(ep, op, fd, {events, token})`.
pub fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends as much of `data` as the non-blocking socket takes (0 when it would block); `Err`
/// means the connection is gone.
pub fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid readable buffer of `data.len()` bytes.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
        _ => Err(err),
    }
}
