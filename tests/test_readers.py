"""add_reader / remove_reader / add_writer / remove_writer on raw file descriptors."""

from __future__ import annotations

import errno
import os
import socket

import pytest


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


class FileLike:
    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd


def _run_for(loop, seconds):
    guard = loop.call_later(seconds, loop.stop)
    try:
        loop.run_forever()
    finally:
        guard.cancel()


@pytest.mark.parametrize("as_object", [False, True], ids=["int-fd", "fileno-object"])
def test_reader_fires_when_readable(loop, sockpair, as_object):
    a, b = sockpair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))
        loop.stop()

    fd = a if as_object else a.fileno()
    loop.add_reader(fd, on_readable, "tag")
    loop.call_later(0.01, b.send, b"hello")
    guard = loop.call_later(5, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(fd) is True


def test_reader_with_custom_fileno_object(loop, pipe):
    r, w = pipe
    got = []
    obj = FileLike(r)
    loop.add_reader(obj, lambda: (got.append(os.read(r, 10)), loop.stop()))
    os.write(w, b"x")
    _run_for(loop, 5)
    assert got == [b"x"]
    assert loop.remove_reader(obj) is True
    assert loop.remove_reader(obj) is False


def test_remove_reader_by_int_after_add_by_object(loop, sockpair):
    a, b = sockpair
    loop.add_reader(a, lambda: None)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a) is False


def test_reader_not_called_without_data(loop, sockpair):
    a, _ = sockpair
    calls = []
    loop.add_reader(a.fileno(), calls.append, 1)
    _run_for(loop, 0.03)
    assert calls == []
    assert loop.remove_reader(a.fileno()) is True


def test_reader_is_level_triggered(loop, sockpair, spin):
    a, b = sockpair
    calls = []
    loop.add_reader(a.fileno(), calls.append, "r")
    b.send(b"data that stays unread")
    spin(1)
    before = len(calls)
    spin(5)
    # Data is still unread: the reader fires in every iteration.
    assert len(calls) - before >= 4, calls
    a.recv(100)
    spin(2)  # the last one may still be in flight
    settled = len(calls)
    spin(5)
    assert len(calls) == settled
    assert loop.remove_reader(a.fileno()) is True


def test_remove_reader_stops_callbacks(loop, sockpair, spin):
    a, b = sockpair
    calls = []
    loop.add_reader(a.fileno(), calls.append, 1)
    b.send(b"x")
    spin(3)
    assert calls
    assert loop.remove_reader(a.fileno()) is True
    n = len(calls)
    spin(3)
    assert len(calls) == n
    assert loop.remove_reader(a.fileno()) is False


def test_remove_reader_from_its_callback(loop, sockpair, spin):
    a, b = sockpair
    calls = []
    removed = []

    def cb():
        calls.append(1)
        removed.append(loop.remove_reader(a.fileno()))

    loop.add_reader(a.fileno(), cb)
    b.send(b"x")
    spin(5)
    assert calls == [1]
    assert removed == [True]


def test_remove_unregistered_returns_false(loop, sockpair, pipe):
    a, _ = sockpair
    r, w = pipe
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is False
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(w) is False


def test_replacing_reader(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a.fileno(), calls.append, "first")
    loop.add_reader(a.fileno(), lambda: (calls.append("second"), a.recv(10), loop.stop()))
    b.send(b"x")
    _run_for(loop, 5)
    assert calls == ["second"]
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


@pytest.mark.parametrize("as_object", [False, True], ids=["int-fd", "fileno-object"])
def test_writer_fires_when_writable(loop, sockpair, as_object):
    a, _ = sockpair
    calls = []
    fd = a if as_object else a.fileno()
    loop.add_writer(fd, lambda: (calls.append("w"), loop.stop()))
    _run_for(loop, 5)
    assert calls == ["w"]
    assert loop.remove_writer(fd) is True
    assert loop.remove_writer(fd) is False


def test_writer_on_pipe_level_triggered(loop, pipe, spin):
    _, w = pipe
    calls = []
    loop.add_writer(w, calls.append, 1)
    spin(5)
    assert len(calls) >= 4
    assert loop.remove_writer(w) is True
    n = len(calls)
    spin(3)
    assert len(calls) == n


def test_writer_waits_for_buffer_space(loop, sockpair, spin):
    a, b = sockpair
    # Fill the send buffer completely.
    try:
        while True:
            a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    calls = []
    loop.add_writer(a.fileno(), lambda: (calls.append("w"), loop.stop()))
    _run_for(loop, 0.03)
    assert calls == []

    def drain():
        try:
            while True:
                if not b.recv(1 << 20):
                    break
        except BlockingIOError:
            pass

    loop.call_soon(drain)
    _run_for(loop, 5)
    assert calls == ["w"]
    assert loop.remove_writer(a.fileno()) is True


def test_reader_and_writer_on_same_fd(loop, sockpair, spin):
    a, b = sockpair
    events = []

    loop.add_writer(a.fileno(), events.append, "w")
    loop.add_reader(a.fileno(), lambda: events.append(("r", a.recv(100))))
    spin(3)
    assert "w" in events
    assert not any(isinstance(e, tuple) for e in events)
    assert loop.remove_writer(a.fileno()) is True
    events.clear()
    b.send(b"ping")
    spin(3)
    # The reader survived removal of the writer.
    assert events and events[0] == ("r", b"ping")
    assert "w" not in events
    loop.add_writer(a.fileno(), events.append, "w")
    assert loop.remove_reader(a.fileno()) is True
    events.clear()
    spin(2)
    # The writer survived removal of the reader.
    assert "w" in events
    assert loop.remove_writer(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


def test_pipe_reader_sees_eof(loop, pipe):
    r, w = pipe
    chunks = []

    def on_read():
        data = os.read(r, 100)
        chunks.append(data)
        if not data:
            loop.remove_reader(r)
            loop.stop()

    loop.add_reader(r, on_read)
    os.write(w, b"abc")
    loop.call_later(0.01, os.close, w)
    _run_for(loop, 5)
    assert b"".join(chunks) == b"abc"
    assert chunks[-1] == b""


def test_reader_callback_exception_goes_to_handler(loop, exc_handler, sockpair):
    a, b = sockpair
    err = RuntimeError("reader failed")

    def bad():
        a.recv(10)
        loop.stop()
        raise err

    loop.add_reader(a.fileno(), bad)
    b.send(b"x")
    _run_for(loop, 5)
    (ctx,) = exc_handler.consume(1)
    assert ctx["exception"] is err
    assert "handle" in ctx
    assert loop.remove_reader(a.fileno()) is True


def test_stop_before_run_forever_polls_io_once(loop, sockpair):
    # Documented: "If stop() is called before run_forever() is called, the loop will poll the
    # I/O selector once with a timeout of zero, run all callbacks scheduled in response to I/O
    # events (and those that were already scheduled), and then exit."
    a, b = sockpair
    calls = []
    b.send(b"x")
    loop.add_reader(a.fileno(), calls.append, "reader")
    loop.call_soon(calls.append, "soon")
    guard = loop.call_later(5, loop.stop)
    loop.stop()
    loop.run_forever()
    guard.cancel()
    assert sorted(calls) == ["reader", "soon"]
    assert loop.remove_reader(a.fileno()) is True


# --------------------------------------------------------------------------- invalid fds


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_negative_fd(loop, method):
    with pytest.raises(ValueError, match="^Invalid file descriptor: -1$"):
        getattr(loop, method)(-1, lambda: None)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_object_without_fileno(loop, method):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, method)(object(), lambda: None)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_closed_fd(loop, method, spin):
    r, w = os.pipe()
    fd = r if method == "add_reader" else w
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        getattr(loop, method)(fd, lambda: None)
    assert info.value.errno == errno.EBADF
    # The failed registration left no state behind.
    spin(2)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_on_closed_loop(loop, method, sockpair):
    a, _ = sockpair
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        getattr(loop, method)(a.fileno(), lambda: None)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_on_closed_loop_returns_false(loop, method, sockpair):
    a, _ = sockpair
    loop.add_reader(a.fileno(), lambda: None)
    loop.add_writer(a.fileno(), lambda: None)
    loop.close()
    assert getattr(loop, method)(a.fileno()) is False


def test_close_drops_readers(loop, sockpair):
    # Closing the loop with registered readers/writers must not raise or close the fds.
    a, b = sockpair
    loop.add_reader(a.fileno(), lambda: None)
    loop.add_writer(b.fileno(), lambda: None)
    loop.close()
    b.send(b"still open")
    assert a.recv(100) == b"still open"


def test_removed_reader_never_runs_even_if_already_polled(loop):
    # Two readers become ready in the same iteration; whichever runs first removes the other.
    # After remove_reader() returned True, the removed callback must not run.
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    try:
        calls = []

        def make_cb(name, other_fd):
            def cb():
                calls.append(name)
                loop.remove_reader(other_fd)

            return cb

        loop.add_reader(a1.fileno(), make_cb("one", a2.fileno()))
        loop.add_reader(a2.fileno(), make_cb("two", a1.fileno()))
        b1.send(b"x")
        b2.send(b"y")
        loop.stop()  # exactly one iteration, polling I/O once
        guard = loop.call_later(5, loop.stop)
        loop.run_forever()
        guard.cancel()
        assert len(calls) == 1, calls
        loop.remove_reader(a1.fileno())
        loop.remove_reader(a2.fileno())
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_remove_reader_after_fd_closed(loop, spin):
    a, b = socket.socketpair()
    try:
        fd = a.fileno()
        loop.add_reader(fd, lambda: None)
        spin(1)
        a.close()  # closed behind the loop's back while registered
        spin(2)
        # (With a reader *and* a writer registered, asyncio's selector loop raises EBADF from
        # epoll_ctl(MOD) here; with a single registration it unregisters quietly.)
        assert loop.remove_reader(fd) is True
        assert loop.remove_reader(fd) is False
        spin(1)
    finally:
        a.close()
        b.close()


def test_add_reader_twice_then_remove(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a.fileno(), calls.append, 1)
    loop.add_reader(a, calls.append, 2)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False
    b.send(b"x")
    loop.stop()
    loop.run_forever()
    assert calls == []
