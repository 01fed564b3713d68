"""Exception handler API, errors raised by callbacks, argument validation."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time

import pytest

SCHEDULERS = ["call_soon", "call_later", "call_at", "call_soon_threadsafe"]


def _schedule(loop, method, callback, *args):
    if method == "call_soon":
        return loop.call_soon(callback, *args)
    if method == "call_later":
        return loop.call_later(0, callback, *args)
    if method == "call_at":
        return loop.call_at(loop.time(), callback, *args)
    if method == "call_soon_threadsafe":
        return loop.call_soon_threadsafe(callback, *args)
    raise AssertionError(method)


def _run_briefly(loop, seconds=0.02):
    guard = loop.call_later(seconds, loop.stop)
    try:
        loop.run_forever()
    finally:
        guard.cancel()


def _asyncio_records(caplog, level=logging.ERROR):
    return [r for r in caplog.records if r.name == "asyncio" and r.levelno >= level]


# --------------------------------------------------------------------------- handler API


def test_get_set_exception_handler(loop, exc_handler):
    assert loop.get_exception_handler() is exc_handler

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")
    assert loop.get_exception_handler() is None
    loop.set_exception_handler(exc_handler)


def test_call_exception_handler_calls_custom_handler(loop, exc_handler):
    err = OSError("x")
    ctx = {"message": "custom message", "exception": err, "extra": 1}
    loop.call_exception_handler(ctx)
    assert exc_handler.calls[-1][0] is loop
    (got,) = exc_handler.consume(1)
    assert got["message"] == "custom message"
    assert got["exception"] is err
    assert got["extra"] == 1


@pytest.mark.parametrize("method", SCHEDULERS)
def test_callback_exception_goes_to_handler(loop, exc_handler, method):
    err = ZeroDivisionError("div")
    calls = []

    def bad(arg):
        raise err

    handle = _schedule(loop, method, bad, "arg")
    _schedule(loop, method, calls.append, "after")
    _run_briefly(loop)
    assert calls == ["after"]  # the loop kept going
    (ctx,) = exc_handler.consume(1)
    assert {"message", "exception", "handle"} <= set(ctx)
    assert ctx["exception"] is err
    assert ctx["handle"] is handle
    assert ctx["message"].startswith("Exception in callback")
    assert "bad" in ctx["message"]


def test_default_exception_handler_logs(loop, exc_handler, caplog):
    loop.set_exception_handler(None)
    err = ValueError("logged")

    def bad():
        raise err

    loop.call_soon(bad)
    _run_briefly(loop)
    records = _asyncio_records(caplog)
    assert len(records) == 1, records
    rec = records[0]
    assert rec.levelno == logging.ERROR
    assert rec.getMessage().startswith("Exception in callback")
    assert rec.exc_info is not None and rec.exc_info[1] is err
    loop.set_exception_handler(exc_handler)


def test_default_exception_handler_direct_call(loop, caplog):
    loop.default_exception_handler({"message": "explicit message", "answer": 42})
    loop.default_exception_handler({})
    records = _asyncio_records(caplog)
    assert len(records) == 2, records
    first = records[0].getMessage()
    assert first.startswith("explicit message")
    assert "answer: 42" in first
    assert records[1].getMessage().startswith("Unhandled exception in event loop")


def test_call_exception_handler_without_custom_handler_logs(loop, exc_handler, caplog):
    loop.set_exception_handler(None)
    loop.call_exception_handler({"message": "via call_exception_handler"})
    records = _asyncio_records(caplog)
    assert [r.getMessage() for r in records] == ["via call_exception_handler"]
    loop.set_exception_handler(exc_handler)


def test_exception_in_exception_handler_is_logged(loop, exc_handler, caplog):
    def broken_handler(lp, ctx):
        raise RuntimeError("handler is broken")

    loop.set_exception_handler(broken_handler)
    loop.call_soon(lambda: 1 / 0)
    calls = []
    loop.call_soon(calls.append, "still running")
    _run_briefly(loop)
    assert calls == ["still running"]
    records = _asyncio_records(caplog)
    assert len(records) == 1, records
    assert records[0].getMessage().startswith("Unhandled error in exception handler")
    assert isinstance(records[0].exc_info[1], RuntimeError)
    loop.set_exception_handler(exc_handler)


def test_unretrieved_future_exception_reported(loop, exc_handler):
    fut = loop.create_future()
    err = KeyError("never retrieved")
    fut.set_exception(err)
    del fut
    gc.collect()
    (ctx,) = exc_handler.consume(1)
    assert ctx["exception"] is err
    assert "never retrieved" in ctx["message"]


# --------------------------------------------------------------------------- BaseException


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("method", SCHEDULERS)
def test_base_exception_from_callback_propagates_run_forever(loop, exc_type, method):
    def bad():
        raise exc_type()

    hooks = sys.get_asyncgen_hooks()
    _schedule(loop, method, bad)
    guard = loop.call_later(5, loop.stop)
    with pytest.raises(exc_type):
        loop.run_forever()
    guard.cancel()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    assert sys.get_asyncgen_hooks() == hooks
    assert loop.run_until_complete(asyncio.sleep(0, "reusable")) == "reusable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_callback_propagates_run_until_complete(loop, exc_type):
    def bad():
        raise exc_type()

    loop.call_later(0.01, bad)
    with pytest.raises(exc_type):
        loop.run_until_complete(asyncio.sleep(1))
    assert not loop.is_running()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_coroutine_propagates(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()


def test_callbacks_after_keyboard_interrupt_are_not_lost(loop):
    calls = []

    def bad():
        raise KeyboardInterrupt

    loop.call_soon(bad)
    loop.call_soon(calls.append, "after")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["after"]


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("method", SCHEDULERS)
@pytest.mark.parametrize("bad", [None, 1, "string"])
def test_non_callable_rejected_in_debug(loop, exc_handler, method, bad):
    loop.set_debug(True)
    with pytest.raises(TypeError, match="callable"):
        _schedule(loop, method, bad)
    # Nothing was scheduled.
    _run_briefly(loop, 0.005)
    exc_handler.consume(0)


@pytest.mark.parametrize("method", SCHEDULERS)
def test_non_callable_rejected_by_ferroloop_without_debug(loop, loop_kind, exc_handler, method):
    loop.set_debug(False)
    if loop_kind == "asyncio":
        # The stdlib only validates in debug mode: the error surfaces when the handle runs.
        _schedule(loop, method, 42)
        _run_briefly(loop, 0.005)
        (ctx,) = exc_handler.consume(1)
        assert isinstance(ctx["exception"], TypeError)
        return
    with pytest.raises(TypeError):
        _schedule(loop, method, 42)
    _run_briefly(loop, 0.005)
    exc_handler.consume(0)


@pytest.mark.parametrize("method", SCHEDULERS)
def test_coroutines_rejected_in_debug(loop, method):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with"):
        _schedule(loop, method, coro_func)
    coro = coro_func()
    try:
        with pytest.raises(TypeError, match="coroutines cannot be used with"):
            _schedule(loop, method, coro)
    finally:
        coro.close()


def test_sigint_while_sleeping_raises_keyboard_interrupt(loop):
    # Python's default SIGINT handler raises KeyboardInterrupt; a loop blocked waiting for a far
    # timer must let it out promptly (asyncio: epoll_wait returns EINTR, the handler runs).
    assert threading.current_thread() is threading.main_thread()
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT handler is not Python's default")
    guard = loop.call_later(5, loop.stop)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        timer.join()
        guard.cancel()
    assert time.monotonic() - t0 < 1.0
    assert not loop.is_running()
