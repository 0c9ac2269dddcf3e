"""A response judge's label for each (prompt, response) pair; with labels its accuracy, per-label recall and
precision, confusion matrix and agreement with the keyword judge, and the responses on which the two judges disagree
most. Writes judge.json, judge.jsonl, judge_disagreements.jsonl and judge_confusion.png.

    jaxheads judge eval --judge=runs/judge --dataset=builtin:judge:heldout --out=runs/judge_eval
"""

from jaxheads.configs import judge_eval as config
from jaxheads.jobs import guard as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("judge eval", job.evaluate_judge, config, __doc__, argv)


if __name__ == "__main__":
    main()
