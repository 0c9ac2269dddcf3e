"""Do runs on different models (say, two fine-tunes of one base model) find the same safety heads? For each pair
of ships.json or sahara.json files: the overlap of their top-k heads against random choice (hypergeometric
p-value) and the Spearman correlation of their score maps. Writes compare.json and compare_heads.png.

    jaxheads compare --runs=runs/ships_llama/ships.json,runs/ships_vicuna/ships.json --out=runs/compare
    jaxheads compare --runs=llama=runs/a/sahara.json,vicuna=runs/b/sahara.json --top_k=10 --out=runs/compare_sahara
"""

from jaxheads.configs import compare as config
from jaxheads.jobs import compare as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("compare", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
