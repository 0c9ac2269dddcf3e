"""Trains the response judge (docs/judge.md) as a LoRA adapter: the model scores the label tokens (refusal, harmful,
nonsense, benign) after a fixed prompt holding the request and the response; the temperature is calibrated on
training responses kept out of training. Writes out/adapter, judge_train.json, training.png and the held-out
evaluation in out/heldout; a rerun resumes.

    jaxheads judge train --out=runs/judge
"""

from jaxheads.configs import judge_train as config
from jaxheads.jobs import guard as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("judge train", job.train_judge, config, __doc__, argv)


if __name__ == "__main__":
    main()
