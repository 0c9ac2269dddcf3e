"""XLA's own numbers for pod-scale runs, compiled ahead of time on this host (no TPU, no weights): `jaxheads plan
--topology` for Llama-2-7B, Llama-3-8B, Llama-3-70B and Llama-3.1-405B configs (config.json files written here) on
the v5e-8, v5e-64, v5e-256, v5p-64 and v5p-128 slices their weights fit, 100 prompts of 64 and 1024 tokens in batches of 16, bfloat16,
with the sharding rules plan recommends. Per row: each program's XLA peak per chip beside the formula's estimate,
whether it fits, the largest chunk, and the seconds at the chips' peak FLOP rate of a full query-level Ships scan
and of a 3-step Sahara search.

    pip install -e '.[tpu]' && python bench/scaling.py [--out bench/results/scaling.jsonl] [--only 70B]
    python bench/scaling.py --calibration   # the formula against XLA at chunks of 16 (docs/scaling.md)

Rows are appended to `--out` as they finish and a rerun skips the rows it holds (keyed on the row's settings, the
jax and libtpu versions); the markdown table of docs/scaling.md is printed at the end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import platform
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxheads.configs import plan as plan_config  # noqa: E402
from jaxheads.jobs import plan as plan_job  # noqa: E402

LLAMA = {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu"}
CONFIGS = {
    "Llama-2-7B": {**LLAMA, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                   "max_position_embeddings": 4096, "rope_theta": 10000.0},
    "Llama-3-8B": {**LLAMA, "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "max_position_embeddings": 8192, "rope_theta": 500000.0},
    "Llama-3-70B": {**LLAMA, "vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672,
                    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                    "max_position_embeddings": 8192, "rope_theta": 500000.0},
    "Llama-3.1-405B": {**LLAMA, "vocab_size": 128256, "hidden_size": 16384, "intermediate_size": 53248,
                       "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8,
                       "max_position_embeddings": 131072, "rope_theta": 500000.0,
                       "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
}
# (model, slice name, topology, mesh): each model on the slices its weights fit in bfloat16
ROWS = [
    ("Llama-2-7B", "v5e-8", "v5e:2x4", "1,8"), ("Llama-3-8B", "v5e-8", "v5e:2x4", "1,8"),
    ("Llama-3-70B", "v5e-64", "v5e:8x8", "8,8"), ("Llama-3-70B", "v5e-256", "v5e:16x16", "32,8"),
    ("Llama-3-70B", "v5p-64", "v5p:4x4x4", "8,8"),
    ("Llama-3.1-405B", "v5e-256", "v5e:16x16", "16,16"), ("Llama-3.1-405B", "v5p-128", "v5p:4x4x8", "16,8"),
]
TOKENS = (64, 1024)
GIB = 2 ** 30


def versions() -> dict:
    """What a row's numbers depend on besides its settings: jax, jaxlib, libtpu and the code (the git tree hashes
    of jaxheads/, launch/ and configs/, with `+changes` when the work tree differs), so that a rerun after a code
    change compiles again instead of reusing old rows."""
    root = pathlib.Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    trees = "-".join(git("rev-parse", "--short", f"HEAD:{folder}") for folder in ("jaxheads", "launch", "configs"))
    dirty = git("status", "--porcelain", "--", "jaxheads", "launch", "configs")
    return {**{name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "libtpu")},
            "code": trees + ("+changes" if dirty else "")}


def row_key(model: str, topology: str, mesh: str, tokens: int) -> dict:
    return {"model": model, "topology": topology, "mesh": mesh, "tokens": tokens, "prompts": 100, "batch_size": 16,
            "dtype": "bfloat16", **versions()}


def run_row(folder: pathlib.Path, model: str, topology: str, mesh: str, tokens: int) -> dict:
    path = folder / model / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(CONFIGS[model]))
    config = plan_config.get_config()
    config.update(model=str(path), topology=topology, mesh=mesh, prompts=100, tokens=tokens, batch_size=16)
    result = plan_job.run(config)
    return {key: result[key] for key in ("sharding", "chips", "hbm_bytes", "programs", "commands")}


def cell(program: dict | None) -> str:
    if program is None:
        return ""
    peak, estimate = program["xla_peak_bytes"] / GIB, program["estimate_bytes"] / GIB
    chunk = f", chunk {program['chunk']}" if program.get("chunk") else ""
    return f"{peak:.1f} / {estimate:.1f}{' ✓' if program['fits'] else ' ✗'}{chunk}"


def seconds(commands: dict, name: str) -> str:
    if name not in commands:
        return "—"
    value = commands[name]["seconds_at_peak"]
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.0f} min"


def table(records: list[dict]) -> str:
    lines = ["| model | slice (mesh, rules) | tokens | Ships chunk | Sahara step | generate | train | train LoRA | "
             "Ships scan at peak | 3-step Sahara at peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = {topology: name for _, name, topology, _ in ROWS}
    for record in records:
        key, programs = record["key"], record["result"]["programs"]
        lines.append(f"| {key['model']} | {names.get(key['topology'], key['topology'])} ({key['mesh'].replace(',', '×')}, "
                     f"{record['result']['sharding']}) | {key['tokens']} | "
                     + " | ".join(cell(programs.get(p)) for p in ("ships", "sahara", "generate", "train", "train_lora"))
                     + f" | {seconds(record['result']['commands'], 'ships')} | "
                       f"{seconds(record['result']['commands'], 'sahara')} |")
    return "\n".join(lines)


# The formula's calibration rows: (model, topology, mesh, rules, tokens, program), chunks of 16 ablations
CALIBRATION = [
    ("Llama-2-7B", "v5e:2x4", "1,8", "tp", 1024, "ships"), ("Llama-2-7B", "v5e:2x4", "1,8", "tp", 64, "ships"),
    ("Llama-2-7B", "v5e:2x4", "8,1", "tp", 1024, "ships"), ("Llama-2-7B", "v5e:2x4", "8,1", "tp", 1024, "sahara"),
    ("Llama-3-70B", "v5e:8x8", "8,8", "tp", 64, "ships"), ("Llama-3-70B", "v5e:8x8", "8,8", "tp", 1024, "ships"),
    ("Llama-3-70B", "v5e:8x8", "4,16", "tp", 1024, "ships"),
    ("Llama-3-70B", "v5e:8x8", "8,8", "tp_fsdp", 1024, "ships"),
    ("Llama-3-70B", "v5e:8x8", "8,8", "tp_fsdp", 1024, "sahara"),
    ("Llama-3-70B", "v5p:4x4x4", "8,8", "tp", 1024, "sahara"),
]


def calibration(out: pathlib.Path) -> None:
    """The formula's estimate (`jaxheads.plan`) against XLA's peak per chip for the calibration rows."""
    from jaxheads import aot, tpu
    from jaxheads.models.config import config_from_hf
    from jaxheads.placement import model_layout
    from jaxheads.plan import plan

    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    for model, topology, mesh, rules, tokens, program in CALIBRATION:
        key = {"model": model, "topology": topology, "mesh": mesh, "rules": rules, "tokens": tokens,
               "program": program, "chunk": 16, **versions()}
        if any(record["key"] == key for record in done):
            continue
        cfg = config_from_hf(CONFIGS[model])
        data, width = (int(part) for part in mesh.split(","))
        layout = model_layout(cfg, tpu.mesh(tpu.topology(topology), data, width), rules)
        compiled = aot.compile_program(program, aot.Workload(cfg, layout, rows=16, tokens=tokens, prompts=100), 16)
        estimate = plan(cfg, data, width, prompts=100, tokens=tokens, batch_size=16, chunk_size=16,
                        dataset_level=program == "sahara", rules=rules).total
        record = {"key": key, "xla_peak_bytes": compiled.peak_bytes, "fits": compiled.fits,
                  "hbm_bytes": compiled.hbm_bytes, "estimate_bytes": estimate}
        with out.open("a") as file:
            file.write(json.dumps(record) + "\n")
        done.append(record)
    done = [record for record in done if all(record["key"].get(k) == v for k, v in versions().items())]
    print("| model | slice | mesh, rules | tokens | program | XLA peak | estimate | estimate / XLA |")
    print("|---|---|---|---|---|---|---|---|")
    for record in done:
        key = record["key"]
        peak = record["xla_peak_bytes"] / GIB
        print(f"| {key['model']} | {key['topology']} | {key['mesh'].replace(',', '×')}, {key['rules']} | "
              f"{key['tokens']} | {key['program']} chunk 16 | {peak:.2f} GiB{'' if record['fits'] else ' (over)'} | "
              f"{record['estimate_bytes'] / GIB:.2f} GiB | {record['estimate_bytes'] / record['xla_peak_bytes']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/scaling.jsonl")
    parser.add_argument("--only", default="", help="run only the rows whose model name contains this")
    parser.add_argument("--calibration", action="store_true", help="the formula against XLA at chunks of 16")
    args = parser.parse_args()
    if args.calibration:
        calibration(pathlib.Path(args.out).with_name("calibration.jsonl"))
        return
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}, {versions()}")
    with tempfile.TemporaryDirectory() as folder:
        # the pod-sized rows first (an interrupted run then has them); the table keeps ROWS' order
        for model, _, topology, mesh in sorted(ROWS, key=lambda row: row[0] in ("Llama-2-7B", "Llama-3-8B")):
            if args.only not in model:
                continue
            for tokens in TOKENS:
                key = row_key(model, topology, mesh, tokens)
                if any(record["key"] == key for record in done):
                    continue
                record = {"key": key, "result": run_row(pathlib.Path(folder), model, topology, mesh, tokens)}
                with out.open("a") as file:
                    file.write(json.dumps(record) + "\n")
                done.append(record)
    order = {(model, topology): i for i, (model, _, topology, _) in enumerate(ROWS)}
    done.sort(key=lambda r: (order.get((r["key"]["model"], r["key"]["topology"]), 99), r["key"]["tokens"]))
    print("XLA peak per chip / formula estimate, GiB (✓ fits the usable HBM: 15.75 GiB on v5e, 95.74 on v5p)")
    current = versions()
    print(table([record for record in done if args.only in record["key"]["model"]
                 and all(record["key"].get(k) == v for k, v in current.items())]))


if __name__ == "__main__":
    main()
