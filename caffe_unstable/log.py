"""glog-format console lines, as Caffe prints them, that Caffe's tools/extra/parse_log.py parses (caffe.md §5).

`I1125 03:11:39.123456 12345 solver.cpp:239] message` — severity letter, month+day (no year), time with
microseconds, thread id right-aligned in 5 columns, Caffe's own `file:line` token.
"""
import os
import sys
import threading
from datetime import datetime

LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}


def format_line(severity, message, src, now=None, tid=None):
    now = now or datetime.now()
    tid = tid if tid is not None else threading.get_native_id()
    return (f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {tid:>5} {src}] {message}")


def format_value(value):
    """C++ ostream default formatting of a float32 value (%g, 6 significant digits)."""
    import numpy as np

    v = np.float32(value)
    if np.isnan(v):
        return "nan" if not np.signbit(v) else "-nan"
    return "%g" % float(v)


class GlogLogger:
    """Writes glog lines to `stream`; lines below `min_level` (0 INFO, 1 WARNING, ...) are dropped."""

    def __init__(self, stream=None, min_level=None):
        self.stream = stream
        if min_level is None:
            min_level = int(os.environ.get("GLOG_minloglevel", "1"))
        self.min_level = min_level

    def _emit(self, severity, message, src):
        if LEVELS[severity] < self.min_level:
            return
        stream = self.stream or sys.stderr
        stream.write(format_line(severity, message, src) + "\n")
        stream.flush()

    def info(self, message, src="caffe.cpp:0"):
        self._emit("I", message, src)

    def warning(self, message, src="caffe.cpp:0"):
        self._emit("W", message, src)

    def error(self, message, src="caffe.cpp:0"):
        self._emit("E", message, src)

    @property
    def enabled(self):
        return self.min_level <= 0


class NullLogger(GlogLogger):
    def __init__(self):
        super().__init__(min_level=99)
