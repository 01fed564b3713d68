"""ferroloop.run(), asyncio.Runner, ferroloop.install(), ``python -m ferroloop``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading

import pytest


@pytest.fixture(autouse=True)
def _restore_policy():
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)
    asyncio.set_event_loop(None)


@pytest.fixture(params=["asyncio", "ferroloop"])
def runner(request):
    """(run function, expected loop class) for asyncio.run and ferroloop.run."""
    if request.param == "asyncio":
        return asyncio.run, asyncio.SelectorEventLoop
    fl = request.getfixturevalue("ferroloop_mod")
    return fl.run, fl.Loop


def test_run_returns_result(runner):
    run, loop_cls = runner
    seen = {}

    async def main(x):
        loop = asyncio.get_running_loop()
        seen["loop"] = loop
        await asyncio.sleep(0.001)
        return x * 2

    assert run(main(21)) == 42
    loop = seen["loop"]
    assert isinstance(loop, loop_cls)
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert loop.is_closed()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_run_propagates_exception(runner):
    run, _ = runner

    async def main():
        await asyncio.sleep(0)
        raise ArithmeticError("from main")

    with pytest.raises(ArithmeticError, match="from main"):
        run(main())


def test_run_cancels_remaining_tasks(runner):
    run, _ = runner
    events = []

    async def background():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    async def main():
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0.001)
        return "done"

    assert run(main()) == "done"
    assert events == ["cancelled", "finally"]


def test_run_finalizes_async_generators(runner):
    run, _ = runner
    events = []
    keep = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append(("finalized", asyncio.get_running_loop().is_closed()))

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    run(main())
    assert events == [("finalized", False)]


def test_run_shuts_down_default_executor(runner):
    run, _ = runner
    workers = []

    async def main():
        loop = asyncio.get_running_loop()
        workers.append(await loop.run_in_executor(None, threading.current_thread))

    run(main())
    assert len(workers) == 1
    assert not workers[0].is_alive()


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug_flag(runner, debug):
    run, _ = runner

    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run(main(), debug=debug) is debug


def test_run_from_running_loop_is_error(runner):
    run, _ = runner

    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError):
                run(coro)
        finally:
            coro.close()
        return "ok"

    assert run(main()) == "ok"


def test_run_rejects_non_coroutine(runner):
    run, _ = runner
    with pytest.raises(ValueError):
        run(lambda: None)


def test_asyncio_runner_with_ferroloop_factory(ferroloop_mod):
    async def main(v):
        return asyncio.get_running_loop(), v

    with asyncio.Runner(loop_factory=ferroloop_mod.new_event_loop) as r:
        loop1, v1 = r.run(main(1))
        loop2, v2 = r.run(main(2))
        assert r.get_loop() is loop1
    assert (v1, v2) == (1, 2)
    assert loop1 is loop2
    assert isinstance(loop1, ferroloop_mod.Loop)
    assert loop1.is_closed()


def test_new_event_loop_type(ferroloop_mod):
    before = ferroloop_mod._ferroloop.loops_created()
    loop = ferroloop_mod.new_event_loop()
    try:
        assert isinstance(loop, ferroloop_mod.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert ferroloop_mod._ferroloop.loops_created() == before + 1
    finally:
        loop.close()


def test_install_sets_policy(ferroloop_mod):
    ferroloop_mod.install()
    policy = asyncio.get_event_loop_policy()
    assert isinstance(policy, ferroloop_mod.EventLoopPolicy)
    assert isinstance(policy, asyncio.DefaultEventLoopPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop_mod.Loop)
    finally:
        loop.close()

    async def main():
        return type(asyncio.get_running_loop())

    assert issubclass(asyncio.run(main()), ferroloop_mod.Loop)


def test_policy_new_event_loop(ferroloop_mod):
    policy = ferroloop_mod.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, ferroloop_mod.Loop)
    finally:
        loop.close()


# --------------------------------------------------------------------------- python -m ferroloop

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import sys

    async def main():
        loop = asyncio.get_running_loop()
        print("LOOP", type(loop).__module__, type(loop).__name__)
        print("ARGV", sys.argv[1:])
        print("NAME", __name__)
        print("SCRIPT", sys.argv[0].endswith("script.py"))

    asyncio.run(main())
    if len(sys.argv) > 2:
        sys.exit(int(sys.argv[2]))
    """
)


def _run_script(tmp_path, *prefix, args=()):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run(
        [sys.executable, *prefix, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )


def _lines(out, tag):
    return [line for line in out.splitlines() if line.startswith(tag + " ")]


def test_python_m_ferroloop_runs_script(tmp_path, ferroloop_mod):
    plain = _run_script(tmp_path, args=("first-arg",))
    assert plain.returncode == 0, plain.stderr
    proc = _run_script(tmp_path, "-m", "ferroloop", args=("first-arg",))
    assert proc.returncode == 0, proc.stderr
    loop_line = _lines(proc.stdout, "LOOP")
    assert len(loop_line) == 1, proc.stdout
    assert loop_line[0].startswith("LOOP ferroloop"), loop_line
    assert _lines(plain.stdout, "LOOP") != loop_line  # the plain run used the stdlib loop
    # Everything but the loop type is exactly what `python script.py arg` gives.
    for tag in ("ARGV", "NAME", "SCRIPT"):
        assert _lines(proc.stdout, tag) == _lines(plain.stdout, tag), (tag, proc.stdout)
    assert _lines(proc.stdout, "ARGV") == ["ARGV ['first-arg']"]
    assert _lines(proc.stdout, "NAME") == ["NAME __main__"]


def test_python_m_ferroloop_exit_code(tmp_path, ferroloop_mod):
    plain = _run_script(tmp_path, args=("a", "3"))
    proc = _run_script(tmp_path, "-m", "ferroloop", args=("a", "3"))
    assert plain.returncode == 3
    assert proc.returncode == plain.returncode, proc.stderr
