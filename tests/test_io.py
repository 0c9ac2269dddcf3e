"""Atomic result files and the resumable JSONL log."""

import os

import numpy as np
import pytest

from jaxheads import io
from jaxheads.errors import DataError


def leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_atomic_write_text_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    io.atomic_write_text(path, "first\n")
    io.atomic_write_text(path, "second\r\nline ü\n")
    assert path.read_bytes() == "second\r\nline ü\n".encode()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert not leftovers(path.parent)


def test_atomic_write_json_round_trips_numpy(tmp_path):
    path = tmp_path / "result.json"
    io.atomic_write_json(path, {"scores": np.arange(4, dtype=np.float32).reshape(2, 2), "n": np.int64(3),
                                "ok": np.bool_(True), "none": None})
    assert io.read_json(path) == {"scores": [[0.0, 1.0], [2.0, 3.0]], "n": 3, "ok": True, "none": None}


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}, {"x": np.array([1.0, np.inf])}])
def test_failed_json_write_leaves_the_old_file_intact(tmp_path, bad):
    path = tmp_path / "result.json"
    io.atomic_write_json(path, {"version": 1})
    with pytest.raises(DataError, match="cannot write .*result.json as JSON"):
        io.atomic_write_json(path, bad)
    assert io.read_json(path) == {"version": 1}
    assert not leftovers(tmp_path)


def test_failure_while_writing_removes_the_temporary_file(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")

    class Exploding:
        canvas = type("Canvas", (), {"get_supported_filetypes": staticmethod(lambda: {"png": "PNG"})})()

        def savefig(self, handle, **kwargs):
            handle.write(b"partial")
            raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        io.save_figure_atomic(Exploding(), path)
    assert path.read_bytes() == b"old"
    assert not leftovers(tmp_path)


def test_atomic_write_csv(tmp_path):
    path = tmp_path / "ships.csv"
    io.atomic_write_csv(path, ["prompt", "layer", "score"], [(0, 1, 0.5), (1, 2, "a,b")])
    assert path.read_text() == 'prompt,layer,score\n0,1,0.5\n1,2,"a,b"\n'
    with pytest.raises(DataError, match="row 1 .* has 2 values but the header has 3 columns"):
        io.atomic_write_csv(path, ["prompt", "layer", "score"], [(0, 1, 0.5), (1, 2)])
    assert path.read_text().startswith("prompt,layer,score\n0,1,0.5")


def test_save_figure_atomic_rejects_unknown_suffix(tmp_path):
    from matplotlib.figure import Figure

    with pytest.raises(DataError, match="unknown image suffix 'bmpx'"):
        io.save_figure_atomic(Figure(), tmp_path / "plot.bmpx")


def test_jsonl_log_appends_and_reads(tmp_path):
    log = io.JsonlLog(tmp_path / "run" / "log.jsonl")
    assert log.read() == []
    log.append({"index": 0, "scores": np.array([1.5, 2.0])})
    log.append({"index": 1, "scores": None})
    assert io.JsonlLog(log.path).read() == [{"index": 0, "scores": [1.5, 2.0]}, {"index": 1, "scores": None}]


def test_jsonl_log_ignores_and_then_drops_a_truncated_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = io.JsonlLog(path)
    log.append({"index": 0})
    log.append({"index": 1})
    with open(path, "ab") as handle:  # an interrupted write
        handle.write(b'{"index": 2, "sco')
    resumed = io.JsonlLog(path)
    assert resumed.read() == [{"index": 0}, {"index": 1}]
    resumed.append({"index": 2})
    assert resumed.read() == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert path.read_text() == '{"index": 0}\n{"index": 1}\n{"index": 2}\n'


def test_jsonl_log_reports_damage_before_the_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(DataError, match="line 2 of .*log.jsonl is not valid JSON"):
        io.JsonlLog(path).read()


def test_jsonl_log_rejects_unserialisable_records(tmp_path):
    log = io.JsonlLog(tmp_path / "log.jsonl")
    with pytest.raises(DataError, match="cannot log this record"):
        log.append({"x": object()})
    assert log.read() == []


def test_read_json_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json does not exist"):
        io.read_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    with pytest.raises(DataError, match="broken.json is not valid JSON"):
        io.read_json(broken)


def test_a_jsonl_file_is_never_written_with_nan(tmp_path):
    """guard.jsonl of a NaN model once held `NaN` tokens: the JSON Lines writer now refuses them, naming the record."""
    path = tmp_path / "guard.jsonl"
    with pytest.raises(DataError, match=r"record 2 of .*guard\.jsonl"):
        io.atomic_write_jsonl(path, [{"tier": "safe", "p": 0.5}, {"tier": "safe", "p": float("nan")}])
    assert not path.exists()
