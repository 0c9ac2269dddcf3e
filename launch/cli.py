"""The `jaxheads` command (and `python -m jaxheads.launch`): `jaxheads COMMAND [FILE ...] [--FLAG=VALUE ...]`.

`COMMANDS` is the one table of the commands: each names its config (`jaxheads.configs.NAME`: the defaults and the
help of every flag), its job (`jaxheads.jobs.MODULE:FUNCTION`, called with the resolved config), what it does and
examples (`jaxheads COMMAND --help`), and which config field takes file arguments given without a flag.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

from jaxheads.launch import common


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str  # one line of `jaxheads --help`
    job: str  # "module:function" in jaxheads.jobs
    doc: str  # what the command does, then examples (blank-line separated), for `jaxheads COMMAND --help`
    config: str = ""  # the module in jaxheads.configs; empty = the command's own name
    inputs: str | None = None  # the config field that arguments without a flag fill (files the command reads)
    many: bool = False  # several such arguments, joined with commas


COMMANDS = {
    "ships": Command(
        "query-level Ships of every head over a prompt set", "ships:run",
        """Query-level Ships of every head over a prompt set: the KL divergence of the first response token's
        distribution when one head is ablated. Writes ships.json, ships.csv and ships_heatmap.png; a rerun resumes.

        jaxheads ships --limit=8 --out=runs/ships
        jaxheads ships --model=runs/align/model --dataset=advbench.csv --ablation=sc --epsilon=0 --out=runs/ships_sc"""),
    "sahara": Command(
        "greedy search for the heads whose ablation most changes the prompts' representation", "sahara:run",
        """Sahara: greedy search for the heads whose joint ablation most changes the dataset-level
        representation of the prompts (principal angles). Writes sahara.json and sahara_heads.png; a rerun resumes.

        jaxheads sahara --dataset=builtin:harmful:train --limit=64 --steps=3 --out=runs/sahara"""),
    "evaluate": Command(
        "attack success rate with heads ablated", "evaluate:run",
        """Attack success rate with heads ablated: greedy responses judged for refusal. Writes asr.json and
        generations.jsonl.

        jaxheads evaluate --ablate_from=runs/sahara/sahara.json --dataset=builtin:harmful:heldout --out=runs/eval
        jaxheads evaluate --top_k_from=runs/ships/ships.json --top_k=1 --out=runs/eval_top1"""),
    "sahara_asr": Command(
        "ASR with Sahara's first k heads next to k random heads", "sahara_asr:run",
        """ASR with Sahara's first k heads ablated next to k random heads (the mean of several draws), for
        k = 1..K. Writes sahara_asr.json and sahara_asr.png; a rerun resumes.

        jaxheads sahara_asr runs/sahara/sahara.json --model=runs/align/model --out=runs/sahara_asr""",
        inputs="sahara"),
    "sink": Command(
        "per-head sink attention and sink divergence on (harmful, safe) pairs", "sink:run",
        """Per-head attention onto the sink token on (harmful answer, refusal) pairs and the sink divergence.
        Writes sink.json and sink_divergence.png.

        jaxheads sink --model=runs/align/model --out=runs/sink"""),
    "align": Command(
        "safety alignment by supervised fine-tuning", "align:run",
        """Safety alignment by supervised fine-tuning: refusals for harmful prompts, the model's own answers
        for harmless ones. Writes align.json, the aligned model in out/model and training.png; a rerun resumes.

        jaxheads align --out=runs/align
        jaxheads align --advbench=path/to/harmful_behaviors.csv --out=runs/align"""),
    "finetune": Command(
        "harmful fine-tuning (SFT or Surgery) of an aligned model", "finetune:run",
        """The harmful fine-tuning experiment on an aligned model: SFT on arithmetic problems with a
        fraction of harmful pairs, optionally with the Surgery penalty. Writes finetune.json and training.png.

        jaxheads finetune --model=runs/align/model --harmful_ratio=0.1 --out=runs/ft_sft
        jaxheads finetune --model=runs/align/model --harmful_ratio=0.1 --surgery_lambda=300 --out=runs/ft_surgery"""),
    "compare": Command(
        "top-k overlap and rank correlation of the safety heads of several runs", "compare:run",
        """Do runs on different models (say, two fine-tunes of one base model) find the same safety heads? For each pair
        of ships.json or sahara.json files: the overlap of their top-k heads against random choice (hypergeometric
        p-value) and the Spearman correlation of their score maps. Writes compare.json and compare_heads.png.

        jaxheads compare runs/ships_llama/ships.json runs/ships_vicuna/ships.json --out=runs/compare
        jaxheads compare llama=runs/a/sahara.json vicuna=runs/b/sahara.json --top_k=10 --out=runs/compare_sahara""",
        inputs="runs", many=True),
    "plan": Command(
        "memory of a scan per device, from the model's config alone", "plan:run",
        """The memory of a Ships or Sahara scan per device (weights, saved layer inputs, one chunk of ablations, the
        representations), and the largest chunk that fits a device, from the model's config alone.

        jaxheads plan --model=meta-llama/Llama-2-7b-chat-hf --mesh=4,2 --prompts=100 --tokens=1024 --device_memory=80"""),
    "patterns": Command(
        "where chosen heads look from the last prompt position, on harmful and harmless prompts", "patterns:run",
        """Where chosen heads look: the last prompt position's attention over the prompt's tokens, on harmful and on
        harmless prompts, with the tokens each head attends to most on each set. Writes patterns.json and patterns.png.

        jaxheads patterns --heads=18:8,5:6 --out=runs/patterns
        jaxheads patterns runs/sahara/sahara.json --model=runs/align/model --out=runs/patterns_sahara""",
        inputs="heads_from"),
    "utility": Command(
        "perplexity, harmless refusals and arithmetic accuracy with heads ablated vs random heads", "utility:run",
        """Perplexity of harmless text, harmless refusal rate and arithmetic accuracy with the first k heads of a set
        ablated (Sahara's, or a list), next to k random heads and no ablation, for k = 1..K. Writes utility.json and
        utility.png; a rerun resumes.

        jaxheads utility runs/sahara/sahara.json --model=runs/align/model --out=runs/utility
        jaxheads utility --model=runs/align/model --heads=18:8,5:6 --out=runs/utility_list""",
        inputs="sahara"),
    "guard_train": Command(
        "train the four-tier input guard (LoRA classifier); also `jaxheads guard train`", "guard:train",
        """Trains the four-tier input guard (docs/guard.md) as a LoRA adapter: the model scores the tier tokens after a
        fixed guard prompt; the temperature and the Safe threshold are calibrated on training prompts kept out of
        training. Writes out/adapter, guard_train.json, training.png and the held-out evaluation in out/heldout; a rerun
        resumes.

        jaxheads guard train --out=runs/guard
        jaxheads guard train --model=Qwen/Qwen2.5-0.5B-Instruct --extra=requests.csv=unsafe --out=runs/guard_qwen"""),
    "guard_eval": Command(
        "the guard's per-tier recall, precision, risk recall on a labelled set; `jaxheads guard eval`", "guard:evaluate",
        """The guard's per-tier recall and precision, confusion matrix, risk recall, false-alarm rate and over-caution on
        a labelled prompt set. Writes guard.json, guard.jsonl and guard_confusion.png.

        jaxheads guard eval --out=runs/guard_eval
        jaxheads guard eval harmful_behaviors.csv --tier=unsafe --out=runs/guard_advbench""",
        inputs="dataset"),
    "guard_classify": Command(
        "the guard's tier and probabilities for each prompt; `jaxheads guard classify`", "guard:classify",
        """The guard's tier and per-tier probabilities for every prompt of a set, one forward pass per prompt. Writes
        guard.jsonl and guard.json (counts per tier, throughput; the metrics too when the set is labelled).

        jaxheads guard classify requests.txt --out=runs/guard_classify""",
        inputs="dataset"),
    "judge_train": Command(
        "train the response judge (LoRA classifier of prompt + response); also `jaxheads judge train`",
        "guard:train_judge",
        """Trains the response judge (docs/judge.md) as a LoRA adapter: the model scores the label tokens (refusal, harmful,
        nonsense, benign) after a fixed prompt holding the request and the response; the temperature is calibrated on
        training responses kept out of training. Writes out/adapter, judge_train.json, training.png and the held-out
        evaluation in out/heldout; a rerun resumes.

        jaxheads judge train --out=runs/judge"""),
    "judge_eval": Command(
        "a response judge's labels, accuracy and keyword-judge agreement; `jaxheads judge eval`",
        "guard:evaluate_judge",
        """A response judge's label for each (prompt, response) pair; with labels its accuracy, per-label recall and
        precision, confusion matrix and agreement with the keyword judge, and the responses on which the two judges disagree
        most. Writes judge.json, judge.jsonl, judge_disagreements.jsonl and judge_confusion.png.

        jaxheads judge eval builtin:judge:heldout --judge=runs/judge --out=runs/judge_eval""",
        inputs="dataset"),
}
# `jaxheads guard SUB` runs `guard_SUB`, `jaxheads judge SUB` runs `judge_SUB`.
SUBCOMMANDS = {"guard": ("train", "eval", "classify"), "judge": ("train", "eval")}


def usage() -> str:
    lines = ["usage: jaxheads COMMAND [FILE ...] [--FLAG=VALUE ...]", "", "commands:"]
    lines += [f"  {name:<14} {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "`jaxheads COMMAND --help` lists a command's flags and their defaults."]
    return "\n".join(lines) + "\n"


def job_function(command: Command):
    """The job function `command` runs (its module is imported only when the command runs)."""
    module, function = command.job.split(":")
    return getattr(importlib.import_module(f"jaxheads.jobs.{module}"), function)


def config_module(name: str):
    """The config module of the command `name`."""
    return importlib.import_module(f"jaxheads.configs.{COMMANDS[name].config or name}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0)
    name, rest = argv[1], argv[2:]
    shown = name
    if name in SUBCOMMANDS:
        if not rest or rest[0] not in SUBCOMMANDS[name]:
            sys.stderr.write(f"jaxheads {name}: give one of {', '.join(SUBCOMMANDS[name])}, e.g. jaxheads "
                             f"{name} train --help\n")
            sys.exit(2)
        shown = f"{name} {rest[0]}"
        name, rest = f"{name}_{rest[0]}", rest[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"jaxheads: unknown command {name!r}\n\n{usage()}")
        sys.exit(2)
    command = COMMANDS[name]
    common.launch(shown, job_function(command), config_module(name), command.doc,
                  [f"jaxheads {shown}", *rest], inputs=command.inputs, many=command.many)
