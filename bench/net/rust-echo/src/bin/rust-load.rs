//! rust-load: the load generator of ferroloop's network benchmark for the stream rows
//! (bench/net/run.py runs it; load.py is its Python twin and still runs the datagram rows).
//!
//! Same command line, same checks and same JSON line as load.py's stream mode, in Rust so
//! that the load generator is not the bottleneck: at 10 connections the Python generator
//! used its whole core while the Python servers still had idle time, so req/s measured the
//! generator and req/CPU-s included the servers' idle wake-ups.
//!
//!     rust-load TRANSPORT ADDR MODE CONNECTIONS WARMUP DURATION SERVER_PID CORE
//!
//! TRANSPORT is `tcp` (ADDR = HOST:PORT, `TCP_NODELAY` on) or `unix` (ADDR = path). MODE is
//! a message size in bytes (echo: send S bytes, wait until the same S bytes came back) or
//! `http` (a keep-alive GET; wait for the complete fixed response; no pipelining). One
//! level-triggered epoll loop over non-blocking sockets, pinned to CORE. Every response is
//! compared byte for byte with what was expected (four rotating random messages, each
//! connection starting at a different one, so a stale or misrouted echo fails). Prints one
//! JSON line: the round trips in the window, its wall time, the server's CPU time
//! (utime + stime of /proc/SERVER_PID/stat, all threads) and its own; or `{"error": ...}`
//! on a wrong byte, a closed connection, a connection without progress or a stall.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rust_echo::RESPONSE;

const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: ferroloop-bench\r\n\r\n";
/// No response at all for this long: the server hangs.
const STALL: Duration = Duration::from_secs(3);
const MAX_EVENTS: usize = 64;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

struct Conn {
    stream: Stream,
    /// Index of the message in flight.
    k: usize,
    /// Bytes of the response received so far.
    got: usize,
    /// Offset of the request's unsent rest (`None`: all sent, not registered for EPOLLOUT).
    out: Option<usize>,
    count: u64,
}

type Failure = String;

fn os_err(what: &str) -> Failure {
    format!("OSError: {what}: {}", io::Error::last_os_error())
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, token: usize) -> Result<(), Failure> {
    rust_echo::epoll_ctl(ep, op, fd, events, token as u64)
        .map_err(|e| format!("OSError: epoll_ctl: {e}"))
}

fn send(fd: RawFd, data: &[u8]) -> Result<usize, Failure> {
    rust_echo::send_some(fd, data).map_err(|e| format!("OSError: send: {e}"))
}

/// `Ok(Some(n))` bytes received, `Ok(None)` would block, `Err` the connection failed.
fn recv(fd: RawFd, buf: &mut [u8]) -> Result<Option<usize>, Failure> {
    // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(os_err("recv")),
    }
}

/// CPU seconds (user + system, all threads) of process `pid` so far.
fn proc_cpu(pid: u32) -> Result<f64, Failure> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("OSError: /proc/{pid}/stat: {e}"))?;
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = ticks(11).zip(ticks(12)).ok_or("bad /proc stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) as f64 / hz)
}

/// This process's CPU seconds so far.
fn own_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn random_messages(size: usize) -> Result<Vec<Vec<u8>>, Failure> {
    let mut urandom =
        std::fs::File::open("/dev/urandom").map_err(|e| format!("OSError: /dev/urandom: {e}"))?;
    (0..4)
        .map(|_| {
            let mut msg = vec![0; size];
            urandom
                .read_exact(&mut msg)
                .map_err(|e| format!("OSError: /dev/urandom: {e}"))?;
            Ok(msg)
        })
        .collect()
}

fn connect(transport: &str, addr: &str) -> Result<Stream, Failure> {
    let stream = match transport {
        "tcp" => {
            let s = TcpStream::connect(addr).map_err(|e| format!("OSError: connect: {e}"))?;
            s.set_nodelay(true)
                .map_err(|e| format!("OSError: TCP_NODELAY: {e}"))?;
            s.set_nonblocking(true)
                .map_err(|e| format!("OSError: O_NONBLOCK: {e}"))?;
            Stream::Tcp(s)
        }
        "unix" => {
            let s = UnixStream::connect(addr).map_err(|e| format!("OSError: connect: {e}"))?;
            s.set_nonblocking(true)
                .map_err(|e| format!("OSError: O_NONBLOCK: {e}"))?;
            Stream::Unix(s)
        }
        other => {
            return Err(format!(
                "transport {other}: only tcp and unix (load.py does datagrams)"
            ))
        }
    };
    Ok(stream)
}

struct Load {
    ep: RawFd,
    requests: Vec<Vec<u8>>,
    expected: Vec<Vec<u8>>,
    conns: Vec<Conn>,
    buf: Vec<u8>,
    done: u64,
}

impl Load {
    /// Send the next request on connection `i` (what the socket does not take waits for
    /// EPOLLOUT).
    fn start(&mut self, i: usize) -> Result<(), Failure> {
        let nmsg = self.requests.len();
        let c = &mut self.conns[i];
        c.k = (c.k + 1) % nmsg;
        c.got = 0;
        let msg = &self.requests[c.k];
        let n = send(c.stream.fd(), msg)?;
        if n < msg.len() {
            c.out = Some(n);
            epoll_ctl(
                self.ep,
                libc::EPOLL_CTL_MOD,
                c.stream.fd(),
                libc::EPOLLIN as u32 | libc::EPOLLOUT as u32,
                i,
            )?;
        }
        Ok(())
    }

    fn on_writable(&mut self, i: usize) -> Result<(), Failure> {
        let c = &mut self.conns[i];
        let Some(pos) = c.out else { return Ok(()) };
        let msg = &self.requests[c.k];
        let pos = pos + send(c.stream.fd(), &msg[pos..])?;
        if pos < msg.len() {
            c.out = Some(pos);
        } else {
            c.out = None;
            epoll_ctl(
                self.ep,
                libc::EPOLL_CTL_MOD,
                c.stream.fd(),
                libc::EPOLLIN as u32,
                i,
            )?;
        }
        Ok(())
    }

    fn on_readable(&mut self, i: usize) -> Result<(), Failure> {
        let c = &mut self.conns[i];
        let exp = &self.expected[c.k];
        let Some(n) = recv(c.stream.fd(), &mut self.buf[c.got..exp.len()])? else {
            return Ok(());
        };
        if n == 0 {
            return Err(format!(
                "server closed a connection after {} responses",
                c.count
            ));
        }
        let (start, end) = (c.got, c.got + n);
        if self.buf[start..end] != exp[start..end] {
            let bad = (start..end)
                .find(|&j| self.buf[j] != exp[j])
                .unwrap_or(start);
            let shown = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let upto = (bad + 8).min(end);
            return Err(format!(
                "wrong bytes: response {} of a connection differs at offset {bad} of {} \
                 (got hex {}, expected hex {})",
                c.count + 1,
                exp.len(),
                shown(&self.buf[bad..upto]),
                shown(&exp[bad..(bad + 8).min(exp.len())]),
            ));
        }
        c.got = end;
        if end == exp.len() {
            c.count += 1;
            self.done += 1;
            self.start(i)?;
        }
        Ok(())
    }
}

struct Args {
    transport: String,
    addr: String,
    mode: String,
    nconn: usize,
    warmup: f64,
    duration: f64,
    server_pid: u32,
    core: usize,
}

fn parse_args() -> Result<Args, Failure> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.len() != 8 {
        return Err(
            "usage: rust-load TRANSPORT ADDR MODE CONNECTIONS WARMUP DURATION SERVER_PID CORE"
                .into(),
        );
    }
    let num = |i: usize| -> Result<f64, Failure> {
        argv[i]
            .parse()
            .map_err(|_| format!("not a number: {}", argv[i]))
    };
    Ok(Args {
        transport: argv[0].clone(),
        addr: argv[1].clone(),
        mode: argv[2].clone(),
        nconn: num(3)? as usize,
        warmup: num(4)?,
        duration: num(5)?,
        server_pid: num(6)? as u32,
        core: num(7)? as usize,
    })
}

fn pin(core: usize) -> Result<(), Failure> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and `core` is checked by the kernel.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } < 0 {
        return Err(os_err("sched_setaffinity"));
    }
    Ok(())
}

fn run(args: &Args) -> Result<String, Failure> {
    pin(args.core)?;
    let (requests, expected) = if args.mode == "http" {
        (vec![HTTP_REQUEST.to_vec()], vec![RESPONSE.to_vec()])
    } else {
        let size: usize = args
            .mode
            .parse()
            .map_err(|_| format!("bad mode {}", args.mode))?;
        let msgs = random_messages(size)?;
        (msgs.clone(), msgs)
    };
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(os_err("epoll_create1"));
    }
    let max_len = expected.iter().map(Vec::len).max().unwrap_or(0);
    let mut load = Load {
        ep,
        requests,
        expected,
        conns: Vec::with_capacity(args.nconn),
        buf: vec![0; max_len],
        done: 0,
    };
    let nmsg = load.requests.len();
    for i in 0..args.nconn {
        let stream = connect(&args.transport, &args.addr)?;
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            stream.fd(),
            libc::EPOLLIN as u32,
            i,
        )?;
        load.conns.push(Conn {
            stream,
            k: i % nmsg,
            got: 0,
            out: None,
            count: 0,
        });
    }
    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    for i in 0..args.nconn {
        load.start(i)?;
    }
    // At warm-up end: (time, done, server cpu, own cpu, per-connection counts).
    let mut mark: Option<(Instant, u64, f64, f64, Vec<u64>)> = None;
    let mut last_progress = t0;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    let (now, server_cpu, load_cpu) = loop {
        // SAFETY: `events` is a valid buffer of MAX_EVENTS epoll_events.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), MAX_EVENTS as i32, 250) };
        if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("epoll_wait"));
        }
        let now = Instant::now();
        let n = n.max(0) as usize;
        if n == 0 && now - last_progress > STALL {
            return Err(format!(
                "stalled: no response for {} s ({} round trips done)",
                STALL.as_secs(),
                load.done
            ));
        }
        for ev in &events[..n] {
            let (flags, i) = (ev.events, ev.u64 as usize);
            if flags & libc::EPOLLOUT as u32 != 0 {
                load.on_writable(i)?;
            }
            if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                load.on_readable(i)?;
            }
        }
        if n > 0 {
            last_progress = now;
        }
        match &mark {
            None if now >= warm_end => {
                let counts = load.conns.iter().map(|c| c.count).collect();
                mark = Some((
                    now,
                    load.done,
                    proc_cpu(args.server_pid)?,
                    own_cpu(),
                    counts,
                ));
            }
            Some(_) if now >= end => break (now, proc_cpu(args.server_pid)?, own_cpu()),
            _ => {}
        }
    };
    let (t_mark, done_mark, server_mark, own_mark, counts) = mark.expect("window started");
    let per_conn: Vec<u64> = load
        .conns
        .iter()
        .zip(&counts)
        .map(|(c, n0)| c.count - n0)
        .collect();
    let (min, max) = (
        per_conn.iter().min().copied(),
        per_conn.iter().max().copied(),
    );
    if min == Some(0) {
        return Err(format!(
            "a connection made no progress in the window: {per_conn:?}"
        ));
    }
    Ok(format!(
        "{{\"requests\": {}, \"wall\": {}, \"server_cpu\": {}, \"load_cpu\": {}, \
         \"per_conn_min\": {}, \"per_conn_max\": {}}}",
        load.done - done_mark,
        (now - t_mark).as_secs_f64(),
        server_cpu - server_mark,
        load_cpu - own_mark,
        min.unwrap_or(0),
        max.unwrap_or(0),
    ))
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let line = match parse_args().and_then(|args| run(&args)) {
        Ok(line) => line,
        Err(err) => format!("{{\"error\": {}}}", json_string(&err)),
    };
    println!("{line}");
}
