"""Data-parallel scans on 8 simulated CPU devices give the single-device results."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import jax, numpy as np
import jaxheads
from jaxheads import sahara, ships
model = jaxheads.load(sys.argv[1])
prompts = [list(np.random.default_rng(s).integers(3, 128, 4 + s)) for s in range(5)]
query = ships.query_level(model, prompts, "ua", batch_size=8, chunk_size=5)
result = sahara.sahara(model, prompts, steps=2, batch_size=8)
print(json.dumps({"devices": jax.device_count(), "query": query.tolist(), "heads": result.heads,
                  "steps": [np.nan_to_num(s.scores, nan=-1).tolist() for s in result.steps]}))
"""


def run_on(devices: int, directory) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(directory)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eight_devices_equal_one(tiny_checkpoint):
    _, directory = tiny_checkpoint("llama_gqa_llama3_rope_tied")
    one, eight = run_on(1, directory), run_on(8, directory)
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_allclose(eight["query"], one["query"], rtol=1e-5, atol=1e-6)  # float32 rounding
    assert eight["heads"] == one["heads"]
    np.testing.assert_allclose(eight["steps"], one["steps"], atol=1e-3)
