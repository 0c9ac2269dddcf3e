"""Defaults of `jaxheads plan`: the memory of a Ships or Sahara scan per device, from the model's config alone."""

import ml_collections

from jaxheads.configs import common

HELP = {
    "model": "Model whose config.json (or GGUF metadata) is read: a folder, a config.json file, a .gguf file, a hub "
             "id (only its config.json is downloaded) or a packaged name; empty = the embedded SmolLM2.",
    "mesh": "Device mesh 'data,model', e.g. 4,2: prompt rows split over data, heads and MLP width over model.",
    "prompts": "Prompts in the scan (the dataset-level representations grow with them).",
    "tokens": "Tokens per prompt after padding.",
    "dtype": common.FIELDS["dtype"][1],
    "batch_size": "Prompts per batch (split over the data axis).",
    "chunk_size": "Ablations per device call.",
    "scan": "ships (query level) or sahara (dataset level and Sahara, which also keep every candidate's "
            "representation of every prompt).",
    "device_memory": "Memory of one device in GiB, e.g. 80 (H100), 16 (TPU v5e); 0 = do not check.",
    "out": "Folder for plan.json; empty = only print.",
}


def get_config():
    config = ml_collections.ConfigDict(sort_keys=False)
    config.model = ""
    config.mesh = "1,1"
    config.prompts = 100
    config.tokens = 1024
    config.dtype = "bfloat16"
    config.batch_size = 16
    config.chunk_size = 16
    config.scan = "sahara"
    config.device_memory = 0.0
    config.out = ""
    return config
