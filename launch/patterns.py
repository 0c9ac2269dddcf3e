"""Where chosen heads look: the last prompt position's attention over the prompt's tokens, on harmful and on
harmless prompts, with the tokens each head attends to most on each set. Writes patterns.json and patterns.png.

    jaxheads patterns --heads=18:8,5:6 --out=runs/patterns
    jaxheads patterns --model=runs/align/model --heads_from=runs/sahara/sahara.json --out=runs/patterns_sahara
"""

from jaxheads.configs import patterns as config
from jaxheads.jobs import patterns as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("patterns", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
