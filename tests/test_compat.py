"""ferroloop.Loop sets up every attribute asyncio's own loop does.

`Loop.__init__` does not call `BaseSelectorEventLoop.__init__` (that would create a selector and
an eager self-pipe): it sets the attributes itself, minus those kept natively. If a Python
version adds an attribute to asyncio's loop, this test names it.
"""

from __future__ import annotations

import asyncio

import ferroloop

# Kept natively by LoopCore (properties or native state), or replaced on purpose.
NATIVE = {
    "_ready",  # native ready queue
    "_scheduled",  # native timer heap
    "_closed",
    "_stopping",
    "_thread_id",
    "_debug",
    "slow_callback_duration",
    "_current_handle",
    "_clock_resolution",
    "_task_factory",
}


def test_loop_sets_every_attribute_of_asyncios_loop():
    reference = asyncio.SelectorEventLoop()
    loop = ferroloop.new_event_loop()
    try:
        missing = {name for name in vars(reference) if not hasattr(loop, name)} - NATIVE
        assert missing == set()
        not_native = {name for name in NATIVE if name in vars(loop)}
        assert not_native == set(), "these must stay native, not instance attributes"
        for name in NATIVE - {"_ready", "_scheduled"}:
            assert hasattr(loop, name), name
    finally:
        reference.close()
        loop.close()


def test_native_attributes_track_state():
    loop = ferroloop.new_event_loop()
    try:
        assert (loop._closed, loop._stopping, loop._thread_id) == (False, False, None)
        loop.slow_callback_duration = 0.25
        assert loop.slow_callback_duration == 0.25
        loop.set_debug(True)
        assert loop._debug is True and loop.get_debug() is True
    finally:
        loop.close()
    assert loop._closed is True
