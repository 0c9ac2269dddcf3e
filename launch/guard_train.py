"""Trains the four-tier input guard (docs/guard.md) as a LoRA adapter: the model scores the tier tokens after a
fixed guard prompt; the temperature and the Safe threshold are calibrated on training prompts kept out of
training. Writes out/adapter, guard_train.json, training.png and the held-out evaluation in out/heldout; a rerun
resumes.

    jaxheads guard train --out=runs/guard
    jaxheads guard train --model=Qwen/Qwen2.5-0.5B-Instruct --extra=requests.csv=unsafe --out=runs/guard_qwen
"""

from jaxheads.configs import guard_train as config
from jaxheads.jobs import guard as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("guard train", job.train, config, __doc__, argv)


if __name__ == "__main__":
    main()
