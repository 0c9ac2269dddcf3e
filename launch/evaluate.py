"""Attack success rate with heads ablated: greedy responses judged for refusal. Writes asr.json and
generations.jsonl.

    jaxheads evaluate --ablate_from=runs/sahara/sahara.json --dataset=builtin:harmful:heldout --out=runs/eval
    jaxheads evaluate --top_k_from=runs/ships/ships.json --top_k=1 --out=runs/eval_top1
"""

from jaxheads.configs import evaluate as config
from jaxheads.jobs import evaluate as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("evaluate", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
