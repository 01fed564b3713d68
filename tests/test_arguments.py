"""Argument errors of the scheduling methods match asyncio's, message included.

ferroloop parses these arguments itself (src/fastcall.rs), so the rules Python applies to
`def call_soon(self, callback, *args, context=None)` are checked here against asyncio.
"""

from __future__ import annotations

import contextvars

import pytest

BAD_CALLS = {
    "call_soon_no_callback": lambda loop: loop.call_soon(),
    "call_soon_threadsafe_no_callback": lambda loop: loop.call_soon_threadsafe(),
    "call_later_no_callback": lambda loop: loop.call_later(1),
    "call_at_nothing": lambda loop: loop.call_at(),
    "call_soon_unknown_keyword": lambda loop: loop.call_soon(print, 1, foo=2),
    "call_later_delay_twice": lambda loop: loop.call_later(1, print, delay=3),
    "call_at_callback_twice": lambda loop: loop.call_at(1, print, callback=print),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_arguments_raise_asyncios_type_error(loop, name):
    import asyncio

    reference = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(TypeError) as expected:
            BAD_CALLS[name](reference)
    finally:
        reference.close()
    with pytest.raises(TypeError) as got:
        BAD_CALLS[name](loop)
    assert str(got.value) == str(expected.value)


def test_fixed_parameters_by_keyword(loop):
    seen = []
    var = contextvars.ContextVar("var", default="outer")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    loop.call_later(delay=0, callback=lambda *a: seen.append(("later", a, var.get())))
    loop.call_at(loop.time(), lambda: seen.append(("at", var.get())), context=ctx)
    loop.call_soon(seen.append, "soon", context=None)
    loop.call_soon_threadsafe(callback=lambda: seen.append(("ts", var.get())), context=ctx)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert ("later", (), "outer") in seen
    assert ("at", "inner") in seen
    assert "soon" in seen
    assert ("ts", "inner") in seen
