"""Defaults of `jaxheads plan`: the memory of a Ships or Sahara scan per device, from the model's config alone, or
(with `topology`) XLA's own numbers for every program a command runs, compiled ahead of time for a TPU topology."""

from jaxheads.configs import common

get_config, HELP = common.command(
    ("model", "mesh", "prompts", "tokens", "dtype", "batch_size", "chunk_size", "scan", "device_memory", "out",
     "sharding", "topology", "slices", "programs", "new_tokens", "train_batch", "lora_rank"),
    defaults={"dtype": "bfloat16", "sharding": ""},
    helps={"sharding": "Sharding rules: tp, fsdp, tp_fsdp (optionally +AXIS=TARGET changes, e.g. tp+embed=data); "
                       "empty = the preset under which the estimate fits the largest chunk (tp where memory is not "
                       "checked)."},
    model=("", "Model whose config.json (or GGUF metadata) is read: a folder, a config.json file, a .gguf file, a "
               "hub id (only its config.json is downloaded) or a packaged name; empty = the embedded SmolLM2."),
    mesh=("1,1", "Device mesh 'data,model', e.g. 4,2: prompt rows split over data, heads and MLP width over model "
                 "(with --topology it must have as many devices as the topology has chips)."),
    prompts=(100, "Prompts in the scan (the dataset-level representations grow with them)."),
    tokens=(1024, "Tokens per prompt after padding."),
    batch_size=(16, "Prompts per batch (split over the data axis)."),
    chunk_size=(16, "Ablations per device call (with --topology: where the search for the largest that fits starts "
                    "when the estimate cannot tell)."),
    scan=("sahara", "ships (query level) or sahara (dataset level and Sahara, which also keep every candidate's "
                    "representation of every prompt)."),
    device_memory=(0.0, "Memory of one device in GiB, e.g. 80 (H100), 15.75 (what XLA lets a program use on a TPU "
                        "v5e chip); 0 = do not check (with --topology: the chip's usable HBM, read from XLA)."),
    out=("", "Folder for plan.json; empty = only print."),
    topology=("", "TPU topology to compile for ahead of time, e.g. v5e:8x8 (v5e-64), v5e:16x16 (v5e-256), v5p:4x4x4 "
                  "(v5p-64), v5p:4x4x8 (v5p-128); needs pip install 'jaxheads[tpu]', no TPU; empty = the formula only."),
    slices=(1, "TPU slices of --topology (data parallel over slices: the data axis spans them)."),
    programs=("ships,sahara,generate,train,train_lora", "With --topology: the programs to compile: ships (a chunk of "
              "the query-level scan), sahara (a chunk with every representation resident), generate (an ASR "
              "generation batch), train and train_lora (a Surgery micro-step, full or LoRA)."),
    new_tokens=(64, "With --topology: tokens the generate program generates per prompt."),
    train_batch=(8, "With --topology: examples per training micro-step (of --tokens tokens, with 2 Surgery pairs)."),
    lora_rank=(16, "With --topology: the LoRA rank of train_lora."),
)
