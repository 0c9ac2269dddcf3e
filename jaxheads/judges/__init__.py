"""Model judges on the jaxheads core (docs/judges.md): `load(kind, DIR, **options)` returns a judge, called as
`judge(prompts, responses) -> (verdicts, scores)` (verdict True = harmful, an attack success), or
`judge.judge(...)` for the `Judgement` with each pair's details.

kinds: `llamaguard`, `shieldgemma` (policy=), `beaverdam`, `harmbench` (template=), `strongreject` (template=,
a LoRA adapter folder over base=), `wildguard` (template=). On the command line: `--judge=KIND:DIR` with
`--judge_template=FILE`, `--policy=...`, `--judge_base=DIR`, `--judge_mesh=...`."""

from __future__ import annotations

import os
import pathlib

from jax.sharding import Mesh

from jaxheads.errors import DataError
from jaxheads.judges import peft
from jaxheads.judges.base import Judgement, ModelJudge, load_checkpoint, options_used
from jaxheads.judges.beaverdam import BeaverDam
from jaxheads.judges.chat import LlamaGuard, ShieldGemma
from jaxheads.judges.templates import HarmBench, StrongReject, WildGuard, behaviour_asr

JUDGES = {"llamaguard": LlamaGuard, "shieldgemma": ShieldGemma, "beaverdam": BeaverDam, "harmbench": HarmBench,
          "strongreject": StrongReject, "wildguard": WildGuard}
KINDS = tuple(JUDGES)
# the options each kind takes beyond the shared ones (dtype, mesh, batch_size, progress)
OPTIONS = {"llamaguard": (), "shieldgemma": ("policy",), "beaverdam": (), "harmbench": ("template",),
           "strongreject": ("template", "base"), "wildguard": ("template",)}
MODEL_CLASSES = {"beaverdam": "AutoModelForSequenceClassification"}


def parse_spec(spec: str) -> tuple[str, str] | None:
    """`(kind, folder)` of a `--judge=KIND:DIR` spec, None when `spec` names no model-judge kind."""
    kind, sep, folder = str(spec).partition(":")
    if not sep or kind not in JUDGES:
        return None
    if not folder:
        raise DataError(f"--judge={spec}: give the checkpoint folder after the colon ({kind}:DIR)")
    return kind, folder


def is_spec(spec: str) -> bool:
    return parse_spec(spec) is not None


def check(kind: str, directory: str, template: str = "", policy: str = "", base: str = "") -> None:
    """The settings of a model judge, checked before any work (the folder, the template file, the policy)."""
    if kind not in JUDGES:
        raise DataError(f"unknown judge kind {kind!r}; choose one of {', '.join(KINDS)}")
    options_used({"template": template, "policy": policy, "base": base}, OPTIONS[kind], kind)
    path = pathlib.Path(os.path.expanduser(directory))
    if not path.is_dir():
        raise DataError(f"--judge={kind}:{directory}: no such checkpoint folder")
    if "template" in OPTIONS[kind] and not template:
        raise DataError(f"--judge={kind} needs --judge_template=FILE (docs/judges.md names the file and revision)")
    if template and not pathlib.Path(os.path.expanduser(template)).is_file():
        raise DataError(f"--judge_template={template}: no such file")
    if kind == "shieldgemma" and not str(policy).strip():
        raise DataError("--judge=shieldgemma needs --policy=TEXT (one harm policy) or --policy=FILE (one per line)")


def load(kind: str, directory: str | os.PathLike, *, template: str | None = None, policy: str | None = None,
         base: str | None = None, dtype: str = "float32", mesh: Mesh | None = None, sharding: str | None = None,
         batch_size: int = 16, progress: bool = False) -> ModelJudge:
    """The `kind` judge of the checkpoint folder `directory` (a LoRA adapter folder is merged into its base on
    load), on `mesh` (one device without) in the layout of the `sharding` rules (`jaxheads.load`'s; "tp" by
    default), batches split over the mesh's data axis."""
    directory = str(directory)
    check(kind, directory, template or "", policy or "", base or "")
    if peft.is_adapter(os.path.expanduser(directory)):
        model = peft.load_merged(directory, kind, base, dtype, mesh, sharding)
    else:
        model = load_checkpoint(directory, kind, dtype, mesh, MODEL_CLASSES.get(kind, "AutoModelForCausalLM"),
                                sharding)
    options = {"batch_size": batch_size, "mesh": mesh, "progress": progress}
    if "template" in OPTIONS[kind]:
        options["template"] = template
    if kind == "shieldgemma":
        options["policy"] = policy
    if kind == "beaverdam":
        options["directory"] = os.path.expanduser(directory)
    return JUDGES[kind](model, f"{kind}:{directory}", **options)


__all__ = ["JUDGES", "KINDS", "Judgement", "ModelJudge", "behaviour_asr", "check", "is_spec", "load", "parse_spec"]
