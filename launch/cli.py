"""The `jaxheads` command: `jaxheads COMMAND [--FLAG=VALUE ...]` runs the launch `jaxheads.launch.COMMAND`."""

from __future__ import annotations

import importlib
import sys

# command -> one line; each is the module jaxheads.launch.<command>
COMMANDS = {
    "ships": "query-level Ships of every head over a prompt set",
    "sahara": "greedy search for the heads whose ablation most changes the prompts' representation",
    "evaluate": "attack success rate with heads ablated",
    "sahara_asr": "ASR with Sahara's first k heads next to k random heads",
    "sink": "per-head sink attention and sink divergence on (harmful, safe) pairs",
    "align": "safety alignment by supervised fine-tuning",
    "finetune": "harmful fine-tuning (SFT or Surgery) of an aligned model",
    "compare": "top-k overlap and rank correlation of the safety heads of several runs",
    "plan": "memory of a scan per device, from the model's config alone",
    "patterns": "where chosen heads look from the last prompt position, on harmful and harmless prompts",
    "utility": "perplexity, harmless refusals and arithmetic accuracy with heads ablated vs random heads",
    "guard_train": "train the four-tier input guard (LoRA classifier); also `jaxheads guard train`",
    "guard_eval": "the guard's per-tier recall, precision, risk recall on a labelled set; `jaxheads guard eval`",
    "guard_classify": "the guard's tier and probabilities for each prompt; `jaxheads guard classify`",
    "judge_train": "train the response judge (LoRA classifier of prompt + response); also `jaxheads judge train`",
    "judge_eval": "a response judge's labels, accuracy and keyword-judge agreement; `jaxheads judge eval`",
}
GUARD_SUBCOMMANDS = ("train", "eval", "classify")  # `jaxheads guard SUB` runs `guard_SUB`
JUDGE_SUBCOMMANDS = ("train", "eval")  # `jaxheads judge SUB` runs `judge_SUB`
SUBCOMMANDS = {"guard": GUARD_SUBCOMMANDS, "judge": JUDGE_SUBCOMMANDS}


def usage() -> str:
    lines = ["usage: jaxheads COMMAND [--FLAG=VALUE ...]", "", "commands:"]
    lines += [f"  {name:<14} {line}" for name, line in COMMANDS.items()]
    lines += ["", "`jaxheads COMMAND --help` lists a command's flags and their defaults."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0)
    command, rest = argv[1], argv[2:]
    if command in SUBCOMMANDS:
        if not rest or rest[0] not in SUBCOMMANDS[command]:
            sys.stderr.write(f"jaxheads {command}: give one of {', '.join(SUBCOMMANDS[command])}, e.g. jaxheads "
                             f"{command} train --help\n")
            sys.exit(2)
        command, rest = f"{command}_{rest[0]}", rest[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"jaxheads: unknown command {command!r}\n\n{usage()}")
        sys.exit(2)
    importlib.import_module(f"jaxheads.launch.{command}").main([f"jaxheads {command}", *rest])
