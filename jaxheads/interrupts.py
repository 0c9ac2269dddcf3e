"""Ctrl-C that is never lost and never lands inside work that must finish (a checkpoint save, committing a step).

Python raises KeyboardInterrupt wherever the main thread happens to be, and some places drop it: one raised inside
a gc callback (JAX registers one) is printed as "Exception ignored" and the program goes on. `install()` (the
`jaxheads` command calls it) sets a SIGINT handler that records every interrupt and raises KeyboardInterrupt as
Python's does, except inside `deferred()` blocks and during a garbage collection, where it only marks it pending:
a deferred block raises it when it ends, `check()` raises it at a safe point, and `interrupted()` tells the launcher
at exit that the run was interrupted even if the exception was dropped somewhere. Without `install()`, a
`deferred()` block sets the same handler for its own duration (in the main thread).
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from typing import Iterator

_state = {"pending": False, "seen": False, "depth": 0, "in_gc": False}


def _handler(signum, frame) -> None:
    _state["seen"] = True
    if _state["depth"] or _state["in_gc"]:
        _state["pending"] = True
    else:
        raise KeyboardInterrupt


def _gc_started(phase: str, info: dict) -> None:
    if phase == "start":
        _state["in_gc"] = True


def _gc_stopped(phase: str, info: dict) -> None:
    if phase == "stop":
        _state["in_gc"] = False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Records every SIGINT of this process; raises it at once outside deferred blocks and garbage collections."""
    if not _main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    if _gc_started not in gc.callbacks:  # around every other callback: first at the start, last at the stop
        gc.callbacks.insert(0, _gc_started)
        gc.callbacks.append(_gc_stopped)


def interrupted() -> bool:
    """Whether a SIGINT arrived since `install()`, whatever became of its KeyboardInterrupt."""
    return _state["seen"]


def check() -> None:
    """Raises a pending interrupt (a safe point); a no-op inside a deferred block."""
    if _state["pending"] and not _state["depth"]:
        _state["pending"] = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a SIGINT does not interrupt: the interrupt is recorded and raised when the block ends."""
    previous = None
    if _main_thread() and signal.getsignal(signal.SIGINT) is not _handler:
        previous = signal.signal(signal.SIGINT, _handler)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    check()
