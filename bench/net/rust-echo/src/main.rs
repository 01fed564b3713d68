//! rust-echo: the pure-Rust ceiling of ferroloop's network benchmark (bench/net/run.py).
//!
//! A single-threaded, level-triggered epoll server doing what the Python servers do:
//! echo every chunk it reads (one `recv` of up to 256 KiB per readiness event, then one
//! `send`; the rest is queued and reads pause until it is written), or, with `--http`,
//! answer every complete request head (`\r\n\r\n`) with a fixed keep-alive response.
//! With `--udp` or `--unixdgram` it is a datagram echo server instead: one non-blocking
//! `recvfrom` per readiness event and one `sendto` of that datagram back to its sender (a
//! datagram the socket does not take at once is dropped; the client resends).
//!
//!     rust-echo (--tcp HOST:PORT | --unix PATH) [--http]
//!     rust-echo (--udp HOST:PORT | --unixdgram PATH)
//!
//! Prints `READY <port|path>` on stdout once listening; runs until killed.

use std::io::{self, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use rust_echo::{send_some, RESPONSE};

const READ_SIZE: usize = 256 * 1024;
const MAX_EVENTS: usize = 256;

#[derive(Default)]
struct Conn {
    /// Bytes still to send (non-empty only while registered for EPOLLOUT).
    out: Vec<u8>,
    out_pos: usize,
    /// `--http`: received bytes not yet forming a complete request head.
    inbuf: Vec<u8>,
}

fn fail(what: &str) -> ! {
    eprintln!("rust-echo: {what}: {}", io::Error::last_os_error());
    std::process::exit(1)
}

/// Registers or changes `fd` (its own token); the server cannot go on without it.
fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32) {
    if rust_echo::epoll_ctl(ep, op, fd, events, fd as u64).is_err() {
        fail("epoll_ctl");
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

struct Server {
    ep: RawFd,
    http: bool,
    tcp: bool,
    conns: Vec<Option<Conn>>,
    buf: Vec<u8>,
}

impl Server {
    fn close(&mut self, fd: RawFd) {
        epoll_ctl(self.ep, libc::EPOLL_CTL_DEL, fd, 0);
        // SAFETY: `fd` is a connection socket we own; it is forgotten right after.
        unsafe { libc::close(fd) };
        self.conns[fd as usize] = None;
    }

    fn accept_all(&mut self, lfd: RawFd) {
        loop {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            // SAFETY: null address pointers are allowed by accept4.
            let fd =
                unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
            if fd < 0 {
                return; // EAGAIN (or a transient error): wait for the next readiness event
            }
            if self.tcp {
                let one: libc::c_int = 1;
                // SAFETY: `one` is a valid c_int option value of the given length.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
            }
            if self.conns.len() <= fd as usize {
                self.conns.resize_with(fd as usize + 1, || None);
            }
            self.conns[fd as usize] = Some(Conn::default());
            epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32);
        }
    }

    fn readable(&mut self, fd: RawFd) {
        // SAFETY: `self.buf` is a valid writable buffer of `self.buf.len()` bytes.
        let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
        if n == 0 {
            return self.close(fd);
        }
        if n < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                _ => self.close(fd),
            };
        }
        let n = n as usize;
        let conn = self.conns[fd as usize]
            .as_mut()
            .expect("event for an unknown fd");
        let mut out = Vec::new();
        let data: &[u8] = if self.http {
            conn.inbuf.extend_from_slice(&self.buf[..n]);
            let mut start = 0;
            while let Some(end) = find_head_end(&conn.inbuf[start..]) {
                out.extend_from_slice(RESPONSE);
                start += end;
            }
            conn.inbuf.drain(..start);
            &out
        } else {
            &self.buf[..n]
        };
        if data.is_empty() {
            return;
        }
        match send_some(fd, data) {
            Err(_) => self.close(fd),
            Ok(sent) if sent < data.len() => {
                conn.out = data[sent..].to_vec();
                conn.out_pos = 0;
                epoll_ctl(self.ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32);
            }
            Ok(_) => {}
        }
    }

    fn writable(&mut self, fd: RawFd) {
        let conn = self.conns[fd as usize]
            .as_mut()
            .expect("event for an unknown fd");
        match send_some(fd, &conn.out[conn.out_pos..]) {
            Err(_) => self.close(fd),
            Ok(sent) => {
                conn.out_pos += sent;
                if conn.out_pos == conn.out.len() {
                    conn.out.clear();
                    conn.out_pos = 0;
                    epoll_ctl(self.ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32);
                }
            }
        }
    }
}

fn print_ready(ready: &str) {
    let mut stdout = io::stdout();
    writeln!(stdout, "READY {ready}")
        .and_then(|_| stdout.flush())
        .expect("stdout");
}

fn epoll_wait(ep: RawFd, events: &mut [libc::epoll_event]) -> usize {
    loop {
        // SAFETY: `events` holds `events.len()` writable epoll_event entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n >= 0 {
            return n as usize;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            fail("epoll_wait");
        }
    }
}

/// `--udp` / `--unixdgram`: echo every datagram to its sender, one per readiness event.
fn serve_datagrams(fd: RawFd, ready: &str) -> ! {
    // SAFETY: plain syscall without pointer arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        fail("epoll_create1");
    }
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32);
    let mut buf = vec![0u8; READ_SIZE];
    print_ready(ready);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1];
    loop {
        epoll_wait(ep, &mut events);
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut peer_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buf` is writable for `buf.len()` bytes; `peer`/`peer_len` describe a
        // writable sockaddr_storage.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut peer as *mut libc::sockaddr_storage).cast(),
                &mut peer_len,
            )
        };
        if n < 0 {
            continue; // EAGAIN, EINTR, or an error queued by an earlier send: next event
        }
        // SAFETY: `buf[..n]` was just written; `peer` holds `peer_len` bytes of address.
        // A failed send (EAGAIN: the peer's queue is full; the peer is gone) drops it.
        unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                n as usize,
                0,
                (&peer as *const libc::sockaddr_storage).cast(),
                peer_len,
            )
        };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let http = args.iter().any(|a| a == "--http");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    if let Some(addr) = value("--udp") {
        let sock = UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_nonblocking(true).expect("set_nonblocking");
        let port = sock.local_addr().expect("local_addr").port();
        serve_datagrams(sock.into_raw_fd(), &port.to_string());
    }
    if let Some(path) = value("--unixdgram") {
        let sock = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {path}: {e}"));
        sock.set_nonblocking(true).expect("set_nonblocking");
        serve_datagrams(sock.into_raw_fd(), &path);
    }
    let (lfd, tcp, ready) = if let Some(addr) = value("--tcp") {
        let listener = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("set_nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        (listener.into_raw_fd(), true, port.to_string())
    } else if let Some(path) = value("--unix") {
        let listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {path}: {e}"));
        listener.set_nonblocking(true).expect("set_nonblocking");
        (listener.into_raw_fd(), false, path)
    } else {
        eprintln!(
            "usage: rust-echo (--tcp HOST:PORT | --unix PATH) [--http] \
             | (--udp HOST:PORT | --unixdgram PATH)"
        );
        std::process::exit(2)
    };

    // SAFETY: plain syscall without pointer arguments.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        fail("epoll_create1");
    }
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32);
    let mut server = Server {
        ep,
        http,
        tcp,
        conns: Vec::new(),
        buf: vec![0; READ_SIZE],
    };

    print_ready(&ready);

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        let n = epoll_wait(ep, &mut events);
        for ev in &events[..n] {
            let (fd, flags) = (ev.u64 as RawFd, ev.events);
            if fd == lfd {
                server.accept_all(lfd);
            } else if server.conns.get(fd as usize).is_some_and(Option::is_some) {
                let sending = server.conns[fd as usize]
                    .as_ref()
                    .is_some_and(|c| !c.out.is_empty());
                if sending || flags & libc::EPOLLOUT as u32 != 0 {
                    // Reads pause while output is queued (EPOLLHUP/EPOLLERR land here too).
                    server.writable(fd);
                } else {
                    // EPOLLIN, EPOLLHUP or EPOLLERR: recv tells which.
                    server.readable(fd);
                }
            }
        }
    }
}
