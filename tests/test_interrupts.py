"""Ctrl-C at random moments of a tiny `jaxheads align` run: every interrupted run exits 130 with one line and no
temporary files, and the resumed runs end with the weights and the metrics of an uninterrupted run, each step
logged once.

Each run is its own process. To spend the test's time inside the runs rather than in starting Python and importing
JAX (about 3 s a run here), the runs are forked from one helper process that has imported the command: the child
calls `jaxheads.launch.cli.main` as the `jaxheads` script does and exits through the interpreter's normal shutdown.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

SERVER = textwrap.dedent("""
    import os, sys
    import jaxheads.launch.cli, jaxheads.jobs.align, jaxheads.train.trainer, transformers  # imported once
    for line in sys.stdin:
        argv, log = line.rstrip("\\n").split("\\t")
        pid = os.fork()
        if pid == 0:
            sys.stdin.close()
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            jaxheads.launch.cli.main(["jaxheads", *argv.split(" ")])
            sys.exit(0)
        print(pid, flush=True)
        sys.stdin.readline()  # the test has sent its signal (or none): reap the child
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
""")
INTERRUPTS = 10


def align_args(model, out):
    return ["align", f"--model={model}", "--train_limit=2", "--harmless=builtin:harmless:train", "--answer_tokens=4",
            "--evaluate_before=false", "--eval_harmful=", "--eval_harmless=", "--steps=6", "--batch_size=2",
            "--grad_accum=2", "--save_every=1", "--keep_checkpoints=1", f"--out={out}"]


class Runs:
    def __init__(self, tmp_path):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=env)
        self.tmp_path, self.count = tmp_path, 0

    def run(self, args, out, delay=None):
        """Runs `jaxheads ARGS` in a forked process; `delay` seconds after it has locked `out` (its job has started) it
        gets a SIGINT. Returns (exit code, output, seconds from the signal to the exit)."""
        self.count += 1
        log = self.tmp_path / f"run{self.count}.log"
        self.server.stdin.write(" ".join(args) + "\t" + str(log) + "\n")
        self.server.stdin.flush()
        pid = int(self.server.stdout.readline())
        signalled = None
        if delay is not None:
            lock = os.path.join(out, ".jaxheads.lock")
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    with open(lock) as handle:
                        if handle.read().strip() == f"pid {pid}":
                            break
                except OSError:
                    pass
                time.sleep(0.005)
            time.sleep(delay)
            os.kill(pid, signal.SIGINT)  # the child is not reaped yet, so the pid is still its own
            signalled = time.time()
        self.server.stdin.write("\n")
        self.server.stdin.flush()
        code = int(self.server.stdout.readline())
        return code, log.read_text(), None if signalled is None else time.time() - signalled

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=60)


def metrics(out):
    return [{key: value for key, value in json.loads(line).items() if key != "seconds"}
            for line in open(os.path.join(out, "metrics.jsonl"))]


def temporary_files(out):
    return [path for path in glob.glob(os.path.join(out, "**"), recursive=True)
            if "tmp" in os.path.basename(path)]


# NOT PASSING YET, and too slow for CI (209 s on a shared 2-core machine): a SIGINT that lands while C++ (pybind11)
# calls back into Python aborts the process (exit -6, "terminate called after throwing pybind11::error_already_set")
# instead of exiting 130. Run it with JAXHEADS_INTERRUPT_TEST=1 while that is fixed.
@pytest.mark.skipif(not os.environ.get("JAXHEADS_INTERRUPT_TEST"), reason="known failure (pybind11 abort) and "
                    "209 s; JAXHEADS_INTERRUPT_TEST=1 runs it")
def test_sigint_at_random_moments_of_align_resumes_to_the_uninterrupted_weights(tiny_model_with_tokenizer, tmp_path):
    runs = Runs(tmp_path)
    try:
        reference = str(tmp_path / "reference")
        code, output, _ = runs.run(align_args(tiny_model_with_tokenizer, reference), reference)
        assert code == 0, output
        expected_weights = load_file(os.path.join(reference, "model", "model.safetensors"))
        expected_metrics = metrics(reference)
        assert [record["step"] for record in expected_metrics] == [1, 2, 3, 4, 5, 6]

        rng = random.Random(0)
        interrupts, chains, moments = 0, 0, []
        while interrupts < INTERRUPTS:
            chains += 1
            out = str(tmp_path / f"interrupted{chains}")
            while True:
                delay = rng.uniform(0.0, 4.0)
                code, output, seconds = runs.run(align_args(tiny_model_with_tokenizer, out), out, delay)
                lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
                assert "Traceback" not in output and "Exception ignored" not in output, output
                assert temporary_files(out) == [], (delay, output)
                if code == 0:  # it finished before the signal came
                    break
                interrupts += 1
                moments.append(round(delay, 2))
                assert code == 130, (delay, output)
                assert lines[-1] == "jaxheads align: error: interrupted", (delay, output)
                assert sum("error" in line for line in lines) == 1, output
                assert seconds < 10, (delay, seconds, output)
            # the last run of each chain resumed to the end: the same weights and metrics, each step once
            weights = load_file(os.path.join(out, "model", "model.safetensors"))
            assert sorted(weights) == sorted(expected_weights)
            for name in expected_weights:
                np.testing.assert_array_equal(weights[name], expected_weights[name], err_msg=f"{name} {moments}")
            assert metrics(out) == expected_metrics, moments
    finally:
        runs.close()
