"""The ``swimkit`` command's entry point, outside the package so that a Ctrl-C while torch
and swimkit load ends with one line instead of a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from swimkit.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("swimkit: interrupted while starting; nothing was written\n")
        return 130
    return run()
