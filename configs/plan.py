"""Defaults of `jaxheads plan`: the memory of a Ships or Sahara scan per device, from the model's config alone."""

from jaxheads.configs import common

get_config, HELP = common.command(
    ("model", "mesh", "prompts", "tokens", "dtype", "batch_size", "chunk_size", "scan", "device_memory", "out"),
    defaults={"dtype": "bfloat16"},
    model=("", "Model whose config.json (or GGUF metadata) is read: a folder, a config.json file, a .gguf file, a "
               "hub id (only its config.json is downloaded) or a packaged name; empty = the embedded SmolLM2."),
    mesh=("1,1", "Device mesh 'data,model', e.g. 4,2: prompt rows split over data, heads and MLP width over model."),
    prompts=(100, "Prompts in the scan (the dataset-level representations grow with them)."),
    tokens=(1024, "Tokens per prompt after padding."),
    batch_size=(16, "Prompts per batch (split over the data axis)."),
    chunk_size=(16, "Ablations per device call."),
    scan=("sahara", "ships (query level) or sahara (dataset level and Sahara, which also keep every candidate's "
                    "representation of every prompt)."),
    device_memory=(0.0, "Memory of one device in GiB, e.g. 80 (H100), 16 (TPU v5e); 0 = do not check."),
    out=("", "Folder for plan.json; empty = only print."),
)
