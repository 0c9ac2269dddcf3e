"""The memory of a Ships or Sahara scan per device (weights, saved layer inputs, one chunk of ablations, the
representations), and the largest chunk that fits a device, from the model's config alone.

    jaxheads plan --model=meta-llama/Llama-2-7b-chat-hf --mesh=4,2 --prompts=100 --tokens=1024 --device_memory=80
"""

from jaxheads.configs import plan as config
from jaxheads.jobs import plan as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("plan", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
