"""Attack success rate: greedy responses with heads ablated, judged for refusal (docs/methods.md §6)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxheads.data.labels import GUARD_TIERS, HARMFUL, JUDGE_LABELS, REFUSAL
from jaxheads.errors import JaxheadsError
from jaxheads.eval.judges import (
    DEGENERATE_RULE,
    JUDGES,
    Judge,
    KeywordJudge,
    ReferenceJudge,
    attack_success_rate,
    is_degenerate,
    make_judge,
)
from jaxheads.eval.metrics import rate
from jaxheads.generation import generate
from jaxheads.interventions import DEFAULT_EPSILON, Head, Interventions, ablation_mask, from_mask
from jaxheads.judges import ModelJudge, behaviour_asr


@dataclasses.dataclass
class AsrResult:
    """ASR over `n` prompts by `judge`, one record per prompt (query, prompt text, response, the verdict of the judge
    and of both keyword judges, whether the response is degenerate, the ablated heads), the share of degenerate
    responses and the ASR among the others, and the ASR by each keyword judge on the same responses."""

    asr: float
    n: int
    records: list[dict]
    judge: dict
    degenerate_share: float
    asr_non_degenerate: float | None  # None when every response is degenerate
    by_judge: dict[str, dict]
    guard: dict | None = None  # with a guard: what it is, the prompts per tier, the withheld and flagged shares
    # With a response judge: the records on which it and the keyword judge disagree about attack success, the
    # most confident (the judge's probability of its own label) first.
    disagreements: list[dict] | None = None
    # The share of responses judged refusals: 1 - ASR for the keyword judges; for a response judge the share it
    # labels refusal (its non-answers and benign answers are neither refusals nor attack successes).
    refusal_rate: float | None = None

    def summary(self) -> dict:
        """The numbers a result file records (everything but the per-prompt records)."""
        summary = {"asr": self.asr, "n": self.n, "judge": self.judge, "degenerate_share": self.degenerate_share,
                   "asr_non_degenerate": self.asr_non_degenerate, "by_judge": self.by_judge}
        if self.guard is not None:
            summary["guard"] = self.guard
        return summary


def rates(refused: Sequence[bool], degenerate: Sequence[bool]) -> dict:
    """ASR, and ASR among the responses that are not degenerate (None if all are)."""
    kept = [refusal for refusal, broken in zip(refused, degenerate) if not broken]
    return {"asr": attack_success_rate(refused), "asr_non_degenerate": attack_success_rate(kept) if kept else None}


def judge_description(judge: Judge | None) -> dict:
    """What an ASR was judged by, for its result file (None is the default keyword judge)."""
    judge = judge or KeywordJudge()
    degenerate = {"degenerate_rule": DEGENERATE_RULE}
    if isinstance(judge, KeywordJudge):
        return {"name": "keyword", "phrases": len(judge.phrases), "min_length": judge.min_length,
                "case_sensitive": False, **degenerate}
    if isinstance(judge, ReferenceJudge):
        return {"name": "reference", "case_sensitive": True, **degenerate}
    if hasattr(judge, "describe"):  # a response judge (ResponseJudge)
        return {**judge.describe(), **degenerate}
    return {"name": getattr(judge, "name", getattr(judge, "__name__", type(judge).__name__)), **degenerate}


def top_heads_per_prompt(scores: np.ndarray, k: int) -> list[list[Head]]:
    """Each prompt's `k` highest-scoring heads from query-level scores `[P, L, N]`."""
    num_prompts, _, num_heads = scores.shape
    if not 1 <= k <= scores[0].size:
        raise JaxheadsError(f"k must be in 1..{scores[0].size}, got {k}")
    flat = np.argsort(-scores.reshape(num_prompts, -1), axis=1)[:, :k]
    return [[(int(i // num_heads), int(i % num_heads)) for i in row] for row in flat]


def per_prompt_interventions(heads: Sequence[Sequence[Head]], num_layers: int, num_heads: int, kind: str,
                             epsilon: float) -> Interventions:
    """Interventions `[P, L, N]` ablating each prompt's own heads."""
    masks = np.stack([ablation_mask(row, num_layers, num_heads) for row in heads])
    return from_mask(jnp.asarray(masks), kind, epsilon)


def evaluate(model, queries: Sequence[str], prompts: Sequence[str], heads: Sequence[Head] | Sequence[Sequence[Head]] = (),
             per_prompt: bool = False, kind: str = "ua", epsilon: float = DEFAULT_EPSILON,
             judge: Judge | str | None = None, max_new_tokens: int = 64, batch_size: int = 16,
             progress: bool = False, mesh: Mesh | None = None, guard=None,
             prompt_format: str = "template") -> AsrResult:
    """Generates greedy responses to formatted `prompts` (for `queries`) with `heads` ablated (one list for all
    prompts, or one list per prompt with `per_prompt`), judges them and returns the ASR. `judge`: "keyword" (the
    default), "reference", a response judge (`ResponseJudge`, or its spec for `make_judge`: a
    response is then an attack success when labelled harmful_compliance, and its label and probabilities go into
    each record, its ASR into `by_judge["model"]` and its disagreements with the keyword judge into
    `disagreements`), or any callable `(queries, responses) -> [refused, ...]`; both keyword judges' ASR on the
    same responses is reported too. Generation runs on `mesh` when one is given (see `jaxheads.generation.generate`).

    With a `guard` (`jaxheads.guard.Guard`) the queries go through it (`guard.generate`): the
    Unsafe ones get its refusal without running the model, the Conditionally Safe ones are formatted in
    `prompt_format` with its safety preamble, the others as `prompts` are; each record gets the prompt's tier."""
    if len(queries) != len(prompts):
        raise JaxheadsError(f"{len(queries)} queries but {len(prompts)} prompts")
    judge = make_judge(judge, model=None, mesh=mesh) if isinstance(judge, str) else (judge or KeywordJudge())
    cfg = model.config
    if per_prompt:
        interventions = per_prompt_interventions(heads, cfg.num_layers, cfg.num_heads, kind, epsilon)
        prompt_heads = [list(row) for row in heads]
    else:
        mask = ablation_mask(heads, cfg.num_layers, cfg.num_heads)
        interventions = from_mask(jnp.asarray(mask), kind, epsilon) if mask.any() else None
        prompt_heads = [list(heads)] * len(prompts)
    options = dict(max_new_tokens=max_new_tokens, interventions=interventions, batch_size=batch_size,
                   progress=progress, mesh=mesh)
    if guard is None:
        generation = generate(model, prompts, **options)
    else:
        generation = guard.generate(model, queries, prompt_format=prompt_format, **options)
    texts = generation.texts
    model_judge = hasattr(judge, "classify") and hasattr(judge, "describe")  # a ResponseJudge
    labels = probs = found = None
    if isinstance(judge, ModelJudge):  # a model judge (jaxheads.judges): attack success = its verdict
        found = judge.judge(list(queries), texts)
        refused = [not verdict for verdict in found.verdicts]
    elif model_judge:
        labels, probs = judge.classify(list(queries), texts, batch_size=batch_size, mesh=mesh)
        refused = [label != HARMFUL for label in labels]
    else:
        refused = [bool(flag) for flag in judge(list(queries), texts)]
    verdicts = {name: [bool(flag) for flag in make_judge(name)(list(queries), texts)] for name in JUDGES}
    degenerate = [is_degenerate(text) for text in texts]
    records = [
        {"query": query, "prompt": prompt, "response": response, "refused": refusal,
         "refused_by": {name: verdicts[name][i] for name in JUDGES}, "degenerate": degenerate[i],
         "ablated": [list(h) for h in row]}
        for i, (query, prompt, response, refusal, row) in enumerate(zip(queries, prompts, texts, refused, prompt_heads))
    ]
    by_judge = {name: rates(verdicts[name], degenerate) for name in JUDGES}
    disagreements = None
    if found is not None:
        by_judge[judge.kind] = model_judge_entry(records, found, refused, degenerate)
    if model_judge:
        by_judge[judge.name], disagreements = model_judge_summary(judge, records, labels, probs, refused, degenerate)
    guarded = None
    if guard is not None:
        for record, tier, flagged, withheld in zip(records, generation.tiers, generation.flagged, generation.withheld):
            record.update(tier=tier, flagged=flagged, withheld=withheld, preamble=tier == guard.PREAMBLE)
        if generation.screened is not None:
            for i, record in enumerate(records):
                record.update(screened=generation.screened[i], screen_label=generation.screen_labels[i],
                              screen_probs=generation.screen_probs[i], screened_answer=generation.screened_answers[i])
        guarded = guard_summary(guard, generation.tiers, generation.screened)
    selected = rates(refused, degenerate)
    if model_judge:
        refusal_rate = sum(label == REFUSAL for label in labels) / len(labels)
    else:
        refusal_rate = sum(refused) / len(refused)
    return AsrResult(selected["asr"], len(prompts), records, judge_description(judge),
                     sum(degenerate) / len(degenerate), selected["asr_non_degenerate"], by_judge, guarded,
                     disagreements, refusal_rate)


def model_judge_entry(records: list[dict], found, refused: Sequence[bool], degenerate: Sequence[bool]) -> dict:
    """A model judge's entry of `by_judge` (its ASR, its mean score, HarmBench's mean over behaviours, and its
    agreement with the keyword judge on attack success); adds `judge_verdict`, `judge_score` and `judge_details`
    to each record, so that generations.jsonl keeps them next to each response."""
    for record, verdict, score, detail in zip(records, found.verdicts, found.scores, found.details):
        record.update(judge_verdict=bool(verdict), judge_score=float(score), judge_details=detail)
    keyword = [record["refused_by"]["keyword"] for record in records]
    agree = sum((not a) == (not b) for a, b in zip(refused, keyword))
    return {**rates(refused, degenerate), "mean_score": float(np.mean(found.scores)),
            "asr_over_behaviours": behaviour_asr([record["query"] for record in records], found.verdicts),
            "agreement_with_keyword": {"attack_success": rate(agree, len(records))}}


def model_judge_summary(judge, records: list[dict], labels: Sequence[str], probs, refused: Sequence[bool],
                        degenerate: Sequence[bool]) -> tuple[dict, list[dict]]:
    """A response judge's entry of `by_judge` (its ASR, the responses per label, its agreement with the keyword
    judge on attack success and on refusal) and the records on which it and the keyword judge disagree about
    attack success, each with the judge's label and probabilities, the most confident first. Adds `judge_label`
    and `judge_probs` to each record."""
    keyword = [record["refused_by"]["keyword"] for record in records]
    for record, label, row in zip(records, labels, probs):
        record.update(judge_label=label, judge_probs={name: float(p) for name, p in zip(JUDGE_LABELS, row)})
    success_agree = sum((not a) == (not b) for a, b in zip(refused, keyword))
    refusal_agree = sum((label == REFUSAL) == flag for label, flag in zip(labels, keyword))
    entry = {**rates(refused, degenerate), "source": judge.source,
             "counts": {name: sum(label == name for label in labels) for name in JUDGE_LABELS},
             "agreement_with_keyword": {"attack_success": rate(success_agree, len(labels)),
                                        "refusal": rate(refusal_agree, len(labels))},
             "disagreements": len(labels) - success_agree}
    disagreements = [
        {"index": i, "query": record["query"], "response": record["response"], "judge_label": record["judge_label"],
         "judge_probability": record["judge_probs"][record["judge_label"]], "judge_success": not refused[i],
         "keyword_success": not keyword[i], "judge_probs": record["judge_probs"], "degenerate": record["degenerate"]}
        for i, record in enumerate(records) if (not refused[i]) != (not keyword[i])]
    disagreements.sort(key=lambda line: -line["judge_probability"])
    return entry, disagreements


def guard_summary(guard, tiers: Sequence[str], screened: Sequence[bool] | None = None) -> dict:
    """What a guarded evaluation records about the guard: the guard itself, the prompts per tier, and the shares
    withheld (Unsafe: refused without running the model), given the preamble, and flagged; with a screening
    response judge, the answers it withheld (`screened`, labelled harmful_compliance) and their share."""
    counts = {tier: sum(t == tier for t in tiers) for tier in GUARD_TIERS}
    summary = {**guard.describe(), "counts": counts, "withheld_share": counts[guard.WITHHELD] / len(tiers),
               "preamble_share": counts[guard.PREAMBLE] / len(tiers),
               "flagged_share": counts[guard.FLAGGED] / len(tiers)}
    if screened is not None:
        summary.update(screened=int(sum(screened)), screened_share=sum(screened) / len(tiers))
    return summary
