"""The memory planner's table for two real shapes, from config.json files written here (no download): Llama-2-7B
and Llama-3-70B, bfloat16, a Sahara scan of 100 prompts of 1024 tokens in batches of 16, chunks of 16, on meshes
1x1, 8x1, 1x8 and two layouts of a TPU v5e-64 slice (64 chips of 16 GiB).

    python bench/plan_table.py
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxheads.loading import read_model_config
from jaxheads.plan import GIB, plan

CONFIGS = {
    "Llama-2-7B": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "tie_word_embeddings": False, "hidden_act": "silu"},
    "Llama-3-70B": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672,
                    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                    "tie_word_embeddings": False, "hidden_act": "silu"},
}
MESHES = [(1, 1, 80), (8, 1, 80), (1, 8, 80), (8, 8, 16), (4, 16, 16)]  # (data, model, GiB per device)
SETTINGS = dict(prompts=100, tokens=1024, dtype="bfloat16", batch_size=16, chunk_size=16, dataset_level=True)


def main():
    print("| model | mesh (data x model) | device | weights | layer inputs | chunk of 16 | representations | "
          "total | fits | largest chunk |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, hf in CONFIGS.items():
            path = pathlib.Path(folder) / name / "config.json"
            path.parent.mkdir()
            path.write_text(json.dumps(hf))
            cfg = read_model_config(str(path))
            for data, model, gib in MESHES:
                memory = plan(cfg, data, model, device_bytes=gib * GIB, **SETTINGS)
                print(f"| {name} | {data} x {model} | {gib} GiB | {memory.weights / GIB:.2f} | "
                      f"{memory.layer_inputs / GIB:.2f} | {memory.chunk / GIB:.2f} | "
                      f"{memory.representations / GIB:.2f} | {memory.total / GIB:.2f} | "
                      f"{'yes' if memory.fits else 'no'} | {memory.largest_chunk} |")


if __name__ == "__main__":
    main()
