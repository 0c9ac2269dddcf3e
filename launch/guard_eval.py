"""The guard's per-tier recall and precision, confusion matrix, risk recall, false-alarm rate and over-caution on
a labelled prompt set. Writes guard.json, guard.jsonl and guard_confusion.png.

    jaxheads guard eval --out=runs/guard_eval
    jaxheads guard eval --dataset=harmful_behaviors.csv --tier=unsafe --out=runs/guard_advbench
"""

from jaxheads.configs import guard_eval as config
from jaxheads.jobs import guard as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("guard eval", job.evaluate, config, __doc__, argv)


if __name__ == "__main__":
    main()
