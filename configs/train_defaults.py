"""Trainer settings shared by `jaxheads align` and `jaxheads finetune` (the fields of `jaxheads.train.TrainConfig`)."""

import ml_collections

HELP = {
    "steps": "Optimizer steps; 0 = as many as `epochs` passes over the examples take.",
    "epochs": "Passes over the training examples when steps = 0.",
    "batch_size": "Examples per micro-batch.",
    "grad_accum": "Micro-batches accumulated per optimizer step.",
    "learning_rate": "Peak learning rate.",
    "optimizer": "adamw, or sgd (plain gradient steps, no moment estimates).",
    "schedule": "Learning-rate schedule after the warm-up: cosine (decay to min_lr_ratio x lr) or constant.",
    "warmup_steps": "Linear warm-up steps from 0.",
    "min_lr_ratio": "Final learning rate of the cosine schedule, as a fraction of the peak.",
    "weight_decay": "AdamW weight decay (not applied to norms and biases).",
    "max_grad_norm": "Global gradient-norm clipping; 0 = none.",
    "lora_rank": "LoRA rank; 0 = full fine-tuning.",
    "lora_alpha": "LoRA scale numerator (scale = alpha / rank).",
    "lora_targets": "Projections that get LoRA adapters, among q,k,v,o,gate,up,down.",
    "surgery_lambda": "Weight of the Surgery penalty mean ReLU(sink divergence); 0 = plain fine-tuning.",
    "surgery_batch": "(harmful, safe) samples per step for the Surgery penalty.",
    "sink_every": "Log the number of positive-divergence heads every this many steps; 0 = never.",
    "max_length": "Tokens per training example (prompt + answer); longer answers are cut.",
    "fsdp": "On a mesh, also split each parameter's largest divisible axis over the data axis.",
    "mesh": "Device mesh 'data,model', e.g. 4,2 (-1 = the remaining devices); empty = every device data-parallel.",
    "seed": "Seed of the data order, LoRA initialisation and Surgery draws.",
    "save_every": "Checkpoint every this many steps (and at the end, and on Ctrl-C).",
    "keep_checkpoints": "Checkpoints kept on disk.",
}


def add_train_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the trainer fields (see HELP) with their defaults to `config`."""
    config.steps = 0
    config.epochs = 1.0
    config.batch_size = 8
    config.grad_accum = 1
    config.learning_rate = 2e-5
    config.optimizer = "adamw"
    config.schedule = "cosine"
    config.warmup_steps = 5
    config.min_lr_ratio = 0.1
    config.weight_decay = 0.0
    config.max_grad_norm = 1.0
    config.lora_rank = 0
    config.lora_alpha = 16.0
    config.lora_targets = "q,k,v,o"
    config.surgery_lambda = 0.0
    config.surgery_batch = 2  # per side and micro-step
    config.sink_every = 0
    config.max_length = 256
    config.fsdp = False
    config.mesh = ""
    config.seed = 0
    config.save_every = 50
    config.keep_checkpoints = 2
    return config
