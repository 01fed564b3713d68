//! The one place where ferroloop-core talks to the operating system.
//!
//! Invariants:
//! - every system call goes through [`syscall!`], which turns `-1` into [`std::io::Error`] with
//!   the thread's `errno`;
//! - descriptors the core creates are held as [`OwnedFd`], so they are closed exactly once, when
//!   their owner drops;
//! - descriptors that belong to the user (Python's `add_reader(fd, ...)`) are passed as plain
//!   [`RawFd`] integers: the kernel validates them (EBADF), no memory is touched through them.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Runs a libc call and maps a `-1` result to the current `errno`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every call site passes plain integers or pointers to live, correctly sized
        // locals; the reason is restated at each call site.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Seconds on `CLOCK_MONOTONIC`: the same clock as Python's `time.monotonic()`.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let _ = syscall!(clock_gettime(libc::CLOCK_MONOTONIC, &mut ts));
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Creates an epoll instance with close-on-exec set.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // A plain flag argument; no pointers.
    let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(epfd, op, fd, {events, data: token})`.
pub fn epoll_ctl(
    epfd: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // `ev` is a live local; `fd` is checked by the kernel (EBADF/EPERM), never dereferenced.
    syscall!(epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev)).map(drop)
}

/// Waits for events; fills `buf` from the start and returns how many were written.
/// `timeout_ms` of -1 blocks; 0 returns at once.
pub fn epoll_wait(
    epfd: &OwnedFd,
    buf: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let cap = buf.len().min(i32::MAX as usize) as libc::c_int;
    // `buf` is a writable slice of `cap` epoll_event structs that outlives the call.
    let n = syscall!(epoll_wait(
        epfd.as_raw_fd(),
        buf.as_mut_ptr(),
        cap,
        timeout_ms
    ))?;
    Ok(n as usize)
}

/// Creates a non-blocking, close-on-exec eventfd with counter 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // Plain integer arguments.
    let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd counter (an 8-byte write, as eventfd requires).
pub fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // Writes the 8 bytes of a live local `u64`.
    syscall!(write(fd.as_raw_fd(), (&one as *const u64).cast(), 8)).map(drop)
}

/// Resets an eventfd counter to zero; `WouldBlock` when it already was zero.
pub fn eventfd_drain(fd: &OwnedFd) -> io::Result<u64> {
    let mut value: u64 = 0;
    // Reads 8 bytes into a live, writable local `u64`.
    syscall!(read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8))?;
    Ok(value)
}

/// Whether `fd` is an open descriptor of this process (`fcntl(F_GETFD)` succeeds).
pub fn fd_is_open(fd: RawFd) -> bool {
    // F_GETFD only reads the descriptor flags; an invalid fd gives EBADF.
    syscall!(fcntl(fd, libc::F_GETFD)).is_ok()
}

/// `recv(fd, buf, 0)`: reads what the socket has, up to `buf.len()` bytes; 0 means EOF.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // `buf` is a live, writable slice of `buf.len()` bytes; the kernel validates `fd`.
    let n = syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))?;
    Ok(n as usize)
}

/// `readv(fd, bufs)`: a stream socket's `recv` scattered over several slices, filled in order;
/// 0 means EOF.
pub fn recv_vectored(fd: RawFd, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
    // `IoSliceMut` is ABI-compatible with `iovec` on Unix (std guarantees it); each points to a
    // live, writable slice for the whole call, and `bufs` outlives it.
    let iov = bufs.as_mut_ptr() as *const libc::iovec;
    let n = syscall!(readv(fd, iov, bufs.len().min(IOV_MAX) as libc::c_int))?;
    Ok(n as usize)
}

/// `read(fd, buf)`: for pipes and other non-sockets; 0 means EOF.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // `buf` is a live, writable slice of `buf.len()` bytes; the kernel validates `fd`.
    let n = syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// `send(fd, buf, MSG_NOSIGNAL)`: a peer that went away gives `EPIPE`, never `SIGPIPE`.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // `buf` is a live, readable slice of `buf.len()` bytes; the kernel validates `fd`.
    let n = syscall!(send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// `AF_INET`, the family of IPv4 sockets.
pub const AF_INET: i32 = libc::AF_INET;

/// `AF_UNIX`, the family of Unix sockets.
pub const AF_UNIX: i32 = libc::AF_UNIX;

/// `EBADF`, for errors the binding reports as the kernel would.
pub const EBADF: i32 = libc::EBADF;

/// Linux's limit on the slices of one `sendmsg` (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Gathered `send` of several slices in one call (`sendmsg`, `MSG_NOSIGNAL`).
pub fn send_vectored(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero `msghdr` is valid (null name and control, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it); the kernel only
    // reads through these pointers, and `bufs` outlives the call.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(IOV_MAX) as _;
    // `msg` is a live local whose iovecs point into `bufs`.
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// `shutdown(fd, SHUT_WR)`: sends EOF to the peer.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // Plain integer arguments.
    syscall!(shutdown(fd, libc::SHUT_WR)).map(drop)
}

/// `recvmsg(fd, 0)` into `bufs` (a scattered `recvfrom`), with the sender's address written
/// into `addr` (a `sockaddr_*` value, whose size goes in as its length); returns the byte count
/// and the address length the kernel reported.
fn recvmsg_from<A>(
    fd: RawFd,
    bufs: &mut [io::IoSliceMut<'_>],
    addr: &mut A,
) -> io::Result<(usize, usize)> {
    // SAFETY: an all-zero `msghdr` is valid (null name and control, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (addr as *mut A).cast();
    msg.msg_namelen = std::mem::size_of::<A>() as libc::socklen_t;
    // `IoSliceMut` is ABI-compatible with `iovec` on Unix (std guarantees it); each points to a
    // live, writable slice for the whole call.
    msg.msg_iov = bufs.as_mut_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(IOV_MAX) as _;
    // `msg` is a live local; its name points to `addr`, `msg_namelen` bytes long, which the
    // kernel fills and does not overrun, and its iovecs to `bufs`.
    let n = syscall!(recvmsg(fd, &mut msg, 0))?;
    Ok((n as usize, msg.msg_namelen as usize))
}

/// `recvfrom(fd, 0)` on an IPv4 datagram socket, scattered over `bufs`: the byte count and the
/// sender (`None` when the kernel gave no IPv4 address).
pub fn recvfrom_v4(
    fd: RawFd,
    bufs: &mut [io::IoSliceMut<'_>],
) -> io::Result<(usize, Option<SocketAddrV4>)> {
    // SAFETY: an all-zero `sockaddr_in` is a valid value (AF_UNSPEC, address 0).
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let (n, len) = recvmsg_from(fd, bufs, &mut addr)?;
    let full = len >= std::mem::size_of::<libc::sockaddr_in>();
    let from = (full && i32::from(addr.sin_family) == libc::AF_INET).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        )
    });
    Ok((n, from))
}

/// `sendto(fd, buf, 0, to)` on an IPv4 datagram socket.
pub fn sendto_v4(fd: RawFd, buf: &[u8], to: SocketAddrV4) -> io::Result<usize> {
    // SAFETY: an all-zero `sockaddr_in` is a valid value; the fields are set below.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = to.port().to_be();
    addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
    // `buf` is a live, readable slice; `addr` is a live, fully initialised `sockaddr_in` whose
    // size is passed with it.
    let n = syscall!(sendto(
        fd,
        buf.as_ptr().cast(),
        buf.len(),
        0,
        (&addr as *const libc::sockaddr_in).cast(),
        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
    ))?;
    Ok(n as usize)
}

/// A Unix socket address as `recvfrom` gave it: the length the kernel reported and `sun_path`
/// (zero-filled past what the kernel wrote, as CPython reads it).
pub struct UnixPeer {
    /// The `addrlen` the kernel reported, `sun_family` included.
    pub len: usize,
    /// The whole `sun_path` buffer.
    pub path: [u8; 108],
}

impl UnixPeer {
    /// Bytes of `sun_path` the kernel filled in (`addrlen - offsetof(sun_path)`).
    pub fn path_len(&self) -> usize {
        self.len
            .saturating_sub(std::mem::size_of::<libc::sa_family_t>())
    }
}

/// `recvfrom(fd, 0)` on a Unix datagram socket, scattered over `bufs`: the byte count and the
/// sender.
pub fn recvfrom_unix(fd: RawFd, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<(usize, UnixPeer)> {
    // SAFETY: an all-zero `sockaddr_un` is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let (n, len) = recvmsg_from(fd, bufs, &mut addr)?;
    let mut path = [0u8; 108];
    for (dst, src) in path.iter_mut().zip(addr.sun_path.iter()) {
        *dst = *src as u8;
    }
    Ok((n, UnixPeer { len, path }))
}

/// `sendto(fd, buf, 0, path)` on a Unix datagram socket, with `sun_path` and the address length
/// as CPython computes them: an abstract name (leading NUL) counts exactly its bytes, a file
/// path gets a terminating NUL. `None` when `path` does not fit (the caller reports it).
pub fn sendto_unix(fd: RawFd, buf: &[u8], path: &[u8]) -> Option<io::Result<usize>> {
    // SAFETY: an all-zero `sockaddr_un` is a valid value; the fields are set below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let abstract_name = path.first().is_none_or(|b| *b == 0);
    let fits = if abstract_name {
        path.len() <= addr.sun_path.len()
    } else {
        path.len() < addr.sun_path.len()
    };
    if !fits {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = base + path.len() + usize::from(!abstract_name);
    // `buf` is a live, readable slice; `addr` is a live, initialised `sockaddr_un` and `len`
    // does not exceed its size.
    let sent = syscall!(sendto(
        fd,
        buf.as_ptr().cast(),
        buf.len(),
        0,
        (&addr as *const libc::sockaddr_un).cast(),
        len as libc::socklen_t
    ));
    Some(sent.map(|n| n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_advances() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a && a > 0.0);
    }

    #[test]
    fn eventfd_signal_then_drain() {
        let fd = eventfd().unwrap();
        assert_eq!(
            eventfd_drain(&fd).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        eventfd_signal(&fd).unwrap();
        eventfd_signal(&fd).unwrap();
        assert_eq!(eventfd_drain(&fd).unwrap(), 2);
    }

    #[test]
    fn recv_vectored_fills_the_slices_in_order() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"abcdefgh").unwrap();
        let (mut first, mut second) = ([0u8; 3], [0u8; 16]);
        let mut bufs = [
            io::IoSliceMut::new(&mut first),
            io::IoSliceMut::new(&mut second),
        ];
        assert_eq!(recv_vectored(b.as_raw_fd(), &mut bufs).unwrap(), 8);
        assert_eq!((&first, &second[..5]), (b"abc", &b"defgh"[..]));
        drop(a);
        let mut bufs = [io::IoSliceMut::new(&mut first)];
        assert_eq!(recv_vectored(b.as_raw_fd(), &mut bufs).unwrap(), 0);
    }

    #[test]
    fn datagrams_over_ipv4_carry_their_addresses() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = match (a.local_addr().unwrap(), b.local_addr().unwrap()) {
            (std::net::SocketAddr::V4(x), std::net::SocketAddr::V4(y)) => (x, y),
            _ => unreachable!(),
        };
        use std::os::fd::AsRawFd;
        assert_eq!(sendto_v4(a.as_raw_fd(), b"hi", b_addr).unwrap(), 2);
        let mut buf = [0u8; 16];
        let (n, from) = recvfrom_v4(b.as_raw_fd(), &mut [io::IoSliceMut::new(&mut buf)]).unwrap();
        assert_eq!((&buf[..n], from), (&b"hi"[..], Some(a_addr)));
    }

    #[test]
    fn unix_datagrams_carry_their_paths() {
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("ferroloop-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pa, pb) = (dir.join("a"), dir.join("b"));
        let _ = (std::fs::remove_file(&pa), std::fs::remove_file(&pb));
        let a = UnixDatagram::bind(&pa).unwrap();
        let b = UnixDatagram::bind(&pb).unwrap();
        let pb_bytes = pb.as_os_str().as_encoded_bytes();
        assert_eq!(
            sendto_unix(a.as_raw_fd(), b"hi", pb_bytes)
                .unwrap()
                .unwrap(),
            2
        );
        let mut buf = [0u8; 16];
        let (n, peer) = recvfrom_unix(b.as_raw_fd(), &mut [io::IoSliceMut::new(&mut buf)]).unwrap();
        let pa_bytes = pa.as_os_str().as_encoded_bytes();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(&peer.path[..pa_bytes.len()], pa_bytes);
        assert!(sendto_unix(a.as_raw_fd(), b"x", &[b'p'; 200]).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn epoll_ctl_on_bad_fd_is_ebadf() {
        let ep = epoll_create().unwrap();
        let err =
            epoll_ctl(&ep, libc::EPOLL_CTL_ADD, 1_000_000, libc::EPOLLIN as u32, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(!fd_is_open(1_000_000));
    }
}
