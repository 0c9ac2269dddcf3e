"""The harmful fine-tuning experiment on an aligned model: SFT on arithmetic problems with a
fraction of harmful pairs, optionally with the Surgery penalty. Writes finetune.json and training.png.

    jaxheads finetune --model=runs/align/model --harmful_ratio=0.1 --out=runs/ft_sft
    jaxheads finetune --model=runs/align/model --harmful_ratio=0.1 --surgery_lambda=300 --out=runs/ft_surgery
"""

from jaxheads.configs import finetune as config
from jaxheads.jobs import finetune as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("finetune", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
