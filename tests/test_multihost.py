"""`--distributed` on two local processes (2 CPU devices each, gloo collectives), detected as a Slurm job step:
a Ships launch over a (2, 2) mesh spanning both processes gives the single-process scores, written once."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

import jaxheads
from jaxheads import ships

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_two_process_ships_launch_equals_one_process(tiny_model_with_tokenizer, tmp_path):
    out = tmp_path / "ships"
    flags = [f"--model={tiny_model_with_tokenizer}", "--limit=5", "--batch_size=2", "--mesh=2,2", "--distributed",
             f"--out={out}"]
    slurm = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
             "JAX_COORDINATOR_PORT": str(free_port())}
    env = {**os.environ, **slurm, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
           "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # compiles in half the time
    processes = [subprocess.Popen([sys.executable, "-m", "launch.ships", *flags], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
                 for rank in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    result = json.loads((out / "ships.json").read_text())
    # Each record was appended once: only process 0 writes, though both computed every batch.
    assert len((out / "ships.partial.jsonl").read_text().splitlines()) == 1 + 5
    model = jaxheads.load(tiny_model_with_tokenizer)
    expected = ships.query_level(model, result["prompts"], "ua", batch_size=2)
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-5, atol=1e-6)  # as test_sharding
