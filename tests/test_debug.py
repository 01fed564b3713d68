"""Debug mode: get/set_debug, slow callback warnings, thread checks."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import threading
import time

import pytest

SLOW_RE = re.compile(r"^Executing .+ took \d+\.\d+ seconds$", re.S)
THREAD_MSG = "Non-thread-safe operation invoked on an event loop other than the current one"


def _slow_records(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "asyncio"
        and r.levelno == logging.WARNING
        and r.getMessage().startswith("Executing ")
    ]


def test_debug_default_follows_environment(loop):
    expected = bool(sys.flags.dev_mode) or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )
    assert loop.get_debug() is expected


def test_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_while_running(loop):
    seen = []

    def toggle():
        loop.set_debug(not loop.get_debug())
        seen.append(loop.get_debug())

    loop.set_debug(False)
    loop.call_soon(toggle)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [True]
    assert loop.get_debug() is True


def test_slow_callback_duration_default(loop):
    assert loop.slow_callback_duration == pytest.approx(0.1)


def slow_callback_marker(duration):
    time.sleep(duration)


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    loop.call_soon(slow_callback_marker, 0.08)
    loop.call_soon(lambda: None)  # fast: must not be reported
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    records = _slow_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    msg = records[0].getMessage()
    assert SLOW_RE.match(msg), msg
    assert "slow_callback_marker" in msg
    took = float(re.search(r"took (\d+\.\d+) seconds", msg).group(1))
    assert took >= 0.05


def test_slow_timer_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.03
    loop.call_later(0.001, slow_callback_marker, 0.05)
    loop.call_later(0.02, loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    records = _slow_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert SLOW_RE.match(records[0].getMessage())


def test_slow_task_step_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.03

    async def blocking_coro():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(blocking_coro())
    records = _slow_records(caplog)
    assert len(records) >= 1, [r.getMessage() for r in caplog.records]
    assert any("blocking_coro" in r.getMessage() for r in records)


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    loop.call_soon(slow_callback_marker, 0.03)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.run_forever()
    assert _slow_records(caplog) == []


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_wrong_thread_call_raises_in_debug(loop, method):
    loop.set_debug(True)
    result = {}
    calls = []

    def in_thread():
        try:
            if method == "call_soon":
                loop.call_soon(calls.append, 1)
            elif method == "call_later":
                loop.call_later(0, calls.append, 1)
            else:
                loop.call_at(loop.time(), calls.append, 1)
        except BaseException as exc:
            result["exc"] = exc
        else:
            result["exc"] = None

    async def main():
        th = threading.Thread(target=in_thread)
        th.start()
        while th.is_alive():
            await asyncio.sleep(0.005)
        th.join()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    exc = result["exc"]
    assert type(exc) is RuntimeError, exc
    assert str(exc) == THREAD_MSG
    assert calls == []


def test_call_soon_threadsafe_from_thread_in_debug(loop):
    loop.set_debug(True)
    got = []

    def in_thread():
        loop.call_soon_threadsafe(got.append, threading.get_ident())

    async def main():
        th = threading.Thread(target=in_thread)
        th.start()
        while not got:
            await asyncio.sleep(0.005)
        th.join()

    loop.run_until_complete(asyncio.wait_for(main(), 5))
    assert len(got) == 1 and got[0] != threading.get_ident()


def test_coroutine_origin_tracking_in_debug(loop):
    before = sys.get_coroutine_origin_tracking_depth()

    async def depth():
        return sys.get_coroutine_origin_tracking_depth()

    loop.set_debug(True)
    assert loop.run_until_complete(depth()) > 0
    loop.set_debug(False)
    assert loop.run_until_complete(depth()) == before
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_call_soon_from_thread_allowed_when_not_running(loop, spin):
    # The debug thread check only applies while the loop runs in another thread.
    loop.set_debug(True)
    calls = []
    errors = []

    def in_thread():
        try:
            loop.call_soon(calls.append, "from-thread")
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=in_thread)
    th.start()
    th.join()
    assert errors == []
    spin(1)
    assert calls == ["from-thread"]


def test_run_in_executor_rejects_coroutine_function_in_debug(loop):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with run_in_executor"):
        loop.run_in_executor(None, coro_func)
