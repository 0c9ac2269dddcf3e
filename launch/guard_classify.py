"""The guard's tier and per-tier probabilities for every prompt of a set, one forward pass per prompt. Writes
guard.jsonl and guard.json (counts per tier, throughput; the metrics too when the set is labelled).

    jaxheads guard classify --dataset=requests.txt --out=runs/guard_classify
"""

from jaxheads.configs import guard_classify as config
from jaxheads.jobs import guard as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("guard classify", job.classify, config, __doc__, argv)


if __name__ == "__main__":
    main()
