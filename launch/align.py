"""Safety alignment by supervised fine-tuning: refusals for harmful prompts, the model's own answers
for harmless ones. Writes align.json, the aligned model in out/model and training.png; a rerun resumes.

    jaxheads align --out=runs/align
    jaxheads align --advbench=path/to/harmful_behaviors.csv --out=runs/align
"""

from jaxheads.configs import align as config
from jaxheads.jobs import align as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("align", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
