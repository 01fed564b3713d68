"""run_until_complete / run_forever / stop / close, closed-loop errors, futures and tasks."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import weakref

import pytest

CLOSED_MSG = "Event loop is closed"
RUNNING_MSG = "This event loop is already running"
OTHER_RUNNING_MSG = "Cannot run the event loop while another loop is running"

VAR = contextvars.ContextVar("VAR", default="default")


def test_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


# --------------------------------------------------------------------------- run_until_complete


def test_run_until_complete_coroutine_result(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_future_result(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "value")
    assert loop.run_until_complete(fut) == "value"


def test_run_until_complete_task_result(loop):
    async def main():
        return "task"

    task = loop.create_task(main())
    assert loop.run_until_complete(task) == "task"
    assert task.done()


def test_run_until_complete_wraps_coroutine_in_task(loop):
    seen = []

    async def main():
        seen.append(asyncio.current_task())
        return 1

    loop.run_until_complete(main())
    assert len(seen) == 1
    assert isinstance(seen[0], asyncio.Task)
    assert seen[0].get_loop() is loop


def test_run_until_complete_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_rejects_non_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(123)


def test_run_until_complete_exception_propagates(loop):
    err = ValueError("boom")

    async def main():
        await asyncio.sleep(0)
        raise err

    with pytest.raises(ValueError) as info:
        loop.run_until_complete(main())
    assert info.value is err
    assert not loop.is_running()
    # The loop is reusable afterwards.
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_run_until_complete_cancelled_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_future_of_other_loop(loop, new_loop):
    other = new_loop()
    fut = other.create_future()
    with pytest.raises(ValueError):
        loop.run_until_complete(fut)
    assert not loop.is_running()
    fut.cancel()


def test_run_until_complete_stopped_before_done(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="^Event loop stopped before Future completed.$"):
        loop.run_until_complete(fut)
    assert not fut.done()
    loop.call_soon(fut.set_result, 3)
    assert loop.run_until_complete(fut) == 3


def test_run_until_complete_when_running(loop):
    errors = []

    async def inner():
        return 1

    def cb():
        coro = inner()
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()

    loop.call_soon(cb)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert errors == [RUNNING_MSG]


def test_run_forever_reentrance(loop):
    errors = []

    def cb():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == [RUNNING_MSG]


def test_run_other_loop_while_running(loop, new_loop):
    other = new_loop()
    errors = []

    def cb():
        try:
            other.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        fut = other.create_future()
        try:
            other.run_until_complete(fut)
        except RuntimeError as exc:
            errors.append(str(exc))
        fut.cancel()

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == [OTHER_RUNNING_MSG, OTHER_RUNNING_MSG]
    assert not other.is_running()


def test_get_running_loop_inside_and_outside(loop):
    async def main():
        return asyncio.get_running_loop(), asyncio.get_event_loop()

    running, current = loop.run_until_complete(main())
    assert running is loop
    assert current is loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_is_running(loop):
    states = []
    assert not loop.is_running()
    loop.call_soon(lambda: states.append(loop.is_running()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert states == [True]
    assert not loop.is_running()


def test_run_forever_after_exception_in_run_until_complete(loop):
    async def fail():
        raise KeyError("x")

    with pytest.raises(KeyError):
        loop.run_until_complete(fail())
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1]


# --------------------------------------------------------------------------- close


def test_close_idempotent(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()


def test_close_while_running(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_close_releases_pending_callbacks(loop):
    class Callback:
        def __call__(self):
            pass

    soon, later = Callback(), Callback()
    refs = [weakref.ref(soon), weakref.ref(later)]
    loop.call_soon(soon)
    loop.call_later(10, later)
    del soon, later
    loop.close()
    gc.collect()
    assert [r() for r in refs] == [None, None]


def _closed_loop_calls(loop):
    async def coro():
        pass

    def create_task():
        c = coro()
        try:
            loop.create_task(c)
        finally:
            c.close()

    def run_until_complete():
        c = coro()
        try:
            loop.run_until_complete(c)
        finally:
            c.close()

    return {
        "call_soon": lambda: loop.call_soon(print),
        "call_later": lambda: loop.call_later(1, print),
        "call_at": lambda: loop.call_at(loop.time() + 1, print),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(print),
        "create_task": create_task,
        "run_forever": loop.run_forever,
        "run_until_complete": run_until_complete,
        "run_in_executor": lambda: loop.run_in_executor(None, print),
    }


@pytest.mark.parametrize(
    "method",
    [
        "call_soon",
        "call_later",
        "call_at",
        "call_soon_threadsafe",
        "create_task",
        "run_forever",
        "run_until_complete",
        "run_in_executor",
    ],
)
def test_calls_on_closed_loop(loop, method):
    loop.close()
    call = _closed_loop_calls(loop)[method]
    with pytest.raises(RuntimeError) as info:
        call()
    assert type(info.value) is RuntimeError
    assert str(info.value) == CLOSED_MSG


def test_stop_and_time_on_closed_loop_do_not_raise(loop):
    loop.close()
    loop.stop()
    assert isinstance(loop.time(), float)
    assert loop.is_closed()
    assert not loop.is_running()


# --------------------------------------------------------------------------- futures / tasks


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 5)
    assert loop.run_until_complete(fut) == 5


def test_future_done_callbacks_run_via_loop(loop, spin):
    fut = loop.create_future()
    calls = []
    fut.add_done_callback(lambda f: calls.append(f.result()))
    fut.set_result("r")
    assert calls == []  # scheduled with call_soon, not called synchronously
    spin(1)
    assert calls == ["r"]


def test_create_task_name_and_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "task-ctx")

    async def main():
        await asyncio.sleep(0)
        return VAR.get(), asyncio.current_task().get_name()

    task = loop.create_task(main(), name="my-task")
    assert task.get_name() == "my-task"
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == ("default", "my-task")

    task2 = loop.create_task(main(), name="ctx-task", context=ctx)
    assert loop.run_until_complete(task2) == ("task-ctx", "ctx-task")


def test_create_task_default_name(loop):
    async def main():
        return 1

    task = loop.create_task(main())
    assert task.get_name().startswith("Task-")
    loop.run_until_complete(task)


def test_task_factory(loop):
    calls = []

    class MyTask(asyncio.Task):
        pass

    def factory(lp, coro, **kwargs):
        calls.append((lp, sorted(kwargs)))
        return MyTask(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def child():
        return "child"

    async def main():
        t = asyncio.ensure_future(child())
        assert isinstance(t, MyTask)
        return await t

    task = loop.create_task(main())
    assert isinstance(task, MyTask)
    assert loop.run_until_complete(task) == "child"

    ctx = contextvars.copy_context()
    task = loop.create_task(child(), context=ctx)
    assert isinstance(task, MyTask)
    loop.run_until_complete(task)

    assert all(lp is loop for lp, _ in calls)
    assert [kw for _, kw in calls] == [[], [], ["context"]]

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    task = loop.create_task(child())
    assert type(task) is asyncio.Task
    loop.run_until_complete(task)


def test_set_task_factory_rejects_non_callable(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)
    assert loop.get_task_factory() is None


def test_gather_wait_for_timeout(loop, run):
    async def value(v, delay):
        await asyncio.sleep(delay)
        return v

    async def main():
        res = await asyncio.gather(value(1, 0.02), value(2, 0.01), value(3, 0))
        assert res == [1, 2, 3]
        assert await asyncio.wait_for(value("fast", 0.001), timeout=5) == "fast"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(value("slow", 10), timeout=0.02)
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.03):
                await asyncio.sleep(10)
        assert loop.time() - t0 >= 0.03
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(value(i, i * 0.01)) for i in range(3)],
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert [t.result() for t in done] == [0]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return "ok"

    assert run(main()) == "ok"


def test_sleep_is_not_early(loop, run):
    async def main():
        out = []
        for d in (0.001, 0.01, 0.03):
            t0 = loop.time()
            m0 = time.monotonic()
            await asyncio.sleep(d)
            out.append((d, loop.time() - t0, time.monotonic() - m0))
        return out

    for d, loop_dt, mono_dt in run(main()):
        assert loop_dt >= d, (d, loop_dt)
        # loop.time() advances at the same rate as the monotonic clock
        assert mono_dt >= d * 0.9, (d, mono_dt)


def test_task_cancellation(loop, run):
    events = []

    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def main():
        t = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return t.cancelled()

    assert run(main()) is True
    assert events == ["cancelled"]


def test_many_tasks_interleave(loop, run):
    order = []

    async def worker(k):
        for i in range(3):
            order.append((k, i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(worker(k) for k in range(3)))

    run(main())
    assert order == [(k, i) for i in range(3) for k in range(3)]


def test_all_tasks_and_current_task(loop, run):
    async def child(ev):
        await ev.wait()

    async def main():
        ev = asyncio.Event()
        t = asyncio.ensure_future(child(ev))
        await asyncio.sleep(0)
        tasks = asyncio.all_tasks()
        assert asyncio.current_task() in tasks
        assert t in tasks
        ev.set()
        await t
        return asyncio.current_task(), asyncio.all_tasks(loop)

    current, remaining = run(main())
    assert remaining == {current}
