"""Query-level Ships of every head over a prompt set: the KL divergence of the first response token's
distribution when one head is ablated. Writes ships.json, ships.csv and ships_heatmap.png; a rerun resumes.

    jaxheads ships --limit=8 --out=runs/ships
    jaxheads ships --model=runs/align/model --dataset=advbench.csv --ablation=sc --epsilon=0 --out=runs/ships_sc
"""

from jaxheads.configs import ships as config
from jaxheads.jobs import ships as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("ships", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
