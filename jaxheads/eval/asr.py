"""Attack success rate: greedy responses with heads ablated, judged for refusal (DESIGN.md §5)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import jaxheads
from jaxheads.errors import JaxheadsError
from jaxheads.eval.judges import Judge, KeywordJudge, attack_success_rate
from jaxheads.interventions import DEFAULT_EPSILON, Head, Interventions, ablation_mask, from_mask


@dataclasses.dataclass
class AsrResult:
    """ASR over `n` prompts, and one record per prompt (query, prompt text, response, refused, heads)."""

    asr: float
    n: int
    records: list[dict]


def judge_description(judge: Judge | None) -> dict:
    """What an ASR was judged by, for its result file (None is the default keyword judge)."""
    judge = judge or KeywordJudge()
    if isinstance(judge, KeywordJudge):
        return {"name": "keyword", "phrases": len(judge.phrases), "min_length": judge.min_length,
                "case_sensitive": False}
    return {"name": getattr(judge, "name", type(judge).__name__)}


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
             per_prompt: bool = False, kind: str = "ua", epsilon: float = DEFAULT_EPSILON, judge: Judge | None = None,
             max_new_tokens: int = 64, batch_size: int = 16, progress: bool = False,
             mesh: Mesh | None = None) -> AsrResult:
    """Generates greedy responses to formatted `prompts` (for `queries`) with `heads` ablated (one list for all
    prompts, or one list per prompt with `per_prompt`), judges them, and returns the ASR. Generation runs on
    `mesh` when one is given (see `jaxheads.generate`)."""
    if len(queries) != len(prompts):
        raise JaxheadsError(f"{len(queries)} queries but {len(prompts)} prompts")
    cfg = model.config
    if per_prompt:
        interventions = per_prompt_interventions(heads, cfg.num_layers, cfg.num_heads, kind, epsilon)
        prompt_heads = [list(row) for row in heads]
    else:
        mask = ablation_mask(heads, cfg.num_layers, cfg.num_heads)
        interventions = from_mask(jnp.asarray(mask), kind, epsilon) if mask.any() else None
        prompt_heads = [list(heads)] * len(prompts)
    generation = jaxheads.generate(model, prompts, max_new_tokens=max_new_tokens, interventions=interventions,
                                   batch_size=batch_size, progress=progress, mesh=mesh)
    judge = judge or KeywordJudge()
    refused = judge(list(queries), generation.texts)
    records = [
        {"query": query, "prompt": prompt, "response": response, "refused": bool(refusal),
         "ablated": [list(h) for h in row]}
        for query, prompt, response, refusal, row in zip(queries, prompts, generation.texts, refused, prompt_heads)
    ]
    return AsrResult(attack_success_rate(refused), len(prompts), records)
