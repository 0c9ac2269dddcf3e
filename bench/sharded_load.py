"""Peak host memory of `jaxheads.load` of one random bfloat16 Llama checkpoint (a few hundred MB, written here
with numpy under Hugging Face names) on 8 simulated CPU devices: the load as it was before loads could target a
mesh (every tensor converted into whole host arrays, then placed), the unsharded load now (one parameter at a
time), and loads straight onto a (1, 8) mesh and a (2, 4) mesh with FSDP.

Each load runs in its own process (peak RSS only grows), which measures its import baseline (peak RSS after
importing jaxheads and creating the devices and the mesh, `peak_rss`) and its peak after loading. On simulated CPU devices
every device's copy of a parameter lives in host memory, so "placed" (the bytes of every addressable shard of
every parameter) is part of the peak; the column "over placed" is what loading needed beyond it.

    python bench/sharded_load.py [--layers 8] [--hidden 1024] [--vocab 4096]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

MIB = 2**20
# A Llama whose heads (16), KV heads (8) and MLP width (4096) split 8 ways; about 256 MB of bfloat16 at 8 layers.
CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 1024,
    "intermediate_size": 4096, "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 64, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
MODES = {  # name -> (mesh (data, model) or None, fsdp)
    "before": (None, False),
    "unsharded": (None, False),
    "mesh 1x8": ((1, 8), False),
    "mesh 2x4 fsdp": ((2, 4), True),
}


def hf_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor names and shapes of a Llama config (no biases, untied or tied LM head)."""
    V, D, F = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    N, K, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (V, D)
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        shapes.update({
            prefix + "input_layernorm.weight": (D,), prefix + "post_attention_layernorm.weight": (D,),
            prefix + "self_attn.q_proj.weight": (N * d, D), prefix + "self_attn.k_proj.weight": (K * d, D),
            prefix + "self_attn.v_proj.weight": (K * d, D), prefix + "self_attn.o_proj.weight": (D, N * d),
            prefix + "mlp.gate_proj.weight": (F, D), prefix + "mlp.up_proj.weight": (F, D),
            prefix + "mlp.down_proj.weight": (D, F),
        })
    return shapes


def write_random_checkpoint(directory: str | os.PathLike, config: dict = CONFIG, layers_per_file: int = 2,
                            seed: int = 0) -> int:
    """Writes a random bfloat16 checkpoint (config.json, `model-0000k-of-0000n.safetensors` files of
    `layers_per_file` layers each with the embeddings in the first and the LM head in the last, and
    `model.safetensors.index.json`) and returns the bytes of its tensors. Weights ~ N(0, 0.02²), norms ~ 1."""
    import ml_dtypes
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = hf_shapes(config)
    layers = config["num_hidden_layers"]
    groups = [range(start, min(start + layers_per_file, layers)) for start in range(0, layers, layers_per_file)]

    def file_of(name: str) -> int:
        if name.startswith("model.layers."):
            return int(name.split(".")[2]) // layers_per_file
        return 0 if name.startswith("model.embed") else len(groups) - 1

    weight_map, total = {}, 0
    for number in range(len(groups)):
        file_name = f"model-{number + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in shapes.items():
            if file_of(name) != number:
                continue
            values = rng.standard_normal(shape, dtype=np.float32)
            values = 1.0 + 0.1 * values if name.endswith("norm.weight") else 0.02 * values
            tensors[name] = values.astype(ml_dtypes.bfloat16)
            total += tensors[name].nbytes
            weight_map[name] = file_name
        save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
        del tensors
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return total


def peak_rss() -> int:
    """The peak resident set size of this process in bytes: Linux's VmHWM, the high-water mark of this process
    image. (`ru_maxrss` would be the same but for a process started by `subprocess`: Linux carries the parent's
    peak over fork and exec into the child's `ru_maxrss`, so a child of a large parent starts at its peak.)
    Elsewhere `ru_maxrss`."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def placed_bytes(model) -> int:
    """Bytes of every addressable shard of every parameter (each device's copy counted)."""
    import jax

    return sum(shard.data.nbytes for leaf in jax.tree.leaves(model.params) for shard in leaf.addressable_shards)


def measure(directory: str, mode: str) -> dict:
    """Loads the checkpoint as `mode` says, in this process; returns the memory figures."""
    import jax

    import jaxheads
    from jaxheads.loading import config_from_hf
    from jaxheads.sharding import make_mesh
    from jaxheads.weights.build import module_from_tensors
    from jaxheads.weights.safetensors import read_config, read_tensors

    shape, fsdp = MODES[mode]
    mesh = None if shape is None else make_mesh(*shape)
    jax.devices()
    baseline = peak_rss()
    started = time.perf_counter()
    if mode == "before":  # what load() did before: whole host arrays (float32 per tensor), then jnp.asarray
        cfg = config_from_hf(read_config(pathlib.Path(directory)))
        module = module_from_tensors(cfg, read_tensors(pathlib.Path(directory)), jax.numpy.bfloat16)
        model = jaxheads.Model(name=directory, config=cfg, tokenizer=None, module=module)
    else:
        model = jaxheads.load(directory, dtype="bfloat16", mesh=mesh, fsdp=fsdp)
    jax.block_until_ready(model.params)
    return {"mode": mode, "baseline": baseline, "peak": peak_rss(), "placed": placed_bytes(model),
            "seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    parser.add_argument("--hidden", type=int, default=CONFIG["hidden_size"])
    parser.add_argument("--vocab", type=int, default=CONFIG["vocab_size"],
                        help="vocabulary rows of the untied embedding and LM head (49152: a 432 MB checkpoint)")
    parser.add_argument("--measure", nargs=2, metavar=("DIRECTORY", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(*args.measure)))
        return
    from bench.common import machine

    config = {**CONFIG, "num_hidden_layers": args.layers, "hidden_size": args.hidden, "vocab_size": args.vocab,
              "intermediate_size": 4 * args.hidden, "num_attention_heads": args.hidden // 64,
              "num_key_value_heads": args.hidden // 128}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8"}
    machine_line = subprocess.run([sys.executable, "-c", "from bench.common import machine; print(machine())"],
                                  env=env, cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
                                  text=True, check=True).stdout.strip()
    print(f"machine: {machine_line} (this process: {machine()})")
    with tempfile.TemporaryDirectory(prefix="jaxheads-sharded-load-") as directory:
        checkpoint = write_random_checkpoint(directory, config)
        params = sum(math.prod(shape) for shape in hf_shapes(config).values())
        print(f"checkpoint: {params / 1e6:.0f}M bfloat16 parameters, {checkpoint / MIB:.0f} MiB in "
              f"{len(list(pathlib.Path(directory).glob('*.safetensors')))} files; "
              f"{config['num_hidden_layers']} layers, D={config['hidden_size']}, loads to bfloat16")
        print(f"{'load':<15} {'baseline':>9} {'peak':>9} {'peak-base':>10} {'placed':>9} {'over placed':>12} "
              f"{'/ checkpoint':>13} {'seconds':>8}")
        for mode in MODES:
            result = subprocess.run([sys.executable, __file__, "--measure", directory, mode], env=env,
                                    capture_output=True, text=True, check=False)
            if result.returncode:
                print(f"{mode}: failed\n{result.stderr[-3000:]}")
                continue
            row = json.loads(result.stdout.split("RESULT ")[-1])
            grown = row["peak"] - row["baseline"]
            over = grown - row["placed"]
            print(f"{mode:<15} {row['baseline'] / MIB:8.0f}M {row['peak'] / MIB:8.0f}M {grown / MIB:9.0f}M "
                  f"{row['placed'] / MIB:8.0f}M {over / MIB:11.0f}M {over / checkpoint:13.2f} {row['seconds']:8.2f}")


if __name__ == "__main__":
    main()
