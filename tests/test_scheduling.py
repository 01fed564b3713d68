"""call_soon / call_later / call_at / call_soon_threadsafe, Handle API, iteration semantics."""

from __future__ import annotations

import asyncio
import contextvars
import random
import sys
import threading
import time

import pytest

VAR = contextvars.ContextVar("VAR", default="default")


# --------------------------------------------------------------------------- call_soon


def test_call_soon_order_and_args(loop, spin):
    calls = []
    for i in range(50):
        loop.call_soon(calls.append, (i, "x"))
    loop.call_soon(lambda *a: calls.append(a), 1, "two", None)
    spin(1)
    assert calls == [(i, "x") for i in range(50)] + [(1, "two", None)]


async def _sleep0_twice():
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_call_soon_patched_on_the_instance_sees_task_steps(loop):
    calls = []
    original = loop.call_soon

    def spy(callback, *args, context=None):
        calls.append(callback)
        return original(callback, *args, context=context)

    loop.call_soon = spy
    loop.run_until_complete(_sleep0_twice())
    assert len(calls) >= 3  # the first step and one wakeup per sleep(0)
    del loop.call_soon
    calls.clear()
    loop.run_until_complete(_sleep0_twice())
    assert calls == []


def test_call_soon_overridden_by_a_subclass_sees_task_steps(loop):
    """ferroloop keeps a bound `call_soon` in the instance dict (C Task and Future look it up
    at every step); a subclass's override must still win."""
    calls = []

    class Spying(type(loop)):
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    sub = Spying()
    try:
        sub.run_until_complete(_sleep0_twice())
    finally:
        sub.close()
    assert len(calls) >= 3


def test_call_soon_rejects_keyword_arguments(loop):
    with pytest.raises(TypeError):
        loop.call_soon(print, end="")


def test_callbacks_see_running_loop(loop, spin):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    spin(1)
    assert seen == [loop]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_callback_scheduled_by_callback_runs_next_iteration(loop):
    calls = []

    def a():
        calls.append("a")
        loop.call_soon(b)

    def b():
        calls.append("b")

    loop.call_soon(a)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # b was not ready when the iteration started, so it must not have run yet.
    assert calls == ["a"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["a", "b"]


def test_stop_finishes_current_iteration(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, 2)  # ready at iteration start: still runs
    loop.call_soon(lambda: loop.call_soon(calls.append, 3))
    loop.run_forever()
    assert calls == [1, 2]
    assert not loop.is_running()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2, 3]


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []

    def a():
        calls.append("a")
        loop.call_soon(calls.append, "b")

    loop.call_soon(a)
    guard = loop.call_later(2, loop.stop)  # only matters if the early stop() is lost
    loop.stop()
    t0 = time.monotonic()
    loop.run_forever()
    guard.cancel()
    assert calls == ["a"]
    assert time.monotonic() - t0 < 1.0
    # The stop request was consumed: the next run_forever runs until stopped again.
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == ["a", "b"]


def test_stop_before_run_forever_does_not_wait_for_timers(loop):
    fired = []
    loop.call_later(3, fired.append, 1)
    guard = loop.call_later(3.1, loop.stop)  # only matters if the early stop() is lost
    loop.stop()
    t0 = time.monotonic()
    loop.run_forever()
    guard.cancel()
    assert time.monotonic() - t0 < 1.0
    assert fired == []


def test_stop_twice_is_one_stop(loop):
    calls = []
    loop.call_soon(loop.stop)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(calls.append, 1)
    loop.call_later(0.05, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    # The second run_forever must run until the timer stops it, not return at once.
    assert time.monotonic() - t0 >= 0.04
    assert calls == [1]


# --------------------------------------------------------------------------- contexts


def test_call_soon_copies_context_at_schedule_time(loop, spin):
    seen = []
    token = VAR.set("a")
    try:
        loop.call_soon(lambda: seen.append(VAR.get()))
        VAR.set("b")
        loop.call_soon(lambda: seen.append(VAR.get()))
    finally:
        VAR.reset(token)
    spin(1)
    assert seen == ["a", "b"]


def test_each_callback_runs_in_its_own_context_copy(loop, spin):
    seen = []

    def setter():
        VAR.set("changed")
        seen.append(("setter", VAR.get()))

    def getter():
        seen.append(("getter", VAR.get()))

    loop.call_soon(setter)
    loop.call_soon(getter)
    spin(1)
    assert seen == [("setter", "changed"), ("getter", "default")]
    assert VAR.get() == "default"


def test_call_soon_threadsafe_copies_the_calling_threads_context(loop):
    """Each callback runs in a copy of the *calling thread's* context, isolated from the others
    (a loop that shares one context between threadsafe callbacks fails this)."""
    seen = []

    def setter():
        VAR.set("set-by-setter")

    def getter():
        seen.append(VAR.get())
        loop.stop()

    def producer():
        VAR.set("producer-thread")
        loop.call_soon_threadsafe(setter)
        loop.call_soon_threadsafe(getter)

    thread = threading.Thread(target=producer)
    thread.start()
    thread.join()
    guard = loop.call_later(5, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert seen == ["producer-thread"]
    assert VAR.get() == "default"


def _ctx_with(value):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, value)
    return ctx


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_context_argument(loop, method):
    ctx = _ctx_with("in-ctx")
    seen = []

    def cb(arg):
        seen.append((arg, VAR.get()))
        VAR.set("modified")
        loop.stop()

    if method == "call_soon":
        loop.call_soon(cb, 1, context=ctx)
    elif method == "call_later":
        loop.call_later(0.001, cb, 1, context=ctx)
    elif method == "call_at":
        loop.call_at(loop.time() + 0.001, cb, 1, context=ctx)
    else:
        loop.call_soon_threadsafe(cb, 1, context=ctx)
    guard = loop.call_later(5, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert seen == [(1, "in-ctx")]
    # The callback ran *in* ctx, not in a copy of it.
    assert ctx[VAR] == "modified"
    assert VAR.get() == "default"


def test_shared_context_between_callbacks(loop, spin):
    ctx = _ctx_with(0)
    seen = []

    def incr():
        VAR.set(VAR.get() + 1)
        seen.append(VAR.get())

    for _ in range(3):
        loop.call_soon(incr, context=ctx)
    spin(1)
    assert seen == [1, 2, 3]
    assert ctx[VAR] == 3


# --------------------------------------------------------------------------- timers


def test_call_later_ordering(loop):
    calls = []
    delays = [0.03, 0.01, 0.02, 0.0, 0.015, 0.005]
    for d in delays:
        loop.call_later(d, calls.append, d)
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    assert calls == sorted(delays)


def test_call_at_ordering_shuffled(loop):
    base = loop.time() + 0.01
    whens = [base + i * 0.0005 for i in range(200)]
    order = list(range(200))
    random.Random(1234).shuffle(order)
    calls = []
    for i in order:
        loop.call_at(whens[i], calls.append, i)
    loop.call_at(whens[-1] + 0.02, loop.stop)
    loop.run_forever()
    assert calls == list(range(200))


def test_equal_deadlines_fire_fifo(loop, loop_kind, request):
    if loop_kind == "asyncio":
        # asyncio keeps timers in a heapq ordered on `when` only, which is not stable.
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="asyncio heap is not FIFO for equal `when`")
        )
    when = loop.time() + 0.01
    calls = []
    for i in range(50):
        loop.call_at(when, calls.append, i)
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    assert calls == list(range(50))


def test_equal_deadlines_two_timers_fifo(loop):
    # Holds on asyncio too (heap of two equal items keeps insertion order).
    when = loop.time() + 0.005
    calls = []
    loop.call_at(when, calls.append, "first")
    loop.call_at(when, calls.append, "second")
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    assert calls == ["first", "second"]


def test_timers_never_fire_early(loop):
    results = []

    def cb(when):
        results.append((when, loop.time()))

    now = loop.time()
    for d in (0.001, 0.003, 0.01, 0.02, 0.035, 0.05):
        loop.call_later(d, cb, now + d)
        loop.call_at(now + d, cb, now + d)
    loop.call_at(now + 0.08, loop.stop)
    loop.run_forever()
    assert len(results) == 12
    for when, fired_at in results:
        # call_later computes `when` from its own clock read, which is >= now.
        assert fired_at >= when, (when, fired_at)


def test_call_later_when_matches_loop_time(loop):
    before = loop.time()
    h = loop.call_later(10, lambda: None)
    after = loop.time()
    assert isinstance(h.when(), float)
    assert before + 10 <= h.when() <= after + 10
    h.cancel()


def test_call_at_when_is_exact(loop):
    when = loop.time() + 123.25
    h = loop.call_at(when, lambda: None)
    assert h.when() == when
    h.cancel()


def test_loop_time_monotonic(loop):
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples)
    t0 = loop.time()
    time.sleep(0.02)
    assert loop.time() - t0 >= 0.015


def test_negative_and_zero_delay_run_promptly(loop):
    calls = []
    loop.call_later(-5, calls.append, "neg")
    loop.call_later(0, calls.append, "zero")
    loop.call_at(loop.time() - 100, calls.append, "past")
    loop.call_later(0.02, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 0.5
    # Earliest deadline first.
    assert calls == ["past", "neg", "zero"]


def test_none_deadline_is_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)
    with pytest.raises(TypeError):
        loop.call_at(None, lambda: None)


def test_sleeping_loop_wakes_for_earlier_timer(loop):
    # A timer added by a callback while a later timer is pending must still fire on time.
    fired = []

    def add_early():
        loop.call_later(0.02, lambda: (fired.append(loop.time()), loop.stop()))

    guard = loop.call_later(5, loop.stop)
    loop.call_later(0.01, add_early)
    t0 = time.monotonic()
    loop.run_forever()
    guard.cancel()
    assert fired
    assert time.monotonic() - t0 < 1.0


# --------------------------------------------------------------------------- Handle API


def test_handle_cancel_and_cancelled(loop, spin):
    calls = []
    h1 = loop.call_soon(calls.append, 1)
    h2 = loop.call_soon(calls.append, 2)
    t1 = loop.call_later(0.001, calls.append, 3)
    assert not h1.cancelled()
    assert not t1.cancelled()
    h1.cancel()
    t1.cancel()
    h1.cancel()  # idempotent
    assert h1.cancelled()
    assert t1.cancelled()
    assert not h2.cancelled()
    time.sleep(0.005)
    spin(3)
    assert calls == [2]


def test_cancel_later_callback_in_same_iteration(loop, spin):
    calls = []
    handles = {}

    def a():
        calls.append("a")
        handles["b"].cancel()

    loop.call_soon(a)
    handles["b"] = loop.call_soon(calls.append, "b")
    loop.call_soon(calls.append, "c")
    spin(2)
    assert calls == ["a", "c"]


def test_cancel_due_timer_from_callback(loop):
    calls = []
    when = loop.time() + 0.01
    handles = []

    def first():
        calls.append("first")
        handles[0].cancel()

    loop.call_at(when, first)
    handles.append(loop.call_at(when + 0.000001, calls.append, "second"))
    loop.call_at(when + 0.03, loop.stop)
    loop.run_forever()
    assert calls == ["first"]


def test_handle_cancel_after_run_is_harmless(loop, spin):
    calls = []
    h = loop.call_soon(calls.append, 1)
    t = loop.call_later(0, calls.append, 2)
    time.sleep(0.002)
    spin(2)
    assert calls == [1, 2]
    h.cancel()
    t.cancel()
    assert h.cancelled()
    assert t.cancelled()
    spin(1)
    assert calls == [1, 2]


def test_handle_get_context(loop, loop_kind):
    h0 = loop.call_soon(lambda: None)
    if not hasattr(h0, "get_context"):
        if loop_kind == "asyncio" and sys.version_info < (3, 12):
            pytest.skip("asyncio.Handle.get_context() is new in Python 3.12")
        pytest.fail("Handle has no get_context()")
    ctx = _ctx_with("x")
    h = loop.call_soon(lambda: None, context=ctx)
    t = loop.call_later(10, lambda: None, context=ctx)
    assert h.get_context() is ctx
    assert t.get_context() is ctx
    # Without context=, the handle holds a copy of the current context.
    token = VAR.set("current")
    try:
        h2 = loop.call_soon(lambda: None)
    finally:
        VAR.reset(token)
    c2 = h2.get_context()
    assert isinstance(c2, contextvars.Context)
    assert c2[VAR] == "current"
    t.cancel()


def my_named_callback(*args):
    pass


def test_handle_repr(loop):
    h = loop.call_soon(my_named_callback, 1)
    r = repr(h)
    assert r.startswith("<Handle") and r.endswith(">"), r
    assert "my_named_callback" in r, r
    assert "when=" not in r
    h.cancel()
    r = repr(h)
    assert r.startswith("<Handle") and "cancelled" in r, r

    t = loop.call_later(10, my_named_callback, 2)
    r = repr(t)
    assert r.startswith("<TimerHandle") and r.endswith(">"), r
    assert "when=" in r, r
    assert "my_named_callback" in r, r
    assert "cancelled" not in r
    t.cancel()
    r = repr(t)
    assert r.startswith("<TimerHandle") and "cancelled" in r and "when=" in r, r


def test_cancelled_handles_never_run(loop):
    calls = []
    keep = []
    for i in range(200):
        h = loop.call_soon(calls.append, ("soon", i))
        t = loop.call_later(0.001 * (i % 10), calls.append, ("later", i))
        if i % 2:
            h.cancel()
            t.cancel()
        else:
            keep.append(i)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(i for kind, i in calls if kind == "soon") == keep
    assert sorted(i for kind, i in calls if kind == "later") == keep
    assert [i for kind, i in calls if kind == "soon"] == keep  # FIFO


def test_mass_cancellation_then_remaining_timers_fire(loop):
    loop.set_debug(False)  # debug mode's per-handle stack capture would make this slow
    rng = random.Random(42)
    calls = []
    base = loop.time() + 0.2
    handles = []
    for i in range(5000):
        when = base + rng.random() * 0.05
        handles.append((when, i, loop.call_at(when, calls.append, i)))
    far = [loop.call_later(1000 + i, calls.append, -1) for i in range(500)]
    survivors = []
    for when, i, h in handles:
        if i % 10 == 0:
            survivors.append((when, i))
        else:
            h.cancel()
    for h in far:
        h.cancel()
    # Iterate a few times first so that a compaction pass can happen while timers are pending.
    run_soon = []
    loop.call_soon(run_soon.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert run_soon == [1]
    assert calls == []
    # Cancel more after the first iteration, then let everything fire.
    late_cancel = {i for _, i in survivors[::7]}
    for _when, i, h in handles:
        if i in late_cancel:
            h.cancel()
    expected = [i for when, i in sorted(survivors) if i not in late_cancel]
    loop.call_at(base + 0.1, loop.stop)
    loop.run_forever()
    assert calls == expected


def test_timer_scheduled_while_running_after_cancellations(loop):
    calls = []
    hs = [loop.call_later(0.5, calls.append, "never") for _ in range(300)]
    for h in hs:
        h.cancel()

    def later():
        loop.call_later(0.01, calls.append, "new")
        loop.call_later(0.03, loop.stop)

    loop.call_soon(later)
    loop.run_forever()
    assert calls == ["new"]


# --------------------------------------------------------------------------- threads


def test_call_soon_threadsafe_wakes_sleeping_loop(loop):
    calls = []
    guard = loop.call_later(5, loop.stop)  # the loop would otherwise sleep 5 s
    started = threading.Event()

    def in_thread():
        started.wait(5)
        time.sleep(0.1)
        loop.call_soon_threadsafe(lambda: (calls.append(threading.get_ident()), loop.stop()))

    th = threading.Thread(target=in_thread)
    th.start()
    loop.call_soon(started.set)
    t0 = time.monotonic()
    try:
        loop.run_forever()
    finally:
        th.join()
        guard.cancel()
    elapsed = time.monotonic() - t0
    assert calls == [threading.get_ident()]
    assert elapsed < 1.0, elapsed


def _check_producers(guard, threads, received, per_thread):
    """After `call_soon_threadsafe` producer threads ran: cancels the loop's guard timer, joins
    the threads, and checks that each producer's `(k, i)` callbacks all ran, in its order."""
    guard.cancel()
    for th in threads:
        th.join()
    assert len(received) == len(threads) * per_thread
    for k in range(len(threads)):
        assert [i for kk, i in received if kk == k] == list(range(per_thread))


def test_call_soon_threadsafe_from_many_threads(loop):
    n_threads, per_thread = 8, 200
    received = []
    done = threading.Barrier(n_threads + 1)

    def worker(k):
        for i in range(per_thread):
            loop.call_soon_threadsafe(received.append, (k, i))
        done.wait(10)

    def check_done():
        if len(received) == n_threads * per_thread:
            loop.stop()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    guard = loop.call_later(10, loop.stop)
    for th in threads:
        th.start()
    done.wait(10)
    loop.call_soon_threadsafe(check_done)
    # Keep checking until all callbacks arrived (they were all queued before check_done).
    loop.run_forever()
    _check_producers(guard, threads, received, per_thread)


def test_call_soon_threadsafe_floods_from_threads_while_the_loop_runs(loop):
    """Producers far ahead of a running loop (tens of thousands of callbacks, more than the
    backlog at which ferroloop lets the loop's thread take the GIL): every callback runs once,
    on the loop's thread, in each producer's order."""
    n_threads, per_thread = 3, 20_000
    received = []
    threads_seen = set()
    loop_thread = []

    def note(item):
        received.append(item)
        threads_seen.add(threading.get_ident())
        if len(received) == n_threads * per_thread:
            loop.stop()

    def worker(k):
        for i in range(per_thread):
            loop.call_soon_threadsafe(note, (k, i))

    def start():
        loop_thread.append(threading.get_ident())
        for th in threads:
            th.start()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    guard = loop.call_later(30, loop.stop)
    loop.call_soon(start)
    loop.run_forever()
    _check_producers(guard, threads, received, per_thread)
    assert threads_seen == set(loop_thread)


def test_call_soon_threadsafe_returns_handle_that_can_be_cancelled(loop, spin):
    calls = []
    h = loop.call_soon_threadsafe(calls.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    spin(2)
    assert calls == []


# --------------------------------------------------------------------------- edge values


def test_huge_and_infinite_deadlines(loop, spin):
    calls = []
    handles = [
        loop.call_later(1e9, calls.append, "huge-delay"),
        loop.call_at(loop.time() + 1e12, calls.append, "huge-when"),
        loop.call_at(float("inf"), calls.append, "inf"),
    ]
    assert handles[2].when() == float("inf")
    loop.call_later(0.01, calls.append, "soon")
    loop.call_later(0.02, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1.0
    assert calls == ["soon"]
    for h in handles:
        h.cancel()
    spin(2)
    assert calls == ["soon"]


def test_int_deadlines(loop):
    calls = []
    when = int(loop.time()) - 1
    h = loop.call_at(when, calls.append, "int-when")
    assert h.when() == when
    loop.call_later(0, calls.append, "int-delay")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ["int-when", "int-delay"]


def test_timer_handle_ordering(loop):
    now = loop.time()
    t1 = loop.call_at(now + 10, my_named_callback)
    t2 = loop.call_at(now + 20, my_named_callback)
    t1b = loop.call_at(now + 10, my_named_callback)
    assert t1 < t2 and t2 > t1
    assert t1 <= t2 and t2 >= t1
    assert not (t2 < t1)
    assert t1 == t1b  # same when, callback, args and state
    assert t1 != t2
    for t in (t1, t2, t1b):
        t.cancel()


def test_loop_repr_reflects_state(loop):
    r = repr(loop)
    assert "running=False" in r and "closed=False" in r, r
    seen = []
    loop.call_soon(lambda: seen.append(repr(loop)))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert "running=True" in seen[0], seen
    loop.close()
    assert "closed=True" in repr(loop)
