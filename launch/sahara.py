"""Sahara: greedy search for the heads whose joint ablation most changes the dataset-level
representation of the prompts (principal angles). Writes sahara.json and sahara_heads.png; a rerun resumes.

    jaxheads sahara --dataset=builtin:harmful:train --limit=64 --steps=3 --out=runs/sahara
"""

from jaxheads.configs import sahara as config
from jaxheads.jobs import sahara as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("sahara", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
