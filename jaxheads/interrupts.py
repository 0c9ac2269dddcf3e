"""Ctrl-C that is never lost and never lands inside work that must finish (a checkpoint save, committing a step).

Python raises KeyboardInterrupt wherever the main thread happens to be, and some places drop it: one raised inside
a gc callback (JAX registers one) is printed as "Exception ignored" and the program goes on. `install()` (the
`jaxheads` command calls it) sets a SIGINT handler that records every interrupt and raises KeyboardInterrupt as
Python's does, except inside `deferred()` blocks, where it only marks it pending (the block raises it when it
ends; `check()` raises it at a safe point), and inside gc callbacks, where it is sent again 50 ms later.
`interrupted()` tells the launcher at exit that the run was interrupted even if the exception was dropped somewhere.
Without `install()`, a `deferred()` block sets the same handler for its own duration (in the main thread).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from typing import Iterator

REDELIVER_SECONDS = 0.05
_state = {"pending": False, "seen": False, "depth": 0}


def _handler(signum, frame) -> None:
    _state["seen"] = True
    if _state["depth"]:
        _state["pending"] = True
    elif _in_gc_callback(frame):  # sent again in a moment, when the callback has returned
        _state["pending"] = True
        threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signal.SIGINT)).start()
    else:
        _state["pending"] = False
        raise KeyboardInterrupt


def _in_gc_callback(frame) -> bool:
    """Whether `frame` runs inside a gc callback (where Python would print and drop the KeyboardInterrupt)."""
    codes = {getattr(getattr(callback, "__func__", callback), "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Records every SIGINT of this process; raises it at once outside deferred blocks and garbage collections."""
    if _main_thread():
        signal.signal(signal.SIGINT, _handler)


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
