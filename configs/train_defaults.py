"""Trainer settings shared by `configs/align.py` and `configs/finetune.py` (fields of `jaxheads.train.TrainConfig`)."""

import ml_collections


def add_train_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.steps = 0  # optimizer steps; 0 = derived from epochs
    config.epochs = 1.0
    config.batch_size = 8
    config.grad_accum = 1
    config.learning_rate = 2e-5
    config.schedule = "cosine"  # or "constant"
    config.warmup_steps = 5
    config.min_lr_ratio = 0.1
    config.weight_decay = 0.0
    config.max_grad_norm = 1.0
    config.lora_rank = 0  # 0 = full fine-tuning
    config.lora_alpha = 16.0
    config.lora_targets = "q,k,v,o"  # among q,k,v,o,gate,up,down
    config.surgery_lambda = 0.0  # 0 = plain SFT
    config.surgery_batch = 2
    config.sink_every = 0
    config.max_length = 256
    config.fsdp = False  # also split each parameter's largest divisible axis over the mesh's data axis
    config.mesh = ""  # "data,model" device mesh, e.g. 4,2; "" = every device data-parallel
    config.distributed = False  # multi-host: jax.distributed.initialize() first; only process 0 writes files
    config.seed = 0
    config.save_every = 50
    config.keep_checkpoints = 2
    return config
