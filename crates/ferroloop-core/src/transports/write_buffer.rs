//! The write buffer of a stream transport: bytes accepted by `write()` that the socket did not
//! take yet, sent with gathered writes when the socket becomes writable.
//!
//! Invariants:
//! - [`WriteBuffer::len`] is the number of unsent bytes: the sum of the chunks minus `head`,
//!   the part of the front chunk already sent;
//! - no chunk is empty, and `head` is less than the front chunk's length;
//! - the chunk queue exists exactly while the buffer is not empty;
//! - bytes leave only through [`WriteBuffer::consume`] (sent) or [`WriteBuffer::clear`]
//!   (connection lost), in the order they were pushed — nothing accepted is ever dropped while
//!   the connection lives.

use crate::sys;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;

/// Small writes are appended to the last chunk up to this size, so a burst of tiny writes
/// becomes a few large slices rather than one slice each.
const COALESCE_LIMIT: usize = 64 * 1024;

/// At most this many slices go into one gathered send.
const MAX_SLICES: usize = 64;

/// Unsent bytes of a stream transport, in order.
///
/// An empty buffer holds no allocation and takes two words in the transport (most connections
/// are idle or write only what the socket takes at once); the chunk queue is allocated by the
/// first `push` and freed when the buffer empties again.
#[derive(Debug, Default)]
pub struct WriteBuffer {
    len: usize,
    queue: Option<Box<Queue>>,
}

/// The chunks of a non-empty buffer.
#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already sent.
    head: usize,
}

impl WriteBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of unsent bytes (`get_write_buffer_size()`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether everything was sent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data` after everything buffered.
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let chunks = &mut self.queue.get_or_insert_with(Box::default).chunks;
        match chunks.back_mut() {
            Some(last) if last.len() + data.len() <= COALESCE_LIMIT => last.extend_from_slice(data),
            _ => chunks.push_back(data.to_vec()),
        }
        self.len += data.len();
    }

    /// Marks the first `n` bytes as sent.
    pub fn consume(&mut self, mut n: usize) {
        assert!(n <= self.len, "consumed more than was buffered");
        if n == 0 {
            return;
        }
        self.len -= n;
        if self.len == 0 {
            self.queue = None;
            return;
        }
        let Some(queue) = self.queue.as_mut() else {
            unreachable!("a non-empty buffer has a queue");
        };
        while n > 0 {
            let front_left = queue.chunks[0].len() - queue.head;
            if n < front_left {
                queue.head += n;
                return;
            }
            n -= front_left;
            queue.chunks.pop_front();
            queue.head = 0;
        }
    }

    /// Drops every unsent byte (the connection is lost: nothing can be sent any more).
    pub fn clear(&mut self) {
        self.queue = None;
        self.len = 0;
    }

    /// Sends as much as the socket takes with one gathered `send`, and consumes it.
    /// Returns the bytes sent; `WouldBlock` when the socket is full.
    pub fn send_to(&mut self, fd: RawFd) -> io::Result<usize> {
        let Some(queue) = self.queue.as_ref() else {
            return Ok(0);
        };
        let n = if queue.chunks.len() == 1 {
            sys::send(fd, &queue.chunks[0][queue.head..])?
        } else {
            let mut slices: Vec<IoSlice<'_>> =
                Vec::with_capacity(queue.chunks.len().min(MAX_SLICES));
            for (i, chunk) in queue.chunks.iter().take(MAX_SLICES).enumerate() {
                let start = if i == 0 { queue.head } else { 0 };
                slices.push(IoSlice::new(&chunk[start..]));
            }
            sys::send_vectored(fd, &slices)?
        };
        self.consume(n);
        Ok(n)
    }

    /// Checks the invariants above; panics with a reason if one is broken.
    pub fn check_invariants(&self) {
        let Some(queue) = self.queue.as_ref() else {
            assert_eq!(self.len, 0, "bytes counted without a queue");
            return;
        };
        assert!(self.len > 0, "an empty buffer keeps its queue");
        assert!(queue.chunks.iter().all(|c| !c.is_empty()), "empty chunk");
        let total: usize = queue.chunks.iter().map(Vec::len).sum();
        assert_eq!(
            total - queue.head,
            self.len,
            "len out of step with the chunks"
        );
        let front = queue.chunks.front().expect("a non-empty buffer has chunks");
        assert!(queue.head < front.len(), "head past the front chunk");
    }

    /// The unsent bytes, in order (for tests).
    #[cfg(test)]
    fn unsent(&self) -> Vec<u8> {
        self.queue.as_ref().map_or_else(Vec::new, |q| {
            q.chunks
                .iter()
                .enumerate()
                .flat_map(|(i, c)| c[if i == 0 { q.head } else { 0 }..].to_vec())
                .collect()
        })
    }

    /// Number of chunks (for tests).
    #[cfg(test)]
    fn chunk_count(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.chunks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn small_writes_coalesce_and_large_ones_do_not() {
        let mut b = WriteBuffer::new();
        b.push(b"ab");
        b.push(b"cd");
        assert_eq!(b.chunk_count(), 1);
        b.push(&vec![0; COALESCE_LIMIT]);
        assert_eq!(b.chunk_count(), 2);
        assert_eq!(b.len(), 4 + COALESCE_LIMIT);
        b.check_invariants();
    }

    #[test]
    fn sends_everything_in_order_through_a_full_socket() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut b = WriteBuffer::new();
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let chunk: Vec<u8> = (0..(i * 9973 % 70_000)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            b.push(&chunk);
        }
        let mut got = Vec::new();
        let mut scratch = vec![0; 1 << 16];
        while !b.is_empty() {
            match b.send_to(a.as_raw_fd()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let n = peer.read(&mut scratch).unwrap();
                    got.extend_from_slice(&scratch[..n]);
                }
                Err(e) => panic!("{e}"),
            }
            b.check_invariants();
        }
        drop(a);
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn send_to_a_closed_peer_is_epipe_not_sigpipe() {
        let (a, peer) = UnixStream::pair().unwrap();
        drop(peer);
        let mut b = WriteBuffer::new();
        b.push(b"lost");
        let err = b.send_to(a.as_raw_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(b.len(), 4, "a failed send consumes nothing");
    }

    proptest! {
        #[test]
        fn consume_matches_a_flat_model(
            ops in proptest::collection::vec((0usize..3000, 0usize..4000), 1..60)
        ) {
            let mut b = WriteBuffer::new();
            let mut model: Vec<u8> = Vec::new();
            let mut next = 0u8;
            for (push, take) in ops {
                let data: Vec<u8> = (0..push).map(|_| { next = next.wrapping_add(1); next }).collect();
                b.push(&data);
                model.extend_from_slice(&data);
                let take = take.min(model.len());
                b.consume(take);
                model.drain(..take);
                b.check_invariants();
                prop_assert_eq!(b.len(), model.len());
                prop_assert_eq!(b.unsent(), model.clone());
            }
        }
    }
}
