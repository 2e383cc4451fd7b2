"""The command-line error boundary: library errors become one line `error: <where>: <what>`, exit 1.

No traceback unless CU_DEBUG=1. Every cu-* command runs its body through `run`.
"""
import os
import sys

from ..errors import CaffeUnstableError


def format_error(exc):
    return f"error: {exc.line()}"


def run(body, *args, **kwargs):
    """Call body(*args, **kwargs); turn CaffeUnstableError (and unreadable files) into one line + exit 1."""
    try:
        return body(*args, **kwargs)
    except CaffeUnstableError as exc:
        if os.environ.get("CU_DEBUG") == "1":
            raise
        print(format_error(exc), file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        if os.environ.get("CU_DEBUG") == "1":
            raise
        where = exc.filename or "<io>"
        print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
