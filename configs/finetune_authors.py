"""`jaxheads finetune --config=finetune_authors`: the harmful fine-tuning experiment with the Surgery authors'
optimizer settings (Liu et al. 2026, their fine-tuning scripts): AdamW, constant learning rate 5e-6 with no
warm-up, 5 epochs over 1000 samples in batches of 10, bfloat16 compute, sequences up to 512 tokens, λ = 300.
At SmolLM2-135M size that is 500 steps: hours on a CPU, minutes on a GPU."""

from jaxheads.configs import finetune

HELP = finetune.HELP
AUTHORS = dict(num_samples=1000, epochs=5.0, steps=0, batch_size=10, learning_rate=5e-6, schedule="constant",
               warmup_steps=0, dtype="bfloat16", max_length=512, surgery_lambda=300.0)


def get_config():
    config = finetune.get_config()
    config.update(AUTHORS)
    return config
