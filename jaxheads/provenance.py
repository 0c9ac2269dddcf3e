"""What produced a result file: the software, the devices, the time and the command line."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import subprocess
import sys

import jax


@functools.cache
def jaxheads_version() -> str:
    """The installed distribution's version ("unknown" when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("jaxheads")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """The commit of the source tree jaxheads runs from (with "-dirty" when it has uncommitted changes), or None
    when the package is not inside a git work tree (an installed wheel) or git is missing."""
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def devices() -> str:
    """The devices of this run, e.g. "8 x cpu" or "4 x NVIDIA H100 80GB HBM3 over 2 processes"."""
    kinds = sorted({device.device_kind for device in jax.devices()})
    text = f"{jax.device_count()} x {', '.join(kinds)}"
    return text if jax.process_count() == 1 else f"{text} over {jax.process_count()} processes"


def provenance(argv: list[str] | None = None) -> dict:
    """The `provenance` entry of every result JSON."""
    return {
        "jaxheads_version": jaxheads_version(),
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "devices": devices(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
    }
