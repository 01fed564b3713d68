"""run_in_executor, default executor management, async generator shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading

import pytest


def _thread_ident(*args):
    return threading.get_ident(), args


def _thread_name():
    return threading.current_thread().name


def test_run_in_default_executor(loop, run):
    async def main():
        return await loop.run_in_executor(None, _thread_ident, 1, "a")

    ident, args = run(main())
    assert ident != threading.get_ident()
    assert args == (1, "a")


def test_run_in_executor_returns_asyncio_future(loop, run):
    async def main():
        fut = loop.run_in_executor(None, _thread_ident)
        assert asyncio.isfuture(fut)
        assert fut.get_loop() is loop
        return await fut

    run(main())


def test_run_in_executor_exception(loop, run):
    def fail():
        raise LookupError("from thread")

    async def main():
        with pytest.raises(LookupError, match="from thread"):
            await loop.run_in_executor(None, fail)
        return "ok"

    assert run(main()) == "ok"


def test_run_in_custom_executor(loop, run):
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="custom-exec"
    ) as executor:

        async def main():
            futs = [loop.run_in_executor(executor, _thread_name) for _ in range(3)]
            return await asyncio.gather(*futs)

        names = run(main())
    assert all(n.startswith("custom-exec") for n in names), names


def test_set_default_executor(loop, run):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="my-default")
    loop.set_default_executor(executor)

    async def main():
        return await loop.run_in_executor(None, _thread_name)

    try:
        assert run(main()).startswith("my-default")
    finally:
        executor.shutdown(wait=True)


def test_set_default_executor_rejects_non_thread_pool(loop):
    class OtherExecutor(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            raise AssertionError("not used")

    with pytest.raises(TypeError):
        loop.set_default_executor(OtherExecutor())


def test_shutdown_default_executor(loop, run):
    async def main():
        worker = await loop.run_in_executor(None, threading.current_thread)
        assert worker is not threading.current_thread()
        assert worker.is_alive()
        await loop.shutdown_default_executor()
        return worker

    worker = run(main())
    # shutdown_default_executor() waits for (joins) the worker threads.
    assert not worker.is_alive()

    async def again():
        return await loop.run_in_executor(None, _thread_ident)

    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        run(again())


def test_close_shuts_down_default_executor(loop, run):
    async def main():
        return await loop.run_in_executor(None, threading.current_thread)

    worker = run(main())
    assert worker.is_alive()
    loop.close()
    # close() shuts the default executor down without waiting; its idle worker exits.
    worker.join(5)
    assert not worker.is_alive()


def test_shutdown_default_executor_without_executor(loop, run):
    assert run(loop.shutdown_default_executor()) is None


def test_executor_result_wakes_sleeping_loop(loop, run):
    event = threading.Event()

    def wait_then_return():
        event.wait(5)
        return "woken"

    async def main():
        fut = loop.run_in_executor(None, wait_then_return)
        loop.call_later(0.05, event.set)
        t0 = loop.time()
        res = await fut
        return res, loop.time() - t0

    res, elapsed = run(main())
    assert res == "woken"
    assert elapsed < 1.0


# --------------------------------------------------------------------------- async generators


def test_asyncgen_hooks_installed_while_running(loop, run):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    inside = run(main())
    assert inside.firstiter is not None
    assert inside.finalizer is not None
    assert inside != before
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_finalizes(loop, run):
    finalized = []
    keep = []

    async def agen(tag):
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            finalized.append(tag)

    async def main():
        for tag in ("a", "b"):
            g = agen(tag)
            keep.append(g)
            assert await g.__anext__() == 1

    run(main())
    assert finalized == []
    run(loop.shutdown_asyncgens())
    assert sorted(finalized) == ["a", "b"]


def test_asyncgen_garbage_collected_while_running_is_finalized(loop, run):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(asyncio.get_running_loop())

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        del g
        gc.collect()
        for _ in range(10):
            if finalized:
                break
            await asyncio.sleep(0.001)

    run(main())
    assert finalized == [loop]


def test_shutdown_asyncgens_reports_errors(loop, run, exc_handler):
    keep = []

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("in finally")

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    run(main())
    run(loop.shutdown_asyncgens())
    (ctx,) = exc_handler.consume(1)
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["asyncgen"] is keep[0]
