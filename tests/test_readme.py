"""The README runs as written: its Python blocks execute (on a tiny model standing in for the embedded default),
its test command is exactly `.ci/run`'s, its main command uses the installed `jaxheads` command, and nothing in
the repository points outside it."""

import pathlib
import re
import subprocess

import pytest

import jaxheads

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_blocks_run_as_written(tiny_model_with_tokenizer, monkeypatch, capsys):
    real_load = jaxheads.load
    monkeypatch.setattr(jaxheads, "load", lambda spec=None, **options: real_load(spec or tiny_model_with_tokenizer,
                                                                                 **options))
    python = blocks("python")
    assert python, "the README has no Python example"
    for code in python:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    # scores [P, L, N], table [L, N], two Sahara heads, logits of 3 ablations [3, B, T, V], a generated text
    assert re.match(r"\(4, 3, 4\) \(3, 4\) \[\(\d, \d\), \(\d, \d\)\] \(3, 4, \d+, \d+\) \S", printed)


def test_the_test_command_is_what_ci_runs():
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert any(block.strip() == ci_command for block in blocks("bash"))


def test_the_main_command_installs_without_torch_and_runs_jaxheads():
    main = blocks("bash")[0].strip()
    assert "pip install . " in main and "torch" not in main and "jaxheads ships" in main


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    outside = b"../" + b"shared"  # spelled in two parts, so that this file does not point there itself
    pointing = [name for name in tracked if not name.startswith(".ci/") and (REPO / name).is_file()
                and outside in (REPO / name).read_bytes()]
    assert pointing == []
