"""Subprocesses, pipe transports and signal handlers.

The specification is asyncio's ``unix_events`` (``_UnixSubprocessTransport``, the pipe
transports, ``add_signal_handler``) and ``base_subprocess``; every loop-level test also runs on
stdlib asyncio, the oracle. ferroloop reaps children through a pidfd on its own poller instead of
asyncio 3.11's ``ThreadedChildWatcher`` (one thread per child); the observable behaviour must be
the same.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from conftest import HandlerRecorder, iterations, run_coro, until
from conftest import digest as _digest
from conftest import payload as _payload

KiB = 1024
MiB = 1024 * KiB
PIPE = asyncio.subprocess.PIPE
STDOUT = asyncio.subprocess.STDOUT
DEVNULL = asyncio.subprocess.DEVNULL
SH = "/bin/sh"
PY = sys.executable


def zombie_children() -> list[int]:
    """Pids of this process's children that are zombies (state 'Z' in /proc/<pid>/stat)."""
    me = os.getpid()
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may itself contain spaces or ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            zombies.append(int(entry))
    return zombies


def wait_no_zombies(grace: float = 2.0) -> list[int]:
    """Zombie children still there after ``grace`` seconds (an empty list if none)."""
    deadline = time.monotonic() + grace
    while True:
        zombies = zombie_children()
        if not zombies or time.monotonic() > deadline:
            return zombies
        time.sleep(0.01)


class SubRec(asyncio.SubprocessProtocol):
    """Records every SubprocessProtocol callback in order."""

    def __init__(self):
        self.transport = None
        self.events: list[tuple] = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.lost = None  # set when connection_lost runs
        self.exited_rc = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(("made",))

    def pipe_data_received(self, fd, data):
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.exited_rc.append(self.transport.get_returncode())
        self.events.append(("exited",))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost = True


class PipeRec(asyncio.Protocol):
    """Records pipe-transport callbacks."""

    def __init__(self):
        self.transport = None
        self.events: list[str] = []
        self.data = bytearray()
        self.lost_calls: list[BaseException | None] = []
        self.pauses = 0
        self.resumes = 0
        self.resumed = None  # an asyncio.Event, made by the test on its loop

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data
        if self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.lost_calls.append(exc)
        self.events.append("lost")

    def pause_writing(self):
        self.pauses += 1
        if self.resumed is not None:
            self.resumed.clear()

    def resume_writing(self):
        self.resumes += 1
        if self.resumed is not None:
            self.resumed.set()


# --------------------------------------------------------------------------- 1. big data


def test_cat_10mib_byte_for_byte(loop, run):
    payload = _payload(10 * MiB, seed=1)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        out, err = await proc.communicate(payload)
        assert err is None
        assert proc.returncode == 0
        assert len(out) == len(payload)
        assert out == payload

    run(main(), timeout=20)


def test_communicate_large_both_ways(loop, run):
    """The child writes to stdout and stderr while it is still reading stdin: communicate()
    must feed stdin and drain both outputs concurrently (no deadlock)."""
    payload = _payload(4 * MiB, seed=2)
    script = textwrap.dedent(
        """
        import sys
        i, o, e = sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer
        while chunk := i.read(65536):
            o.write(chunk)
            e.write(chunk[::-1])
        o.write(b"end-out")
        e.write(b"end-err")
        """
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", script, stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate(payload)
        assert proc.returncode == 0, err[-2000:]
        assert out == payload + b"end-out"
        assert len(err) == len(payload) + 7
        assert err.endswith(b"end-err")
        # Reversing each 64 KiB chunk back gives the input.
        body = err[:-7]
        restored = b"".join(body[i : i + 65536][::-1] for i in range(0, len(body), 65536))
        assert restored == payload

    run(main(), timeout=20)


# --------------------------------------------------------------------------- 2. stdio and options


def test_stderr_capture_and_returncode(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", "echo out; echo err >&2; exit 3", stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        assert (out, err, proc.returncode) == (b"out\n", b"err\n", 3)

    run(main())


def test_stderr_to_stdout(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", "echo one; echo two >&2; echo three", stdout=PIPE, stderr=STDOUT
        )
        assert proc.stderr is None
        out, err = await proc.communicate()
        assert err is None
        assert out == b"one\ntwo\nthree\n"
        assert proc.returncode == 0

    run(main())


def test_devnull(loop, run):
    async def main():
        # stdin from /dev/null: cat sees EOF at once.
        proc = await asyncio.create_subprocess_exec("cat", stdin=DEVNULL, stdout=PIPE)
        assert proc.stdin is None
        out, _ = await proc.communicate()
        assert out == b"" and proc.returncode == 0
        # Output to /dev/null: no pipe at all.
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", "echo lost; echo lost >&2", stdout=DEVNULL, stderr=DEVNULL
        )
        assert proc.stdout is None and proc.stderr is None
        assert await proc.wait() == 0
        assert proc._transport.get_pipe_transport(1) is None

    run(main())


def test_file_object_and_raw_fd_as_stdout(loop, run, tmp_path):
    async def main():
        with open(tmp_path / "obj.txt", "wb") as f:
            proc = await asyncio.create_subprocess_exec(SH, "-c", "echo via-object", stdout=f)
            assert proc.stdout is None
            assert await proc.wait() == 0
        assert (tmp_path / "obj.txt").read_bytes() == b"via-object\n"

        fd = os.open(tmp_path / "fd.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                SH, "-c", "echo via-fd; echo err-too >&2", stdout=fd, stderr=fd
            )
            assert await proc.wait() == 0
        finally:
            os.close(fd)
        assert (tmp_path / "fd.txt").read_bytes() == b"via-fd\nerr-too\n"

    run(main())


def test_cwd_and_env(loop, run, tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_exec("pwd", cwd=tmp_path, stdout=PIPE)
        out, _ = await proc.communicate()
        assert os.path.realpath(out.decode().strip()) == os.path.realpath(tmp_path)

        proc = await asyncio.create_subprocess_exec(
            SH, "-c", 'echo "$FOO:${HOME-unset}"', env={"FOO": "bar baz"}, stdout=PIPE
        )
        out, _ = await proc.communicate()
        assert out == b"bar baz:unset\n"

    run(main())


WRITE_TO_FD = "import os, sys; os.write(int(sys.argv[1]), b'passed\\n')"


def test_pass_fds(loop, run):
    async def main():
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", WRITE_TO_FD, str(w), pass_fds=(w,)
            )
            os.close(w)
            w = -1
            assert await proc.wait() == 0
            assert os.read(r, 100) == b"passed\n"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

        # Without pass_fds the descriptor is closed in the child (close_fds=True).
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", WRITE_TO_FD, str(w), stderr=DEVNULL
            )
            assert await proc.wait() != 0
            os.set_blocking(r, False)
            with pytest.raises(BlockingIOError):
                os.read(r, 100)
        finally:
            os.close(r)
            os.close(w)

    run(main())


def test_start_new_session(loop, run):
    code = "import os; print(os.getpid(), os.getsid(0))"

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE)
        out, _ = await proc.communicate()
        pid, sid = map(int, out.split())
        assert pid == proc.pid
        assert sid == os.getsid(0)

        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdout=PIPE, start_new_session=True
        )
        out, _ = await proc.communicate()
        pid, sid = map(int, out.split())
        assert pid == proc.pid
        assert sid != os.getsid(0)
        assert sid == pid  # the child leads its own session

    run(main())


def test_shell_pipeline(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "printf 'b\\na\\nc\\n' | sort | tr a-z A-Z; exit 7", stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        assert (out, err, proc.returncode) == (b"A\nB\nC\n", b"", 7)

        proc = await asyncio.create_subprocess_shell("cat | wc -c", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(b"x" * 100_000)
        assert int(out) == 100_000

    run(main())


# --------------------------------------------------------------------------- 3. bad arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bufsize": 1}, "bufsize must be 0"),
        ({"bufsize": -1}, "bufsize must be 0"),
        ({"universal_newlines": True}, "universal_newlines must be False"),
        ({"text": True}, "text must be False"),
        ({"encoding": "utf-8"}, "encoding must be None"),
        ({"errors": "strict"}, "errors must be None"),
        ({"shell": True}, "shell must be False"),
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_exec_bad_arguments(loop, run, kwargs, message):
    async def main():
        with pytest.raises(ValueError) as info:
            await asyncio.create_subprocess_exec("true", **kwargs)
        assert str(info.value) == message
        with pytest.raises(ValueError) as info:
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", **kwargs)
        assert str(info.value) == message

    run(main())
    assert zombie_children() == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bufsize": 1}, "bufsize must be 0"),
        ({"universal_newlines": True}, "universal_newlines must be False"),
        ({"text": True}, "text must be False"),
        ({"encoding": "utf-8"}, "encoding must be None"),
        ({"shell": False}, "shell must be True"),
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_shell_bad_arguments(loop, run, kwargs, message):
    async def main():
        with pytest.raises(ValueError) as info:
            await loop.subprocess_shell(asyncio.SubprocessProtocol, "true", **kwargs)
        assert str(info.value) == message

    run(main())


def test_shell_cmd_must_be_str(loop, run):
    async def main():
        with pytest.raises(ValueError, match="cmd must be a string"):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, ["true"])

    run(main())


def test_nonexistent_program(loop, run, tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("ferroloop-no-such-program-xyz")
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec(
                str(tmp_path / "missing"), stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
        script = tmp_path / "noexec.sh"
        script.write_text("#!/bin/sh\n")
        with pytest.raises(PermissionError):
            await asyncio.create_subprocess_exec(str(script))
        # Still usable afterwards.
        proc = await asyncio.create_subprocess_exec("true")
        assert await proc.wait() == 0

    run(main())
    gc.collect()
    assert zombie_children() == []


# --------------------------------------------------------------------------- 4. signals to children


@pytest.mark.parametrize(
    "how, expected",
    [
        ("kill", -signal.SIGKILL),
        ("terminate", -signal.SIGTERM),
        ("send_signal", -signal.SIGUSR1),
    ],
)
def test_kill_sleeping_child(loop, run, how, expected):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "10")
        assert proc.returncode is None
        await asyncio.sleep(0.05)
        assert proc.returncode is None
        t0 = time.monotonic()
        if how == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, how)()
        assert await proc.wait() == expected
        assert time.monotonic() - t0 < 5
        assert proc.returncode == expected
        # The transport is finished: signalling the reaped child is refused.
        with pytest.raises(ProcessLookupError):
            proc.kill()

    run(main())


def test_cancel_during_creation_kills_and_reaps(loop, run):
    """Cancelled while waiting for the pipes to connect: the child is killed and reaped."""

    async def main():
        task = asyncio.create_task(
            asyncio.create_subprocess_exec("sleep", "10", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        )
        await asyncio.sleep(0)  # the transport exists, the pipes are connecting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert wait_no_zombies() == []


def test_communicate_timeout_then_kill(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", "echo started; exec sleep 10", stdout=PIPE
        )
        assert await proc.stdout.readline() == b"started\n"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.communicate(), 0.1)
        assert proc.returncode is None
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        assert await proc.stdout.read() == b""

    run(main())


def test_write_to_exited_child(loop, run):
    """The child exits without reading: the stdin pipe is lost, drain() raises."""

    async def main():
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE)
        assert await proc.wait() == 0
        await asyncio.sleep(0.05)
        assert proc.stdin.is_closing()
        proc.stdin.write(b"x" * MiB)
        with pytest.raises(ConnectionResetError, match="Connection lost"):
            await proc.stdin.drain()
        # communicate() ignores the broken pipe.
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE, stdout=PIPE)
        await asyncio.sleep(0.1)
        assert await proc.communicate(b"y" * MiB) == (b"", None)
        assert proc.returncode == 0

    run(main())


def test_child_exits_while_loop_not_running(loop, run):
    async def start():
        return await asyncio.create_subprocess_exec(SH, "-c", "echo bye; exit 9", stdout=PIPE)

    proc = run(start())
    time.sleep(0.2)  # exits and closes its pipe while nobody polls
    assert run(proc.communicate()) == (b"bye\n", None)
    assert proc.returncode == 9


def test_subprocess_from_loop_in_other_thread(loop_factory):
    results = []

    def worker():
        lp = loop_factory()
        try:

            async def main():
                proc = await asyncio.create_subprocess_exec(SH, "-c", "echo t; exit 2", stdout=PIPE)
                out, _ = await proc.communicate()
                return out, proc.returncode

            results.append(run_coro(lp, main()))
        except BaseException as exc:
            results.append(exc)
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join(15)
    assert results == [(b"t\n", 2)]


def test_sigchld_ignored_reports_255(loop, run, caplog):
    """With SIGCHLD ignored the kernel reaps children itself: like asyncio's watcher, the loop
    reports returncode 255 and logs a warning naming the pid."""

    async def main():
        proc = await asyncio.create_subprocess_exec("true")
        assert await proc.wait() == 255
        return proc.pid

    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with caplog.at_level("WARNING", logger="asyncio"):
            pid = run(main())
    finally:
        signal.signal(signal.SIGCHLD, old)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(str(pid) in m and "255" in m for m in messages), messages


@pytest.mark.parametrize("how", ["kill", "terminate", "send_signal", "transport_close"])
def test_signal_child_that_exited_unnoticed(loop, run, how, caplog):
    """The child exits while the loop is blocked (not polling); then it is signalled (Popen
    polls first, sees the exit and sends nothing) or its transport closed: wait() still returns
    the real exit status."""

    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "sleep 0.05; exit 3")
        time.sleep(0.3)  # blocks the loop: the child exits, nobody has noticed yet
        assert proc.returncode is None
        if how == "send_signal":
            proc.send_signal(signal.SIGTERM)
        elif how == "transport_close":
            proc._transport.close()
        else:
            getattr(proc, how)()
        return await proc.wait()

    # The blocking sleep is on purpose: no slow-callback warning in debug mode.
    loop.slow_callback_duration = 10.0
    with caplog.at_level("WARNING", logger="asyncio"):
        assert run(main()) == 3
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_stopped_child_is_not_exited(loop, run):
    """SIGSTOP/SIGCONT are not exits: returncode stays None until the child really ends."""

    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "10")
        proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.2)
        assert proc.returncode is None
        proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.1)
        assert proc.returncode is None
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM

    run(main())


def test_exit_codes(loop, run):
    async def one(code):
        proc = await asyncio.create_subprocess_exec(SH, "-c", f"exit {code}")
        return await proc.wait()

    async def main():
        codes = [0, 1, 2, 127, 128, 200, 255]
        assert await asyncio.gather(*(one(c) for c in codes)) == codes

    run(main())


def test_transport_api(loop, run):
    async def main():
        transport, proto = await loop.subprocess_exec(SubRec, "sleep", "10")
        assert proto.transport is transport
        assert proto.events == [("made",)]
        pid = transport.get_pid()
        assert isinstance(pid, int) and pid > 0
        assert transport.get_extra_info("subprocess").pid == pid
        assert transport.get_returncode() is None
        stdin = transport.get_pipe_transport(0)
        stdout = transport.get_pipe_transport(1)
        stderr = transport.get_pipe_transport(2)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(stdout, asyncio.ReadTransport)
        assert isinstance(stderr, asyncio.ReadTransport)
        assert transport.get_pipe_transport(3) is None
        assert not transport.is_closing()

        transport.close()  # closes the pipes and kills the running child
        assert transport.is_closing()
        assert stdin.is_closing() and stdout.is_closing() and stderr.is_closing()
        assert await transport._wait() == -signal.SIGKILL
        assert transport.get_returncode() == -signal.SIGKILL
        assert proto.exited_rc == [-signal.SIGKILL]
        assert proto.events[0] == ("made",)
        assert proto.events[-1] == ("lost", None)
        assert ("exited",) in proto.events
        pipe_lost = sorted(e[1] for e in proto.events if e[0] == "pipe_lost")
        assert pipe_lost == [0, 1, 2]
        assert all(e[2] is None for e in proto.events if e[0] == "pipe_lost")
        transport.close()  # idempotent

    run(main())


def test_transport_devnull_pipes_are_none(loop, run):
    async def main():
        transport, proto = await loop.subprocess_exec(
            SubRec, "true", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        assert [transport.get_pipe_transport(i) for i in range(3)] == [None, None, None]
        assert await transport._wait() == 0
        assert proto.events == [("made",), ("exited",), ("lost", None)]
        transport.close()

    run(main())


def test_pipes_closed_before_exit_order(loop, run):
    """The child closes its three pipes, then exits 0.2 s later: every pipe_connection_lost
    comes first, then process_exited, then connection_lost."""

    async def main():
        transport, proto = await loop.subprocess_exec(
            SubRec, SH, "-c", "exec 0<&- 1>&- 2>&-; sleep 0.2; exit 4"
        )
        assert await transport._wait() == 4
        kinds = [e[0] for e in proto.events]
        assert kinds == ["made", "pipe_lost", "pipe_lost", "pipe_lost", "exited", "lost"]
        assert sorted(e[1] for e in proto.events[1:4]) == [0, 1, 2]
        assert proto.events[-1] == ("lost", None)
        assert proto.exited_rc == [4]
        transport.close()

    run(main())


def test_exit_while_pipes_open_order(loop, run):
    """The child exits while a grandchild still holds stdout/stderr: asyncio 3.11 calls
    process_exited at once (and wait() returns), the pipes' pipe_connection_lost when the
    grandchild is gone, and connection_lost only after all of them."""

    async def main():
        t0 = time.monotonic()
        transport, proto = await loop.subprocess_exec(
            SubRec, SH, "-c", "sleep 0.4 & exit 5", stdin=DEVNULL
        )
        await until(lambda: proto.exited_rc, "process_exited")
        assert time.monotonic() - t0 < 0.35
        assert proto.exited_rc == [5]
        assert transport.get_returncode() == 5
        assert proto.events == [("made",), ("exited",)]
        assert proto.lost is None
        # wait() returns as soon as the return code is known (3.11's `_wait`) ...
        assert await transport._wait() == 5
        assert time.monotonic() - t0 < 0.35
        # ... connection_lost waits for the pipes.
        await until(lambda: proto.lost, "connection_lost")
        assert time.monotonic() - t0 >= 0.35
        assert proto.events[:2] == [("made",), ("exited",)]
        assert sorted(e[1] for e in proto.events[2:4]) == [1, 2]
        assert proto.events[4:] == [("lost", None)]
        transport.close()

    run(main())


@pytest.fixture
def child_watcher_reset():
    policy = asyncio.get_event_loop_policy()
    saved = policy._watcher
    policy._watcher = None
    yield policy
    watcher, policy._watcher = policy._watcher, saved
    if watcher is not None:
        watcher.close()


@pytest.mark.parametrize(
    "watcher_cls",
    ["PidfdChildWatcher", "SafeChildWatcher", "MultiLoopChildWatcher", "ThreadedChildWatcher"],
)
def test_user_installed_child_watcher(loop, run, loop_kind, child_watcher_reset, watcher_cls):
    """A child watcher the user installed does the reaping (ferroloop then uses no pidfd of its
    own, except that asyncio's default ThreadedChildWatcher is replaced by a pidfd)."""
    watcher = getattr(asyncio, watcher_cls)()
    asyncio.set_child_watcher(watcher)
    watcher.attach_loop(loop)

    async def one(i):
        proc = await asyncio.create_subprocess_exec(SH, "-c", f"echo {i}; exit {i}", stdout=PIPE)
        out, _ = await proc.communicate()
        return out, proc.returncode

    async def main():
        if watcher_cls == "MultiLoopChildWatcher":
            # asyncio's MultiLoopChildWatcher reaps from a Python SIGCHLD handler that a second
            # SIGCHLD can re-enter mid-waitpid: the outer call then finds the child gone and
            # reports 255 (`Unknown child process pid`, then a KeyError) on any loop, asyncio's
            # own included (bpo-38323; byllyfish/shellous#129). One child at a time never
            # overlaps two exits.
            return [await one(i) for i in range(5)]
        procs = [asyncio.create_task(one(i)) for i in range(5)]
        await asyncio.sleep(0)
        if loop_kind == "ferroloop":
            await asyncio.sleep(0.001)
            pidfds = len(loop._pidfd_children)
            assert pidfds == 0 if watcher_cls != "ThreadedChildWatcher" else pidfds <= 5
        return await asyncio.gather(*procs)

    try:
        assert run(main()) == [(f"{i}\n".encode(), i) for i in range(5)]
    finally:
        watcher.attach_loop(None)
    assert wait_no_zombies() == []


# --------------------------------------------------------------------------- 5. many children


def test_200_concurrent_children_no_zombies(loop, run):
    async def main():
        procs = await asyncio.gather(*(asyncio.create_subprocess_exec("true") for _ in range(200)))
        assert len({p.pid for p in procs}) == 200
        codes = await asyncio.gather(*(p.wait() for p in procs))
        assert codes == [0] * 200
        assert all(p.returncode == 0 for p in procs)

    run(main(), timeout=30)
    assert wait_no_zombies() == []


def test_many_children_with_pipes(loop, run):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", f"echo {i}; exit {i % 7}", stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        return out, err, proc.returncode

    async def main():
        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert results == [(f"{i}\n".encode(), b"", i % 7) for i in range(50)]

    run(main(), timeout=30)
    assert wait_no_zombies() == []


# --------------------------------------------------------------------------- 6. loop closed early


def test_child_running_when_loop_closes_is_reaped(loop_factory, monkeypatch):
    thread_errors = []
    unraisable = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    loop = loop_factory()
    recorder = HandlerRecorder()
    loop.set_exception_handler(recorder)
    try:
        proc = run_coro(loop, asyncio.create_subprocess_exec("sleep", "0.3"))
        pid = proc.pid
        assert proc.returncode is None
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    time.sleep(1.0)
    assert wait_no_zombies() == []
    assert not os.path.exists(f"/proc/{pid}") or pid not in zombie_children()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the unclosed transport
        del proc
        gc.collect()
    assert recorder.calls == []
    assert thread_errors == []
    assert unraisable == []


def test_exited_child_when_loop_closes_is_reaped(loop_factory):
    """The child has exited, but the loop is closed before it noticed."""
    loop = loop_factory()
    try:
        proc = run_coro(loop, asyncio.create_subprocess_exec("true"))
        time.sleep(0.2)  # exited, but not reaped by the (not running) loop
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert wait_no_zombies() == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del proc
        gc.collect()


# --------------------------------------------------------------------------- 7. ferroloop: pidfds


def test_pidfd_children_no_thread_per_child(ferroloop_mod):
    loop = ferroloop_mod.new_event_loop()
    recorder = HandlerRecorder()
    loop.set_exception_handler(recorder)
    try:
        before = threading.active_count()

        async def main():
            procs = [await asyncio.create_subprocess_exec("sleep", "0.5") for _ in range(30)]
            during = threading.active_count()
            watched = len(loop._pidfd_children)
            pids = {pid for pid, _ in loop._pidfd_children.values()}
            assert pids == {p.pid for p in procs}
            codes = await asyncio.gather(*(p.wait() for p in procs))
            return during, watched, codes

        during, watched, codes = run_coro(loop, main())
        assert during <= before
        assert watched == 30
        assert codes == [0] * 30
        assert len(loop._pidfd_children) == 0
        assert threading.active_count() <= before
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert recorder.calls == []
    assert wait_no_zombies() == []


# --------------------------------------------------------------------------- 8. pipe transports


def test_read_pipe_data_and_eof(loop, run):
    payload = _payload(1 * MiB, seed=8)

    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        transport, p = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        assert p is proto and proto.transport is transport
        assert transport.get_extra_info("pipe").fileno() == r

        def writer():
            with open(w, "wb", buffering=0) as f:
                f.write(payload)

        t = threading.Thread(target=writer)
        t.start()
        await until(lambda: proto.lost_calls, "connection_lost")
        t.join()
        assert proto.events == ["made", "data", "eof", "lost"]
        assert proto.lost_calls == [None]
        assert _digest(proto.data) == _digest(payload)
        assert transport.is_closing()

    run(main())


def test_read_pipe_pause_resume(loop, run):
    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        try:
            transport.pause_reading()
            assert not transport.is_reading()
            os.write(w, b"held")
            await asyncio.sleep(0.05)
            assert proto.data == b""
            transport.resume_reading()
            assert transport.is_reading()
            await until(lambda: proto.data == b"held", "data after resume")
        finally:
            os.close(w)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "data", "eof", "lost"]

    run(main())


def test_read_pipe_paused_at_eof(loop, run):
    """EOF arrives while reading is paused: reported only after resume_reading()."""

    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(r, "rb", buffering=0))
        transport.pause_reading()
        os.write(w, b"last words")
        os.close(w)
        await asyncio.sleep(0.05)
        assert proto.events == ["made"]
        transport.resume_reading()
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "data", "eof", "lost"]
        assert proto.data == b"last words"

    run(main())


def test_pipe_transport_reprs(loop, run):
    """The reprs report polling state as asyncio's do (after the class name)."""

    def tail(transport):
        return repr(transport).split(" ", 1)[1]

    async def main():
        r, w = os.pipe()
        rt, rp = await loop.connect_read_pipe(PipeRec, open(r, "rb", buffering=0))
        wt, wp = await loop.connect_write_pipe(PipeRec, open(w, "wb", buffering=0))
        assert tail(rt) == f"fd={r} polling>"
        rt.pause_reading()
        assert tail(rt) == f"fd={r} idle>"
        rt.resume_reading()
        assert tail(wt) == f"fd={w} idle bufsize=0>"
        data = b"z" * (300 * KiB)  # more than the pipe holds and the reader is not reading
        rt.pause_reading()
        wt.write(data)
        size = wt.get_write_buffer_size()
        assert size > 0
        assert tail(wt) == f"fd={w} polling bufsize={size}>"
        wt.close()
        assert tail(wt) == f"closing fd={w} polling bufsize={size}>"
        rt.resume_reading()
        await until(lambda: rp.lost_calls, "read side lost")
        assert len(rp.data) == len(data)
        assert wp.lost_calls == [None]
        assert tail(rt) == f"closed fd={r} closed>"
        assert tail(wt) == f"closed fd={w} closed>"

    run(main())


def test_subprocess_stdout_flow_control(loop, run):
    """A slow consumer with a small StreamReader limit: the read pipe is paused and resumed
    many times and nothing is lost."""
    script = (
        "import sys, random; sys.stdout.buffer.write(random.Random(5).randbytes(4 * 1024 * 1024))"
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", script, stdout=PIPE, limit=4096)
        transport = proc._transport.get_pipe_transport(1)
        paused = 0
        got = bytearray()
        while chunk := await proc.stdout.read(4096):
            got += chunk
            if not transport.is_reading():
                paused += 1
            if len(got) % (256 * KiB) < 4096:
                await asyncio.sleep(0.001)
        assert await proc.wait() == 0
        assert paused > 0
        assert _digest(got) == _digest(random.Random(5).randbytes(4 * MiB))

    run(main(), timeout=20)


def test_write_pipe_flow_control_4mib(loop, run):
    payload = _payload(4 * MiB, seed=9)

    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        proto.resumed = asyncio.Event()
        proto.resumed.set()
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        received = bytearray()

        def slow_reader():
            with open(r, "rb", buffering=0) as f:
                while chunk := f.read(64 * KiB):
                    received.extend(chunk)
                    time.sleep(0.001)

        t = threading.Thread(target=slow_reader)
        t.start()
        view = memoryview(payload)
        for i in range(0, len(payload), 256 * KiB):
            await proto.resumed.wait()
            transport.write(view[i : i + 256 * KiB])
        transport.close()
        await until(lambda: proto.lost_calls, "connection_lost", timeout=15)
        await loop.run_in_executor(None, t.join)
        assert proto.pauses >= 1 and proto.resumes >= 1
        assert proto.pauses - proto.resumes in (0, 1)
        assert proto.lost_calls == [None]
        assert proto.events == ["made", "lost"]
        assert len(received) == len(payload)
        assert _digest(received) == _digest(payload)

    run(main(), timeout=20)


def test_write_pipe_reader_closed_then_write(loop, run):
    """The reader is gone and the loop has not polled yet: the write fails with EPIPE."""

    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        os.close(r)
        transport.write(b"nobody reads this")
        await until(lambda: proto.lost_calls, "connection_lost")
        (exc,) = proto.lost_calls
        assert isinstance(exc, BrokenPipeError)
        assert transport.is_closing()
        transport.write(b"more")  # ignored after the loss
        await iterations(5)
        assert len(proto.lost_calls) == 1

    run(main())


def test_write_pipe_reader_closed_idle(loop, run):
    """Nothing buffered when the reader goes: the transport notices (read-side event) and
    reports connection_lost(None)."""

    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        os.close(r)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        assert transport.is_closing()

    run(main())


def test_write_pipe_reader_closed_with_buffer(loop, run):
    async def main():
        r, w = os.pipe()
        proto = PipeRec()
        transport, _ = await loop.connect_write_pipe(lambda: proto, open(w, "wb", buffering=0))
        transport.write(b"x" * (1 * MiB))  # fills the pipe; the rest stays buffered
        assert transport.get_write_buffer_size() > 0
        await iterations(3)
        os.close(r)
        await until(lambda: proto.lost_calls, "connection_lost")
        (exc,) = proto.lost_calls
        assert isinstance(exc, BrokenPipeError)
        assert transport.get_write_buffer_size() == 0

    run(main())


def test_read_pipe_on_socket_and_bad_files(loop, run, tmp_path):
    async def main():
        a, b = socket.socketpair()
        proto = PipeRec()
        with b:
            transport, _ = await loop.connect_read_pipe(lambda: proto, a)
            b.sendall(b"over a socket")
            b.shutdown(socket.SHUT_WR)
            await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.data == b"over a socket"
        assert proto.events == ["made", "data", "eof", "lost"]

        regular = tmp_path / "regular"
        regular.write_bytes(b"data")
        with open(regular, "rb") as f:
            with pytest.raises(ValueError, match="Pipe transport is for pipes/sockets only."):
                await loop.connect_read_pipe(asyncio.Protocol, f)
        with open(regular, "wb") as f:
            with pytest.raises(
                ValueError, match="Pipe transport is only for pipes, sockets and character devices"
            ):
                await loop.connect_write_pipe(asyncio.Protocol, f)

    run(main())


def test_read_pipe_pty_eio(loop, run):
    """A pty master reads EIO once the slave side is closed: connection_lost(OSError(EIO))."""
    import errno

    async def main():
        master, slave = os.openpty()
        proto = PipeRec()
        transport, _ = await loop.connect_read_pipe(lambda: proto, open(master, "rb", buffering=0))
        os.write(slave, b"tty data\n")
        await until(lambda: b"tty data" in proto.data, "pty data")
        os.close(slave)
        await until(lambda: proto.lost_calls, "connection_lost")
        (exc,) = proto.lost_calls
        assert type(exc) is OSError and exc.errno == errno.EIO
        assert proto.events == ["made", "data", "lost"]
        assert transport.is_closing()

    run(main())


def test_read_pipe_data_is_independent_bytes(loop, run):
    """Each data_received() gets its own immutable bytes (later reads do not change it)."""

    async def main():
        r, w = os.pipe()
        chunks = []

        class Keep(asyncio.Protocol):
            def data_received(self, data):
                chunks.append(data)

            def connection_lost(self, exc):
                chunks.append(None)

        await loop.connect_read_pipe(Keep, open(r, "rb", buffering=0))
        try:
            for i in range(20):
                os.write(w, bytes([65 + i]) * 1000)
                await until(lambda i=i: len(chunks) > i, f"chunk {i}")
        finally:
            os.close(w)
        await until(lambda: chunks[-1] is None, "connection_lost")
        assert all(type(c) is bytes for c in chunks[:-1])
        assert chunks[:-1] == [bytes([65 + i]) * 1000 for i in range(20)]

    run(main())


# --------------------------------------------------------------------------- 9. signal handlers


def test_signal_handler_runs_on_loop(loop, run):
    calls = []

    def cb(*args):
        calls.append((args, threading.get_ident(), asyncio.get_running_loop()))

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, cb, "a", 1)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await until(lambda: calls, "signal callback")
            assert calls == [(("a", 1), threading.get_ident(), loop)]
            # Raised while the loop blocks in its poller with nothing else to do.
            fut = loop.create_future()
            loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "woken")
            timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            assert await asyncio.wait_for(fut, 5) == "woken"
            timer.join()
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL

    run(main())


def test_remove_sigint_handler_restores_default_int_handler(loop, run):
    async def main():
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL)
        assert loop.remove_signal_handler(signal.SIGINT) is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    run(main())


def test_signal_handler_bad_signals(loop):
    cb = lambda: None  # noqa: E731
    with pytest.raises(RuntimeError) as info:
        loop.add_signal_handler(signal.SIGKILL, cb)
    assert str(info.value) == "sig 9 cannot be caught"
    with pytest.raises(RuntimeError) as info:
        loop.add_signal_handler(signal.SIGSTOP, cb)
    assert str(info.value) == f"sig {int(signal.SIGSTOP)} cannot be caught"
    for bad in (0, signal.NSIG, 10_000, -1):
        with pytest.raises(ValueError) as info:
            loop.add_signal_handler(bad, cb)
        assert str(info.value) == f"invalid signal number {bad}"
        with pytest.raises(ValueError):
            loop.remove_signal_handler(bad)
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("SIGUSR1", cb)

    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    assert loop.remove_signal_handler(signal.SIGKILL) is False
    assert loop.remove_signal_handler(signal.SIGUSR2) is False
    assert signal.getsignal(signal.SIGKILL) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_from_other_thread(loop):
    result = []

    def target():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            result.append(exc)
        else:
            result.append(None)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    (exc,) = result
    assert type(exc) is RuntimeError
    assert str(exc) == "set_wakeup_fd only works in main thread of the main interpreter"
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_handlers_on_successive_loops(loop_factory):
    for round_ in range(3):
        lp = loop_factory()
        try:
            calls = []
            lp.add_signal_handler(signal.SIGUSR1, calls.append, round_)
            os.kill(os.getpid(), signal.SIGUSR1)
            run_coro(lp, until(lambda calls=calls: calls, "signal callback"))
            assert calls == [round_]
        finally:
            lp.close()
            asyncio.set_event_loop(None)
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_burst(loop, run):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 1)
    try:

        async def main():
            for _ in range(200):
                os.kill(os.getpid(), signal.SIGUSR1)
            await until(lambda: calls, "signal callbacks")
            await asyncio.sleep(0.05)

        run(main())
        assert 1 <= len(calls) <= 200
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_close_restores_signal_handlers(loop_factory):
    loop = loop_factory()
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    # The wakeup fd was reset too.
    assert signal.set_wakeup_fd(-1) == -1
    with pytest.raises(RuntimeError, match="closed"):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_while_loop_not_running(loop, run):
    calls = []
    loop.add_signal_handler(signal.SIGUSR2, calls.append, "late")
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.01)
        assert calls == []  # only the loop runs the callback
        run(until(lambda: calls, "signal callback"))
        assert calls == ["late"]
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR2) is True


def test_signal_handler_replaced_and_removed_before_delivery(loop, run):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, calls.append, "second")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        run(until(lambda: calls, "signal callback"))
        run(iterations(5))
        assert calls == ["second"]
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    # A signal number read from the wakeup fd after removal is ignored.
    loop.add_signal_handler(signal.SIGUSR2, calls.append, "other")
    try:
        signal.signal(signal.SIGUSR1, lambda *a: None)
        os.kill(os.getpid(), signal.SIGUSR1)  # still written to the wakeup fd
        os.kill(os.getpid(), signal.SIGUSR2)
        run(until(lambda: len(calls) == 2, "second callback"))
        run(iterations(5))
        assert calls == ["second", "other"]
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        assert loop.remove_signal_handler(signal.SIGUSR2) is True


def test_signal_handler_raising(loop, run, exc_handler):
    err = LookupError("from the signal handler")

    def cb():
        raise err

    loop.add_signal_handler(signal.SIGUSR1, cb)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        run(until(lambda: exc_handler.pending, "exception handler call"))
        (ctx,) = exc_handler.consume(1)
        assert ctx["exception"] is err
        assert ctx["message"].startswith("Exception in callback ")
        assert "cb" in ctx["message"]
        assert isinstance(ctx["handle"], asyncio.Handle)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_handler_keyboard_interrupt_propagates(loop, run):
    def cb():
        raise KeyboardInterrupt

    loop.add_signal_handler(signal.SIGUSR1, cb)
    try:

        async def main():
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(5)

        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main())
        assert not loop.is_running()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    # The loop is still usable.
    assert run(asyncio.sleep(0.01, "again")) == "again"


# --------------------------------------------------------------------------- 10. Ctrl-C


SIGINT_SCRIPT = """
import asyncio, sys

kind, swallow = sys.argv[1], sys.argv[2] == "swallow"

async def main():
    try:
        print("ready", flush=True)
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("cancelled", flush=True)
        if not swallow:
            raise
    finally:
        print("finally", flush=True)
    return "returned"

try:
    if kind == "ferroloop":
        import ferroloop
        print(ferroloop.run(main()), flush=True)
    else:
        print(asyncio.run(main()), flush=True)
except KeyboardInterrupt:
    print("keyboardinterrupt", flush=True)
    raise
"""


@pytest.mark.parametrize("swallow", ["reraise", "swallow"])
def test_sigint_cancels_main_task(loop_kind, tmp_path, swallow):
    script = tmp_path / "sigint.py"
    script.write_text(SIGINT_SCRIPT)
    proc = subprocess.Popen(
        [PY, str(script), loop_kind, swallow],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.1)  # the main task is now parked in asyncio.sleep
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if swallow == "swallow":
        # The main task swallowed its cancellation and returned: the runner returns its result.
        assert out.decode().split() == ["cancelled", "finally", "returned"]
        assert (proc.returncode, err) == (0, b"")
    else:
        assert out.decode().split() == ["cancelled", "finally", "keyboardinterrupt"]
        assert proc.returncode == -signal.SIGINT
        assert err.decode().rstrip().splitlines()[-1] == "KeyboardInterrupt"


PLAIN_SIGINT_SCRIPT = """
import asyncio, sys

kind = sys.argv[1]
if kind == "ferroloop":
    import ferroloop
    loop = ferroloop.new_event_loop()
else:
    loop = asyncio.SelectorEventLoop()

async def main():
    print("ready", flush=True)
    await loop.create_future()  # nothing scheduled: the poller blocks without a timeout

try:
    loop.run_until_complete(main())
except KeyboardInterrupt:
    print("keyboardinterrupt", flush=True)
print(loop.is_running(), flush=True)
print(loop.run_until_complete(asyncio.sleep(0.01, "usable")), flush=True)
"""


def test_sigint_interrupts_blocked_run_until_complete(loop_kind, tmp_path):
    """No SIGINT handler of the loop's: Python's default handler raises KeyboardInterrupt out of
    the poller (PEP 475), promptly, even with no timer pending."""
    script = tmp_path / "plain_sigint.py"
    script.write_text(PLAIN_SIGINT_SCRIPT)
    proc = subprocess.Popen(
        [PY, str(script), loop_kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.decode().split() == ["keyboardinterrupt", "False", "usable"], err
    assert proc.returncode == 0


# --------------------------------------------------------------------------- 11. fork


def _child_work(kind: str) -> int:
    """Runs in a forked child: a new loop, a sleep and a socketpair reader."""
    if kind == "ferroloop":
        import ferroloop

        child_loop = ferroloop.new_event_loop()
    else:
        child_loop = asyncio.SelectorEventLoop()
    try:

        async def main():
            await asyncio.sleep(0.01)
            a, b = socket.socketpair()
            a.setblocking(False)
            got = child_loop.create_future()
            child_loop.add_reader(a.fileno(), lambda: got.set_result(a.recv(100)))
            child_loop.call_later(0.01, b.send, b"ping")
            data = await asyncio.wait_for(got, 5)
            child_loop.remove_reader(a.fileno())
            a.close()
            b.close()
            proc = await asyncio.create_subprocess_exec("true")
            return data, await asyncio.wait_for(proc.wait(), 5)

        result = child_loop.run_until_complete(main())
    finally:
        child_loop.close()
    return 0 if result == (b"ping", 0) else 3


def test_fork_child_makes_new_loop(loop, run, loop_kind):
    async def warm_up():
        a, b = _socketpair()
        try:
            await loop.sock_sendall(b, b"x")
            assert await loop.sock_recv(a, 1) == b"x"
        finally:
            a.close()
            b.close()
        await asyncio.sleep(0.01)

    run(warm_up())
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 2
        try:
            code = _child_work(loop_kind)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 15
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's loop still works.
    run(warm_up())

    async def still_spawns():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "echo ok", stdout=PIPE)
        return await proc.communicate()

    assert run(still_spawns()) == (b"ok\n", None)


def _socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_fork_from_running_loop(loop, run, loop_kind):
    """os.fork() from inside a coroutine: the child (where the parent's loop is no longer the
    running loop, 3.11 checks the pid) makes and runs a new loop; the parent goes on."""

    async def main():
        await asyncio.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            code = 2
            try:
                code = _child_work(loop_kind)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        for _ in range(1500):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("forked child hung")

    assert run(main(), timeout=20) == 0
    assert run(asyncio.sleep(0.01, "parent ok")) == "parent ok"
