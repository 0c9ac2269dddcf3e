"""`--distributed` on two local processes (2 CPU devices each, gloo collectives), detected as a Slurm job step:
Ships and alignment launches over a (2, 2) mesh spanning both processes give the single-process results, written
once, and each process needs only its own rows of a batch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

import jaxheads
from jaxheads import ships

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def run_two_processes(command: list[str]) -> list[str]:
    """Runs `command` as the two tasks of a local Slurm job step and returns their outputs (both must succeed)."""
    slurm = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
             "JAX_COORDINATOR_PORT": str(free_port())}
    env = {**os.environ, **slurm, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
           "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # compiles in half the time
    processes = [subprocess.Popen([sys.executable, *command], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
                 for rank in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    return outputs


def test_two_process_ships_launch_equals_one_process(tiny_model_with_tokenizer, tmp_path):
    out = tmp_path / "ships"
    run_two_processes(["-m", "jaxheads.launch", "ships", f"--model={tiny_model_with_tokenizer}", "--limit=5",
                       "--batch_size=2", "--mesh=2,2", "--distributed", f"--out={out}"])
    result = json.loads((out / "ships.json").read_text())
    # Each record was appended once: only process 0 writes, though both computed every batch.
    assert len((out / "ships.partial.jsonl").read_text().splitlines()) == 5
    model = jaxheads.load(tiny_model_with_tokenizer)
    expected = ships.query_level(model, result["prompts"], "ua", batch_size=2)
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-5, atol=1e-6)  # as test_sharding


SHARE_ONLY = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    jax.distributed.initialize()
    from jaxheads.sharding import make_mesh, shard_rows, to_host
    mesh = make_mesh(4, 1)
    batch = np.arange(24, dtype=np.float32).reshape(8, 3)
    indices = NamedSharding(mesh, PartitionSpec("data")).addressable_devices_indices_map(batch.shape).values()
    own = sorted({row for index in indices for row in range(*index[0].indices(8))})
    local = np.full_like(batch, np.nan)
    local[own] = batch[own]  # this host knows only its own rows
    assert np.array_equal(to_host(shard_rows(local, mesh)), batch)
    print("own rows", json.dumps(own))
""")


def test_each_process_places_only_its_own_rows():
    outputs = run_two_processes(["-c", SHARE_ONLY])
    owned = [json.loads(output.split("own rows")[-1]) for output in outputs]
    assert sorted(owned[0] + owned[1]) == list(range(8)) and not set(owned[0]) & set(owned[1])


def test_two_process_align_launch_equals_one_process(tiny_model_with_tokenizer, tmp_path):
    """Two SGD steps: the runs differ only by float32 rounding of the (clipped, norm <= 1) gradients' sums taken in
    another order, so each update agrees within lr * 1e-5 and each weight within that plus its own rounding per
    step. (With Adam the first steps divide by sqrt(v) + 1e-8, which turns rounding of gradients near 1e-8 into
    differences near the learning rate.)"""
    flags = [f"--model={tiny_model_with_tokenizer}", "--train_limit=4", "--answer_tokens=8", "--steps=2",
             "--batch_size=4", "--warmup_steps=0", "--optimizer=sgd", "--learning_rate=1e-2", "--eval_limit=2",
             "--eval_tokens=4", "--evaluate_before=false", "--mesh=2,2"]
    run_two_processes(["-m", "jaxheads.launch", "align", *flags, "--distributed", f"--out={tmp_path / 'two'}"])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
    single = subprocess.run([sys.executable, "-m", "jaxheads.launch", "align", *flags, f"--out={tmp_path / 'one'}"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert single.returncode == 0, single.stderr[-3000:]

    def losses(name):
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert len(losses("two")) == 2  # one line per step: only process 0 logs
    np.testing.assert_allclose(losses("two"), losses("one"), rtol=1e-5)
    assert json.loads((tmp_path / "two" / "align.json").read_text())["steps"] == 2
    exported = jaxheads.load(str(tmp_path / "two" / "model"))
    reference = jaxheads.load(str(tmp_path / "one" / "model"))
    for name in ("embed", "q", "down"):
        ours, theirs = np.asarray(getattr(exported.module, name)[...]), np.asarray(getattr(reference.module, name)[...])
        # per step: the update's own difference (lr * 1e-5) plus one rounding of the weight (its float32 spacing)
        atol = 2 * (1e-2 * 1e-5 + np.spacing(np.abs(theirs).max()))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)
