"""Perplexity of harmless text, harmless refusal rate and arithmetic accuracy with the first k heads of a set
ablated (Sahara's, or a list), next to k random heads and no ablation, for k = 1..K. Writes utility.json and
utility.png; a rerun resumes.

    jaxheads utility --model=runs/align/model --sahara=runs/sahara/sahara.json --out=runs/utility
    jaxheads utility --model=runs/align/model --heads=18:8,5:6 --out=runs/utility_list
"""

from jaxheads.configs import utility as config
from jaxheads.jobs import utility as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("utility", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
