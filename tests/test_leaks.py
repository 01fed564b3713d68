"""Handle / memory / file-descriptor leak checks."""

from __future__ import annotations

import asyncio
import gc
import os
import socket

import pytest

BATCHES = 100
BATCH_SIZE = 10_000  # BATCHES * BATCH_SIZE = one million cycles
HANDLE_SLACK = 128  # cancelled timers a loop may legitimately keep until its next compaction


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _noop(*args):
    pass


def _run_pending(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def _batch(loop, n):
    call_soon = loop.call_soon
    call_later = loop.call_later
    for i in range(n):
        call_soon(_noop, i)
        call_later(3600, _noop, i).cancel()
        call_later(0, _noop)
    # Run the batch: the call_soon and expired call_later callbacks fire, the cancelled far
    # timers are dropped (compaction).
    _run_pending(loop)
    _run_pending(loop)


def test_million_cycles_no_handle_or_memory_growth(ferroloop_mod):
    native = ferroloop_mod._ferroloop
    gc.collect()
    handles_before_loop = native.live_handles()
    loop = ferroloop_mod.new_event_loop()
    try:
        loop.set_debug(False)  # debug mode keeps a creation traceback per handle
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

        for _ in range(5):  # warm-up: allocator pools, internal queue capacity
            _batch(loop, BATCH_SIZE)
        gc.collect()
        handles_base = native.live_handles()
        rss_base = _rss_bytes()

        peak_handles = handles_base
        for _ in range(BATCHES):
            _batch(loop, BATCH_SIZE)
            peak_handles = max(peak_handles, native.live_handles())
        gc.collect()
        handles_end = native.live_handles()
        rss_end = _rss_bytes()

        assert errors == []
        assert handles_end - handles_base <= HANDLE_SLACK, (handles_base, handles_end)
        # Bounded by one batch in flight, not by the total number of cycles.
        assert peak_handles - handles_base <= 3 * BATCH_SIZE + HANDLE_SLACK, peak_handles
        growth = rss_end - rss_base
        assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
    finally:
        loop.close()
    del loop
    gc.collect()
    assert native.live_handles() == handles_before_loop


def test_closed_loop_releases_all_handles(ferroloop_mod):
    native = ferroloop_mod._ferroloop
    gc.collect()
    base = native.live_handles()
    loop = ferroloop_mod.new_event_loop()
    for i in range(1000):
        loop.call_soon(_noop, i)
        loop.call_later(3600 + i, _noop, i)
    assert native.live_handles() >= base + 2000
    loop.close()
    del loop
    gc.collect()
    assert native.live_handles() == base


def test_cancelled_far_timers_are_compacted_while_running(ferroloop_mod):
    native = ferroloop_mod._ferroloop
    loop = ferroloop_mod.new_event_loop()
    try:
        loop.set_debug(False)
        gc.collect()
        base = native.live_handles()
        for _ in range(10):
            for i in range(5000):
                loop.call_later(3600, _noop, i).cancel()
            _run_pending(loop)
        _run_pending(loop)
        gc.collect()
        assert native.live_handles() - base <= HANDLE_SLACK
    finally:
        loop.close()


def _exercise(loop):
    """Use the loop's timers, wakeup channel, executor and fd watching, then close it."""
    a, b = socket.socketpair()
    try:
        got = []

        async def main():
            loop.add_reader(a.fileno(), lambda: got.append(a.recv(10)))
            await loop.run_in_executor(None, b.send, b"x")
            loop.call_soon_threadsafe(lambda: None)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.005)
            loop.remove_reader(a.fileno())
            return got

        assert loop.run_until_complete(main()) == [b"x"]
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        a.close()
        b.close()


def test_close_closes_every_fd(loop_factory):
    gc.collect()
    before = _open_fds()
    for _ in range(3):
        loop = loop_factory()
        _exercise(loop)
        loop.close()
        assert loop.is_closed()
        del loop
    after_close = _open_fds()
    gc.collect()
    after_gc = _open_fds()
    assert after_close - before == set(), "fds left open by close()"
    assert after_gc - before == set()


def test_many_loops_do_not_leak_fds(loop_factory):
    gc.collect()
    before = _open_fds()
    for _ in range(50):
        loop_factory().close()
    assert _open_fds() - before == set()


def test_unclosed_loop_gc(loop_factory, recwarn):
    # A loop dropped without close() must not crash; its fds are released at GC (asyncio warns
    # with ResourceWarning and closes itself in __del__).
    gc.collect()
    before = _open_fds()
    loop = loop_factory()
    for i in range(2000):
        loop.call_soon(_noop, i)
    del loop
    gc.collect()
    assert _open_fds() - before == set()
    unclosed = [w for w in recwarn if issubclass(w.category, ResourceWarning)]
    assert any("unclosed" in str(w.message) for w in unclosed), [str(w.message) for w in recwarn]


def test_reference_cycles_through_handles_are_collected(loop, spin):
    """An object that keeps the handle of its own callback is collected once the handle ran or
    was cancelled (ferroloop's handles are outside the cyclic GC; they release their callback
    instead)."""
    import gc
    import weakref

    class Owner:
        def callback(self):
            pass

    ran, cancelled = Owner(), Owner()
    ran.handles = [loop.call_soon(ran.callback), loop.call_later(0, ran.callback)]
    cancelled.handles = [loop.call_later(3600, cancelled.callback)]
    cancelled.handles[0].cancel()
    refs = [weakref.ref(ran), weakref.ref(cancelled)]
    del ran, cancelled
    deadline = loop.time() + 1
    while loop.time() < deadline and refs[0]() is not None:
        spin(1)
        gc.collect()
    gc.collect()
    assert [r() for r in refs] == [None, None]


class _Marker:
    pass


_cycle_var = __import__("contextvars").ContextVar("cycle_var")


def _make_context_cycle(refs):
    # context -> its variables -> marker -> token -> context: a cycle through the very context
    # the callback runs in, which only the cyclic GC can free.
    import weakref

    marker = _Marker()
    marker.token = _cycle_var.set(marker)
    refs.append(weakref.ref(marker))


@pytest.mark.parametrize("pending", [0, 300], ids=["idle", "backlog"])
def test_cycle_through_a_handles_context_is_collected(loop, pending):
    # With hundreds of callbacks pending, ferroloop keeps a new handle's context copy out of the
    # GC until the handle lets go of it: the cycle must still be found then.
    far = [loop.call_later(3600, _noop) for _ in range(pending)]
    refs = []
    handles = [
        loop.call_soon(_make_context_cycle, refs),
        loop.call_later(0, _make_context_cycle, refs),
    ]
    _run_pending(loop)
    _run_pending(loop)
    assert len(refs) == 2
    gc.collect()
    # Still referenced by the handles we hold: alive.
    assert all(ref() is not None for ref in refs)
    del handles
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    for handle in far:
        handle.cancel()


def test_handle_context_is_tracked_once_handed_out(loop):
    handle = loop.call_later(3600, _noop)
    try:
        # get_context() is public from 3.12; asyncio 3.11 has only the attribute.
        ctx = handle.get_context() if hasattr(handle, "get_context") else handle._context
        assert gc.is_tracked(ctx)
        # A cycle made through the handed-out context, after the handle is gone, is collected.
        import weakref

        marker = _Marker()
        marker.token = ctx.run(_cycle_var.set, marker)
        ref = weakref.ref(marker)
    finally:
        handle.cancel()
    del handle, marker, ctx
    _run_pending(loop)
    gc.collect()
    assert ref() is None
