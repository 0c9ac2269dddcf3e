"""ASR with Sahara's first k heads ablated next to k random heads (the mean of several draws), for
k = 1..K. Writes sahara_asr.json and sahara_asr.png; a rerun resumes.

    jaxheads sahara_asr --model=runs/align/model --sahara=runs/sahara/sahara.json --out=runs/sahara_asr
"""

from jaxheads.configs import sahara_asr as config
from jaxheads.jobs import sahara_asr as job
from jaxheads.launch import common


def main(argv: list[str] | None = None) -> None:
    common.launch("sahara_asr", job.run, config, __doc__, argv)


if __name__ == "__main__":
    main()
