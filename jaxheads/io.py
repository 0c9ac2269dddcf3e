"""Result files that are either fully written or untouched, and append-only logs that survive interruption.

In a multi-host run every process computes the same results and only process 0 writes them (the other
processes' writes are no-ops), so files are never written twice or torn between hosts.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import tempfile
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from jaxheads.errors import DataError
from jaxheads.sharding import is_writer


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8, newlines as given) to `path` so that readers see the old file or the new one, never
    a partial one: a temporary file in the same folder is written, synced and renamed over `path`."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_jsonl(path: str | os.PathLike, records) -> None:
    """Writes `records` as JSON Lines (one `json.dumps` per record) atomically, as `atomic_write_text`; a NaN or
    infinite value is an error naming its record, raised before anything is written."""
    lines = [_to_json(record, f"write record {number} of {path}") + "\n"
             for number, record in enumerate(records, start=1)]
    atomic_write_text(path, "".join(lines))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON (numpy arrays and scalars as lists and numbers) atomically. NaN/inf and
    objects JSON cannot hold are errors raised before anything is written."""
    text = _to_json(obj, f"write {path}", "; convert such values first (e.g. NaN to None, other objects to dicts or "
                    "strings)", indent=2)
    atomic_write_text(path, text + "\n")


def _to_json(value: Any, what: str, hint: str = "", **options) -> str:
    """`value` as JSON text, numpy values as lists and numbers; NaN/inf and objects JSON cannot hold are a
    DataError "cannot {what} as JSON: ...{hint}"."""
    try:
        return json.dumps(value, allow_nan=False, default=_numpy_to_json, **options)
    except (TypeError, ValueError) as error:
        raise DataError(f"cannot {what} as JSON: {error}{hint}") from error


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Writes a CSV table with a `header` row atomically; every row must have one value per header column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for index, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"row {index} for {path} has {len(row)} values but the header has {len(header)} "
                            f"columns ({list(header)})")
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 150) -> None:
    """Saves a matplotlib figure atomically, in the format named by the suffix of `path` (e.g. .png, .pdf)."""
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if suffix not in supported:
        raise DataError(f"cannot save a figure as {path}: unknown image suffix {suffix!r}; use one of "
                        f"{', '.join(sorted(supported))}")
    _atomic_write(path, lambda handle: fig.savefig(handle, format=suffix, dpi=dpi, bbox_inches="tight"))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value stored in `path`."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte order mark is not part of the JSON
            return json.load(handle)
    except FileNotFoundError as error:
        raise DataError(f"{path} does not exist; check the path or run the step that writes it") from error
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); it may be from an interrupted run") from error


class JsonlLog:
    """An append-only log of JSON records, one per line, each synced to disk as it is written.

    A run killed mid-write leaves at most one partial last line; `read` ignores it and the next `append`
    removes it, so a resumed run continues from the last complete record.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._tail_checked = False

    def append(self, record: dict) -> None:
        """Adds one record as a line and syncs it (in process 0 only)."""
        line = _to_json(record, f"log this record to {self.path}") + "\n"
        if not is_writer():
            return
        if not self._tail_checked:
            _make_parent(self.path)
            self._drop_partial_line()
            self._tail_checked = True
        with open(self.path, "ab") as handle:
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict]:
        """Every complete record in file order ([] if the log does not exist yet)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as handle:
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1].decode("utf-8")
        records = []
        for number, line in enumerate(complete.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"line {number} of {self.path} is not valid JSON ({error}); the log is "
                                    "damaged, delete it to start over") from error
        return records

    def _drop_partial_line(self) -> None:
        """Cuts an unterminated last line (left by an interrupted write) off the file."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "r+b") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())


def content_hash(value: Any) -> str:
    """sha256 of `value`'s canonical JSON (sorted keys, numpy as lists): the same data gives the same hash."""
    text = json.dumps(value, sort_keys=True, allow_nan=False, default=_numpy_to_json, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Fingerprint entries that one run may record and another not (a full hash of the weights, taken only with
# --verify_weights; the GGUF cache entry a model was read from, absent when it was read without the cache): they
# are compared only when both fingerprints have them.
OPTIONAL_KEYS = ("verified", "cache_entry")


def fingerprint_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The differences between two fingerprints, one `key: old -> new` line per changed entry (dotted keys); an
    `OPTIONAL_KEYS` entry absent from either side is no difference."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in OPTIONAL_KEYS and (key not in old or key not in new or old[key] is None or new[key] is None):
                continue
            if key not in old:
                changes.append(f"{name}: (absent) -> {_short(new[key])}")
            elif key not in new:
                changes.append(f"{name}: {_short(old[key])} -> (absent)")
            else:
                changes.extend(fingerprint_changes(old[key], new[key], name))
        return changes
    return [] if old == new else [f"{prefix or 'value'}: {_short(old)} -> {_short(new)}"]


def without_optional(fingerprint: Any) -> Any:
    """A fingerprint without its `OPTIONAL_KEYS` entries (at any depth): what a cache key may hash."""
    if isinstance(fingerprint, dict):
        return {key: without_optional(value) for key, value in fingerprint.items() if key not in OPTIONAL_KEYS}
    return fingerprint


def _merged(recorded: Any, new: Any) -> Any:
    """`recorded` with the `OPTIONAL_KEYS` entries only `new` has added (at any depth)."""
    if not (isinstance(recorded, dict) and isinstance(new, dict)):
        return recorded
    merged = {key: _merged(value, new.get(key)) for key, value in recorded.items()}
    for key in OPTIONAL_KEYS:
        if new.get(key) is not None and recorded.get(key) is None:
            merged[key] = new[key]
    return merged


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=_numpy_to_json, ensure_ascii=False)
    return text if len(text) <= 70 else text[:67] + "..."


class RunFolder:
    """An output folder that belongs to one run: a lock file keeps a second concurrent run out, and
    `fingerprint.json` records everything the folder's results depend on (the model's files, the data, every
    setting that changes results), so a later run resumes from the folder only when its fingerprint is equal.

    Use as a context manager: `with RunFolder(out) as folder: folder.check(fingerprint, ["x.partial.jsonl"])`.
    In a multi-host run only process 0 takes the lock and writes the fingerprint; every process compares it.
    A run that recorded the fingerprint and then failed before writing anything else into the folder takes the
    fingerprint back out, so the folder stays free for a run with other settings.
    """

    FINGERPRINT = "fingerprint.json"
    LOCK = ".jaxheads.lock"

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._lock = None
        self._recorded = False

    def __enter__(self) -> "RunFolder":
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DataError(f"--out {self.path} is a file, not a folder; give a folder for the results")
        if not is_writer():
            return self
        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock = open(os.path.join(self.path, self.LOCK), "a+")
        except OSError as error:
            raise DataError(f"cannot use {self.path} as the output folder: {error}") from error
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            self._lock = None
            raise DataError(f"another jaxheads run ({holder}) is writing to {self.path}; wait for it to finish or "
                            "use another --out") from error
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is not None and self._recorded and is_writer():
            if set(os.listdir(self.path)) <= {self.FINGERPRINT, self.LOCK}:  # nothing else written: no work done
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.path, self.FINGERPRINT))
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def check(self, fingerprint: dict, resumable: Sequence[str] = ()) -> None:
        """Records `fingerprint` in a new folder, or checks that it equals the one recorded; a folder holding any
        of the `resumable` files (names inside the folder) without a recorded fingerprint is refused too, since
        nothing says which run wrote them."""
        path = os.path.join(self.path, self.FINGERPRINT)
        canonical = json.loads(json.dumps(fingerprint, sort_keys=True, default=_numpy_to_json))
        if os.path.exists(path):
            recorded = read_json(path)
            changes = fingerprint_changes(recorded, canonical)
            if changes:
                raise DataError(f"{self.path} holds the results of another run; what differs (recorded -> now): "
                                f"{'; '.join(changes)}. Use another --out, or delete {self.path} to start over")
            merged = _merged(recorded, canonical)
            if merged != recorded:  # e.g. the full hash of the weights, taken by this run (--verify_weights)
                atomic_write_json(path, merged)
            return
        found = [name for name in resumable if os.path.exists(os.path.join(self.path, name))]
        if found:
            raise DataError(f"{self.path} holds {', '.join(found)} from a run that recorded no fingerprint, so it "
                            f"cannot be resumed safely; use another --out, or delete {self.path} to start over")
        atomic_write_json(path, canonical)
        self._recorded = True


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Runs `write` on a binary temporary file next to `path`, syncs it and renames it to `path` (keeping the
    permissions of a file it replaces, else 0644); on any error the temporary file is removed and `path` is
    left as it was. Only process 0 writes."""
    if not is_writer():
        return
    path = os.fspath(path)
    folder = _make_parent(path)
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(handle.name)
        raise
    _sync_folder(folder)


def _make_parent(path: str) -> str:
    """Creates the folder holding `path` (if missing) and returns it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return folder


def _sync_folder(folder: str) -> None:
    """Syncs a folder so that a rename inside it survives a crash (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _numpy_to_json(value: Any) -> Any:
    """JSON form of numpy/JAX arrays and numpy scalars (for json.dumps `default`)."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
