"""Per-head attention onto the sink token on (harmful answer, refusal) pairs and the sink divergence.
Writes sink.json and sink_divergence.png.

    jaxheads sink --model=runs/align/model --out=runs/sink
"""

from jaxheads.configs import sink as config
from jaxheads.jobs import sink as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("sink", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
