"""ferroloop: a drop-in asyncio event loop with a Rust engine.

import ferroloop
ferroloop.run(main())                    # like asyncio.run
asyncio.Runner(loop_factory=ferroloop.new_event_loop)
ferroloop.install()                      # make asyncio.new_event_loop() return ferroloop loops
"""

from __future__ import annotations

import asyncio
from asyncio import events
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loop import Loop

__all__ = ["Loop", "EventLoopPolicy", "new_event_loop", "install", "run"]
__version__ = "0.1.0"

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop (use as a `loop_factory`)."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, creating ferroloop loops."""

    _loop_factory = Loop

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def install() -> None:
    """Make ferroloop the loop of `asyncio.new_event_loop()` and `asyncio.run()`."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop, exactly as `asyncio.run` does.

    The main task is cancelled on Ctrl-C; remaining tasks, async generators and the default
    executor are shut down; the loop is closed.
    """
    if events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
