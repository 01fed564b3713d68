"""`python -m ferroloop script.py [args]`: run an asyncio script with ferroloop as its loop.

Also `python -m ferroloop -m module [args]`. The script runs as `__main__`, with `sys.argv` as if
it had been started directly; `asyncio.run()`, `asyncio.new_event_loop()` and
`asyncio.get_event_loop()` give ferroloop loops.
"""

from __future__ import annotations

import runpy
import sys

import ferroloop

USAGE = "usage: python -m ferroloop script.py [args] | python -m ferroloop -m module [args]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    ferroloop.install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, __import__("os").path.dirname(argv[0]) or ".")
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
