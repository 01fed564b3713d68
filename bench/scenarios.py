"""Benchmark scenarios: one function per scenario.

Each function is called as ``fn(loop, n, meter)``.  It sets up whatever it needs, wraps
only the hot part in ``with meter:`` (which accumulates process CPU time and wall time),
checks that the work really happened (raising ``AssertionError`` otherwise) and returns
the number of operations done.  All work runs on ``loop``, the loop under test.
"""

import asyncio
import threading
import time

__all__ = ["SCENARIOS", "Meter"]


class Meter:
    """Accumulates process CPU seconds (all threads) and wall seconds over ``with`` blocks."""

    def __init__(self):
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self):
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc):
        self.cpu += time.process_time() - self._cpu0
        self.wall += time.perf_counter() - self._wall0
        return False


def _run(loop, coro):
    """Run ``coro`` on ``loop`` and check it really ran there."""

    async def wrapper():
        assert asyncio.get_running_loop() is loop, "coroutine not running on the loop under test"
        return await coro

    return loop.run_until_complete(wrapper())


def call_soon_chain(loop, n, meter):
    """A callback that schedules the next one with call_soon, n times in a row."""
    count = 0

    def step():
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(step)
        else:
            loop.stop()

    with meter:
        loop.call_soon(step)
        loop.run_forever()
    assert count == n, (count, n)
    return n


def call_soon_batch(loop, n, meter, batch=1000):
    """Batches of ``batch`` call_soon calls; each batch's last callback schedules the next."""
    count = scheduled = 0

    def cb():
        nonlocal count
        count += 1

    def schedule():
        nonlocal scheduled
        if scheduled == n:
            loop.stop()
            return
        size = min(batch, n - scheduled)
        for _ in range(size):
            loop.call_soon(cb)
        scheduled += size
        loop.call_soon(schedule)

    with meter:
        loop.call_soon(schedule)
        loop.run_forever()
    assert count == n, (count, n)
    return n


def call_later_cancel(loop, n, meter, spread=0.05, settle=False):
    """n timers with deadlines spread over ``spread`` s; every second one is cancelled.

    With ``settle``, sleep until every deadline has passed before running the loop, so that
    all timers fire in one iteration and the work done does not depend on timing
    (bench/instructions.py; the sleep costs no CPU time).
    """
    fired = odd = 0
    expected = n - n // 2

    def cb(i):
        nonlocal fired, odd
        fired += 1
        odd += i & 1  # a cancelled timer ran
        if fired == expected:
            loop.stop()

    with meter:
        step = spread / n
        handles = [loop.call_later(i * step, cb, i) for i in range(n)]
        for h in handles[1::2]:
            h.cancel()
        if settle:
            time.sleep(spread + 0.002)  # + 2 ms: libuv rounds delays to whole milliseconds
        loop.run_forever()
    assert fired == expected and not odd, (fired, expected, odd)
    return n


def call_soon_threadsafe(loop, n, meter):
    """A producer thread calls call_soon_threadsafe n times; ends when all callbacks ran."""
    count = 0

    def cb():
        nonlocal count
        count += 1
        if count == n:
            loop.stop()

    def producer():
        for _ in range(n):
            loop.call_soon_threadsafe(cb)

    thread = threading.Thread(target=producer)
    with meter:
        thread.start()
        loop.run_forever()
        thread.join()
    assert count == n, (count, n)
    return n


def sleep0_pingpong(loop, n, meter):
    """Two tasks alternately ``await asyncio.sleep(0)``; n sleeps in total."""
    trace = []

    async def player(name, rounds):
        for _ in range(rounds):
            trace.append(name)
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(player(0, n // 2), player(1, n - n // 2))

    with meter:
        _run(loop, main())
    assert len(trace) == n, (len(trace), n)
    assert trace[:4] == [0, 1, 0, 1], trace[:4]  # the tasks really interleave
    return n


def future_roundtrip(loop, n, meter):
    """create_future, set_result from a loop callback, await it; n round trips."""

    async def main():
        total = 0
        for i in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, i)
            total += await fut
        return total

    with meter:
        total = _run(loop, main())
    assert total == n * (n - 1) // 2, total
    return n


def create_task_gather(loop, n, meter, batch=1000):
    """create_task + gather of batches of ``batch`` small coroutines; n tasks in total."""

    async def small(i):
        await asyncio.sleep(0)
        return i

    async def main():
        total = 0
        for start in range(0, n, batch):
            tasks = [loop.create_task(small(i)) for i in range(start, min(start + batch, n))]
            total += sum(await asyncio.gather(*tasks))
        return total

    with meter:
        total = _run(loop, main())
    assert total == n * (n - 1) // 2, total
    return n


def queue_prodcons(loop, n, meter, maxsize=100):
    """asyncio.Queue(maxsize) with one producer and one consumer task; n items."""

    async def main():
        queue = asyncio.Queue(maxsize)

        async def producer():
            for i in range(n):
                await queue.put(i)
            await queue.put(None)

        async def consumer():
            total = 0
            while (item := await queue.get()) is not None:
                total += item
            return total

        _, total = await asyncio.gather(producer(), consumer())
        return total

    with meter:
        total = _run(loop, main())
    assert total == n * (n - 1) // 2, total
    return n


def idle_timers(loop, n, meter, seconds=1.0):
    """``asyncio.sleep(seconds)`` while n timers wait 1 hour ahead; metric is CPU-s per wall-s."""
    fired = []
    handles = [loop.call_later(3600 + i * 1e-3, fired.append, i) for i in range(n)]

    async def main():
        with meter:
            await asyncio.sleep(seconds)

    _run(loop, main())
    for h in handles:
        h.cancel()
    assert not fired, "far-future timers fired"
    assert meter.wall >= seconds * 0.95, meter.wall
    return 1


def run_in_executor(loop, n, meter):
    """``await loop.run_in_executor(None, f, i)`` round trips to the default executor."""

    def work(i):
        return i

    async def main():
        total = 0
        for i in range(n):
            total += await loop.run_in_executor(None, work, i)
        return total

    _run(loop, loop.run_in_executor(None, work, 0))  # start the executor outside the meter
    with meter:
        total = _run(loop, main())
    assert total == n * (n - 1) // 2, total
    return n


def timeout_blocks(loop, n, meter, yield_every=100):
    """``async with asyncio.timeout(60)`` enter/exit with nothing firing; n blocks.

    The loop gets an iteration every ``yield_every`` blocks, as a real program would.
    """

    async def main():
        done = 0
        for i in range(n):
            async with asyncio.timeout(60):
                done += 1
            if i % yield_every == 0:
                await asyncio.sleep(0)
        return done

    with meter:
        done = _run(loop, main())
    assert done == n, done
    return n


# name -> (function, default n, unit).  Unit "ops/CPU-s" is higher-is-better;
# "CPU-ms/s" (idle CPU-milliseconds per wall second) is lower-is-better.
def spawn_wait(loop, n, meter, batch=50):
    """``create_subprocess_exec('true')`` and ``wait()``: n processes, ``batch`` at a time.
    CPU is the loop process's (all its threads: a child watcher's count), not the children's."""

    async def main():
        done = 0
        while done < n:
            k = min(batch, n - done)
            procs = [await asyncio.create_subprocess_exec("true") for _ in range(k)]
            codes = [await p.wait() for p in procs]
            assert codes == [0] * k, codes
            done += k
        return done

    with meter:
        return _run(loop, main())


def pipe_cat(loop, n, meter, chunk=256 * 1024):
    """n MiB written to ``cat`` through a pipe and read back through another; ops = MiB."""
    data = bytes(range(256)) * (chunk // 256)
    pipe = asyncio.subprocess.PIPE

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=pipe, stdout=pipe)

        async def feed():
            for _ in range(n * (1024 * 1024 // chunk)):
                proc.stdin.write(data)
                await proc.stdin.drain()
            proc.stdin.close()

        async def read_back():
            total = 0
            while block := await proc.stdout.read(1 << 20):
                total += len(block)
            return total

        _, total = await asyncio.gather(feed(), read_back())
        assert await proc.wait() == 0
        assert total == n * 1024 * 1024, total
        return n

    with meter:
        return _run(loop, main())


SCENARIOS = {
    "call_soon_chain": (call_soon_chain, 150_000, "ops/CPU-s"),
    "call_soon_batch": (call_soon_batch, 300_000, "ops/CPU-s"),
    "call_later_cancel": (call_later_cancel, 50_000, "ops/CPU-s"),
    "call_soon_threadsafe": (call_soon_threadsafe, 100_000, "ops/CPU-s"),
    "sleep0_pingpong": (sleep0_pingpong, 200_000, "ops/CPU-s"),
    "future_roundtrip": (future_roundtrip, 60_000, "ops/CPU-s"),
    "create_task_gather": (create_task_gather, 30_000, "ops/CPU-s"),
    "queue_prodcons": (queue_prodcons, 200_000, "ops/CPU-s"),
    "idle_timers": (idle_timers, 10_000, "CPU-ms/s"),
    "run_in_executor": (run_in_executor, 6_000, "ops/CPU-s"),
    "timeout_blocks": (timeout_blocks, 60_000, "ops/CPU-s"),
    "spawn_wait": (spawn_wait, 500, "procs/CPU-s"),
    "pipe_cat": (pipe_cat, 256, "MiB/CPU-s"),
}
