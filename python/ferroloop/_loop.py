"""`ferroloop.Loop`: the asyncio event loop class.

The hot half of the loop is native (`_ferroloop.LoopCore`, first in the MRO): the ready queue,
timers, the poller, `call_soon`/`call_later`/`call_at`/`call_soon_threadsafe`, `add_reader` and
friends, `time()`, and the `_run_once` iteration. What is not hot is inherited unchanged from
`asyncio.BaseEventLoop`, so it behaves exactly as asyncio's: `run_until_complete`,
`create_task`, `create_future`, the exception-handler API, the executor, async-generator hooks
and shutdown, `getaddrinfo`. This class only supplies what ties the two together.
"""

from __future__ import annotations

import sys
import threading
import weakref
from asyncio import base_events, coroutines, events
from asyncio.log import logger

from . import _ferroloop

__all__ = ["Loop"]


class Loop(_ferroloop.LoopCore, base_events.BaseEventLoop):
    """A drop-in replacement for asyncio's default event loop."""

    def __init__(self) -> None:
        # The attributes `BaseEventLoop.__init__` sets, except those `LoopCore` keeps natively
        # (`_ready`, `_scheduled`, `_closed`, `_stopping`, `_thread_id`, `_debug`,
        # `slow_callback_duration`, `_current_handle`, `_clock_resolution`).
        self._timer_cancelled_count = 0
        self._default_executor = None
        self._internal_fds = 0
        self._exception_handler = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self.set_debug(coroutines._is_debug_mode())

    def run_forever(self) -> None:
        """Run until stop() is called (`BaseEventLoop.run_forever`, native inner loop)."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_until_stopped()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def close(self) -> None:
        """Close the loop: drop queued callbacks, close the poller, shut the executor down.

        Like asyncio, this does not wait for the executor's threads.
        """
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._close_core()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
