"""Child reaping for `loop.subprocess_exec`/`subprocess_shell`: one pidfd per child, watched by
the loop's own poller — no SIGCHLD handler (so no race with other code reaping children) and no
thread per child (asyncio 3.11's default `ThreadedChildWatcher` starts one per process).

`start(loop, transport)` watches the child of a new `_UnixSubprocessTransport`: when its pidfd
becomes readable the child has exited; it is reaped with `waitpid` and, one iteration later
(as asyncio's watcher callback does, so that the pipes' last callbacks run first),
`transport._process_exited(returncode)` is called. Where `os.pidfd_open` is missing (not Linux,
or a kernel before 5.3), or when the user installed a child watcher of their own, asyncio's
watcher does the job, as in asyncio.

`close(loop)` (from `loop.close()`): children still running are handed to a waiting thread each,
so none is left a zombie; children that already exited are reaped at once.
"""

from __future__ import annotations

import os
import threading
from asyncio import events, unix_events
from asyncio.log import logger

__all__ = ["close", "start", "uses_pidfd"]


def uses_pidfd() -> bool:
    """Whether children are watched with pidfds here (the kernel has them and the user did not
    install a child watcher of their own)."""
    if not hasattr(os, "pidfd_open"):
        return False
    watcher = getattr(events.get_event_loop_policy(), "_watcher", None)
    return watcher is None or type(watcher) is unix_events.ThreadedChildWatcher


def start(loop, transport) -> bool:
    """Watch `transport`'s child with a pidfd; False if that is not possible here."""
    pid = transport.get_pid()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    loop._pidfd_children[pidfd] = (pid, transport)
    loop._add_reader(pidfd, _exited, loop, pidfd)
    return True


def _reap(pid: int, transport=None) -> int:
    """`waitpid` the exited child; its return code as asyncio reports it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # `Popen.poll()` (which `send_signal()`, `kill()` and `close()` call first) may have
        # reaped it already, and kept its status.
        popen = getattr(transport, "_proc", None)
        if popen is not None and popen.returncode is not None:
            return popen.returncode
        # Someone else reaped it (e.g. another waitpid(-1) in the process).
        logger.warning(
            "child process pid %d exit status already read:  will report returncode 255", pid
        )
        return 255
    return os.waitstatus_to_exitcode(status)


def _exited(loop, pidfd: int) -> None:
    pid, transport = loop._pidfd_children.pop(pidfd)
    loop._remove_reader(pidfd)
    os.close(pidfd)
    returncode = _reap(pid, transport)
    if loop.get_debug():
        logger.debug("process %s exited with returncode %s", pid, returncode)
    # Skip one iteration so that the pipes' callbacks run first, as asyncio's watcher does.
    loop.call_soon(transport._process_exited, returncode)


def close(loop) -> None:
    """Stop watching: reap the children that exited, hand the others to a waiting thread."""
    children, loop._pidfd_children = loop._pidfd_children, {}
    for pidfd, (pid, _transport) in children.items():
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        os.close(pidfd)
        if done == 0:
            threading.Thread(
                target=_reap, args=(pid,), name=f"ferroloop-reap-{pid}", daemon=True
            ).start()
