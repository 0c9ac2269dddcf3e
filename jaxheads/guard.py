"""The input guard (docs/guard.md): a classifier (`jaxheads.classifier`) of the jaxheads model core that sorts
prompts into four tiers (safe, conditionally_safe, focused_attention, unsafe), what each tier does to generation,
and guarded generation.

The guard trained on the default model ships in `jaxheads/data/guard/` (`load_guard("builtin")`). With a response
judge (`jaxheads.eval.judges.ResponseJudge`, the shipped one by default for the default model) the guard also
screens each generated answer, and withholds those the judge labels harmful_compliance.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxheads import tokens
from jaxheads.classifier import ADAPTER_META, Adapter, Classifier, Task
from jaxheads.data.formats import format_prompt
from jaxheads.data.labels import CONDITIONAL, FOCUSED, GUARD_TIERS, HARMFUL, SAFE, UNSAFE
from jaxheads.data.loaders import load_refusals
from jaxheads.errors import JaxheadsError
from jaxheads.eval.judges import BUILTIN_JUDGE, ResponseJudge, builtin_judge_dir, judge_adapter, load_judge
from jaxheads.generation import Generation, check_per_prompt, generate
from jaxheads.loading import load

TIERS = GUARD_TIERS
BUILTIN = "builtin"
AUTO = "auto"

GUARD_TEMPLATE = (
    "Sort the user's request into one risk tier.\n"
    "safe: everyday and harmless.\n"
    "caution: legitimate, but a careless answer could hurt (health, law, money, security, hazards).\n"
    "sensitive: distress, abuse, extremism, or a contested topic.\n"
    "unsafe: real help towards serious harm, or harmful text itself.\n"
    "Request: {prompt}\n"
    "Tier:"
)
# The safety note a Conditionally Safe request gets, in brackets after the request, before the request is formatted
# for the guarded model. Short and after the request: a long instruction in front of it made SmolLM2-135M-Instruct
# answer 28 of 37 harmless requests with nothing at all in the `template` format (docs/guard.md).
SAFETY_PREAMBLE = ("Answer with care, say what the risks are, and suggest a professional or the emergency services "
                   "where that applies.")
REFUSAL_INDEX = 0  # the line of jaxheads/data/refusals.txt an Unsafe prompt gets

GUARD_TASK = Task("guard", TIERS, (" safe", " caution", " sensitive", " unsafe"), GUARD_TEMPLATE, negative=SAFE,
                  alarm=UNSAFE)


def builtin_adapter_dir() -> pathlib.Path:
    """Where the adapter trained on the default model is installed (jaxheads/data/guard/)."""
    return pathlib.Path(str(importlib.resources.files("jaxheads.data").joinpath("guard")))


class Guard:
    """The input guard: a four-tier `Classifier` and what each tier does to generation (docs/guard.md).
    Unsafe prompts get `refusal` without running the model, Conditionally Safe prompts get `preamble` (a safety note)
    after the request, Focused Attention prompts are answered and flagged, Safe prompts are answered as they are.
    With a response `judge` (`ResponseJudge`), every generated answer is screened: one labelled harmful_compliance
    is withheld and replaced by `refusal`."""

    WITHHELD, PREAMBLE, FLAGGED = UNSAFE, CONDITIONAL, FOCUSED

    def __init__(self, classifier: Classifier, refusal: str | None = None, preamble: str = SAFETY_PREAMBLE,
                 source: str = "", judge: ResponseJudge | None = None):
        if tuple(classifier.task.labels) != TIERS:
            raise JaxheadsError(f"a guard classifies into {', '.join(TIERS)}, not {', '.join(classifier.task.labels)}")
        if refusal is None:
            refusal = load_refusals()[REFUSAL_INDEX]
        self.classifier, self.refusal, self.preamble, self.source = classifier, refusal, preamble, source
        self.judge = judge  # screens each generated answer: harmful_compliance is withheld (None: no screening)

    def classify(self, prompts: Sequence[str], batch_size: int = 32,
                 mesh: Mesh | None = None) -> tuple[list[str], np.ndarray]:
        """(tiers, probabilities `[P, 4]` in TIERS order) of the user requests `prompts`."""
        return self.classifier.classify(prompts, batch_size, mesh)

    def guarded_query(self, query: str, tier: str) -> str | None:
        """The request the guarded model is given: None (withheld) for Unsafe, the request followed by the safety
        note in brackets for Conditionally Safe, the request itself otherwise."""
        if tier == self.WITHHELD:
            return None
        return f"{query} ({self.preamble})" if tier == self.PREAMBLE else query

    def generate(self, model, prompts: Sequence[str], prompt_format: str | None = None, interventions=None,
                 mesh: Mesh | None = None, **options) -> Generation:
        """Generation by `model` behind this guard (`guarded_generation`)."""
        return guarded_generation(model, prompts, self, prompt_format, interventions, mesh, **options)

    def describe(self) -> dict:
        """What a result file records about the guard."""
        classifier = self.classifier
        return {"source": self.source, "model": classifier.model.name, "labels": list(classifier.task.labels),
                "label_tokens": list(classifier.task.label_tokens), "temperature": classifier.temperature,
                "threshold": classifier.threshold, "alarm_threshold": classifier.alarm_threshold,
                "refusal": self.refusal, "preamble": self.preamble,
                "screening_judge": None if self.judge is None else self.judge.source}


def load_guard(spec: str = BUILTIN, model=None, dtype: str = "float32", mesh: Mesh | None = None,
               judge: str | ResponseJudge | None = AUTO) -> Guard:
    """The guard of `spec`: "builtin" (the adapter shipped for the default model) or a folder a `jaxheads guard
    train` run wrote (or its adapter/). `model`: a loaded `Model`, a model spec, or None for the model the
    adapter was trained on (as recorded; the embedded default for the built-in guard).

    `judge`: the response judge that screens each generated answer (`guarded_generation`): "auto" (the judge
    shipped with jaxheads when it is installed and was trained on the guard's model, else none), a judge spec
    for `load_judge`, a `ResponseJudge`, or None (no screening)."""
    path = builtin_adapter_dir() if spec == BUILTIN else pathlib.Path(os.path.expanduser(str(spec)))
    adapter = Adapter.load(path)
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load(str(model or adapter.model.get("spec") or "") or None, dtype=dtype, mesh=mesh)
    if judge == AUTO:
        judge = BUILTIN_JUDGE if (builtin_judge_dir() / ADAPTER_META).is_file() else None
        if judge is not None and judge_adapter(judge).model.get("spec", "") != adapter.model.get("spec", ""):
            judge = None
    if isinstance(judge, (str, os.PathLike)):
        same = judge_adapter(judge).model.get("spec", "") == adapter.model.get("spec", "")
        judge = load_judge(judge, model=model if same else None, dtype=dtype, mesh=mesh)
    return Guard(Classifier.from_adapter(model, adapter), source=BUILTIN if spec == BUILTIN else str(path),
                 judge=judge)


def guarded_generation(model, prompts: Sequence[str], guard: Guard, prompt_format: str | None = None,
                       interventions=None, mesh: Mesh | None = None, **options) -> Generation:
    """`jaxheads.generation.generate` behind `guard` (`Guard.generate`): the prompts are user requests, which the
    guard classifies first. Unsafe ones get the guard's refusal without running the model, Conditionally Safe ones
    get the guard's safety note after the request, then each request the model runs on is formatted with
    `prompt_format` (default direct: as it is). The result also holds each prompt's tier and whether it was
    flagged (Focused Attention) or withheld (Unsafe). When the guard has a response judge (`guard.judge`), each
    generated answer it labels harmful_compliance is replaced by the guard's refusal and marked `screened`.
    `options` are `generate`'s (max_new_tokens, temperature, batch_size, ...)."""
    prompts = list(prompts)
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise JaxheadsError("a guard reads the text of each request; pass prompts as texts, not token ids")
    tiers, _ = guard.classify(prompts, mesh=mesh)
    queries = [guard.guarded_query(prompt, tier) for prompt, tier in zip(prompts, tiers)]
    kept = [i for i, query in enumerate(queries) if query is not None]
    texts = [guard.refusal] * len(prompts)
    refusal_tokens = tokens.encode_continuation(model.tokenizer, guard.refusal)
    ids = [list(refusal_tokens) for _ in prompts]
    if kept:
        if check_per_prompt(interventions, len(prompts)):
            interventions = jax.tree.map(lambda a: jnp.asarray(a)[np.asarray(kept)], interventions)
        texts_in = [format_prompt(queries[i], prompt_format or "direct", model.tokenizer) for i in kept]
        out = generate(model, texts_in, interventions=interventions, mesh=mesh, **options)
        for i, text, row in zip(kept, out.texts, out.tokens):
            texts[i], ids[i] = text, row
    screened = [False] * len(prompts)
    screen_labels: list[str | None] = [None] * len(prompts)
    screen_probs: list[list[float] | None] = [None] * len(prompts)
    screened_answers: list[str | None] = [None] * len(prompts)
    if guard.judge is not None and kept:
        labels, probs = guard.judge.classify([prompts[i] for i in kept], [texts[i] for i in kept], mesh=mesh)
        for i, label, row in zip(kept, labels, probs):
            screen_labels[i], screen_probs[i] = label, [float(p) for p in row]
            if label == HARMFUL:  # the answer is withheld: the user gets the guard's refusal
                screened_answers[i] = texts[i]
                texts[i], ids[i], screened[i] = guard.refusal, list(refusal_tokens), True
    judged = guard.judge is not None
    return Generation(texts=texts, tokens=ids, tiers=tiers, flagged=[tier == guard.FLAGGED for tier in tiers],
                      withheld=[tier == guard.WITHHELD for tier in tiers], screened=screened if judged else None,
                      screen_labels=screen_labels if judged else None, screen_probs=screen_probs if judged else None,
                      screened_answers=screened_answers if judged else None)
